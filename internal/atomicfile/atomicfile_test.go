package atomicfile

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// entries lists dir's names, so a test can see that no temp file remains.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func checkFile(t *testing.T, path string, want string, perm os.FileMode) {
	t.Helper()
	st, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm() != perm {
		t.Errorf("%s is %v, want a regular file with mode %v", path, st.Mode(), perm)
	}
	if b, _ := os.ReadFile(path); string(b) != want {
		t.Errorf("%s holds %q, want %q", path, b, want)
	}
}

func TestWrite(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, path string) // what is at path before
		perm  os.FileMode
	}{
		{"new file 0600", nil, 0o600},
		{"new file 0644", nil, 0o644},
		{"new file 0640", nil, 0o640},
		{"replaces a longer file and its mode", func(t *testing.T, path string) {
			os.WriteFile(path, []byte("an older and longer content"), 0o600)
		}, 0o644},
		{"replaces a symlink without following it", func(t *testing.T, path string) {
			target := filepath.Join(t.TempDir(), "target")
			os.WriteFile(target, []byte("target"), 0o600)
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { checkFile(t, target, "target", 0o600) })
		}, 0o600},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "out.json")
			if tc.setup != nil {
				tc.setup(t, path)
			}
			if err := Write(path, []byte("new"), tc.perm); err != nil {
				t.Fatal(err)
			}
			checkFile(t, path, "new", tc.perm)
			if got := entries(t, dir); !slices.Equal(got, []string{"out.json"}) {
				t.Errorf("directory holds %q after Write, want only out.json", got)
			}
		})
	}
}

// A reader that opened the old file keeps reading the old content: the file
// is replaced, never rewritten in place.
func TestWriteReplacesNotRewrites(t *testing.T) {
	path := filepath.Join(t.TempDir(), "metrics.prom")
	if err := Write(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := Write(path, []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(f); string(b) != "old" {
		t.Errorf("an open reader sees %q, want the old file's %q", b, "old")
	}
	checkFile(t, path, "new", 0o644)
}

func TestWriteFailureLeavesNoTemp(t *testing.T) {
	dir := t.TempDir()
	// A non-empty directory cannot be replaced by a file: the rename fails
	// after the temp file was written.
	path := filepath.Join(dir, "busy")
	if err := os.MkdirAll(filepath.Join(path, "child"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := Write(path, []byte("data"), 0o644); err == nil {
		t.Fatal("Write over a non-empty directory succeeded")
	}
	if got := entries(t, dir); !slices.Equal(got, []string{"busy"}) {
		t.Errorf("directory holds %q after a failed Write, want only busy", got)
	}
	if err := Write(filepath.Join(dir, "missing", "f"), []byte("data"), 0o644); err == nil {
		t.Error("Write into a missing directory succeeded")
	}
}

func TestWriteNew(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "kvh.key")
	if err := WriteNew(path, []byte("first"), 0o600); err != nil {
		t.Fatal(err)
	}
	checkFile(t, path, "first", 0o600)
	err := WriteNew(path, []byte("second"), 0o644)
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("WriteNew over an existing file: %v, want an fs.ErrExist", err)
	}
	checkFile(t, path, "first", 0o600)
	// A dangling symlink exists too: it is neither followed nor replaced.
	link := filepath.Join(dir, "kvh.pub")
	target := filepath.Join(dir, "elsewhere")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := WriteNew(link, []byte("x"), 0o644); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("WriteNew over a dangling symlink: %v, want an fs.ErrExist", err)
	}
	if _, err := os.Lstat(target); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("WriteNew followed the symlink to %s", target)
	}
	if got := entries(t, dir); !slices.Equal(got, []string{"kvh.key", "kvh.pub"}) {
		t.Errorf("directory holds %q, want only kvh.key and kvh.pub", got)
	}
}
