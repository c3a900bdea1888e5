// Package atomicfile writes whole files so that a reader, or the system after
// a crash, sees either the old file or the new one, never a part of one: the
// data goes to a temp file in the same directory, which is synced and then
// renamed (or linked) into place, and the directory is synced so the new name
// survives a crash too. Files are written whole; nothing here keeps state.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// Write replaces path with a file holding data and mode perm (exactly: the
// umask does not apply). An existing file at path is replaced, never written
// in place; a symlink at path is replaced, not followed. The parent directory
// must exist. No temp file is left behind, whether or not Write succeeds.
func Write(path string, data []byte, perm os.FileMode) error {
	return write(path, data, perm, true)
}

// WriteNew is Write for a file that must not exist yet: when path exists it
// fails, leaving that file untouched, with an error that satisfies
// errors.Is(err, fs.ErrExist). It links the temp file into place, so the
// file system must support hard links.
func WriteNew(path string, data []byte, perm os.FileMode) error {
	return write(path, data, perm, false)
}

func write(path string, data []byte, perm os.FileMode, replace bool) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	tmp := f.Name()
	if err := fill(f, data, perm); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if replace {
		err = os.Rename(tmp, path)
	} else {
		err = os.Link(tmp, path)
	}
	if err != nil || !replace {
		// After a link the temp name is a second name for path: drop it.
		if rerr := os.Remove(tmp); err == nil && rerr != nil {
			err = rerr
		}
	}
	if err != nil {
		return fmt.Errorf("placing %s: %w", path, err)
	}
	return syncDir(dir)
}

// fill writes data to f with mode perm and syncs it.
func fill(f *os.File, data []byte, perm os.FileMode) error {
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil {
		return err
	}
	return f.Sync()
}

// syncDir makes a rename or link in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}
