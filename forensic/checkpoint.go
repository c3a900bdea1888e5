package forensic

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/sys/unix"
)

// CheckpointFile is the file beside the segments that holds signed checkpoints.
const CheckpointFile = "checkpoints.jsonl"

type checkpointLine struct {
	Size uint64 `json:"size"`
	Note string `json:"note"`
}

func (l *Log) checkpoint(size uint64, root []byte) error {
	cp := log.Checkpoint{Origin: l.origin, Size: size, Hash: root}
	signers := l.signers // both keys at a rekey boundary
	if signers == nil {
		signers = []note.Signer{l.opts.Signer}
	}
	signed, err := note.Sign(&note.Note{Text: string(cp.Marshal())}, signers...)
	if err != nil {
		return fmt.Errorf("signing checkpoint: %w", err)
	}
	line, _ := json.Marshal(checkpointLine{Size: size, Note: string(signed)})
	if _, err := l.ckpt.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("writing checkpoint: %w", err)
	}
	// Checkpoints can be re-derived from the records, so they are synced lazily.
	l.ckptDirty = true
	l.statsMu.Lock()
	l.stats.Records, l.stats.CheckpointSize = size, size
	l.stats.Commits++
	l.statsMu.Unlock()
	return nil
}

func (l *Log) syncCheckpoints() error {
	l.ckptSync = time.Now()
	if !l.ckptDirty {
		return nil
	}
	l.ckptDirty = false
	return unix.Fdatasync(int(l.ckpt.Fd()))
}

// parseCheckpointLines parses checkpoints.jsonl without verifying
// signatures; unparseable lines are skipped (Verify reports them).
func parseCheckpointLines(data []byte) []checkpointLine {
	var out []checkpointLine
	for _, line := range bytes.Split(data, []byte("\n")) {
		var c checkpointLine
		if len(line) > 0 && strictUnmarshal(line, &c) == nil {
			out = append(out, c)
		}
	}
	return out
}

// latestCheckpoint returns the unverified checkpoint with the largest size
// (the last such line on a tie) and the note that carries it.
func latestCheckpoint(lines []checkpointLine) (*log.Checkpoint, string) {
	var best *log.Checkpoint
	var note string
	for _, cl := range lines {
		text, ok := noteText(cl.Note)
		if !ok {
			continue
		}
		cp := &log.Checkpoint{}
		if _, err := cp.Unmarshal([]byte(text)); err != nil || cp.Size != cl.Size {
			continue
		}
		if best == nil || cp.Size >= best.Size {
			best, note = cp, cl.Note
		}
	}
	return best, note
}

// keyID names a signing key the way its note verifier key begins:
// <name>+<key hash as 8 hex digits>.
func keyID(name string, hash uint32) string { return fmt.Sprintf("%s+%08x", name, hash) }

// noteSigners lists the keys (keyID) whose signatures a signed note carries,
// without checking the signatures.
func noteSigners(n string) []string {
	i := strings.LastIndex(n, "\n\n")
	if i < 0 {
		return nil
	}
	var out []string
	for _, line := range strings.Split(n[i+2:], "\n") {
		rest, ok := strings.CutPrefix(line, "\u2014 ")
		if !ok {
			continue
		}
		name, sig, ok := strings.Cut(rest, " ")
		b, err := base64.StdEncoding.DecodeString(sig)
		if !ok || err != nil || len(b) < 4 {
			continue
		}
		out = append(out, keyID(name, binary.BigEndian.Uint32(b)))
	}
	return out
}

// noteText returns the text part of a signed note.
func noteText(n string) (string, bool) {
	i := strings.LastIndex(n, "\n\n")
	if i < 0 {
		return "", false
	}
	return n[:i+1], true
}
