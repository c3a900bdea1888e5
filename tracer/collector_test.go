package tracer

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
)

func TestCollectorGolden(t *testing.T) {
	l, _ := newLedger(t, nil)
	// A fixed history: two clean remote lifecycles, one refused free, one reuse violation, one double free.
	for i := 0; i < 2; i++ {
		h, _ := l.RegisterRemote(Tags{Tenant: "a"}, 4096, AllocOptions{})
		must(t, l.MarkInUse(h))
		must(t, l.Attest(h, Attestation{Bytes: 4096, Zeroed: 4096, Verified: true, Duration: 200 * time.Microsecond}))
		must(t, l.Free(h))
		l.Free(h)
	}
	h, _ := l.RegisterRemote(Tags{Tenant: "a"}, 4096, AllocOptions{})
	l.MarkInUse(h)
	l.Free(h)
	h2, _ := l.RegisterRemote(Tags{Tenant: "b"}, 4096, AllocOptions{})
	l.Attest(h2, Attestation{Bytes: 4096, Zeroed: 2048, Duration: 2 * time.Millisecond})
	l.Reuse(h2, nil)

	golden := "testdata/collector.prom"
	if os.Getenv("UPDATE_GOLDEN") != "" {
		os.MkdirAll("testdata", 0o755)
		reg := prometheus.NewPedanticRegistry()
		must(t, reg.Register(l))
		mfs, err := reg.Gather()
		must(t, err)
		var b bytes.Buffer
		for _, mf := range mfs {
			expfmt.MetricFamilyToText(&b, mf)
		}
		os.WriteFile(golden, b.Bytes(), 0o644)
	}
	want, err := os.ReadFile(golden)
	must(t, err)
	if err := testutil.CollectAndCompare(l, strings.NewReader(string(want))); err != nil {
		t.Fatal(err)
	}
}
