package ship

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// checkpointFile is forensic.CheckpointFile; segment files are seg-NNNNNN.jsonl.
const checkpointFile = "checkpoints.jsonl"

var segmentRE = regexp.MustCompile(`^seg-[0-9]{6,}\.jsonl$`)

// shippable reports whether a trail directory entry is one the shipper copies.
func shippable(name string) bool { return name == checkpointFile || segmentRE.MatchString(name) }

// chunkKey names the chunk of file, generation gen, that starts at off.
func chunkKey(node Location, file string, gen uint32, off int64) string {
	return node.Prefix + "/" + file + "/g" + strconv.FormatUint(uint64(gen), 10) + "/" + fmt.Sprintf("%020d", off)
}

// chunkRef is a parsed chunk key.
type chunkRef struct {
	file string
	gen  uint32
	off  int64
}

// parseChunkKey parses a key below a node's prefix (rel is the key without
// "<node prefix>/").
func parseChunkKey(rel string) (chunkRef, error) {
	parts := strings.Split(rel, "/")
	if len(parts) != 3 || !shippable(parts[0]) || !strings.HasPrefix(parts[1], "g") || len(parts[2]) != 20 {
		return chunkRef{}, fmt.Errorf("%q is not <trail file>/g<generation>/<20-digit offset>", rel)
	}
	g, err := strconv.ParseUint(parts[1][1:], 10, 32)
	if err != nil || g == 0 {
		return chunkRef{}, fmt.Errorf("%q: bad generation", rel)
	}
	off, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil || off < 0 {
		return chunkRef{}, fmt.Errorf("%q: bad offset", rel)
	}
	return chunkRef{file: parts[0], gen: uint32(g), off: off}, nil
}
