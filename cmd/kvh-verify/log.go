package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/kvhygiene/kvh/forensic"
	"github.com/kvhygiene/kvh/ship"
	"golang.org/x/term"
)

func cmdLog(args []string, stdout, stderr io.Writer) int {
	fs := newCommand("log", stdout, stderr)
	keys := trustFlags(fs)
	ckpts := fs.StringArray("checkpoint", nil, "a signed checkpoint kept off the node, a file or the s3://BUCKET/PREFIX/NODE the agent ships to (repeatable): proves nothing it attests was truncated")
	noSigs := fs.Bool("no-signatures", false, "verify without a public key (checkpoint signatures are NOT checked)")
	allowUnsealed := fs.Bool("allow-unsealed", false, "accept records after the latest signed checkpoint with a warning (a live trail, or a crashed writer not yet restarted)")
	origin := fs.String("origin", "", "pin the log origin enrolled for this node")
	format := fs.String("format", "kvh", "trail format: kvh, or seed for logs written by the Python system")
	asJSON := fs.Bool("json", false, "print a machine verdict as JSON")
	out := fs.String("out", "", "also write the JSON verdict to this file")
	s3 := addS3Flags(fs)
	if code, stop := fs.parse(args); stop {
		return code
	}
	if fs.NArg() != 1 {
		return fs.usageError("exactly one trail directory, s3:// location (or, with --format seed, seed log) is required, %d given", fs.NArg())
	}
	path := fs.Arg(0)
	display := path
	switch *format {
	case "seed":
		key, err := keys.macKey()
		if err != nil {
			return errorf(stderr, "log: %v", err)
		}
		return logSeed(path, key, *asJSON, *out, stdout, stderr)
	case "kvh":
	default:
		return fs.usageError("unknown --format %q (kvh or seed)", *format)
	}
	opts := forensic.VerifyOptions{Origin: *origin, NoSignatures: *noSigs, AllowUnsealed: *allowUnsealed}
	if !keys.given() && !*noSigs {
		return fs.usageError("--pubkey is required (or --keyring); without it nothing proves who wrote the trail (use --no-signatures to check structure only)")
	}
	err := keys.load(&opts)
	if err != nil {
		return errorf(stderr, "log: %v", err)
	}
	for _, c := range *ckpts {
		ns, err := s3.externalCheckpoints(c)
		if err != nil {
			return errorf(stderr, "log: --checkpoint: %v", err)
		}
		opts.External = append(opts.External, ns...)
	}
	var fetched *ship.Fetched
	if ship.IsURL(path) {
		// Straight from the bucket, with the newest shipped checkpoint of
		// every generation as off-node checkpoints.
		loc, err := ship.ParseLocation(path)
		if err != nil {
			return errorf(stderr, "log: %v", err)
		}
		store, err := s3.client()
		if err != nil {
			return errorf(stderr, "log: %s: %v", path, err)
		}
		dir, f, cleanup, err := s3.fetchTrail(store, loc)
		if err != nil {
			return errorf(stderr, "log: %v", err)
		}
		defer cleanup()
		opts.External = append(opts.External, f.External...)
		path, fetched = dir, f
	}
	if err := checkTrailDir(path); err != nil {
		return errorf(stderr, "log: %v", err)
	}
	shown := false
	if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		opts.Progress = func(done, total int64) {
			if total > 0 {
				shown = true
				fmt.Fprintf(stderr, "\rverifying %3d%% (%d / %d MB)", done*100/total, done>>20, total>>20)
			}
		}
	}
	rep, err := forensic.Verify(path, opts)
	if shown {
		// Clear the progress line before anything else is written: the
		// report, an error, or a shell prompt would otherwise continue it.
		fmt.Fprint(stderr, "\r\033[K")
	}
	if err != nil {
		return errorf(stderr, "log: %v", err)
	}
	if err := wrongKey(path, rep, opts); err != nil {
		return errorf(stderr, "log: %v", err)
	}
	settle(rep)
	if fetched != nil {
		storeVerdict(rep, fetched)
	}
	v := verdict{Report: rep}
	if rep.OK {
		// Only a verified trail's events are evidence worth summarising.
		if v.Evidence, err = readEvidence(path); err != nil {
			return errorf(stderr, "log: the trail verified, but %v", err)
		}
	}
	if *out != "" {
		b, _ := json.MarshalIndent(v, "", "  ")
		if err := os.WriteFile(*out, append(b, '\n'), 0o600); err != nil {
			return errorf(stderr, "log: %v", err)
		}
	}
	if *asJSON {
		b, _ := json.MarshalIndent(v, "", "  ")
		fmt.Fprintln(stdout, string(b))
	} else {
		printReport(stdout, display, rep, opts)
		if v.Evidence != nil {
			v.Evidence.print(stdout, rep.Unsealed)
		}
	}
	if *noSigs {
		fmt.Fprintln(stderr, "kvh-verify: WARNING: --no-signatures: checkpoint signatures were NOT checked; anyone could have rewritten this trail consistently")
	}
	if !rep.OK {
		return exitFail
	}
	return exitOK
}

