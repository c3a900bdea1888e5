package tracer

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/seedcompat"
	"github.com/kvhygiene/kvh/zeroize"
)

func fp(f float64) *float64 { return &f }
func ip(i int) *int         { return &i }

// Behaviours the seed's tests assert, adjusted where the seed was wrong.
func TestSeedBehaviours(t *testing.T) {
	t.Run("unique handles", func(t *testing.T) {
		l, _ := newLedger(t, nil)
		seen := map[Handle]bool{}
		for i := 0; i < 1000; i++ {
			h, _ := l.Allocate(Tags{}, 8, AllocOptions{})
			if seen[h] {
				t.Fatal("duplicate handle")
			}
			seen[h] = true
		}
	})
	t.Run("unknown handle", func(t *testing.T) {
		l, _ := newLedger(t, nil)
		for name, err := range map[string]error{
			"coverage":   func() error { _, e := l.Coverage(999); return e }(),
			"in_use":     l.MarkInUse(999),
			"sanitize":   func() error { _, e := l.Sanitize(999); return e }(),
			"free":       l.Free(999),
			"attest":     l.Attest(999, Attestation{}),
			"quarantine": l.Quarantine(999, "x"),
		} {
			if !errors.Is(err, ErrUnknownHandle) {
				t.Errorf("%s: %v", name, err)
			}
		}
	})
	t.Run("sanitize reaches threshold", func(t *testing.T) {
		l, _ := newLedger(t, nil)
		h, _ := l.Allocate(Tags{}, 4096, AllocOptions{})
		must(t, l.MarkInUse(h))
		res, err := l.Sanitize(h)
		must(t, err)
		cov, _ := l.Coverage(h)
		if cov < 99.9 || cov != res.CoveragePct() {
			t.Fatalf("coverage %v / %v", cov, res.CoveragePct())
		}
	})
	t.Run("free without sanitize quarantines", func(t *testing.T) {
		l, _ := newLedger(t, nil)
		h, _ := l.Allocate(Tags{}, 64, AllocOptions{})
		must(t, l.MarkInUse(h))
		if err := l.Free(h); !errors.Is(err, ErrFreeWithoutSanitize) {
			t.Fatalf("free: %v", err)
		}
		if s := l.Snapshot(); s.QuarantineCount != 1 {
			t.Fatalf("quarantine_count %d", s.QuarantineCount)
		}
	})
	t.Run("forced verify failure", func(t *testing.T) {
		l, _ := newLedger(t, nil, withFaults(&zeroize.Faults{FailVerify: true}))
		h, _ := l.Allocate(Tags{}, 64, AllocOptions{})
		l.Sanitize(h)
		if cov, _ := l.Coverage(h); cov != 0 {
			t.Fatalf("coverage %v", cov)
		}
		if err := l.Free(h); !errors.Is(err, ErrFreeWithoutSanitize) {
			t.Fatalf("free: %v", err)
		}
	})
	t.Run("threshold above 100 is a config error", func(t *testing.T) {
		for _, th := range []float64{100.01, 101, 150} {
			p := policy.Default()
			p.CoverageThreshold = th
			if _, err := New(Options{Trail: &memTrail{}, Policy: p}); err == nil || !strings.Contains(err.Error(), "coverage_threshold") {
				t.Errorf("threshold %v: %v (the seed accepted it and refused every free)", th, err)
			}
		}
	})
	t.Run("ttl 0 quarantines on first use", func(t *testing.T) {
		p := policy.Default()
		p.TTLSec = fp(0)
		if _, err := New(Options{Trail: &memTrail{}, Policy: p}); err == nil || !strings.Contains(err.Error(), "ttl_allow_immediate") {
			t.Fatalf("ttl 0 without ttl_allow_immediate: %v (the seed took it silently)", err)
		}
		l, _ := newLedger(t, func(p *policy.Config) { p.TTLSec = fp(0); p.TTLAllowImmediate = true })
		h, _ := l.Allocate(Tags{}, 8, AllocOptions{})
		if err := l.MarkInUse(h); !errors.Is(err, ErrPolicyViolation) {
			t.Fatalf("mark_in_use: %v", err)
		}
		if s, _ := l.State(h); s != Quarantined {
			t.Fatalf("state %v", s)
		}
	})
	t.Run("max_reuse 0 quarantines the first reuse; -1 never", func(t *testing.T) {
		for _, mr := range []int{0, -1, 1} {
			l, _ := newLedger(t, nil)
			h, _ := l.Allocate(Tags{}, 8, AllocOptions{MaxReuse: ip(mr)})
			var errs []error
			for i := 0; i < 3; i++ {
				l.Sanitize(h)
				errs = append(errs, l.Reuse(h, nil))
			}
			for i, err := range errs {
				want := mr >= 0 && i >= mr
				if errors.Is(err, ErrPolicyViolation) != want && !(i > mr && mr >= 0 && errors.Is(err, ErrQuarantined)) {
					t.Errorf("max_reuse %d, reuse %d: %v", mr, i+1, err)
				}
			}
			if s := l.Snapshot(); s.ReuseRate <= 0 {
				t.Errorf("reuse_rate %v", s.ReuseRate)
			}
		}
	})
	t.Run("double free is a logged no-op", func(t *testing.T) {
		l, tr := newLedger(t, nil)
		h := lifecycle(t, l, "a", 16)
		if err := l.Free(h); err != nil {
			t.Fatalf("double free: %v", err)
		}
		if tr.count("double_free") != 1 {
			t.Fatal("double free not recorded")
		}
	})
	t.Run("zero-length buffer", func(t *testing.T) {
		l, _ := newLedger(t, nil)
		h, _ := l.Allocate(Tags{}, 0, AllocOptions{})
		l.Sanitize(h)
		if cov, _ := l.Coverage(h); cov != 100 {
			t.Fatalf("coverage %v", cov)
		}
		must(t, l.Free(h))
	})
	t.Run("double pass", func(t *testing.T) {
		l, tr := newLedger(t, func(p *policy.Config) { p.DoublePass = true })
		lifecycle(t, l, "a", 1<<16)
		if !strings.Contains(fmt.Sprint(tr.recs), "pattern+memset") {
			t.Fatal("double pass not recorded")
		}
	})
}

