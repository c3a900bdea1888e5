package tracer

import (
	crand "crypto/rand"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/kvhygiene/kvh/forensic"
	"github.com/kvhygiene/kvh/policy"
	"golang.org/x/mod/sumdb/note"
)

// lifoPool hands back the most recently returned buffer of a size, so reuse
// is real: a buffer that was not zeroized would show its previous owner's bytes.
type lifoPool struct {
	mu    sync.Mutex
	free  map[int][][]byte
	puts  int
	owned map[*byte]bool // memory currently in the pool
}

func (p *lifoPool) Get(n int) []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	if l := p.free[n]; len(l) > 0 {
		b := l[len(l)-1]
		p.free[n] = l[:len(l)-1]
		if n > 0 {
			delete(p.owned, &b[0])
		}
		return b
	}
	return make([]byte, n)
}

func (p *lifoPool) Put(b []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.free[len(b)] = append(p.free[len(b)], b)
	p.puts++
	if len(b) > 0 {
		p.owned[&b[0]] = true
	}
}

// signedTrail opens a durable trail in a fresh directory under a fresh
// signing key, for a harness that verifies it at the end (verifyTrail).
func signedTrail(t *testing.T, name string) (*forensic.Log, string, note.Verifier) {
	t.Helper()
	skey, vkey, _ := note.GenerateKey(crand.Reader, name)
	signer, _ := note.NewSigner(skey)
	verifier, _ := note.NewVerifier(vkey)
	dir := t.TempDir()
	trail, err := forensic.Open(dir, forensic.Options{Signer: signer})
	must(t, err)
	return trail, dir, verifier
}

// verifyTrail closes the trail and fails the test unless it verifies.
func verifyTrail(t *testing.T, trail *forensic.Log, dir string, verifier note.Verifier) {
	t.Helper()
	must(t, trail.Close())
	rep, err := forensic.Verify(dir, forensic.VerifyOptions{Verifier: verifier})
	must(t, err)
	if !rep.OK {
		t.Fatal(rep.Problem)
	}
}

// TestNoTenantReadsAnother drives random lifecycles across tenants with
// memory recycled through a LIFO pool, and checks that every buffer a tenant
// receives holds only zeros, that quarantined memory never returns to the
// pool, and that the ledger's counts match the trail.
func TestNoTenantReadsAnother(t *testing.T) {
	trail, dir, verifier := signedTrail(t, "kvh-harness")
	pool := &lifoPool{free: map[int][][]byte{}, owned: map[*byte]bool{}}
	p := policy.Default()
	p.MaxReuse = -1
	l, err := New(Options{Trail: trail, Policy: p, Allocator: pool})
	must(t, err)

	var qmu sync.Mutex
	quarantined := map[*byte]bool{}
	tenants := []string{"acme", "globex", "initech", "umbrella"}
	sizes := []int{64, 4096, 65536}
	const workers, ops = 16, 150
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tenant := tenants[w%len(tenants)]
			mark := byte(w%len(tenants) + 1)
			r := rand.New(rand.NewPCG(uint64(w), 7))
			fill := func(h Handle) {
				buf, err := l.Buffer(h)
				if err != nil {
					t.Error(err)
					return
				}
				for i, c := range buf {
					if c != 0 {
						t.Errorf("tenant %s received a buffer holding byte %#x at %d (tenant %s's data)", tenant, c, i, tenants[c-1])
						return
					}
				}
				for i := range buf {
					buf[i] = mark
				}
			}
			for i := 0; i < ops; i++ {
				h, err := l.Allocate(Tags{Tenant: tenant, Request: "req"}, sizes[r.IntN(len(sizes))], AllocOptions{})
				if err != nil {
					t.Error(err)
					return
				}
				must(t, l.MarkInUse(h))
				fill(h)
				switch x := r.IntN(100); {
				case x < 15: // sanitize, reuse for the next request, write again
					l.Sanitize(h)
					must(t, l.Reuse(h, &Tags{Tenant: tenant, Request: "next"}))
					must(t, l.MarkInUse(h))
					fill(h)
					l.Sanitize(h)
					must(t, l.Free(h))
				case x < 20:
					buf, _ := l.Buffer(h)
					must(t, l.Quarantine(h, "harness"))
					if len(buf) > 0 {
						qmu.Lock()
						quarantined[&buf[0]] = true
						qmu.Unlock()
					}
				case x < 25: // a careless free: refused and quarantined
					buf, _ := l.Buffer(h)
					if err := l.Free(h); !errors.Is(err, ErrFreeWithoutSanitize) {
						t.Errorf("unsanitized free: %v", err)
					}
					if len(buf) > 0 {
						qmu.Lock()
						quarantined[&buf[0]] = true
						qmu.Unlock()
					}
				default:
					l.Sanitize(h)
					must(t, l.Free(h))
				}
			}
		}()
	}
	wg.Wait()
	verifyTrail(t, trail, dir, verifier)
	for p := range quarantined {
		if pool.owned[p] {
			t.Fatal("quarantined memory was returned to the pool")
		}
	}
	counts := map[string]int64{}
	must(t, forensic.Events(dir, func(_ uint64, body []byte) error {
		var r struct{ Ev string }
		json.Unmarshal(body, &r)
		counts[r.Ev]++
		return nil
	}))
	s := l.Snapshot()
	if counts["allocate"] != s.Allocations || counts["free"]+counts["release"] != s.FreedTotal ||
		counts["reuse"] != s.ReuseTotal || counts["quarantine"] != s.QuarantineCount {
		t.Fatalf("trail %v vs ledger %+v", counts, s)
	}
	if s.Allocations != workers*ops || pool.puts == 0 {
		t.Fatalf("allocations %d puts %d", s.Allocations, pool.puts)
	}
}

