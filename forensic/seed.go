package forensic

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"

	"github.com/kvhygiene/kvh/internal/pyjson"
	"path/filepath"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"
)

// SeedFile is the verdict on one file of a seed-format (Python) log.
type SeedFile struct {
	File       string `json:"file"`
	Lines      int    `json:"lines"`
	OK         bool   `json:"ok"`
	BadLine    *int   `json:"first_bad_line,omitempty"` // zero-based, as the seed counts
	Reason     string `json:"reason,omitempty"`
	MissingMAC int    `json:"lines_without_hmac,omitempty"`
	lastHash   string
	first      *pyjson.Value
	seedOK     bool
	seedCrash  bool
}

// SeedReport is VerifySeed's verdict, with what the seed's own verifier says.
type SeedReport struct {
	OK          bool       `json:"ok"`
	Files       []SeedFile `json:"files"`
	Problem     *Problem   `json:"problem,omitempty"`
	SeedVerdict string     `json:"seed_verifier_verdict"` // ok | fail | crash
	SeedMisses  []string   `json:"seed_verifier_misses,omitempty"`
	Warnings    []string   `json:"warnings,omitempty"`
	Limits      []string   `json:"limits"`
}

var seedLimits = []string{
	"the seed format has no sequence numbers or signed heads: truncating the active file's tail cannot be detected",
	"without a key the SHA-256 chain can be recomputed by anyone: it detects accidents, not tampering",
	"deleting every rotated file leaves a log that still verifies",
}

// VerifySeed verifies a log written by the Python system: path is its active
// file (e.g. kv_cache.log), or the directory holding kv_cache.log; rotated
// siblings <stem>-*.log are found beside it.
// With key, every line must carry a valid HMAC. Rotations are followed by
// their linkage records, not by file name.
func VerifySeed(path string, key []byte) (*SeedReport, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.IsDir() { // the seed's LOG_DIR: its LOG_FILE defaults to kv_cache.log
		path = filepath.Join(path, "kv_cache.log")
		if _, err := os.Stat(path); err != nil {
			return nil, err
		}
	}
	dir, base := filepath.Dir(path), filepath.Base(path)
	stem := strings.TrimSuffix(base, filepath.Ext(base))
	rotated, _ := filepath.Glob(filepath.Join(dir, globEscape(stem)+"-*.log"))
	sort.Strings(rotated)
	files := map[string]*SeedFile{}
	rep := &SeedReport{Limits: seedLimits}
	var seedOrder []*SeedFile
	for _, p := range append(rotated, path) {
		sf, err := seedChain(p, key)
		if err != nil {
			return nil, err
		}
		files[sf.File] = sf
		seedOrder = append(seedOrder, sf)
	}
	rep.SeedVerdict = seedVerdict(seedOrder)

	// Our walk: from the active file back through rotate records.
	var chainFiles []*SeedFile
	seen := map[string]bool{}
	cur := files[base]
	for cur != nil && rep.Problem == nil {
		chainFiles = append(chainFiles, cur)
		seen[cur.File] = true
		if !cur.OK {
			rep.Problem = &Problem{Segment: cur.File, Line: *cur.BadLine + 1, Reason: cur.Reason}
			break
		}
		if cur.first == nil {
			break
		}
		if ev, _ := cur.first.Str("event_type"); ev != "rotate" {
			if ph, _ := cur.first.Str("prev_hash"); ph != "GENESIS" {
				rep.Problem = &Problem{Segment: cur.File, Line: 1, Reason: "first record does not start a chain (head truncated?)"}
			}
			break
		}
		pf, _ := cur.first.Str("prev_file")
		plh, _ := cur.first.Str("prev_file_last_hash")
		prev := files[pf]
		switch {
		case pf == "" || strings.ContainsAny(pf, "/\\"):
			rep.Problem = &Problem{Segment: cur.File, Line: 1, Reason: "rotate record names no previous file"}
		case seen[pf]:
			rep.Problem = &Problem{Segment: cur.File, Line: 1, Reason: fmt.Sprintf("rotation loop through %s", pf)}
		case prev == nil:
			rep.Problem = &Problem{Segment: cur.File, Line: 1, Reason: fmt.Sprintf("rotated file %s is missing (deleted, or overwritten by a same-second rotation)", pf)}
		case prev.lastHash != plh:
			rep.Problem = &Problem{Segment: cur.File, Line: 1, Reason: fmt.Sprintf("rotation linkage mismatch: %s does not end with the hash this file names (truncated or replaced)", pf)}
		}
		cur = prev
	}
	for i := len(chainFiles) - 1; i >= 0; i-- {
		rep.Files = append(rep.Files, *chainFiles[i])
	}
	for _, sf := range seedOrder {
		if !seen[sf.File] {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s is not part of the rotation chain (ignored)", sf.File))
		}
	}
	rep.OK = rep.Problem == nil
	for _, sf := range seedOrder {
		if sf.MissingMAC > 0 {
			rep.SeedMisses = append(rep.SeedMisses, fmt.Sprintf("%s: %d line(s) carry no HMAC; the seed skips them (stripped MACs pass)", sf.File, sf.MissingMAC))
		}
		if sf.seedCrash {
			rep.SeedMisses = append(rep.SeedMisses, fmt.Sprintf("%s line %d: the seed's verifier crashes here instead of reporting", sf.File, *sf.BadLine+1))
		}
	}
	if !rep.OK && rep.SeedVerdict == "ok" {
		rep.SeedMisses = append(rep.SeedMisses, "the seed's verifier reports ok: "+rep.Problem.String())
	}
	return rep, nil
}

