package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/kvhygiene/kvh/forensic"
	"github.com/kvhygiene/kvh/ship"
	"github.com/minio/minio-go/v7"
)

// nodeVerdict is one node's line of a fleet verification.
type nodeVerdict struct {
	Node     string           `json:"node"`
	Location string           `json:"location"`
	OK       bool             `json:"ok"`
	Error    string           `json:"error,omitempty"` // could not be verified (I/O, no key): neither pass nor tampering
	Report   *forensic.Report `json:"report,omitempty"`
}

type fleetVerdict struct {
	Location string        `json:"location"`
	Nodes    []nodeVerdict `json:"nodes"`
	Verified int           `json:"verified"`
	Failed   int           `json:"failed"`
	Errors   int           `json:"errors"`
}

func cmdFleet(args []string, stdout, stderr io.Writer) int {
	fs := newCommand("fleet", stdout, stderr)
	pubkey := fs.String("pubkey", "", "the verification key of every node's trail (note vkey format, from keygen)")
	pubkeyDir := fs.String("pubkey-dir", "", "a directory holding NODE.pub for each node; a node without one falls back to --pubkey")
	keyring := fs.String("keyring", "", "a file of verification keys trusted for every node without a NODE.pub in --pubkey-dir, one per line (# comments), e.g. kept with keygen --keyring; with or instead of --pubkey")
	macFiles := fs.StringArray("hmac-key-file", nil, "HMAC key file for the nodes' records (repeatable: after a MAC key rotation give the old and the new key; default: $FORENSIC_HMAC_SECRET if set)")
	parallel := fs.Int("parallel", 4, "nodes verified at once")
	asJSON := fs.Bool("json", false, "print the verdicts as JSON")
	s3 := addS3Flags(fs)
	if code, stop := fs.parse(args); stop {
		return code
	}
	if fs.NArg() != 1 {
		return fs.usageError("exactly one s3://BUCKET/PREFIX location is required, %d given", fs.NArg())
	}
	if *pubkey == "" && *pubkeyDir == "" && *keyring == "" {
		return fs.usageError("--pubkey, --pubkey-dir or --keyring is required; without a key nothing proves who wrote a trail")
	}
	if *parallel < 1 {
		return fs.usageError("--parallel must be at least 1")
	}
	loc, err := ship.ParseLocation(fs.Arg(0))
	if err != nil {
		return errorf(stderr, "fleet: %v", err)
	}
	// Every node is checked against the same trust: the keyring and MAC
	// keys; its own NODE.pub, or --pubkey, as the key it must be signed by.
	var base forensic.VerifyOptions
	if err := (&trust{pubkey: pubkey, keyring: keyring, macFiles: macFiles}).load(&base); err != nil {
		return errorf(stderr, "fleet: %v", err)
	}
	client, err := s3.client()
	if err != nil {
		return errorf(stderr, "fleet: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s3.timeout)
	nodes, err := ship.Nodes(ctx, client, loc)
	cancel()
	if err != nil {
		return errorf(stderr, "fleet: %v", err)
	}
	if len(nodes) == 0 {
		return errorf(stderr, "fleet: no node's trail under %s", loc)
	}
	fv := fleetVerdict{Location: loc.String(), Nodes: make([]nodeVerdict, len(nodes))}
	sem := make(chan struct{}, *parallel)
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			fv.Nodes[i] = verifyNode(s3, client, loc.Join(n), n, base, *pubkeyDir)
		}()
	}
	wg.Wait()
	var failed []string
	for _, v := range fv.Nodes {
		switch {
		case v.Error != "":
			fv.Errors++
		case v.OK:
			fv.Verified++
		default:
			fv.Failed++
			failed = append(failed, v.Node)
		}
	}
	if *asJSON {
		b, _ := json.MarshalIndent(fv, "", "  ")
		fmt.Fprintln(stdout, string(b))
	} else {
		width := 0
		for _, n := range nodes {
			width = max(width, len(n))
		}
		for _, v := range fv.Nodes {
			fmt.Fprintf(stdout, "%-*s  %s\n", width, v.Node, v.line())
		}
		fmt.Fprintf(stdout, "fleet %s: %d node(s): %d verified, %d FAILED, %d not verifiable", loc, len(nodes), fv.Verified, fv.Failed, fv.Errors)
		if len(failed) > 0 {
			fmt.Fprintf(stdout, " (failed: %s)", strings.Join(failed, ", "))
		}
		fmt.Fprintln(stdout)
	}
	switch {
	case fv.Failed > 0:
		return exitFail
	case fv.Errors > 0:
		return exitError
	}
	return exitOK
}

func (v nodeVerdict) line() string {
	r := v.Report
	switch {
	case v.Error != "":
		return "ERROR     " + v.Error
	case !v.OK:
		return "FAILED    " + r.Problem.String()
	}
	s := fmt.Sprintf("VERIFIED  %d record(s)", r.Records)
	if r.Records > 0 {
		s += fmt.Sprintf(" (seq %d..%d)", r.FirstSeq, r.FirstSeq+r.Records-1)
	}
	s += fmt.Sprintf(" in %d segment(s); off-node checkpoints %d matched, the newest attests %d", r.Segments, r.ExternalCheckpoints, r.LatestCheckpoint)
	if n := len(r.Warnings); n > 0 {
		s += fmt.Sprintf("; %d warning(s): %s", n, strings.Join(r.Warnings, "; "))
	}
	return s
}

// verifyNode fetches and verifies one node's shipped trail.
func verifyNode(s3 *s3Flags, c *minio.Client, loc ship.Location, node string, base forensic.VerifyOptions, keyDir string) nodeVerdict {
	out := nodeVerdict{Node: node, Location: loc.String()}
	key, ring := base.Verifier, base.Keyring
	if keyDir != "" {
		p := filepath.Join(keyDir, node+".pub")
		if _, err := os.Stat(p); err == nil {
			if key, err = forensic.LoadVerifier(p); err != nil {
				out.Error = err.Error()
				return out
			}
			// NODE.pub pins the node's key: the fleet keyring (every
			// node's keys) would let another node's trail pass as this
			// one's. NODE.pub alone follows the trail's sealed rekeys.
			ring = nil
		}
	}
	if key == nil && len(ring) == 0 {
		out.Error = fmt.Sprintf("no key: %s has no %s.pub and no --pubkey or --keyring was given", keyDir, node)
		return out
	}
	dir, f, cleanup, err := s3.fetchTrail(c, loc)
	if err != nil {
		out.Error = err.Error()
		return out
	}
	defer cleanup()
	opts := base
	opts.Verifier, opts.Keyring, opts.External = key, ring, f.External
	rep, err := forensic.Verify(dir, opts)
	if err != nil {
		out.Error = err.Error()
		return out
	}
	if err := wrongKey(dir, rep, opts); err != nil {
		out.Error = err.Error()
		return out
	}
	settle(rep)
	storeVerdict(rep, f)
	out.OK, out.Report = rep.OK, rep
	return out
}
