package wire

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
)

var golden = Record{
	Type: Free, Seq: 0x0102030405060708, TSNanos: 1764220800123456789, Ptr: 0x7e0000001000,
	Bytes: 65536, Zeroed: 65280, DurNanos: 12345, Seed: 0xdeadbeefcafef00d, Stream: 5, Count: 77,
	PID: 4242, TID: 4243, Fn: 4, MemKind: MemAsync, Verify: VerifySample, Result: ResVerifyFailed,
	Flags: FlagEnforce | FlagAsync, Device: -1, Tenant: "tenant-a", Request: "req-42",
}

// testdata/golden.bin was written by testdata/fakecuda/golden.c from the C
// header; when a C compiler is here the test regenerates it and compares.
func goldenBytes(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/golden.bin")
	if err != nil {
		t.Fatal(err)
	}
	if cc, err := exec.LookPath("cc"); err == nil {
		exe := filepath.Join(t.TempDir(), "golden")
		out, err := exec.Command(cc, "-Wall", "-Werror", "-I../interpose/include", "-o", exe, "../testdata/fakecuda/golden.c").CombinedOutput()
		if err != nil {
			t.Fatalf("building golden.c: %v\n%s", err, out)
		}
		fresh, err := exec.Command(exe).Output()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(fresh, b) {
			t.Fatal("kvh_wire.h changed: regenerate wire/testdata/golden.bin and update the Go mirror")
		}
	}
	return b
}

var (
	goldenFloor    = ControlMsg{Type: CtlFloor, Verify: VerifyFull, DoublePass: true, Samples: 0x1234, MaxBatch: MaxBatch}
	goldenFloorAck = Record{Type: FloorAck, Seq: 9, TSNanos: 1764220800987654321, Count: 0x1234, PID: 4242, Verify: VerifyFull, Flags: FlagDoublePass}
)

// golden.bin: a record, a DENY control, a FLOOR control, a FLOOR_ACK record.
func TestGolden(t *testing.T) {
	b := goldenBytes(t)
	if len(b) != 2*RecordSize+2*ControlSize {
		t.Fatalf("golden.bin is %d bytes", len(b))
	}
	rec, deny, floor, ack := b[:RecordSize], b[RecordSize:RecordSize+ControlSize], b[RecordSize+ControlSize:RecordSize+2*ControlSize], b[RecordSize+2*ControlSize:]
	for _, tc := range []struct {
		b    []byte
		want Record
	}{{rec, golden}, {ack, goldenFloorAck}} {
		recs, err := Decode(tc.b)
		if err != nil {
			t.Fatal(err)
		}
		if recs[0] != tc.want {
			t.Fatalf("decoded %+v\nwant    %+v", recs[0], tc.want)
		}
		if !bytes.Equal(tc.want.Encode(), tc.b) {
			t.Fatalf("Encode of %+v differs from the C layout", tc.want)
		}
	}
	if !bytes.Equal(Control(CtlDeny), deny) {
		t.Fatal("Control differs from the C layout")
	}
	if !bytes.Equal(Floor(VerifyFull, true, 0x1234), floor) {
		t.Fatal("Floor differs from the C layout")
	}
	for _, tc := range []struct {
		b    []byte
		want ControlMsg
	}{{deny, ControlMsg{Type: CtlDeny}}, {floor, goldenFloor}} {
		m, err := DecodeControl(tc.b)
		if err != nil || m != tc.want {
			t.Fatalf("DecodeControl: %+v, %v; want %+v", m, err, tc.want)
		}
	}
}

func TestDecodeControlRejects(t *testing.T) {
	ok := Floor(VerifySample, false, 8)
	set := func(i int, v byte) []byte { b := bytes.Clone(ok); b[i] = v; return b }
	cases := map[string][]byte{
		"empty":          nil,
		"short":          ok[:ControlSize-1],
		"long":           append(bytes.Clone(ok), 0),
		"magic":          set(0, 0),
		"version":        set(4, 9),
		"type 0":         set(6, 0),
		"type 4":         set(6, 4),
		"verify":         set(8, VerifyFull+1),
		"flags":          set(9, FlagImporter),
		"max_batch":      set(12, MaxBatch+1),
		"deny with args": func() []byte { b := Control(CtlDeny); b[10] = 1; return b }(),
		"deny batch":     func() []byte { b := Control(CtlDeny); b[12] = 1; return b }(),
	}
	for name, b := range cases {
		if _, err := DecodeControl(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	for _, b := range [][]byte{ok, Control(CtlAllow), Floor(VerifyOff, true, 0)} {
		if _, err := DecodeControl(b); err != nil {
			t.Errorf("%x: %v", b, err)
		}
	}
}

func FuzzDecodeControl(f *testing.F) {
	f.Add(Control(CtlDeny))
	f.Add(Floor(VerifyFull, true, 64))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeControl(b)
		if err != nil {
			return
		}
		if !bytes.Equal(m.Encode(), b) {
			t.Fatalf("re-encode of %+v: %x, want %x", m, m.Encode(), b)
		}
	})
}

