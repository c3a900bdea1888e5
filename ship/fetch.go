package ship

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/minio/minio-go/v7"
)

// Fetched is a node's shipped trail, read back from the store.
type Fetched struct {
	// External holds the newest shipped checkpoint of every generation of
	// checkpoints.jsonl: off-node checkpoints the trail must still satisfy.
	External [][]byte
	// Problems are what the store shows was done to the objects after they
	// were shipped (a second, different version of a chunk, a delete
	// marker, a missing chunk, a digest that does not match): tampering.
	Problems []string
	// Notes are facts an auditor should know that are not tampering by
	// themselves (files shipped in more than one generation).
	Notes   []string
	Objects int
	Bytes   int64
}

type version struct {
	id      string
	etag    string
	size    int64
	deleted bool
	order   int // listing order: newest first within a key
}

type chunk struct {
	chunkRef
	key string
	v   []version
}

// list reads every version of every object under node.
func list(ctx context.Context, c *minio.Client, node Location) (map[string]*chunk, []string, error) {
	chunks := map[string]*chunk{}
	var problems []string
	i := 0
	for obj := range c.ListObjects(ctx, node.Bucket, minio.ListObjectsOptions{Prefix: node.Prefix + "/", Recursive: true, WithVersions: true}) {
		if obj.Err != nil {
			return nil, nil, fmt.Errorf("listing %s: %w", node, obj.Err)
		}
		rel := strings.TrimPrefix(obj.Key, node.Prefix+"/")
		ref, err := parseChunkKey(rel)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: an object the shipper never writes (%v)", obj.Key, err))
			continue
		}
		ch := chunks[obj.Key]
		if ch == nil {
			ch = &chunk{chunkRef: ref, key: obj.Key}
			chunks[obj.Key] = ch
		}
		i++
		ch.v = append(ch.v, version{id: obj.VersionID, etag: strings.Trim(obj.ETag, `"`), size: obj.Size, deleted: obj.IsDeleteMarker, order: i})
	}
	return chunks, problems, nil
}

// judge returns the version to read and any problem with the key: the
// shipper writes a key once (twice, identically, when an upload's answer
// was lost), so a differing version or a delete marker is tampering.
func (ch *chunk) judge() (version, string) {
	var live []version
	deleted := false
	for _, v := range ch.v {
		if v.deleted {
			deleted = true
			continue
		}
		live = append(live, v)
	}
	if len(live) == 0 {
		return version{}, fmt.Sprintf("%s: deleted (only a delete marker is left)", ch.key)
	}
	// The listing is newest first: the original is the last.
	orig := live[len(live)-1]
	for _, v := range live[:len(live)-1] {
		if v.etag != orig.etag || v.size != orig.size {
			return orig, fmt.Sprintf("%s: overwritten after it was shipped (%d versions differ; the original, still locked, is read)", ch.key, len(live))
		}
	}
	if deleted {
		return orig, fmt.Sprintf("%s: a delete marker was put over it (the locked version is read)", ch.key)
	}
	return orig, ""
}

// Fetch copies node's newest generation of every trail file into dir (which
// must exist, empty) and returns the off-node checkpoints and what the
// store shows about the objects.
func Fetch(ctx context.Context, c *minio.Client, node Location, dir string) (*Fetched, error) {
	if dir == "" {
		return nil, errors.New("ship: Fetch needs a directory")
	}
	return fetch(ctx, c, node, dir)
}

// FetchCheckpoints reads only the shipped checkpoints of node: the newest
// of every generation, for verifying the node's own trail directory
// against them.
func FetchCheckpoints(ctx context.Context, c *minio.Client, node Location) (*Fetched, error) {
	f, err := fetch(ctx, c, node, "")
	if err == nil && len(f.External) == 0 {
		err = fmt.Errorf("%s holds no shipped checkpoint", node)
	}
	return f, err
}