func TestWeaknessesFixed(t *testing.T) {
	t.Run("quarantine is a control, not a label", func(t *testing.T) {
		l, _ := newLedger(t, nil)
		h, _ := l.Allocate(Tags{}, 64, AllocOptions{})
		must(t, l.Quarantine(h, "suspicious"))
		if err := l.MarkInUse(h); !errors.Is(err, ErrQuarantined) {
			t.Errorf("write into quarantine: %v", err)
		}
		if _, err := l.Buffer(h); !errors.Is(err, ErrQuarantined) {
			t.Errorf("buffer access in quarantine: %v", err)
		}
		if err := l.Reuse(h, nil); !errors.Is(err, ErrQuarantined) {
			t.Errorf("reuse in quarantine: %v", err)
		}
		if err := l.Free(h); !errors.Is(err, ErrQuarantined) {
			t.Errorf("free in quarantine: %v", err)
		}
		if err := l.Release(h, "reviewed"); !errors.Is(err, ErrQuarantined) {
			t.Errorf("release without a fresh sanitize: %v", err)
		}
		l.Sanitize(h)
		if s, _ := l.State(h); s != Quarantined {
			t.Errorf("sanitize left quarantine: %v", s)
		}
		must(t, l.Release(h, "reviewed"))
		if s := l.Snapshot(); s.QuarantineCount != 0 || s.FreedTotal != 1 {
			t.Errorf("%+v", s)
		}
	})
	t.Run("write after sanitize resets coverage", func(t *testing.T) {
		l, _ := newLedger(t, nil)
		h, _ := l.Allocate(Tags{}, 64, AllocOptions{})
		l.Sanitize(h)
		must(t, l.MarkInUse(h))
		if err := l.Free(h); !errors.Is(err, ErrFreeWithoutSanitize) {
			t.Fatalf("stale coverage let a dirty buffer go: %v", err)
		}
	})
	t.Run("verification reads the bytes", func(t *testing.T) {
		l, _ := newLedger(t, nil, withFaults(&zeroize.Faults{LeaveBytes: 512}))
		h, _ := l.Allocate(Tags{}, 1024, AllocOptions{})
		buf, _ := l.Buffer(h)
		for i := range buf {
			buf[i] = 1
		}
		l.Sanitize(h)
		if cov, _ := l.Coverage(h); cov != 0 {
			t.Fatalf("partial scrub reported %v%%", cov)
		}
	})
	t.Run("wait without sanitize", func(t *testing.T) {
		l, _ := newLedger(t, nil)
		h, _ := l.Allocate(Tags{}, 8, AllocOptions{})
		if _, err := l.Wait(h); !errors.Is(err, ErrIllegalTransition) {
			t.Fatalf("wait: %v", err)
		}
		if s, _ := l.State(h); s != Allocated {
			t.Fatalf("state %v", s)
		}
	})
	t.Run("async sanitize", func(t *testing.T) {
		l, tr := newLedger(t, nil)
		h, _ := l.Allocate(Tags{}, 32<<20, AllocOptions{})
		must(t, l.MarkInUse(h))
		must(t, l.SanitizeAsync(h))
		res, err := l.Wait(h)
		must(t, err)
		if !res.Verified {
			t.Fatalf("%+v", res)
		}
		must(t, l.Free(h))
		ev := tr.events()
		if strings.Join(ev[len(ev)-3:], ",") != "sanitize_start,sanitize_end,free" {
			t.Fatalf("events %v", ev)
		}
	})
	t.Run("idle buffers expire by sweep; allocation-age TTL", func(t *testing.T) {
		c := &fakeClock{t: time.Unix(1e9, 0)}
		l, _ := newLedger(t, func(p *policy.Config) { p.TTLSec = fp(10) }, func(o *Options) { o.Now = c.now })
		h1, _ := l.Allocate(Tags{}, 8, AllocOptions{})
		must(t, l.MarkInUse(h1))
		h2, _ := l.Allocate(Tags{}, 8, AllocOptions{}) // never used: first-use clock not started
		c.advance(11 * time.Second)
		if n := l.Sweep(); n != 1 {
			t.Fatalf("swept %d", n)
		}
		if s, _ := l.State(h1); s != Quarantined {
			t.Fatalf("idle in-use buffer not expired: %v", s)
		}
		if s, _ := l.State(h2); s != Allocated {
			t.Fatalf("unused buffer expired from first use: %v", s)
		}
		l2, _ := newLedger(t, func(p *policy.Config) { p.TTLSec = fp(10); p.TTLFrom = policy.TTLFromAllocation }, func(o *Options) { o.Now = c.now })
		h3, _ := l2.Allocate(Tags{}, 8, AllocOptions{})
		c.advance(11 * time.Second)
		if err := l2.MarkInUse(h3); !errors.Is(err, ErrPolicyViolation) {
			t.Fatalf("allocation-age TTL: %v", err)
		}
	})
	t.Run("sub-millisecond durations", func(t *testing.T) {
		l, _ := newLedger(t, nil)
		for i := 0; i < 50; i++ {
			lifecycle(t, l, "a", 256)
		}
		s := l.Snapshot()
		if s.SanitizeDurationP50Ms <= 0 || s.SanitizeDurationP50Ms >= 1 {
			t.Fatalf("p50 %v ms", s.SanitizeDurationP50Ms)
		}
	})
	t.Run("0% coverage counts in the gate", func(t *testing.T) {
		l, _ := newLedger(t, nil, withFaults(&zeroize.Faults{FailVerify: true}))
		h, _ := l.Allocate(Tags{}, 64, AllocOptions{})
		l.Sanitize(h)
		s := l.Snapshot()
		if s.MinCoveragePct != 0 || s.UnsanitizedRegions != 0 {
			t.Fatalf("%+v", s)
		}
		v, err := seedcompat.Gate(s.JSON(), seedcompat.DefaultThresholds())
		if err != nil || v.Pass {
			t.Fatalf("gate passed a 0%% buffer: %v %+v", err, v)
		}
	})
	t.Run("bounded memory", func(t *testing.T) {
		l, _ := newLedger(t, nil, func(o *Options) { o.RetiredWindow = 1000 })
		for i := 0; i < 20000; i++ {
			lifecycle(t, l, "a", 64)
		}
		live := 0
		for i := range l.shards {
			live += len(l.shards[i].m)
		}
		if live != 0 || len(l.retired) > 1000 {
			t.Fatalf("live %d retired %d", live, len(l.retired))
		}
		s := l.Snapshot()
		if s.TotalBuffers != 20000 || s.FreedTotal != 20000 || s.MinCoveragePct != 100 {
			t.Fatalf("%+v", s)
		}
	})
	t.Run("trail failure refuses the transition", func(t *testing.T) {
		l, tr := newLedger(t, nil)
		h, _ := l.Allocate(Tags{}, 8, AllocOptions{})
		l.Sanitize(h)
		tr.fail = true
		if err := l.Free(h); err == nil {
			t.Fatal("free acknowledged without a record")
		}
		tr.fail = false
		if s, _ := l.State(h); s != Sanitized {
			t.Fatalf("state %v", s)
		}
	})
	t.Run("illegal transitions change nothing", func(t *testing.T) {
		l, tr := newLedger(t, nil)
		h, _ := l.Allocate(Tags{}, 8, AllocOptions{})
		must(t, l.MarkInUse(h))
		n := len(tr.events())
		if err := l.Bind(h, "s1"); !errors.Is(err, ErrIllegalTransition) {
			t.Fatalf("bind from in_use: %v", err)
		}
		if len(tr.events()) != n {
			t.Fatal("an illegal transition was recorded")
		}
		r, _ := l.RegisterRemote(Tags{}, 8, AllocOptions{})
		if _, err := l.Sanitize(r); !errors.Is(err, ErrIllegalTransition) {
			t.Fatalf("local sanitize of a remote buffer: %v", err)
		}
	})
}

