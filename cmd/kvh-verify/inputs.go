package main

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kvhygiene/kvh/forensic"
	"golang.org/x/mod/sumdb/note"
)

// forensic.Verify reports anything that stops verification inside the trail
// as a failed Report (exit 2). Some of those are the auditor's inputs, not
// the evidence: a directory that holds no trail, a segment this user cannot
// read (Verify skips it, then finds it "missing"), a public key or an HMAC
// key that is not the trail's. The checks here tell those apart so that exit
// 2 keeps meaning "the evidence shows tampering".

// checkTrailDir fails for a directory that holds no trail at all, and for
// a segment file this user cannot open. A directory with checkpoints but no
// segments is left to Verify: signed checkpoints prove records were there.
func checkTrailDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	found := false
	for _, e := range ents {
		name := e.Name()
		// Verify's candidates: regular *.jsonl files (forensic's isSegmentName).
		if !e.Type().IsRegular() || !strings.HasSuffix(name, ".jsonl") {
			continue
		}
		found = true
		if name == forensic.CheckpointFile {
			continue // Verify reports its own read errors for this one
		}
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			return fmt.Errorf("%w: the trail cannot be verified without every segment", err)
		}
		f.Close()
	}
	if !found {
		return fmt.Errorf("no trail in %s: it holds no segment files and no %s (wrong directory?)", dir, forensic.CheckpointFile)
	}
	return nil
}

// wrongKey returns an error when rep failed because a key the auditor gave
// is not the trail's, and nil when the failure is the evidence's.
func wrongKey(dir string, rep *forensic.Report, opts forensic.VerifyOptions) error {
	p := rep.Problem
	if p == nil {
		return nil
	}
	if opts.Verifier == nil && len(opts.Keyring) > 0 && p.Segment == forensic.CheckpointFile && strings.Contains(p.Reason, "signature does not verify") {
		var first error
		for _, k := range opts.Keyring {
			err := wrongPublicKey(dir, k)
			if err == nil {
				return nil // some key of the keyring signed a checkpoint: evidence
			}
			first = cmp.Or(first, err)
		}
		return fmt.Errorf("no key of the keyring signed this trail's checkpoints: %w", first)
	}
	if opts.Verifier != nil && strings.Contains(p.Reason, "signature does not verify") {
		switch p.Segment {
		case forensic.CheckpointFile:
			return wrongPublicKey(dir, opts.Verifier)
		case "external checkpoint":
			if p.Line < 1 || p.Line > len(opts.External) {
				return nil
			}
			if signers := othersOnly(opts.External[p.Line-1], opts.Verifier); signers != "" {
				return fmt.Errorf("external checkpoint %d is signed by %s, not by the given key %s: it is not this trail's, or the key is wrong", p.Line, signers, keyName(opts.Verifier))
			}
		}
		return nil
	}
	if opts.Verifier != nil && opts.MACKey != nil && p.Reason == "MAC invalid" && p.Seq != nil && *p.Seq == rep.FirstSeq {
		// The first record's MAC fails. If the signatures vouch for every
		// record without the MAC key, the bytes are what the signer wrote,
		// so the key is not the one the trail was written with.
		o := opts
		o.MACKey, o.MACKeys, o.Progress = nil, nil, nil
		if r, err := forensic.Verify(dir, o); err == nil && r.OK {
			return errors.New("the HMAC key does not match this trail: the first record's MAC fails, yet every record verifies by its signatures without the key (wrong --hmac-key-file, or $FORENSIC_HMAC_SECRET set for another trail?)")
		}
	}
	return nil
}

// wrongPublicKey: the trail's checkpoints fail with the given key. If none of
// them carries a signature by that key (its name and key hash), the key is
// the wrong one; if some do, a checkpoint was forged or inserted (nil).
func wrongPublicKey(dir string, v note.Verifier) error {
	data, err := os.ReadFile(filepath.Join(dir, forensic.CheckpointFile))
	if err != nil {
		return nil // Verify read it; whatever happened since is not a key question
	}
	signers := map[string]bool{}
	for _, line := range bytes.Split(data, []byte("\n")) {
		var cl struct {
			Note string `json:"note"`
		}
		if len(line) == 0 || json.Unmarshal(line, &cl) != nil {
			continue
		}
		s := othersOnly([]byte(cl.Note), v)
		if s == "" {
			return nil // this one is the key's, verified or forged: evidence
		}
		signers[s] = true
	}
	if len(signers) == 0 {
		return nil
	}
	var names []string
	for s := range signers {
		names = append(names, s)
	}
	return fmt.Errorf("the trail's checkpoints are signed by %s, not by the given key %s: wrong --pubkey for this trail? (If that is this node's key, every checkpoint was re-signed with another: treat the trail as tampered.)", strings.Join(names, ", "), keyName(v))
}

// othersOnly returns who signed n when none of its signatures claims to be
// v's (name and key hash), and "" otherwise (v's signature, good or bad, or
// n is not a signed note).
func othersOnly(n []byte, v note.Verifier) string {
	_, err := note.Open(n, note.VerifierList(v))
	var un *note.UnverifiedNoteError
	if !errors.As(err, &un) {
		return ""
	}
	var s []string
	for _, sig := range un.Note.UnverifiedSigs {
		s = append(s, fmt.Sprintf("%s+%08x", sig.Name, sig.Hash))
	}
	return strings.Join(s, " and ")
}

func keyName(v note.Verifier) string { return fmt.Sprintf("%s+%08x", v.Name(), v.KeyHash()) }
