package libkvhtest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The allocation table (interpose/table.c) against a model
// (testdata/table_model.c): random puts, finds, deletes and context takes on
// stripes small enough that probe runs are long and wrap, every answer
// checked against a plain array and every stripe's invariant after each
// change (each entry reachable from its home slot, used = entries), built
// with ASan and UBSan. Deletes shift later entries back instead of leaving
// tombstones; a full stripe that may not grow (fixed) must refuse puts and
// still delete. With threads, four threads share the stripes (each with
// keys and a context of its own, so each checks its own model): a change
// made outside a stripe's lock (a context take, a put) loses or moves
// another thread's entries, which the single-threaded runs cannot see.
func TestTableModel(t *testing.T) {
	cc := os.Getenv("CC")
	if cc == "" {
		cc = "gcc"
	}
	bin := filepath.Join(t.TempDir(), "table_model")
	src := filepath.Join(Root(), "interpose")
	build := exec.Command(cc, "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
		"-I"+filepath.Join(src, "include"), "-I"+src, "-o", bin,
		filepath.Join(Root(), "internal", "libkvhtest", "testdata", "table_model.c"), filepath.Join(src, "table.c"), "-lpthread")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the table model (a C compiler with ASan: make deps): %v\n%s", err, out)
	}
	for _, c := range []struct{ name, seed, ops, keys, firstCap, fixed, threads string }{
		{"grows from 4 slots a stripe", "1", "1000000", "3000", "4", "0", ""},
		{"many keys", "2", "1000000", "20000", "16", "0", ""},
		{"few keys, long runs", "4", "1000000", "600", "4", "0", ""},
		{"full stripes that may not grow", "3", "1000000", "6000", "16", "1", ""},
		{"full 4-slot stripes", "5", "1000000", "5000", "4", "1", ""},
		{"threads, growing", "6", "300000", "4000", "4", "0", "4"},
		{"threads, full stripes", "7", "300000", "3000", "4", "1", "4"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // a delete that never ends is a failure too
			defer cancel()
			args := []string{c.seed, c.ops, c.keys, c.firstCap, c.fixed}
			if c.threads != "" {
				args = append(args, c.threads)
			}
			out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "OK ops=") {
				t.Fatalf("%v\n%s", err, out)
			}
			if c.fixed == "1" && strings.Contains(string(out), "refused=0 ") {
				t.Fatalf("the fixed stripes never filled, so a full stripe was not tried:\n%s", out)
			}
			t.Log(strings.TrimSpace(string(out)))
		})
	}
}
