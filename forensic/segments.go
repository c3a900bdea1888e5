package forensic

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// segFile is a segment file found in a trail directory.
type segFile struct {
	name  string
	path  string
	index uint64
	head  SegmentBody
	first parsed
}

// isSegmentName reports whether a directory entry may hold a segment.
func isSegmentName(name string) bool {
	return strings.HasSuffix(name, ".jsonl") && name != CheckpointFile
}

func segmentName(index uint64) string { return fmt.Sprintf("seg-%06d.jsonl", index) }

// listSegments reads the first record of every candidate file and returns the
// segments ordered by their internal index (never by name), plus notes on
// files that are not segments.
func listSegments(d *trailDir) ([]segFile, []string, error) {
	ents, err := d.entries()
	if err != nil {
		return nil, nil, err
	}
	var segs []segFile
	var notes []string
	for _, e := range ents {
		if !isSegmentName(e.Name()) {
			continue
		}
		if !e.Type().IsRegular() {
			notes = append(notes, fmt.Sprintf("%s: a %s, not a regular file", e.Name(), dirEntryType(e.Type())))
			continue
		}
		sf, err := readHead(d, e.Name())
		if err != nil {
			notes = append(notes, fmt.Sprintf("%s: %v", e.Name(), err))
			continue
		}
		sf.name = e.Name()
		segs = append(segs, sf)
	}
	sort.SliceStable(segs, func(i, j int) bool { return segs[i].index < segs[j].index })
	return segs, notes, nil
}

func readHead(d *trailDir, name string) (segFile, error) {
	f, err := d.open(name, os.O_RDONLY, 0, false)
	if err != nil {
		return segFile{}, err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64<<10)
	line, err := readLine(br)
	if err != nil && !(errors.Is(err, io.EOF) && len(line) > 0) {
		if errors.Is(err, io.EOF) {
			return segFile{}, errors.New("empty file, not a segment")
		}
		return segFile{}, err
	}
	sf := segFile{path: d.join(name)}
	if err := parseLine(line, &sf.first); err != nil {
		return segFile{}, fmt.Errorf("first line is not a record: %v", err)
	}
	if string(sf.first.kind) != KindSegment {
		return segFile{}, errors.New("first record is not a segment record")
	}
	if err := strictUnmarshal(sf.first.body, &sf.head); err != nil {
		return segFile{}, fmt.Errorf("segment record body: %v", err)
	}
	if sf.head.Size != sf.first.seq {
		return segFile{}, fmt.Errorf("segment record seq %d but declares size %d", sf.first.seq, sf.head.Size)
	}
	sf.index = sf.head.Segment
	return sf, nil
}

// readLine returns the next line without its newline. A final line with no
// newline is returned with io.EOF; longer than MaxLine is an error.
func readLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return line, fmt.Errorf("line longer than %d bytes", br.Size())
	}
	if err != nil {
		return line, err
	}
	return line[:len(line)-1], nil
}
