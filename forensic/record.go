package forensic

import (
	"bytes"
	"crypto/hmac"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"time"
)

// Record kinds. Only KindEvent is written by callers; the others are the
// trail's own structure.
const (
	KindSegment = "segment" // first record of every segment
	KindEvent   = "event"   // a caller's record
	KindTick    = "tick"    // idle heartbeat, so silence is itself evidence
	KindClose   = "close"   // last record of a cleanly closed segment
	KindPrune   = "prune"   // authorises removal of older segments
	// KindTamper opens a log that Open started after finding tampering it
	// was told to accept (Options.AcceptTampered): what it found, and where
	// the untouched evidence now is.
	KindTamper = "tamper_detected"
)

// Version is the record format version written in every line's "v" field.
const Version = 1

// MaxLine caps a record line; longer lines are rejected by writer and parsers.
const MaxLine = 1 << 20

// MACAlgHMACSHA256 is the only MAC algorithm; MACAlgNone declares no MAC.
const (
	MACAlgHMACSHA256 = "hmac-sha256"
	MACAlgNone       = "none"
)

// Record is one line of the trail. It is encoded with one json.Marshal; the
// field order is the wire order and mac, when present, is always last.
type Record struct {
	V    int             `json:"v"`
	Seq  uint64          `json:"seq"`
	TS   string          `json:"ts"`
	Kind string          `json:"kind"`
	Prev []byte          `json:"prev"`
	Body json.RawMessage `json:"body"`
	MAC  []byte          `json:"mac,omitempty"`
}

// SegmentBody is the body of the record that opens every segment.
type SegmentBody struct {
	Origin   string   `json:"origin"`
	Segment  uint64   `json:"segment"`
	PrevFile string   `json:"prev_file,omitempty"`
	Size     uint64   `json:"size"`     // records before this one (== its seq)
	Frontier [][]byte `json:"frontier"` // compact range [0,size)
	MACAlg   string   `json:"mac_alg"`
	Torn     *Torn    `json:"torn,omitempty"` // set when the previous segment ended uncleanly
}

// Torn declares how the previous segment ended when it was not closed: the
// length of its valid prefix and the exact bytes after it (by length and hash).
type Torn struct {
	File       string `json:"file"`
	ValidLen   int64  `json:"valid_len"`
	TornLen    int64  `json:"torn_len"`
	TornSHA256 []byte `json:"torn_sha256"`
}

// CloseBody is the body of the record that ends a cleanly closed segment.
type CloseBody struct {
	Segment uint64 `json:"segment"`
	Reason  string `json:"reason,omitempty"`
}

// PruneBody authorises the removal of every segment below BeforeSegment
// (records below BeforeSeq).
type PruneBody struct {
	BeforeSegment uint64   `json:"before_segment"`
	BeforeSeq     uint64   `json:"before_seq"`
	Reason        string   `json:"reason"`
	Files         []string `json:"files,omitempty"`
	// Rekeys carries the rekey records that the removed segments held, so
	// that an auditor who trusts an earlier key can still follow the key
	// chain: each proves itself against its old-key seal.
	Rekeys []RekeyProof `json:"rekeys,omitempty"`
}

// TamperBody is the body of a tamper_detected record: where the previous
// trail stopped verifying, what was found there, and the files moved,
// untouched, into Evidence (a directory beside the segments), each bound by
// its size and SHA-256 so that the evidence cannot change unnoticed either.
type TamperBody struct {
	File  string `json:"file"`
	Line  int    `json:"line,omitempty"` // 1-based; absent when not about one line
	Seq   uint64 `json:"seq"`            // the seq the first bad record has, or should have had
	Found string `json:"found"`
	// PrevOrigin is the moved trail's origin; PrevCheckpoint the largest size
	// its checkpoints attest (signatures not checked by the writer).
	PrevOrigin     string         `json:"prev_origin,omitempty"`
	PrevCheckpoint uint64         `json:"prev_checkpoint_size"`
	Evidence       string         `json:"evidence"`
	Files          []EvidenceFile `json:"files"`
}

// EvidenceFile is one file moved aside by a tamper_detected record.
type EvidenceFile struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 []byte `json:"sha256"`
}

