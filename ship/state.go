package ship

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// StateDir is the shipper's directory inside the trail directory.
const StateDir = "ship"

const stateFile = "state.json"

// stateVersion changes when state.json's meaning changes.
const stateVersion = 1

// fileState is how far one trail file has been shipped.
type fileState struct {
	Gen  uint32 `json:"gen"`
	Ino  uint64 `json:"ino"`
	Off  int64  `json:"offset"`
	Tail string `json:"tail_sha256,omitempty"` // SHA-256 of up to tailLen bytes before Off
	// Attests, for checkpoints.jsonl: records the newest shipped checkpoint
	// of this generation attests.
	Attests uint64 `json:"attests,omitempty"`
}

type state struct {
	Version int                   `json:"version"`
	Dest    string                `json:"dest"`
	Files   map[string]*fileState `json:"files"`
	// BacklogSince is when the oldest bytes not yet shipped were first
	// seen unshipped (zero: nothing was left after the last round).
	BacklogSince time.Time `json:"backlog_since,omitzero"`
}

func stateDir(trail string) string { return filepath.Join(trail, StateDir) }

// loadState reads the state for dest; a state for another destination, or
// none, is a fresh start.
func loadState(trail, dest string) (*state, bool, error) {
	fresh := &state{Version: stateVersion, Dest: dest, Files: map[string]*fileState{}}
	b, err := readRegular(filepath.Join(stateDir(trail), stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return fresh, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, false, fmt.Errorf("shipping state %s: %w (move it aside to ship the whole trail again)", filepath.Join(stateDir(trail), stateFile), err)
	}
	if st.Version != stateVersion {
		return nil, false, fmt.Errorf("shipping state %s has version %d, not %d", filepath.Join(stateDir(trail), stateFile), st.Version, stateVersion)
	}
	if st.Dest != dest {
		return fresh, true, nil
	}
	if st.Files == nil {
		st.Files = map[string]*fileState{}
	}
	return &st, false, nil
}

// readRegular reads a regular file without following a symbolic link.
func readRegular(path string) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if st.Size() > 64<<20 {
		return nil, fmt.Errorf("%s is %d bytes, more than any shipping state", path, st.Size())
	}
	b := make([]byte, st.Size())
	_, err = f.ReadAt(b, 0)
	return b, err
}

// save writes the state durably: a new file, fsynced, renamed over the old,
// and the directory fsynced. Mode 0600, directory 0700.
func (st *state) save(trail string) error {
	dir := stateDir(trail)
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	if fi, err := os.Lstat(dir); err != nil {
		return err
	} else if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, stateFile+".tmp")
	os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	if _, err = f.Write(b); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, stateFile)); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
