package tracer

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"testing"
)

func TestRecordAppendBodyIsMarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	strs := []string{"", "a", "tenant-ä", "<script>&", "q\"uote\\", "ctl\x01\n", "\u2028", "bad\xff", "req-000123"}
	floats := []float64{0, 100, 99.9, 1e-7, 12.5, 1e21, 0.000001, 33.333333333333336}
	pick := func() string { return strs[r.IntN(len(strs))] }
	for i := 0; i < 5000; i++ {
		rec := record{Ev: pick(), H: Handle(r.Uint64N(1 << 40)), Kind: pick(), From: pick(), To: pick(), Tenant: pick(),
			Request: pick(), Model: pick(), Device: pick(), Framework: pick(), PID: r.IntN(3) * 1234, Stream: pick(), Claimed: pick(),
			Bytes: r.Int64N(3) * 4096, Method: pick(), Seed: r.Uint64N(2), DurNS: r.Int64N(2) * 5000, Reuse: r.IntN(2), Reason: pick()}
		if r.IntN(2) == 0 {
			f := floats[r.IntN(len(floats))]
			rec.Coverage = &f
		}
		if r.IntN(2) == 0 {
			v := r.IntN(2) == 0
			rec.Verified = &v
		}
		if r.IntN(2) == 0 {
			m := r.IntN(5) - 1
			rec.MaxReuse = &m
		}
		want, _ := json.Marshal(rec)
		if got := rec.AppendBody(nil); !bytes.Equal(got, want) {
			t.Fatalf("AppendBody\n got %s\nwant %s", got, want)
		}
	}
}