// TickBody is the body of an idle heartbeat.
type TickBody struct {
	Reason string `json:"reason"`
}

var (
	linePrefix = []byte(`{"v":1,"seq":`)
	macKey     = []byte(`,"mac":"`)
)

const macB64Len = 44 // base64 of 32 bytes

// encodeLine marshals r (whose MAC must be nil) and, if mac is non-nil, appends
// the MAC computed over the line without it. The result has no newline.
func encodeLine(r *Record, mac hash.Hash) ([]byte, error) {
	line, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	return appendMAC(line, mac), nil
}

// appendRecord appends exactly the bytes json.Marshal(Record{...}) produces
// for a record without MAC, given a body already in json.Marshal's form
// (canonicalBody). It is the writer's hot path; TestAppendRecordIsMarshal
// pins it to json.Marshal.
func appendRecord(dst []byte, seq uint64, ts, kind string, prev, body []byte) []byte {
	dst = append(dst, linePrefix...)
	dst = strconv.AppendUint(dst, seq, 10)
	dst = append(dst, `,"ts":"`...)
	dst = append(dst, ts...)
	dst = append(dst, `","kind":"`...)
	dst = append(dst, kind...)
	dst = append(dst, `","prev":"`...)
	dst = base64.StdEncoding.AppendEncode(dst, prev)
	dst = append(dst, `","body":`...)
	dst = append(dst, body...)
	return append(dst, '}')
}

// appendMAC appends `,"mac":"…"` computed over line (which has none).
func appendMAC(line []byte, mac hash.Hash) []byte {
	if mac == nil {
		return line
	}
	mac.Reset()
	mac.Write(line)
	sum := mac.Sum(nil)
	out := make([]byte, 0, len(line)+len(macKey)+macB64Len+2)
	out = append(out, line[:len(line)-1]...)
	out = append(out, macKey...)
	out = base64.StdEncoding.AppendEncode(out, sum)
	out = append(out, '"', '}')
	return out
}

// parsed is a record line split into its fields without re-serialising.
type parsed struct {
	seq      uint64
	ts       []byte
	kind     []byte
	prev     [32]byte
	body     []byte
	mac      []byte // decoded, nil if absent (points into macSum)
	macStart int    // offset of `,"mac":"` when present
	macSum   [32]byte
	sum      [32]byte // checkMAC's scratch
}

var errLineShape = errors.New("not a kvh record line")

// parseLine strictly parses a record line in exactly the shape encodeLine
// writes. It never panics and allocates only for the MAC.
func parseLine(line []byte, p *parsed) error {
	if len(line) > MaxLine {
		return fmt.Errorf("record line of %d bytes exceeds %d", len(line), MaxLine)
	}
	if !bytes.HasPrefix(line, linePrefix) {
		if bytes.HasPrefix(line, []byte(`{"v":`)) {
			return errors.New("unsupported record version")
		}
		return errLineShape
	}
	rest := line[len(linePrefix):]
	i := 0
	for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
		i++
	}
	if i == 0 || i > 20 || (i > 1 && rest[0] == '0') {
		return errors.New("bad seq")
	}
	seq, err := strconv.ParseUint(string(rest[:i]), 10, 64)
	if err != nil {
		return errors.New("bad seq")
	}
	p.seq = seq
	rest = rest[i:]
	var ok bool
	if p.ts, rest, ok = quoted(rest, `,"ts":"`); !ok {
		return errors.New("bad ts field")
	}
	if p.kind, rest, ok = quoted(rest, `,"kind":"`); !ok || !isKindName(p.kind) {
		return errors.New("bad kind field")
	}
	var prev []byte
	if prev, rest, ok = quoted(rest, `,"prev":"`); !ok || len(prev) != macB64Len {
		return errors.New("bad prev field")
	}
	var dec [33]byte // DecodedLen(44): 44 unpadded characters decode to 33 bytes
	if n, err := base64.StdEncoding.Decode(dec[:], prev); err != nil || n != 32 {
		return errors.New("bad prev field")
	}
	copy(p.prev[:], dec[:32])
	const bodyKey = `,"body":`
	if !bytes.HasPrefix(rest, []byte(bodyKey)) {
		return errors.New("missing body")
	}
	rest = rest[len(bodyKey):]
	// rest is now BODY [,"mac":"…"] }. Bodies are objects, so a MAC'd line ends
	// in `"}` and a plain one in `}}`: the two cannot be confused.
	p.mac = nil
	p.macStart = -1
	n := len(rest)
	if n >= 2 && rest[n-1] == '}' && rest[n-2] == '"' {
		m := n - 2 - macB64Len - len(macKey)
		if m < 1 || !bytes.Equal(rest[m:m+len(macKey)], macKey) {
			return errors.New("bad mac field")
		}
		var dec [33]byte
		if k, err := base64.StdEncoding.Decode(dec[:], rest[m+len(macKey):n-2]); err != nil || k != 32 {
			return errors.New("bad mac field")
		}
		copy(p.macSum[:], dec[:32])
		p.mac = p.macSum[:]
		p.macStart = len(line) - n + m
		p.body = rest[:m]
	} else if n >= 2 && rest[n-1] == '}' {
		p.body = rest[:n-1]
	} else {
		return errors.New("record not terminated")
	}
	if len(p.body) < 2 || p.body[0] != '{' || !validJSON(p.body) {
		return errors.New("body is not a JSON object")
	}
	if !isWriterTS(p.ts) {
		if _, err := time.Parse(time.RFC3339Nano, string(p.ts)); err != nil {
			return errors.New("bad ts field")
		}
	}
	return nil
}

