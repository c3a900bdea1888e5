package forensic

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The root agent must never write outside its trail directory, nor let
// another user swap the files it opens.
func TestOpenRefusesUnsafeDirectory(t *testing.T) {
	k := newKeys(t, "kvh-test")
	// victim is a file outside the trail that an attacker points the trail at.
	victim := func(t *testing.T) string {
		p := filepath.Join(t.TempDir(), "precious")
		if err := os.WriteFile(p, []byte("precious\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { clearAppendOnlyPath(p) })
		return p
	}
	cases := []struct {
		name   string
		root   bool // needs root
		attack func(t *testing.T, dir string) (victim string)
		want   []string
	}{
		{"LOCK symlinked elsewhere", false, func(t *testing.T, dir string) string {
			v := victim(t)
			must(t, os.Symlink(v, filepath.Join(dir, LockFile)))
			return v
		}, []string{"LOCK is a symbolic link"}},
		{"LOCK hard-linked to a file elsewhere", false, func(t *testing.T, dir string) string {
			v := victim(t)
			must(t, os.Link(v, filepath.Join(dir, LockFile)))
			return v
		}, []string{"LOCK has 2 hard links"}},
		{"checkpoints.jsonl symlinked elsewhere", false, func(t *testing.T, dir string) string {
			v := victim(t)
			must(t, os.Rename(filepath.Join(dir, CheckpointFile), v))
			must(t, os.Symlink(v, filepath.Join(dir, CheckpointFile)))
			return v
		}, []string{"checkpoints.jsonl is a symbolic link"}},
		{"newest segment symlinked to a copy elsewhere", false, func(t *testing.T, dir string) string {
			last := lastSeg(t, dir)
			v := victim(t)
			must(t, os.Rename(last, v))
			must(t, os.Symlink(v, last))
			return v
		}, []string{"seg-", "is a symbolic link"}},
		{"a FIFO as a segment", false, func(t *testing.T, dir string) string {
			must(t, syscall.Mkfifo(filepath.Join(dir, "seg-000099.jsonl"), 0o600))
			return ""
		}, []string{"seg-000099.jsonl is a named pipe (FIFO)"}},
		{"directory mode 0777", false, func(t *testing.T, dir string) string {
			must(t, os.Chmod(dir, 0o777))
			return ""
		}, []string{"is mode 0777", "writable by group or others"}},
		{"directory owned by another uid", true, func(t *testing.T, dir string) string {
			must(t, os.Chown(dir, 65534, 65534))
			return ""
		}, []string{"is owned by uid 65534"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root && os.Geteuid() != 0 {
				t.Skip("chown to another uid needs root")
			}
			dir := buildTrail(t, k, nil, 30, 0)
			t.Cleanup(func() { // should Open wrongly succeed, its files are append-only
				for _, p := range mustGlob(t, dir, "*") {
					clearAppendOnlyPath(p)
				}
			})
			os.Remove(filepath.Join(dir, LockFile))
			v := tc.attack(t, dir)
			var was []byte
			if v != "" {
				was, _ = os.ReadFile(v)
			}
			done := make(chan error, 1)
			go func() {
				l, err := Open(dir, Options{Signer: k.signer, AppendOnly: true, AcceptTampered: true})
				if err == nil {
					l.Close()
				}
				done <- err
			}()
			var err error
			select {
			case err = <-done:
			case <-time.After(20 * time.Second):
				t.Fatal("Open hangs")
			}
			if err == nil {
				t.Fatal("Open accepted the directory")
			}
			t.Logf("refused: %v", err)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if !strings.Contains(err.Error(), dir) {
				t.Errorf("error %q does not name the directory %s", err, dir)
			}
			if v != "" {
				if now, _ := os.ReadFile(v); string(now) != string(was) {
					t.Errorf("the file outside the trail was written: %d bytes before, %d after", len(was), len(now))
				}
				if appendOnly(v) {
					t.Errorf("the file outside the trail was made append-only")
				}
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// appendOnly reports whether path has FS_APPEND_FL.
func appendOnly(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	flags, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	return err == nil && flags&fsAppendFL != 0
}

func clearAppendOnlyPath(path string) {
	clearAppendOnlyIn(filepath.Dir(path), filepath.Base(path))
}

// listDir is listSegments on a path.
func listDir(dir string) ([]segFile, []string, error) {
	d, err := openTrailDir(dir, false)
	if err != nil {
		return nil, nil, err
	}
	defer d.close()
	return listSegments(d)
}

func clearAppendOnlyIn(dir, name string) {
	if d, err := openTrailDir(dir, false); err == nil {
		clearAppendOnly(d, name)
		d.close()
	}
}
