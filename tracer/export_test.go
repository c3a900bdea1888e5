package tracer

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/kvhygiene/kvh/policy"
)

// Export creates the exports' directory and writes both files whole, mode
// 0644 (node_exporter and users' gates read them), leaving no temp file.
func TestExport(t *testing.T) {
	l, err := New(Options{Trail: &memTrail{}, Policy: policy.Default()})
	if err != nil {
		t.Fatal(err)
	}
	h, _ := l.Allocate(Tags{Tenant: "acme"}, 64, AllocOptions{})
	l.MarkInUse(h)
	dir := filepath.Join(t.TempDir(), "exports")
	jsonPath, promPath := filepath.Join(dir, "metrics.json"), filepath.Join(dir, "metrics.prom")
	for range 2 { // the second export replaces the first
		if err := l.Export(jsonPath, promPath); err != nil {
			t.Fatal(err)
		}
	}
	s := l.Snapshot()
	for p, want := range map[string][]byte{jsonPath: s.JSON(), promPath: s.Textfile()} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o644 {
			t.Errorf("%s is mode %v, want 0644", p, st.Mode().Perm())
		}
		if got, _ := os.ReadFile(p); string(got) != string(want) {
			t.Errorf("%s holds %q, want %q", p, got, want)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("export directory holds %v, want only the two exports", ents)
	}
}