func TestRemoteAttestation(t *testing.T) {
	l, tr := newLedger(t, nil)
	h, _ := l.RegisterRemote(Tags{Tenant: "b", PID: 42}, 1<<20, AllocOptions{})
	must(t, l.MarkInUse(h))
	must(t, l.Attest(h, Attestation{Bytes: 1 << 20, Zeroed: 1 << 20, Verified: true, Method: "cuMemsetD8+full", Duration: 300 * time.Microsecond}))
	must(t, l.Free(h))
	h2, _ := l.RegisterRemote(Tags{Tenant: "b"}, 1<<20, AllocOptions{})
	must(t, l.Attest(h2, Attestation{Bytes: 1 << 20, Zeroed: 1 << 19, Verified: false, Method: "cuMemsetD8+sample"}))
	if err := l.Free(h2); !errors.Is(err, ErrFreeWithoutSanitize) {
		t.Fatalf("half-zeroed remote buffer freed: %v", err)
	}
	last := tr.recs[len(tr.recs)-1]
	if last["ev"] != "quarantine" || last["tenant"] != "b" {
		t.Fatalf("%v", last)
	}
}

func TestAnomalyFlag(t *testing.T) {
	l, tr := newLedger(t, nil)
	for i := 0; i < 40; i++ {
		h, _ := l.RegisterRemote(Tags{Tenant: "t"}, 4096+int64(i%3), AllocOptions{})
		l.Attest(h, Attestation{Bytes: 4096, Zeroed: 4096, Verified: true, Duration: time.Duration(100+i%5) * time.Microsecond})
		l.Free(h)
	}
	h, _ := l.RegisterRemote(Tags{Tenant: "t"}, 4096, AllocOptions{})
	l.Attest(h, Attestation{Bytes: 4096, Zeroed: 4096, Verified: true, Duration: 50 * time.Millisecond})
	if tr.count("anomaly") != 1 {
		t.Fatalf("anomalies %d", tr.count("anomaly"))
	}
	// Rate limited: another outlier within the second is not recorded.
	l.Attest(h, Attestation{Bytes: 4096, Zeroed: 4096, Verified: true, Duration: 80 * time.Millisecond})
	if tr.count("anomaly") != 1 {
		t.Fatalf("not rate limited: %d", tr.count("anomaly"))
	}
}

