package forensic

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// errNotRegular is why a name in a trail directory is refused: a symbolic
// link, a FIFO, a device or a directory where the trail keeps plain files.
var errNotRegular = errors.New("not a regular file")

// trailDir is a trail directory opened once. Every file in it is opened
// relative to that descriptor with O_NOFOLLOW and checked to be a regular
// file, so a symbolic link planted in the directory (LOCK or
// checkpoints.jsonl pointing at /etc/passwd) is never truncated, appended
// to or made append-only, and renaming the directory under a running writer
// does not redirect it.
type trailDir struct {
	path string
	fd   int
}

// openTrailDir opens dir. The writer (owned true) also requires it to be
// owned by this process's effective uid and not writable by group or others:
// whoever can write the directory can swap the files the root agent opens.
// Verify reads copies wherever an auditor keeps them and skips that check.
func openTrailDir(dir string, owned bool) (*trailDir, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "opening trail directory", Path: dir, Err: err}
	}
	d := &trailDir{path: dir, fd: fd}
	if owned {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			d.close()
			return nil, &os.PathError{Op: "stat", Path: dir, Err: err}
		}
		euid := os.Geteuid()
		switch {
		case int(st.Uid) != euid:
			d.close()
			return nil, fmt.Errorf("trail directory %s is owned by uid %d, not by this process (euid %d): another user could replace the trail's files; chown it or use another directory", dir, st.Uid, euid)
		case st.Mode&0o022 != 0:
			d.close()
			return nil, fmt.Errorf("trail directory %s is mode %04o, writable by group or others, who could replace the trail's files: chmod go-w it", dir, st.Mode&0o7777)
		}
	}
	return d, nil
}

func (d *trailDir) close() {
	if d.fd >= 0 {
		unix.Close(d.fd)
		d.fd = -1
	}
}

// join is the path of name, for messages and callers that need a path.
func (d *trailDir) join(name string) string { return filepath.Join(d.path, name) }

// open opens name in the directory without following a symbolic link and
// refuses anything but a regular file (O_NONBLOCK keeps a FIFO from
// blocking the open). single also refuses a file with other hard links:
// the writer truncates LOCK and appends to checkpoints.jsonl, and must not
// do that to a file that is also somewhere else.
func (d *trailDir) open(name string, flag int, perm uint32, single bool) (*os.File, error) {
	fd, err := unix.Openat(d.fd, name, flag|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, perm)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, fmt.Errorf("%s is a symbolic link, %w: the trail never follows one (move it aside)", d.join(name), errNotRegular)
		}
		return nil, &os.PathError{Op: "open", Path: d.join(name), Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "stat", Path: d.join(name), Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, fmt.Errorf("%s is a %s, %w (move it aside)", d.join(name), fileType(st.Mode), errNotRegular)
	}
	if single && st.Nlink > 1 {
		unix.Close(fd)
		return nil, fmt.Errorf("%s has %d hard links; the writer will not write to a file that also lives elsewhere (move it aside)", d.join(name), st.Nlink)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), d.join(name)), nil
}

// readFile reads a whole regular file of the directory.
func (d *trailDir) readFile(name string) ([]byte, error) {
	f, err := d.open(name, unix.O_RDONLY, 0, false)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// entries lists the directory (through its own descriptor, so the listing
// is of the directory the writer holds).
func (d *trailDir) entries() ([]os.DirEntry, error) {
	fd, err := unix.Openat(d.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: d.path, Err: err}
	}
	f := os.NewFile(uintptr(fd), d.path)
	defer f.Close()
	return f.ReadDir(-1)
}

// isTrailName reports whether the writer or Verify reads or writes name.
func isTrailName(name string) bool {
	return name == LockFile || name == CheckpointFile || isSegmentName(name)
}

// irregular describes every entry that has a trail file's name but is not a
// regular file.
func (d *trailDir) irregular() ([]string, error) {
	ents, err := d.entries()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if isTrailName(e.Name()) && !e.Type().IsRegular() {
			out = append(out, fmt.Sprintf("%s is a %s", e.Name(), dirEntryType(e.Type())))
		}
	}
	return out, nil
}

func (d *trailDir) sync() error { return unix.Fsync(d.fd) }

func fileType(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFLNK:
		return "symbolic link"
	case unix.S_IFIFO:
		return "named pipe (FIFO)"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	case unix.S_IFDIR:
		return "directory"
	}
	return "non-regular file"
}

func dirEntryType(m os.FileMode) string {
	switch {
	case m&os.ModeSymlink != 0:
		return "symbolic link"
	case m&os.ModeNamedPipe != 0:
		return "named pipe (FIFO)"
	case m&os.ModeSocket != 0:
		return "socket"
	case m&os.ModeDevice != 0:
		return "device"
	case m.IsDir():
		return "directory"
	}
	return "non-regular file"
}

// describeIrregular joins irregular's findings into one refusal.
func describeIrregular(dir string, found []string) error {
	return fmt.Errorf("trail directory %s: %s (%w): the writer opens only regular files and never follows a link; move them aside",
		dir, strings.Join(found, ", "), errNotRegular)
}

// mkdirEvidence creates a new directory evidence-<UTC time> (with a suffix
// if that exists) and returns its name and a descriptor for it.
func (d *trailDir) mkdirEvidence(now time.Time) (string, int, error) {
	base := "evidence-" + now.UTC().Format("20060102T150405Z")
	for i := 0; i < 100; i++ {
		name := base
		if i > 0 {
			name = fmt.Sprintf("%s-%d", base, i)
		}
		err := unix.Mkdirat(d.fd, name, 0o700)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			return "", -1, &os.PathError{Op: "mkdir", Path: d.join(name), Err: err}
		}
		fd, err := unix.Openat(d.fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return "", -1, &os.PathError{Op: "open", Path: d.join(name), Err: err}
		}
		return name, fd, nil
	}
	return "", -1, fmt.Errorf("%s: too many evidence directories named %s*", d.path, base)
}

// moveTo hashes a regular file and renames it, keeping its name, into the
// directory dst. An append-only file cannot be renamed: its flag is cleared
// for the rename and set again after it (the bytes are never opened for
// writing), which needs CAP_LINUX_IMMUTABLE like setting it did.
func (d *trailDir) moveTo(name string, dst int) (EvidenceFile, error) {
	f, err := d.open(name, unix.O_RDONLY, 0, false)
	if err != nil {
		return EvidenceFile{}, err
	}
	defer f.Close()
	h := sha256.New()
	size, err := io.Copy(h, f)
	if err != nil {
		return EvidenceFile{}, err
	}
	err = unix.Renameat2(d.fd, name, dst, name, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EPERM) {
		flags, ferr := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
		if ferr == nil && flags&fsAppendFL != 0 {
			if ferr = unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(flags&^fsAppendFL)); ferr != nil {
				return EvidenceFile{}, fmt.Errorf("it is append-only and this process may not clear the flag (%v): move it aside by hand", ferr)
			}
			err = unix.Renameat2(d.fd, name, dst, name, unix.RENAME_NOREPLACE)
			unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(flags))
		}
	}
	if err != nil {
		return EvidenceFile{}, err
	}
	return EvidenceFile{Name: name, Size: size, SHA256: h.Sum(nil)}, nil
}
