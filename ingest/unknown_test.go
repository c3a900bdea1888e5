package ingest_test

import (
	"strings"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/ingest"
	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/violation"
	"github.com/kvhygiene/kvh/wire"
)

// A failed zeroize or verify is a violation even when the agent never saw
// the allocation (its record was lost, or libkvh reports graph memory it
// could not see allocated): before, an unknown pointer made it a silent
// passthrough. A passthrough or a clean free of an unknown pointer is not.
func TestFailureOfAnUnknownAllocationIsAViolation(t *testing.T) {
	h := newHarness(t, policy.Default(), ingest.Config{})
	c := dial(t, h.sock)
	send(t, c, wire.Record{Type: wire.Hello},
		wire.Record{Type: wire.Free, Ptr: 0x7000, Bytes: 4096, Result: wire.ResPassthrough},
		wire.Record{Type: wire.Free, Ptr: 0x8000, Bytes: 4096, Zeroed: 4096, Flags: wire.FlagVerified, Verify: wire.VerifyFull},
		wire.Record{Type: wire.Free, Ptr: 0x9000, Bytes: 4096, Result: wire.ResZeroizeFailed, Fn: 9},
		wire.Record{Type: wire.Quarantine, Ptr: 0xa000, Bytes: 4096, Result: wire.ResVerifyFailed, Fn: 4})
	got := map[violation.Kind]string{}
	for deadline := time.Now().Add(5 * time.Second); len(got) < 2 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, v := range h.sink.all() {
			got[v.Kind] = v.Detail
		}
	}
	if d := got[violation.FreeWithoutSanitize]; !strings.Contains(d, "zeroize failed") || !strings.Contains(d, "0x9000") {
		t.Fatalf("free_without_sanitize: %q (all: %v)", d, got)
	}
	if d := got[violation.QuarantinedBuffer]; !strings.Contains(d, "verify failed") || !strings.Contains(d, "0xa000") {
		t.Fatalf("quarantined_buffer: %q (all: %v)", d, got)
	}
	if len(got) != 2 {
		t.Fatalf("a passthrough or a clean free of an unknown pointer became a violation: %v", got)
	}
}