func fetch(ctx context.Context, c *minio.Client, node Location, dir string) (*Fetched, error) {
	chunks, problems, err := list(ctx, c, node)
	if err != nil {
		return nil, err
	}
	if len(chunks) == 0 && len(problems) == 0 {
		return nil, fmt.Errorf("%s holds no shipped trail", node)
	}
	out := &Fetched{Problems: problems}
	// file -> generation -> chunks
	byFile := map[string]map[uint32][]*chunk{}
	for _, ch := range chunks {
		if byFile[ch.file] == nil {
			byFile[ch.file] = map[uint32][]*chunk{}
		}
		byFile[ch.file][ch.gen] = append(byFile[ch.file][ch.gen], ch)
	}
	files := make([]string, 0, len(byFile))
	for f := range byFile {
		files = append(files, f)
	}
	sort.Strings(files)
	for _, file := range files {
		gens := byFile[file]
		var newest uint32
		for g := range gens {
			newest = max(newest, g)
		}
		if len(gens) > 1 {
			out.Notes = append(out.Notes, fmt.Sprintf("%s was shipped in %d generations: the node's copy changed after it was shipped (truncated, replaced or rewritten); generation %d is verified, the older ones are kept locked", file, len(gens), newest))
		}
		for g, chs := range gens {
			sort.Slice(chs, func(i, j int) bool { return chs[i].off < chs[j].off })
			var data []byte
			// The newest generation is the trail; of the others only the
			// checkpoints matter.
			if (g != newest || dir == "") && file != checkpointFile {
				continue
			}
			var w io.Writer
			var buf bytes.Buffer
			var f *os.File
			switch {
			case g == newest && dir != "":
				f, err = os.OpenFile(filepath.Join(dir, file), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
				if err != nil {
					return nil, err
				}
				w = f
				if file == checkpointFile {
					w = io.MultiWriter(f, &buf)
				}
			default:
				w = &buf
			}
			var end int64
			for _, ch := range chs {
				if ch.off != end {
					if ch.off > end {
						out.Problems = append(out.Problems, fmt.Sprintf("%s generation %d: bytes %d..%d missing (no chunk starts at %d)", file, g, end, ch.off-1, end))
					} else {
						out.Problems = append(out.Problems, fmt.Sprintf("%s generation %d: chunk at %d overlaps the previous one (ends at %d)", file, g, ch.off, end))
					}
					break
				}
				v, problem := ch.judge()
				if problem != "" {
					out.Problems = append(out.Problems, problem)
				}
				if v.id == "" && v.size == 0 && v.etag == "" {
					break
				}
				n, err := get(ctx, c, node.Bucket, ch.key, v, w)
				if err != nil {
					var pe *digestError
					if errors.As(err, &pe) {
						out.Problems = append(out.Problems, pe.Error())
						break
					}
					if f != nil {
						f.Close()
					}
					return nil, err
				}
				end += n
				out.Objects++
				out.Bytes += n
			}
			if f != nil {
				if err := f.Close(); err != nil {
					return nil, err
				}
			}
			data = buf.Bytes()
			if file == checkpointFile {
				if n := newestCheckpoint(data); n != nil {
					out.External = append(out.External, n)
				}
			}
		}
	}
	return out, nil
}

type digestError struct{ key, want, got string }

func (e *digestError) Error() string {
	return fmt.Sprintf("%s: its content does not match the SHA-256 it was shipped with (%s, now %s)", e.key, e.want, e.got)
}

// get copies one version of an object to w and checks it against the
// digest the shipper stored with it.
func get(ctx context.Context, c *minio.Client, bucket, key string, v version, w io.Writer) (int64, error) {
	obj, err := c.GetObject(ctx, bucket, key, minio.GetObjectOptions{VersionID: v.id})
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", key, err)
	}
	defer obj.Close()
	info, err := obj.Stat()
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", key, err)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, h), obj)
	if err != nil {
		return n, fmt.Errorf("reading %s: %w", key, err)
	}
	got := hex.EncodeToString(h.Sum(nil))
	for k, want := range info.UserMetadata {
		if strings.EqualFold(k, "kvh-sha256") && want != got {
			return n, &digestError{key, want, got}
		}
	}
	return n, nil
}

// newestCheckpoint returns the note of the checkpoint line with the largest
// size (the last on a tie).
func newestCheckpoint(data []byte) []byte {
	var best []byte
	var size uint64
	for _, line := range bytes.Split(data, []byte("\n")) {
		var cl struct {
			Size uint64 `json:"size"`
			Note string `json:"note"`
		}
		if len(line) == 0 || json.Unmarshal(line, &cl) != nil || cl.Note == "" {
			continue
		}
		if best == nil || cl.Size >= size {
			best, size = []byte(cl.Note), cl.Size
		}
	}
	return best
}

// Nodes lists the node names under a fleet's location.
func Nodes(ctx context.Context, c *minio.Client, fleet Location) ([]string, error) {
	prefix := ""
	if fleet.Prefix != "" {
		prefix = fleet.Prefix + "/"
	}
	var nodes []string
	for obj := range c.ListObjects(ctx, fleet.Bucket, minio.ListObjectsOptions{Prefix: prefix}) {
		if obj.Err != nil {
			return nil, fmt.Errorf("listing %s: %w", fleet, obj.Err)
		}
		if name, ok := strings.CutSuffix(strings.TrimPrefix(obj.Key, prefix), "/"); ok && name != "" {
			nodes = append(nodes, name)
		}
	}
	sort.Strings(nodes)
	return nodes, nil
}
