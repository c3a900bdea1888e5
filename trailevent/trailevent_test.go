package trailevent

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
)

func TestBufferAppendBodyIsMarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	strs := []string{"", "a", "tenant-ä", "<script>&", "q\"uote\\", "ctl\x01\n", "\u2028", "bad\xff", "req-000123"}
	floats := []float64{0, math.Copysign(0, -1), 100, -100, 4096, 99.9, 1e-7, 12.5, 1e14, 1e15 - 1, 1e15, 1e16, 1e21, 0.000001, 33.333333333333336}
	pick := func() string { return strs[r.IntN(len(strs))] }
	for i := 0; i < 5000; i++ {
		rec := Buffer{Ev: pick(), H: r.Uint64N(1 << 40), Kind: pick(), From: pick(), To: pick(), Tenant: pick(),
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

// Every kind round-trips through Decode to its own type, and names are unique.
func TestDecodeEveryKind(t *testing.T) {
	names := map[string]bool{}
	for _, k := range Kinds() {
		if names[k.Name] {
			t.Fatalf("event %s listed twice", k.Name)
		}
		names[k.Name] = true
		v := reflect.New(k.Type).Elem()
		v.FieldByName("Ev").SetString(k.Name)
		body, err := json.Marshal(v.Interface())
		if err != nil {
			t.Fatal(err)
		}
		name, ev, err := Decode(body)
		if err != nil || name != k.Name {
			t.Fatalf("%s: Decode = %q, %v", k.Name, name, err)
		}
		if reflect.TypeOf(ev) != reflect.PointerTo(k.Type) {
			t.Fatalf("%s decoded as %T", k.Name, ev)
		}
	}
}

func TestDecodeRefuses(t *testing.T) {
	for body, want := range map[string]string{
		`{"ev":"made_up"}`:             "unknown trail event",
		`{"kind":"violation"}`:         `no "ev" field`,
		`[1,2]`:                        "cannot unmarshal",
		`{"ev":"violation","pid":"x"}`: "cannot unmarshal",
	} {
		_, _, err := Decode([]byte(body))
		if err == nil || !bytes.Contains([]byte(err.Error()), []byte(want)) {
			t.Errorf("Decode(%s) = %v, want %q", body, err, want)
		}
	}
	if _, _, err := Decode([]byte(`{"ev":"made_up"}`)); !errors.Is(err, ErrUnknownEvent) {
		t.Errorf("unknown event is not ErrUnknownEvent: %v", err)
	}
	// A field a newer writer added is ignored, not an error.
	if _, _, err := Decode([]byte(`{"ev":"violation","kind":"ttl_expired","pid":3,"action":"observe","new_field":1}`)); err != nil {
		t.Errorf("additive field refused: %v", err)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"ev":"allocate","h":1,"bytes":4096}`))
	f.Add([]byte(`{"ev":"violation","kind":"ttl_expired","pid":3}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		name, ev, err := Decode(body)
		if err == nil && (ev == nil || name == "") {
			t.Fatalf("Decode(%q) gave no event and no error", body)
		}
	})
}
