package tracer

import (
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/kvhygiene/kvh/policy"
)

// Pool under concurrent lifecycles of several tenants,
// synchronous and asynchronous sanitizes, reuse and quarantine, on a trail
// that encodes records pointing at the buffers' scratch fields: every buffer
// a tenant receives holds only zeros up to its capacity, no two live
// buffers share memory, quarantined memory is never handed out again, and
// the trail verifies. Run it with -race.
func TestHeapNoTenantReadsAnother(t *testing.T) {
	trail, dir, verifier := signedTrail(t, "kvh-heap-harness")
	p := policy.Default()
	p.MaxReuse = -1
	l, err := New(Options{Trail: trail, Policy: p, Allocator: &Pool{}})
	must(t, err)

	var mu sync.Mutex
	live := map[*byte]Handle{}
	quarantined := map[*byte]bool{}
	tenants := []string{"acme", "globex", "initech", "umbrella"}
	sizes := []int{1, 100, 3000, 4096, 5000}
	const workers, ops = 8, 120
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tenant := tenants[w%len(tenants)]
			mark := byte(w%len(tenants) + 1)
			r := rand.New(rand.NewPCG(uint64(w), 11))
			fill := func(h Handle) []byte {
				buf, err := l.Buffer(h)
				if err != nil {
					t.Error(err)
					return nil
				}
				for i, c := range buf[:cap(buf)] {
					if c != 0 {
						t.Errorf("tenant %s received a buffer holding %#x at %d (tenant %s's data)", tenant, c, i, tenants[c-1])
						return buf
					}
				}
				for i := range buf {
					buf[i] = mark
				}
				return buf
			}
			for range ops {
				h, err := l.Allocate(Tags{Tenant: tenant, Request: "req"}, sizes[r.IntN(len(sizes))], AllocOptions{})
				if err != nil {
					t.Error(err)
					return
				}
				must(t, l.MarkInUse(h))
				buf := fill(h)
				if buf == nil {
					return
				}
				addr := &buf[0]
				mu.Lock()
				if o, ok := live[addr]; ok {
					t.Errorf("%s and %s share memory", o, h)
				}
				if quarantined[addr] {
					t.Errorf("%s was given quarantined memory", h)
				}
				live[addr] = h
				mu.Unlock()
				drop := func() {
					mu.Lock()
					delete(live, addr)
					mu.Unlock()
				}
				switch x := r.IntN(100); {
				case x < 20:
					must(t, l.SanitizeAsync(h))
					if _, err := l.Wait(h); err != nil {
						t.Error(err)
					}
					must(t, l.Reuse(h, &Tags{Tenant: tenant, Request: "next"}))
					must(t, l.MarkInUse(h))
					fill(h)
					_, err := l.Sanitize(h)
					must(t, err)
					drop()
					must(t, l.Free(h))
				case x < 25:
					mu.Lock()
					quarantined[addr] = true
					mu.Unlock()
					must(t, l.Quarantine(h, "harness"))
				default:
					_, err := l.Sanitize(h)
					must(t, err)
					drop()
					must(t, l.Free(h))
				}
			}
		}()
	}
	wg.Wait()
	verifyTrail(t, trail, dir, verifier)
}
