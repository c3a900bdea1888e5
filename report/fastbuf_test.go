package report

import (
	"bytes"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/kvhygiene/kvh/trailevent"
)

// randomBuffer is a buffer transition as the ledger might write it.
func randomBuffer(rng *rand.Rand) trailevent.Buffer {
	evs := []string{"allocate", "attest", "free", "quarantine", "retire", "sanitize", "reuse"}
	s := func() string {
		return []string{"", "acme", "uid:1000", "tenant é", "0", "cuMemFree_v2+sample", "zz\u2028"}[rng.IntN(7)]
	}
	b := trailevent.Buffer{Ev: evs[rng.IntN(len(evs))], H: rng.Uint64() >> rng.IntN(64), Kind: s(), From: s(), To: s(), Tenant: s(), Request: s(), Model: s(),
		Device: s(), Framework: s(), PID: rng.IntN(1 << 22), Stream: s(), Claimed: s(), Bytes: rng.Int64() >> rng.IntN(63), Method: s(),
		Seed: rng.Uint64(), DurNS: rng.Int64N(1e12), Reuse: rng.IntN(3), Reason: s()}
	if rng.IntN(2) == 0 {
		c := []float64{100, 0, 99.95, 40, 1e-7, 33.333333333333336}[rng.IntN(6)]
		b.Coverage = &c
	}
	if rng.IntN(2) == 0 {
		v := rng.IntN(2) == 0
		b.Verified = &v
	}
	if rng.IntN(2) == 0 {
		m := rng.IntN(5) - 1
		b.MaxReuse = &m
	}
	return b
}

// The fast path reads what the ledger writes (declining only strings with
// escapes, left to Decode), and agrees with it.
func TestDecodeBufferReadsTheLedgersBodies(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 20000; i++ {
		want := randomBuffer(rng)
		body := want.AppendBody(nil)
		var got trailevent.Buffer
		if !decodeBuffer(body, &got, interner{}) {
			if bytes.Contains(body, []byte(`\`)) {
				continue
			}
			t.Fatalf("declined %s", body)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s:\n got %+v\nwant %+v", body, got, want)
		}
	}
}

// FuzzDecodeBuffer: whatever the fast path accepts, trailevent.Decode
// decodes to the same Buffer.
func FuzzDecodeBuffer(f *testing.F) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 30; i++ {
		b := randomBuffer(rng)
		f.Add(b.AppendBody(nil))
	}
	for _, s := range []string{`{"ev":"free","Tenant":"x"}`, `{"ev":"free","pid":1.5}`, `{"ev":"free","h":-1}`, `{"ev":"free"} `, `{"ev":"free","bytes":01}`,
		`{"ev":"free","coverage_pct":1e400}`, `{"ev":"free","ev":"allocate"}`, `{"ev":"policy"}`, `{"ev":"free","tenant":"a\u0062"}`, `{"ev":"free","verified":null}`, `{}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var fast trailevent.Buffer
		if !decodeBuffer(body, &fast, nil) {
			return
		}
		name, ev, err := trailevent.Decode(body)
		if err != nil {
			t.Fatalf("fast path accepted %q, Decode refuses it: %v", body, err)
		}
		b, ok := ev.(*trailevent.Buffer)
		if !ok || name != fast.Ev || !reflect.DeepEqual(*b, fast) {
			t.Fatalf("%q:\nfast   %+v\nDecode %s %+v", body, fast, name, ev)
		}
	})
}
