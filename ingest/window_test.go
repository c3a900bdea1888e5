package ingest_test

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/ingest"
	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/trailevent"
	"github.com/kvhygiene/kvh/violation"
	"github.com/kvhygiene/kvh/wire"
)

// The trail's granularity: below trail_event_min_bytes, allocations and
// frees that pass are counted exactly in an event_window whose digest is
// the SHA-256 of their wire records; a buffer at or above the size, and a
// small free that fails the threshold, are recorded one by one (and the
// failure is a violation, as before).
func TestEventWindowGranularity(t *testing.T) {
	pol := policy.Default()
	pol.VerifyMode = "off"
	pol.TrailEventMinBytes = 4096
	h := newHarness(t, pol, ingest.Config{})
	c := dial(t, h.sock)
	seq := uint64(0)
	rec := func(typ uint16, ptr, bytes, zeroed uint64) wire.Record {
		seq++
		return wire.Record{Type: typ, Seq: seq, Ptr: ptr, Bytes: bytes, Zeroed: zeroed, Fn: 1, MemKind: wire.MemDevice, Device: 0}
	}
	small := []wire.Record{
		rec(wire.Alloc, 0x1000, 256, 0),
		rec(wire.Free, 0x1000, 256, 256),
		rec(wire.Alloc, 0x2000, 512, 0),
		rec(wire.Alloc, 0x3000, 1024, 0), // open when the connection ends
	}
	big := []wire.Record{rec(wire.Alloc, 0x9000, 1<<20, 0), rec(wire.Free, 0x9000, 1<<20, 1<<20)}
	failing := rec(wire.Free, 0x2000, 512, 100) // 19.5% coverage: judged one by one
	var pkt []byte
	for _, r := range append(append(small, big...), failing) {
		pkt = append(pkt, r.Encode()...)
	}
	if _, err := c.Write(pkt); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	c.Close()
	digest := sha256.New()
	for _, r := range small {
		digest.Write(r.Encode())
	}
	var win *trailevent.EventWindow
	deadline := time.Now().Add(10 * time.Second)
	for win == nil && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		trailevent.Read(h.trail.Dir(), func(_ uint64, _ string, ev any) error {
			if w, ok := ev.(*trailevent.EventWindow); ok {
				win = w
			}
			return nil
		})
	}
	if win == nil {
		t.Fatal("no event_window in the trail")
	}
	if win.Allocs != 3 || win.AllocBytes != 256+512+1024 || win.Frees != 1 || win.FreeBytes != 256 || win.Zeroed != 256 ||
		win.MinCoverage != 100 || win.Retired != 1 || win.FirstSeq != 1 || win.LastSeq != 4 {
		t.Errorf("window %+v", *win)
	}
	if want := hex.EncodeToString(digest.Sum(nil)); win.Digest != want {
		t.Errorf("digest %s, want %s (SHA-256 of the summarised wire records)", win.Digest, want)
	}
	perEvent := map[string]int{}
	trailevent.Read(h.trail.Dir(), func(_ uint64, name string, ev any) error {
		if b, ok := ev.(*trailevent.Buffer); ok {
			perEvent[name]++
			if b.Bytes != 0 && b.Bytes != 1<<20 && b.Bytes != 512 {
				t.Errorf("a summarised buffer reached the ledger: %+v", *b)
			}
		}
		return nil
	})
	// the 1 MiB buffer (allocate, attest, free) and the failing small free
	// (allocate, attest, quarantine)
	if perEvent["allocate"] != 2 || perEvent["attest"] != 2 || perEvent["free"] != 1 || perEvent["quarantine"] != 1 {
		t.Errorf("per-event records %v", perEvent)
	}
	found := false
	for _, v := range h.sink.all() {
		found = found || v.Kind == violation.FreeWithoutSanitize
	}
	if !found {
		t.Errorf("the failing small free is not a violation: %v", h.sink.all())
	}
}