// FuzzStateMachine drives random operation sequences and checks the
// invariants: nothing panics, a successful free was sanitized at or above the
// threshold, quarantine is sticky, and counts add up.
func FuzzStateMachine(f *testing.F) {
	f.Add([]byte{0, 2, 4, 6, 0, 6, 5, 6, 7, 4, 7})
	f.Add([]byte{0, 0, 8, 3, 4, 3, 3, 1, 2, 6, 6})
	f.Fuzz(func(t *testing.T, ops []byte) {
		p := policy.Default()
		p.MaxReuse = 2
		l, err := New(Options{Trail: &memTrail{}, Policy: p})
		if err != nil {
			t.Fatal(err)
		}
		var live []Handle
		allocs := 0
		for i, op := range ops {
			if op%9 == 0 || len(live) == 0 {
				var h Handle
				if i%2 == 1 {
					h, _ = l.RegisterRemote(Tags{Tenant: "t"}, int64(op)%97, AllocOptions{})
				} else {
					h, _ = l.Allocate(Tags{Tenant: "t"}, int(op)%97, AllocOptions{})
				}
				live = append(live, h)
				allocs++
				continue
			}
			idx := int(op/9) % len(live)
			h := live[idx]
			before, _ := l.State(h)
			cov, _ := l.Coverage(h)
			var err error
			switch op % 9 {
			case 1:
				err = l.Bind(h, "s")
			case 2:
				err = l.MarkInUse(h)
			case 3:
				err = l.Reuse(h, nil)
			case 4:
				if _, err = l.Sanitize(h); errors.Is(err, ErrIllegalTransition) {
					err = l.Attest(h, Attestation{Bytes: 96, Zeroed: int64(op) % 97, Verified: true})
				}
			case 5:
				err = l.Quarantine(h, "fuzz")
			case 6:
				err = l.Free(h)
				if err == nil && before != 0 {
					if before != Sanitized || cov < p.CoverageThreshold {
						t.Fatalf("freed from %v at %v%%", before, cov)
					}
				}
			case 7:
				err = l.Release(h, "fuzz")
			case 8:
				_, err = l.Wait(h)
			}
			after, serr := l.State(h)
			if before == Quarantined && serr == nil && after != Quarantined {
				t.Fatalf("op %d left quarantine without release (now %v)", op%9, after)
			}
			if before == Quarantined && serr != nil && op%9 != 7 {
				t.Fatalf("op %d retired a quarantined buffer: %v", op%9, err)
			}
			if serr != nil {
				live = append(live[:idx], live[idx+1:]...)
			}
		}
		s := l.Snapshot()
		if s.ActiveBuffers+s.QuarantineCount != int64(len(live)) || s.TotalBuffers != int64(allocs) {
			t.Fatalf("snapshot %+v, live %d, allocs %d", s, len(live), allocs)
		}
	})
}
