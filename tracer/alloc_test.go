package tracer

import (
	"testing"

	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/trailevent"
)

// A recycled buffer comes back cleared whatever it held when it was put
// back (a free passes at the coverage threshold, which may be under 100%),
// with its size's class as capacity; sizes past maxPooled are not kept.
func TestHeapRecyclesCleared(t *testing.T) {
	a := &Pool{}
	for _, n := range []int{1, 3000, 4096, 4097, maxPooled} {
		// sync.Pool may drop what it is given (a GC between Put and Get),
		// so put several back and look at whatever comes out.
		var bufs [][]byte
		for range 8 {
			b := a.Get(n)
			if len(b) != n || cap(b) != 1<<sizeClass(n) {
				t.Fatalf("Get(%d): len %d cap %d, want cap %d", n, len(b), cap(b), 1<<sizeClass(n))
			}
			for i := range b {
				b[i] = 0xEE
			}
			bufs = append(bufs, b)
		}
		for _, b := range bufs {
			a.Put(b)
		}
		for range 8 {
			b := a.Get(n)
			for i, c := range b[:cap(b)][:n] {
				if c != 0 {
					t.Fatalf("Get(%d) after Put: byte %d is %#x", n, i, c)
				}
			}
		}
	}
	big := a.Get(maxPooled + 1)
	if len(big) != maxPooled+1 {
		t.Fatalf("Get(%d): len %d", maxPooled+1, len(big))
	}
	a.Put(big) // not a class size: dropped, not pooled
	a.Put(make([]byte, 100))
}

// keepTrail keeps the bodies it is given, as they are: a trail that does
// not encode before Append returns.
type keepTrail struct{ bodies []any }

func (k *keepTrail) Append(body any) (uint64, error) {
	k.bodies = append(k.bodies, body)
	return uint64(len(k.bodies)), nil
}

// A trail that keeps bodies sees each record's numbers as they were when it
// was written: records point at scratch fields of the buffer, which later
// records reuse, so the ledger copies them for such a trail.
func TestKeptRecordsDoNotAlias(t *testing.T) {
	k := &keepTrail{}
	l, err := New(Options{Trail: k, Policy: policy.Default()})
	must(t, err)
	h, err := l.RegisterRemote(Tags{Tenant: "a"}, 1000, AllocOptions{})
	must(t, err)
	must(t, l.MarkInUse(h))
	must(t, l.Attest(h, Attestation{Bytes: 1000, Zeroed: 500, Method: "m"}))
	must(t, l.Attest(h, Attestation{Bytes: 1000, Zeroed: 1000, Verified: true, Method: "m"}))
	must(t, l.Free(h))
	var covs []float64
	var verified []bool
	for _, b := range k.bodies {
		r, ok := b.(trailevent.Buffer)
		if !ok || r.Ev != "attest" {
			continue
		}
		covs, verified = append(covs, *r.Coverage), append(verified, *r.Verified)
	}
	if len(covs) != 2 || covs[0] != 50 || covs[1] != 100 || verified[0] || !verified[1] {
		t.Fatalf("attest records kept: coverage %v verified %v, want [50 100] [false true]", covs, verified)
	}
}

// A buffer's slice reaches no memory past its size: Pool hands out
// class-sized arrays (cap 1<<k), and a sanitize covers only the first n
// bytes. Bytes one tenant's code put in the spare capacity (an append
// within cap writes there) must not reach the next buffer of the class,
// whoever's it is.
func TestBufferTailDoesNotLeakAcrossTenants(t *testing.T) {
	l, _ := newLedger(t, nil, func(o *Options) { o.Allocator = &Pool{} })
	secret := make([]byte, 1000)
	for i := range secret {
		secret[i] = 0xAA
	}
	// sync.Pool may drop what it is given (a GC, or at random under -race):
	// a few rounds make a recycle all but certain.
	for range 32 {
		a, err := l.Allocate(Tags{Tenant: "a"}, 3000, AllocOptions{})
		must(t, err)
		must(t, l.MarkInUse(a))
		buf, err := l.Buffer(a)
		must(t, err)
		_ = append(buf, secret...) // within cap: lands past len, in the array
		_, err = l.Sanitize(a)
		must(t, err)
		must(t, l.Free(a))

		b, err := l.Allocate(Tags{Tenant: "b"}, 3000, AllocOptions{})
		must(t, err)
		must(t, l.MarkInUse(b))
		bb, err := l.Buffer(b)
		must(t, err)
		for i, c := range bb[:cap(bb)] {
			if c != 0 {
				t.Fatalf("tenant b's buffer (len %d cap %d) holds %#x at %d: tenant a's bytes", len(bb), cap(bb), c, i)
			}
		}
		_, err = l.Sanitize(b)
		must(t, err)
		must(t, l.Free(b))
	}
}

// With the default allocator a slice an owner keeps past Free (a bug, but
// a common one in Go) never aliases a later buffer: it keeps its old,
// zeroized memory alive, and nobody else is handed that memory.
func TestDefaultAllocatorNeverHandsOutKeptMemory(t *testing.T) {
	l, _ := newLedger(t, nil)
	var kept [][]byte
	for range 64 {
		h, err := l.Allocate(Tags{Tenant: "a"}, 4096, AllocOptions{})
		must(t, err)
		must(t, l.MarkInUse(h))
		buf, err := l.Buffer(h)
		must(t, err)
		_, err = l.Sanitize(h)
		must(t, err)
		must(t, l.Free(h))
		kept = append(kept, buf)
	}
	for range 256 {
		h, err := l.Allocate(Tags{Tenant: "b"}, 4096, AllocOptions{})
		must(t, err)
		buf, err := l.Buffer(h)
		must(t, err)
		for _, k := range kept {
			if &k[0] == &buf[0] {
				t.Fatal("tenant b was handed memory tenant a still holds a slice of")
			}
		}
		must(t, l.MarkInUse(h))
		_, err = l.Sanitize(h)
		must(t, err)
		must(t, l.Free(h))
	}
}
