package forensic

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

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

// parseCheckpointLine decodes one line of checkpoints.jsonl strictly
// (strictUnmarshal). The line the writer writes, {"size":N,"note":"…"} with
// no escape but \n, is decoded by hand: a verify decodes one per group
// commit, and encoding/json was 3% of it. FuzzCheckpointLineFast holds the
// hand decoder to strictUnmarshal; anything else goes to strictUnmarshal.
func parseCheckpointLine(b []byte, cl *checkpointLine) error {
	if fastCheckpointLine(b, cl) {
		return nil
	}
	*cl = checkpointLine{}
	return strictUnmarshal(b, cl)
}

func fastCheckpointLine(b []byte, cl *checkpointLine) bool {
	const pre, mid = `{"size":`, `,"note":"`
	if !bytes.HasPrefix(b, []byte(pre)) {
		return false
	}
	b = b[len(pre):]
	n := 0
	for n < len(b) && n <= 20 && b[n] >= '0' && b[n] <= '9' {
		n++
	}
	if n == 0 || n > 20 || (n > 1 && b[0] == '0') {
		return false
	}
	size, err := strconv.ParseUint(string(b[:n]), 10, 64)
	if err != nil || !bytes.HasPrefix(b[n:], []byte(mid)) {
		return false
	}
	b = b[n+len(mid):]
	// The note: bytes a JSON string holds as they are, and \n.
	end, esc := 0, 0
	for ; end < len(b) && b[end] != '"'; end++ {
		switch c := b[end]; {
		case c == '\\':
			if end+1 >= len(b) || b[end+1] != 'n' {
				return false
			}
			end++
			esc++
		case c < 0x20:
			return false
		}
	}
	if end >= len(b) || string(b[end:]) != `"}` || !utf8.Valid(b[:end]) {
		return false // invalid UTF-8: encoding/json replaces it, so it decides
	}
	note := make([]byte, 0, end-esc)
	for i := 0; i < end; i++ {
		if b[i] == '\\' {
			note = append(note, '\n')
			i++
			continue
		}
		note = append(note, b[i])
	}
	cl.Size, cl.Note = size, string(note)
	return true
}

// parseCheckpointLines parses checkpoints.jsonl without verifying
// signatures; unparseable lines are skipped (Verify reports them).
func parseCheckpointLines(data []byte) []checkpointLine {
	var out []checkpointLine
	for _, line := range bytes.Split(data, []byte("\n")) {
		var c checkpointLine
		if len(line) > 0 && parseCheckpointLine(line, &c) == nil {
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