// verdict is log's machine verdict: forensic's report, and for a trail that
// verified, the summary of its events.
type verdict struct {
	*forensic.Report
	Evidence *evidence `json:"evidence,omitempty"`
}

// settle makes a failed report state only what was established. Verify
// fills Signatures and MAC before it reads what they describe, so a failure
// leaves them saying "verified" about checkpoints or records it stopped
// before, or at. The counts are left as Verify made them.
func settle(r *forensic.Report) {
	if r.OK || r.Problem == nil {
		return
	}
	p := r.Problem
	// Verify sets MAC just after it has read and checked every checkpoint,
	// and before it reads a record: empty means it stopped before either.
	reached := r.MAC != ""
	switch {
	case !reached && (p.Segment == forensic.CheckpointFile || p.Segment == "external checkpoint"):
		r.Signatures = "FAILED: " + p.String()
	case !reached && !strings.HasPrefix(r.Signatures, "NOT CHECKED"):
		r.Signatures = "not checked: verification stopped before the checkpoints"
	}
	switch {
	case !reached:
		r.MAC = "not checked: verification stopped before the records"
	case strings.Contains(p.Reason, "MAC") || strings.Contains(p.Reason, "mac_alg"):
		r.MAC = "FAILED: " + p.String()
	case r.MAC == "verified":
		r.MAC = "verified on every record before the problem"
	}
}

func printReport(w io.Writer, path string, r *forensic.Report, opts forensic.VerifyOptions) {
	if r.OK {
		fmt.Fprintf(w, "kvh-verify: trail %s VERIFIED\n", path)
	} else {
		fmt.Fprintf(w, "kvh-verify: trail %s FAILED: %s\n", path, r.Problem)
	}
	fmt.Fprintf(w, "  origin       %s\n", r.Origin)
	switch {
	case r.OK && r.Records > 0:
		fmt.Fprintf(w, "  records      %d (seq %d..%d) in %d segment(s), %d bytes\n", r.Records, r.FirstSeq, r.FirstSeq+r.Records-1, r.Segments, r.Bytes)
	case !r.OK && r.Bytes > 0:
		fmt.Fprintf(w, "  read         %d bytes of segments before the problem\n", r.Bytes)
	}
	if r.OK {
		fmt.Fprintf(w, "  checkpoints  %d matched; the latest attests %d records\n", r.Checkpoints, r.LatestCheckpoint)
	} else {
		fmt.Fprintf(w, "  checkpoints  %d matched before the problem\n", r.Checkpoints)
	}
	switch {
	case len(opts.External) > 0 && r.OK:
		fmt.Fprintf(w, "  off-node     %d of %d external checkpoint(s) matched\n", r.ExternalCheckpoints, len(opts.External))
	case len(opts.External) > 0:
		fmt.Fprintf(w, "  off-node     %d of %d external checkpoint(s) matched before the problem\n", r.ExternalCheckpoints, len(opts.External))
	default:
		fmt.Fprintf(w, "  off-node     none given: truncation together with deletion of local checkpoints would not be detected\n")
	}
	sig := r.Signatures
	if opts.Verifier != nil && sig == "verified" && len(r.Keys) < 2 {
		sig += " with " + opts.Verifier.Name()
	}
	fmt.Fprintf(w, "  signatures   %s\n", sig)
	fmt.Fprintf(w, "  MACs         %s\n", r.MAC)
	if len(r.Keys) > 1 || len(opts.Keyring) > 0 {
		for _, k := range r.Keys {
			fmt.Fprintf(w, "  key          %s\n", keyEpochLine(k))
		}
	}
	for _, p := range r.Prunes {
		fmt.Fprintf(w, "  pruned       before segment %d (seq %d): %s\n", p.BeforeSegment, p.BeforeSeq, p.Reason)
	}
	if r.Open {
		fmt.Fprintf(w, "  state        last segment still open (writer running, or stopped uncleanly)\n")
	}
	for _, x := range r.Warnings {
		fmt.Fprintf(w, "  warning      %s\n", x)
	}
}