func globEscape(s string) string {
	r := strings.NewReplacer(`*`, `\*`, `?`, `\?`, `[`, `\[`, `\`, `\\`)
	return r.Replace(s)
}

// seedChain verifies one file's chain as we do, and notes what the seed's
// verify_chain would conclude.
func seedChain(path string, key []byte) (*SeedFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sf := &SeedFile{File: filepath.Base(path), OK: true, seedOK: true}
	var prev hexStr // the chain's last hash
	prev.set([]byte("GENESIS"))
	var mac = newMAC(key)
	bad := func(i int, reason string) {
		if sf.OK {
			sf.OK, sf.BadLine, sf.Reason = false, &i, reason
		}
	}
	newWorker := func() *seedWorker { return &seedWorker{mac: newMAC(key)} }
	lp := newLinePipe(f, MaxLine, nil, newWorker, prepSeedLine)
	defer lp.stop()
	var tailPre seedPre
	var buf []byte
	verified := false // a line's hash checked: prev is the file's last hash
	defer func() {
		if verified {
			sf.lastHash = string(prev.bytes())
		}
	}()
	w := newWorker()
	// judge walks line i (zero-based, as the seed counts) and reports
	// whether the walk ends there.
	judge := func(i int, line []byte, pre *seedPre) bool {
		if pre.blank {
			return false
		}
		if pre.perr != nil {
			bad(i, "not a seed record: "+pre.perr.Error())
			if sf.seedOK {
				sf.seedCrash, sf.seedOK = true, false
			}
			return true
		}
		if sf.first == nil {
			sf.first, _ = pyjson.Parse(line)
		}
		calc, macOK := pre.calc, pre.macOK
		if !pre.spec || !bytes.Equal(prev.bytes(), pre.prevField.bytes()) {
			// The line's prev_hash is not the chain's: hash what the seed
			// hashes, the chain's prev and the line's canonical form.
			var c pyjson.Canonicalizer
			buf = append(buf[:0], prev.bytes()...)
			buf, _ = c.Object(buf, line, "curr_hash", "hmac")
			sum := sha256.Sum256(buf)
			hex.Encode(calc[:], sum[:])
			if mac != nil {
				mac.Reset()
				mac.Write(buf)
				macOK = hmac.Equal([]byte(hex.EncodeToString(mac.Sum(nil))), pre.hmac.bytes())
			}
		}
		if !bytes.Equal(pre.curr.bytes(), calc[:]) {
			bad(i, "hash chain broken (record edited, inserted, removed or reordered)")
			sf.seedOK = false
			return true
		}
		if mac != nil {
			switch {
			case pre.macCrash:
				bad(i, "HMAC is not a hex string")
				if sf.seedOK {
					sf.seedCrash, sf.seedOK = true, false
				}
				return true
			case pre.hmac.n == 0:
				sf.MissingMAC++
				bad(i, "HMAC missing (stripped?)")
			case !macOK:
				bad(i, "HMAC invalid")
				sf.seedOK = false
				return true
			}
		}
		prev.set(calc[:])
		verified = true
		if sf.OK {
			sf.Lines++
		}
		return false
	}
	for i := 0; ; i++ {
		line, pre, rerr := lp.next()
		if _, long := rerr.(errLineTooLong); long {
			bad(i, fmt.Sprintf("line longer than %d bytes", MaxLine))
			sf.seedCrash = sf.seedOK
			break
		}
		if rerr != nil && !errors.Is(rerr, io.EOF) {
			return nil, fmt.Errorf("reading %s: %w", path, rerr)
		}
		if rerr != nil { // the last line, without a newline
			if len(line) == 0 {
				break
			}
			prepSeedLine(w, line, &tailPre)
			pre = &tailPre
		}
		if pre.split {
			// The seed reads a bare carriage return as the end of a line:
			// so do we, one line at a time.
			stop := false
			for k, sub := range bytes.Split(bytes.TrimSuffix(line, []byte{'\r'}), []byte{'\r'}) {
				if k > 0 {
					i++
				}
				var sp seedPre
				prepSeedLine(w, sub, &sp)
				if stop = judge(i, sub, &sp); stop {
					break
				}
			}
			if stop || rerr != nil {
				break
			}
			continue
		}
		if judge(i, line, pre) || rerr != nil {
			break
		}
	}
	return sf, nil
}

// seedVerdict is what the seed's verify_all would conclude over files sorted
// by name: per-file chains plus linkage of each file to the one before it.
func seedVerdict(files []*SeedFile) string {
	for _, f := range files {
		if f.seedCrash {
			return "crash"
		}
	}
	for i, f := range files {
		if !f.seedOK {
			return "fail"
		}
		if i == 0 {
			continue
		}
		if f.first == nil {
			return "fail"
		}
		if ev, _ := f.first.Str("event_type"); ev != "rotate" {
			return "fail"
		}
		pf, _ := f.first.Str("prev_file")
		plh, _ := f.first.Str("prev_file_last_hash")
		if (pf != files[i-1].File || plh != files[i-1].lastHash) && !(pf == f.File && plh == files[i-1].lastHash) {
			return "fail"
		}
	}
	return "ok"
}

// hexStr holds a hash field of a seed line: the 64 hex digits the seed
// writes are kept inline (a verify walked 4 string allocations a line),
// anything longer as a string.
type hexStr struct {
	n    int // -1: in long
	b    [64]byte
	long string
}

func (h *hexStr) set(b []byte) {
	if len(b) <= len(h.b) {
		h.n, h.long = copy(h.b[:], b), ""
		return
	}
	h.n, h.long = -1, string(b)
}

func (h *hexStr) bytes() []byte {
	if h.n < 0 {
		return []byte(h.long)
	}
	return h.b[:h.n]
}

// seedPre is what a worker computes for one seed line ahead of the chain
// walk: its canonical form hashed on the prev_hash the line itself names
// (which is the chain's for every line that verifies; the walk redoes the
// hash whenever it is not), and its MAC checked the same way.
type seedPre struct {
	blank     bool
	perr      error
	spec      bool // calc and macOK were computed, on prevField
	prevField hexStr
	curr      hexStr
	hmac      hexStr // empty when missing or not a string, as for the seed
	calc      [64]byte
	macOK     bool
	// split: the line holds a bare carriage return, where the seed's reader
	// (a text file: universal newlines) ends a line.
	split bool
	// macCrash: the hmac member is one the seed's hmac.compare_digest
	// raises TypeError on (truthy and not a string, or not ASCII).
	macCrash bool
}

type seedWorker struct {
	c    pyjson.Canonicalizer
	buf  []byte
	sha  hash.Hash
	mac  hash.Hash
	sum  [32]byte
	hexd [64]byte
}

func prepSeedLine(w *seedWorker, line []byte, out *seedPre) {
	*out = seedPre{}
	line = bytes.TrimSuffix(line, []byte{'\r'}) // "\r\n" ends a line for the seed's reader too
	if bytes.IndexByte(line, '\r') >= 0 {
		out.split = true
		return
	}
	if pyBlank(line) {
		out.blank = true
		return
	}
	var err error
	if w.buf, err = w.c.Object(w.buf[:0], line, "curr_hash", "hmac"); err != nil {
		out.perr = err
		return
	}
	cur, _ := w.c.Bytes("curr_hash")
	out.curr.set(cur)
	mc, _ := w.c.Bytes("hmac")
	out.hmac.set(mc)
	if _, truthy, kind := w.c.Truthy("hmac"); truthy && (kind != 's' || !isASCII(mc)) {
		out.macCrash = true
	}
	pf, ok := w.c.Bytes("prev_hash")
	if !ok {
		return
	}
	out.prevField.set(pf)
	out.spec = true
	if w.sha == nil {
		w.sha = sha256.New()
	}
	w.sha.Reset()
	w.sha.Write(pf)
	w.sha.Write(w.buf)
	hex.Encode(out.calc[:], w.sha.Sum(w.sum[:0]))
	if w.mac != nil && len(mc) > 0 {
		w.mac.Reset()
		w.mac.Write(pf)
		w.mac.Write(w.buf)
		hex.Encode(w.hexd[:], w.mac.Sum(w.sum[:0]))
		out.macOK = hmac.Equal(w.hexd[:], mc)
	}
}

// pyBlank reports whether the seed's verify_chain skips line as blank
// (`not line.strip()`): Python's str.strip removes what str.isspace calls
// whitespace, which is Go's unicode.IsSpace and the separators U+001C to
// U+001F besides.
func pyBlank(line []byte) bool {
	for len(line) > 0 {
		r, n := utf8.DecodeRune(line)
		if r == utf8.RuneError && n <= 1 || !unicode.IsSpace(r) && (r < 0x1c || r > 0x1f) {
			return false
		}
		line = line[n:]
	}
	return true
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}