// isWriterTS is the fast path of the ts check for the form tsNow writes,
// "2006-01-02T15:04:05[.fraction]Z" with fields in range: it accepts only
// what time.Parse(time.RFC3339Nano) accepts (TestWriterTS pins it), and
// anything else goes to time.Parse.
func isWriterTS(b []byte) bool {
	if len(b) < 20 || len(b) > 30 || b[len(b)-1] != 'Z' || b[4] != '-' || b[7] != '-' || b[10] != 'T' || b[13] != ':' || b[16] != ':' {
		return false
	}
	num := func(i, n int) int {
		v := 0
		for _, c := range b[i : i+n] {
			if c < '0' || c > '9' {
				return -1
			}
			v = v*10 + int(c-'0')
		}
		return v
	}
	year, mon, day, hh, mm, ss := num(0, 4), num(5, 2), num(8, 2), num(11, 2), num(14, 2), num(17, 2)
	if year < 0 || mon < 1 || mon > 12 || day < 1 || day > 28 && day > daysIn(mon, year) || hh < 0 || hh > 23 || mm < 0 || mm > 59 || ss < 0 || ss > 59 {
		return false
	}
	if frac := b[19 : len(b)-1]; len(frac) > 0 {
		if len(frac) < 2 || frac[0] != '.' || num(20, len(frac)-1) < 0 {
			return false
		}
	}
	return true
}

func daysIn(mon, year int) int {
	switch mon {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

func isKindName(b []byte) bool {
	if len(b) == 0 || len(b) > 32 {
		return false
	}
	for _, c := range b {
		if (c < 'a' || c > 'z') && c != '_' {
			return false
		}
	}
	return true
}

// quoted expects key then a string without escapes, returning its contents.
func quoted(b []byte, key string) (val, rest []byte, ok bool) {
	if !bytes.HasPrefix(b, []byte(key)) {
		return nil, nil, false
	}
	b = b[len(key):]
	j := bytes.IndexByte(b, '"')
	if j < 0 || bytes.IndexByte(b[:j], '\\') >= 0 {
		return nil, nil, false
	}
	return b[:j], b[j+1:], true
}

// checkMAC reports whether the line's MAC is the HMAC of the line without it.
func checkMAC(line []byte, p *parsed, mac hash.Hash) bool {
	mac.Reset()
	mac.Write(line[:p.macStart])
	mac.Write(closeBrace)
	// Into p, not a local: through the hash.Hash interface a local escapes,
	// and the profile had two allocations per record here.
	return hmac.Equal(mac.Sum(p.sum[:0]), p.mac)
}

var closeBrace = []byte{'}'}

func tsNow() string { return time.Now().UTC().Format(time.RFC3339Nano) }