func TestFnNamesMatchHooksDef(t *testing.T) {
	def, err := os.ReadFile("../interpose/hooks.def")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range regexp.MustCompile(`(?m)^KVH_HOOK\((\w+),`).FindAllSubmatch(def, -1) {
		names = append(names, string(m[1]))
	}
	if len(names) != len(FnNames) {
		t.Fatalf("hooks.def has %d hooks, FnNames %d", len(names), len(FnNames))
	}
	for i := range names {
		if names[i] != FnNames[i] {
			t.Fatalf("hook %d: hooks.def %s, FnNames %s", i+1, names[i], FnNames[i])
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	ok := golden.Encode()
	cases := map[string][]byte{
		"empty":     nil,
		"truncated": ok[:100],
		"oversized": bytes.Repeat(ok, MaxBatch+1),
		"magic":     append([]byte{0}, ok[1:]...),
		"type":      func() []byte { b := bytes.Clone(ok); b[6] = 99; return b }(),
		"type 7":    func() []byte { b := bytes.Clone(ok); b[6] = FloorAck + 1; return b }(),
	}
	for name, b := range cases {
		if _, err := Decode(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := Decode(bytes.Repeat(ok, 3)); err != nil {
		t.Fatal(err)
	}
	b := bytes.Clone(ok)
	copy(b[104:], "evil\n\x1b[31m")
	recs, _ := Decode(b)
	if recs[0].Tenant != "evil??[31m" {
		t.Fatalf("control bytes passed through: %q", recs[0].Tenant)
	}
	if _, err := Decode(ok[:RecordSize-1]); !errors.Is(err, ErrSize) {
		t.Fatal(err)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(golden.Encode())
	f.Add(bytes.Repeat(golden.Encode(), 2))
	f.Add([]byte("KVH1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, err := Decode(b)
		if err != nil {
			return
		}
		for _, r := range recs {
			back, err := Decode(r.Encode())
			if err != nil || back[0].Seq != r.Seq || back[0].Ptr != r.Ptr {
				t.Fatalf("re-encode: %v", err)
			}
		}
	})
}

func TestCountersRoundTrip(t *testing.T) {
	c := Counters{Emitted: 1 << 40, Dropped: 12345}
	b := c.Encode()
	if len(b) != CountersSize {
		t.Fatalf("%d bytes", len(b))
	}
	e, d, err := DecodeCounters(b)
	if err != nil || e != c.Emitted || d != c.Dropped {
		t.Fatalf("%d %d %v", e, d, err)
	}
	b[0] ^= 1
	if _, _, err := DecodeCounters(b); err == nil {
		t.Fatal("bad magic accepted")
	}
	if _, _, err := DecodeCounters(b[:CountersSize-1]); err == nil {
		t.Fatal("short page accepted")
	}
}

func FuzzDecodeCounters(f *testing.F) {
	f.Add(Counters{Emitted: 7, Dropped: 3}.Encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		e, d, err := DecodeCounters(b)
		if err != nil {
			return
		}
		back := Counters{Emitted: e, Dropped: d}.Encode()
		if !bytes.Equal(back, b[:CountersSize]) {
			t.Fatalf("re-encode: %x, want %x", back, b[:CountersSize])
		}
	})
}

// FuzzDecoderStrings: a Decoder that keeps the last tenant and request
// decodes every packet's strings exactly as cstring does, whatever came
// before (packets a and b, in both orders and twice).
func FuzzDecoderStrings(f *testing.F) {
	f.Add([]byte("tenant-a"), []byte("req-1"), []byte("tenant-a"), []byte("req-2"))
	f.Add([]byte("t\x01x"), []byte(""), []byte("t\x01x"), []byte("\xff\xfe"))
	f.Add([]byte("é"), []byte("\x7f"), []byte("a\x00b"), []byte("a"))
	f.Fuzz(func(t *testing.T, ta, ra, tb, rb []byte) {
		pkt := func(tn, rq []byte) []byte {
			g := golden
			b := g.Encode()
			clear(b[104:152])
			copy(b[104:127], tn)
			copy(b[128:151], rq)
			return b
		}
		a, b := pkt(ta, ra), pkt(tb, rb)
		var d Decoder
		for _, p := range [][]byte{a, b, b, a, a, b} {
			recs, err := d.Decode(p)
			if err != nil {
				t.Fatal(err)
			}
			if want := cstring(p[104:128]); recs[0].Tenant != want {
				t.Fatalf("tenant %q, cstring gives %q", recs[0].Tenant, want)
			}
			if want := cstring(p[128:152]); recs[0].Request != want {
				t.Fatalf("request %q, cstring gives %q", recs[0].Request, want)
			}
		}
	})
}

func BenchmarkDecode(b *testing.B) {
	pkt := bytes.Repeat(golden.Encode(), MaxBatch)
	b.Run("fresh", func(b *testing.B) {
		for b.Loop() {
			if _, err := Decode(pkt); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decoder", func(b *testing.B) {
		var d Decoder
		for b.Loop() {
			if _, err := d.Decode(pkt); err != nil {
				b.Fatal(err)
			}
		}
	})
}
