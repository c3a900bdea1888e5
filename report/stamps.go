package report

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kvhygiene/kvh/forensic"
)

// stamps reads every record's seq, ts and kind from a trail's segments, in
// the order forensic.Events gives event bodies, so that the two can be read
// in step: forensic.Events hands out each event's seq and body but not the
// record's timestamp, and forensic exports no reader that does. This reads
// only the fixed prefix forensic writes ({"v":1,"seq":N,"ts":"…","kind":"…")
// and decodes whole records only for the rare non-event kinds the history
// shows (segment, prune, close, tamper_detected, and any it does not know).
// It runs after forensic.Verify passed, so the lines are the verified ones.
//
// When forensic grows an Events variant that passes the timestamp, this
// file goes.
type stamps struct {
	files []string // segment paths in segment-index order
	i     int
	f     *os.File
	br    *bufio.Reader
	// pending is a line read past the seq asked for.
	pending *stamp
	// other is called for every record that is not an event.
	other func(st stamp, body json.RawMessage)
}

type stamp struct {
	seq  uint64
	ts   time.Time
	kind string
	line []byte // only for non-event kinds; owned by the reader until the next call
}

// openStamps lists the segments of dir the way forensic does: regular
// *.jsonl files but the checkpoint file, ordered by the segment index in
// their first record, never by name.
func openStamps(dir string) (*stamps, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	type seg struct {
		path  string
		index uint64
	}
	var segs []seg
	for _, e := range ents {
		name := e.Name()
		if !e.Type().IsRegular() || !strings.HasSuffix(name, ".jsonl") || name == forensic.CheckpointFile {
			continue
		}
		p := filepath.Join(dir, name)
		idx, ok, err := segmentIndex(p)
		if err != nil {
			return nil, err
		}
		if ok {
			segs = append(segs, seg{p, idx})
		}
	}
	slices.SortStableFunc(segs, func(a, b seg) int {
		switch {
		case a.index < b.index:
			return -1
		case a.index > b.index:
			return 1
		}
		return 0
	})
	s := &stamps{}
	for _, x := range segs {
		s.files = append(s.files, x.path)
	}
	return s, nil
}

func openNoFollow(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
}

// segmentIndex reads a file's first record; ok is false when it is not a
// segment record (forensic skips such files too).
func segmentIndex(path string) (uint64, bool, error) {
	f, err := openNoFollow(path)
	if err != nil {
		return 0, false, err
	}
	defer f.Close()
	line, err := bufio.NewReaderSize(f, 64<<10).ReadSlice('\n')
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, bufio.ErrBufferFull) {
		return 0, false, err
	}
	var r forensic.Record
	if json.Unmarshal(bytes.TrimSpace(line), &r) != nil || r.Kind != forensic.KindSegment {
		return 0, false, nil
	}
	var b forensic.SegmentBody
	if json.Unmarshal(r.Body, &b) != nil {
		return 0, false, nil
	}
	return b.Segment, true, nil
}

func (s *stamps) close() {
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
}

var linePrefix = []byte(`{"v":1,"seq":`)

// next returns the next record's stamp; ok is false at the end.
func (s *stamps) next() (stamp, bool, error) {
	if s.pending != nil {
		st := *s.pending
		s.pending = nil
		return st, true, nil
	}
	for {
		if s.br == nil {
			if s.i >= len(s.files) {
				return stamp{}, false, nil
			}
			f, err := openNoFollow(s.files[s.i])
			if err != nil {
				return stamp{}, false, err
			}
			s.i++
			s.f, s.br = f, bufio.NewReaderSize(f, forensic.MaxLine+1)
		}
		line, err := s.br.ReadSlice('\n')
		if err != nil {
			// The end of the file, or a torn last line (no newline) that
			// forensic.Events does not hand out either.
			if errors.Is(err, bufio.ErrBufferFull) {
				return stamp{}, false, fmt.Errorf("%s: a line longer than %d bytes", s.files[s.i-1], forensic.MaxLine)
			}
			if !errors.Is(err, io.EOF) {
				return stamp{}, false, err
			}
			s.close()
			s.br = nil
			continue
		}
		st, ok := parseStamp(line[:len(line)-1])
		if !ok {
			continue
		}
		if st.kind != forensic.KindEvent && s.other != nil {
			var r forensic.Record
			if json.Unmarshal(st.line, &r) == nil {
				s.other(st, r.Body)
			}
		}
		return st, true, nil
	}
}

// at returns the timestamp of the event record seq, reading forward; ok is
// false when the segments hold no such record (never, for a verified trail).
func (s *stamps) at(seq uint64) (time.Time, bool, error) {
	for {
		st, ok, err := s.next()
		if err != nil || !ok {
			return time.Time{}, false, err
		}
		switch {
		case st.seq < seq:
			continue
		case st.seq > seq:
			s.pending = &st
			return time.Time{}, false, nil
		}
		return st.ts, true, nil
	}
}

// drain reads the records after the last event, for the history.
func (s *stamps) drain() error {
	for {
		_, ok, err := s.next()
		if err != nil || !ok {
			return err
		}
	}
}

// parseStamp reads seq, ts and kind from a record line's fixed prefix.
func parseStamp(line []byte) (stamp, bool) {
	rest, ok := bytes.CutPrefix(line, linePrefix)
	if !ok {
		return stamp{}, false
	}
	i := 0
	for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
		i++
	}
	seq, err := strconv.ParseUint(string(rest[:i]), 10, 64)
	if err != nil {
		return stamp{}, false
	}
	rest = rest[i:]
	ts, rest, ok := quoted(rest, `,"ts":"`)
	if !ok {
		return stamp{}, false
	}
	kind, _, ok := quoted(rest, `,"kind":"`)
	if !ok {
		return stamp{}, false
	}
	st := stamp{seq: seq, kind: string(kind)}
	if st.ts, err = time.Parse(time.RFC3339Nano, string(ts)); err != nil {
		st.ts = time.Time{}
	}
	if st.kind != forensic.KindEvent {
		st.line = line
	}
	return st, true
}

func quoted(b []byte, key string) (val, rest []byte, ok bool) {
	b, ok = bytes.CutPrefix(b, []byte(key))
	if !ok {
		return nil, nil, false
	}
	end := bytes.IndexByte(b, '"')
	if end < 0 {
		return nil, nil, false
	}
	return b[:end], b[end+1:], true
}
