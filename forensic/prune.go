package forensic

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/kvhygiene/kvh/internal/atomicfile"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/sys/unix"
)

// PruneOptions say what to remove. Negative RetentionDays or MaxRotated mean
// "no limit of that kind".
type PruneOptions struct {
	Signer   note.Signer
	Verifier note.Verifier
	// Keyring holds further verification keys trusted (a trail whose keys
	// rotated); Verifier may then be nil.
	Keyring []note.Verifier
	// MACKey and MACKeys are the trail's MAC keys, every epoch's after a
	// rotation, in any order: each epoch is checked with the key its rekey
	// record names, and the prune record is MAC'd with the current one.
	MACKey        []byte
	MACKeys       [][]byte
	RetentionDays int
	MaxRotated    int
	ArchiveDir    string // move instead of delete
	Reason        string
	Now           time.Time
}

// PruneReport is Prune's verdict.
type PruneReport struct {
	OK       bool     `json:"ok"`
	Refused  string   `json:"refused,omitempty"`
	Removed  []string `json:"removed"`
	Archived string   `json:"archived_to,omitempty"`
	PruneSeq *uint64  `json:"prune_seq,omitempty"`
	Before   *Report  `json:"before"`
	After    *Report  `json:"after,omitempty"`
}

// Prune removes (or archives) the oldest rotated segments that fall outside
// the retention policy. It refuses a trail that does not verify, authorises
// the removal with a signed prune record first, never touches the active
// segment, and verifies again afterwards.
func Prune(dir string, opts PruneOptions) (*PruneReport, error) {
	if opts.Signer == nil || (opts.Verifier == nil && len(opts.Keyring) == 0) {
		return nil, errors.New("pruning needs the signing key and the verification key")
	}
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	vopts := VerifyOptions{Verifier: opts.Verifier, Keyring: opts.Keyring, MACKey: opts.MACKey, MACKeys: opts.MACKeys}
	before, err := Verify(dir, vopts)
	if err != nil {
		return nil, err
	}
	rep := &PruneReport{Before: before, Removed: []string{}}
	if !before.OK {
		rep.Refused = "the trail does not verify; nothing was removed: " + before.Problem.String()
		return rep, nil
	}
	d, err := openTrailDir(dir, false)
	if err != nil {
		return nil, err
	}
	defer d.close()
	segs, _, err := listSegments(d)
	if err != nil {
		return nil, err
	}
	rotated := segs[:len(segs)-1] // the newest segment is never removed
	n := 0
	if opts.RetentionDays >= 0 {
		cutoff := opts.Now.Add(-time.Duration(opts.RetentionDays) * 24 * time.Hour)
		for n < len(rotated) {
			end, err := lastTimestamp(rotated[n].path)
			if err != nil || !end.Before(cutoff) {
				break
			}
			n++
		}
	}
	if opts.MaxRotated >= 0 && len(rotated) > opts.MaxRotated {
		n = max(n, len(rotated)-opts.MaxRotated)
	}
	if n == 0 {
		rep.OK, rep.After = true, before
		return rep, nil
	}
	keep := segs[n]
	for _, s := range segs[:n] {
		rep.Removed = append(rep.Removed, s.name)
	}
	reason := opts.Reason
	if reason == "" {
		reason = fmt.Sprintf("retention: days=%d max_rotated=%d", opts.RetentionDays, opts.MaxRotated)
	}
	var mac []byte // the current epoch's, of the keys given
	if before.macKeyID != "" {
		for _, k := range append([][]byte{opts.MACKey}, opts.MACKeys...) {
			if k != nil && KeyID(k) == before.macKeyID {
				mac = k
				break
			}
		}
	}
	if mac == nil && (opts.MACKey != nil || len(opts.MACKeys) > 0) {
		rep.Refused = "none of the given MAC keys is the current epoch's (MACs " + before.MAC + "): the prune record is MAC'd with it; nothing was removed"
		rep.Removed = []string{}
		return rep, nil
	}
	l, err := Open(dir, Options{Signer: opts.Signer, MACKey: mac, TickInterval: -1})
	if err != nil {
		return nil, fmt.Errorf("opening the trail to record the prune: %w", err)
	}
	var rekeys []RekeyProof
	for _, r := range before.rekeyProofs {
		if r.Seq < keep.head.Size {
			rekeys = append(rekeys, r)
		}
	}
	seq, err := l.appendPrune(PruneBody{BeforeSegment: keep.index, BeforeSeq: keep.head.Size, Reason: reason, Files: rep.Removed, Rekeys: rekeys})
	if cerr := l.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("writing the prune record: %w", err)
	}
	rep.PruneSeq = &seq
	if opts.ArchiveDir != "" {
		if err := os.MkdirAll(opts.ArchiveDir, 0o700); err != nil {
			return nil, err
		}
		rep.Archived = opts.ArchiveDir
	}
	for _, s := range segs[:n] {
		clearAppendOnly(d, s.name)
		if opts.ArchiveDir != "" {
			err = archive(s.path, filepath.Join(opts.ArchiveDir, s.name))
		} else {
			err = os.Remove(s.path)
		}
		if err != nil {
			return nil, fmt.Errorf("removing %s: %w", s.name, err)
		}
	}
	after, err := Verify(dir, vopts)
	if err != nil {
		return nil, err
	}
	rep.After, rep.OK = after, after.OK
	return rep, nil
}

// lastTimestamp is the ts of a segment's last complete record.
func lastTimestamp(path string) (time.Time, error) {
	lines, err := os.ReadFile(path)
	if err != nil {
		return time.Time{}, err
	}
	end := len(lines)
	for end > 0 && lines[end-1] == '\n' {
		end--
	}
	start := end
	for start > 0 && lines[start-1] != '\n' {
		start--
	}
	var p parsed
	if err := parseLine(lines[start:end], &p); err != nil {
		return time.Time{}, err
	}
	return time.Parse(time.RFC3339Nano, string(p.ts))
}

// clearAppendOnly clears FS_APPEND_FL on a segment, never through a link.
func clearAppendOnly(d *trailDir, name string) {
	f, err := d.open(name, os.O_RDONLY, 0, false)
	if err != nil {
		return
	}
	defer f.Close()
	if flags, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS); err == nil && flags&fsAppendFL != 0 {
		unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(flags&^fsAppendFL))
	}
}

// archive moves src to dst without ever replacing an existing archive.
func archive(src, dst string) error {
	err := unix.Renameat2(unix.AT_FDCWD, src, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE)
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("archive %s already exists", dst)
	}
	if !errors.Is(err, unix.EXDEV) && !errors.Is(err, unix.EINVAL) {
		return err
	}
	// Another file system: copy, durably and never over an archive, then
	// remove. A segment is at most about MaxSegmentBytes, read whole.
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteNew(dst, data, 0o600); err != nil {
		return err
	}
	return os.Remove(src)
}