func TestHistogramQuantiles(t *testing.T) {
	var h hist
	if h.quantile(0.5) != 0 {
		t.Fatal("empty")
	}
	h.add(5000)
	if q := h.quantile(0.5); q < 4800 || q > 5200 {
		t.Fatalf("single value 5000 -> %v", q)
	}
	var u hist
	for i := 1; i <= 10000; i++ {
		u.add(int64(i) * 1000) // 1µs .. 10ms
	}
	for _, q := range []float64{0.5, 0.95} {
		want := q * 10000 * 1000
		if got := u.quantile(q); got < want*0.96 || got > want*1.04 {
			t.Errorf("q%v = %v, want about %v", q, got, want)
		}
	}
}

func TestRSSFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("long")
	}
	l, err := New(Options{Trail: countTrail{}, Policy: policy.Default()})
	must(t, err)
	measure := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse
	}
	for i := 0; i < 100000; i++ {
		h, _ := l.RegisterRemote(Tags{Tenant: "a"}, 4096, AllocOptions{})
		l.Attest(h, Attestation{Bytes: 4096, Zeroed: 4096, Verified: true})
		l.Free(h)
	}
	before := measure()
	for i := 0; i < 300000; i++ {
		h, _ := l.RegisterRemote(Tags{Tenant: "a"}, 4096, AllocOptions{})
		l.Attest(h, Attestation{Bytes: 4096, Zeroed: 4096, Verified: true})
		l.Free(h)
	}
	after := measure()
	runtime.KeepAlive(l)
	t.Logf("heap in use %d -> %d bytes", before, after)
	if after > before+8<<20 {
		t.Fatalf("heap grew from %d to %d bytes over 300k lifecycles", before, after)
	}
}

// Snapshots (the agent exports every few hundred ms) run while buffers are
// retired: this deadlocked once (shard then buffer vs buffer then shard).
func TestSnapshotDuringLifecycles(t *testing.T) {
	l, _ := newLedger(t, nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 20000; i++ {
			h, _ := l.RegisterRemote(Tags{Tenant: "a"}, 4096, AllocOptions{})
			l.Attest(h, Attestation{Bytes: 4096, Zeroed: 4096, Verified: true})
			l.Free(h)
		}
	}()
	deadline := time.After(60 * time.Second)
	for {
		select {
		case <-done:
			return
		case <-deadline:
			t.Fatal("lifecycles stalled while snapshotting (deadlock)")
		default:
			l.Snapshot()
			l.Sweep()
		}
	}
}