func logSeed(path string, key []byte, asJSON bool, out string, stdout, stderr io.Writer) int {
	rep, err := forensic.VerifySeed(path, key)
	if err != nil {
		return errorf(stderr, "log: %v", err)
	}
	b, _ := json.MarshalIndent(rep, "", "  ")
	if out != "" {
		if err := os.WriteFile(out, append(b, '\n'), 0o600); err != nil {
			return errorf(stderr, "log: %v", err)
		}
	}
	if asJSON {
		fmt.Fprintln(stdout, string(b))
	} else {
		if rep.OK {
			fmt.Fprintf(stdout, "kvh-verify: seed log %s VERIFIED (%d file(s))\n", path, len(rep.Files))
		} else {
			fmt.Fprintf(stdout, "kvh-verify: seed log %s FAILED: %s\n", path, rep.Problem)
		}
		mac := "not checked (no key)"
		switch {
		case key != nil && rep.OK:
			mac = "required on every line and verified"
		case key != nil && rep.Problem != nil && strings.Contains(rep.Problem.Reason, "HMAC"):
			mac = "FAILED: " + rep.Problem.String()
		case key != nil:
			mac = "required on every line; verified on the lines checked before the problem"
		}
		fmt.Fprintf(stdout, "  HMAC                   %s\n", mac)
		fmt.Fprintf(stdout, "  seed verifier says     %s\n", rep.SeedVerdict)
		for _, m := range rep.SeedMisses {
			fmt.Fprintf(stdout, "  seed verifier misses   %s\n", m)
		}
		for _, x := range rep.Warnings {
			fmt.Fprintf(stdout, "  warning                %s\n", x)
		}
		fmt.Fprintf(stdout, "  limits of this format  %s\n", strings.Join(rep.Limits, ";\n                         "))
	}
	if !rep.OK {
		return exitFail
	}
	return exitOK
}

// keyEpochLine says which key covered which records, and how the verifier
// came to trust it.
func keyEpochLine(k forensic.KeyEpoch) string {
	s := fmt.Sprintf("%s signed seq %d..%d", k.Key, k.FirstSeq, k.LastSeq)
	if k.Pruned {
		s += " (pruned)"
	}
	if k.Trusted {
		s += "; trusted (given)"
	} else {
		s += "; introduced by a sealed rekey record"
	}
	if k.RekeySeq != nil {
		s += fmt.Sprintf("; retired by the rekey record at seq %d, sealed at size %d", *k.RekeySeq, k.SealSize)
	}
	if k.MACKeyID != "" {
		s += fmt.Sprintf("; MAC key %s %s", k.MACKeyID, k.MAC)
	}
	return s
}
