package main

import (
	"bytes"
	"fmt"
	"io"

	"github.com/kvhygiene/kvh/compliance"
	"github.com/kvhygiene/kvh/forensic"
	"github.com/kvhygiene/kvh/internal/atomicfile"
	"github.com/kvhygiene/kvh/report"
)

// cmdReport verifies a trail exactly as log does, then draws the evidence
// report over it. It refuses to draw anything over a trail that fails
// (exit 2, with log's verdict on stderr); inputs that are the auditor's
// (usage, I/O, a key that is not the trail's, a controls file that does
// not parse) exit 1.
func cmdReport(args []string, stdout, stderr io.Writer) int {
	fs := newCommand("report", stdout, stderr)
	keys := trustFlags(fs)
	ckpts := fs.StringArray("checkpoint", nil, "a signed checkpoint kept off the node, a file or the s3://BUCKET/PREFIX/NODE the agent ships to (repeatable): proves nothing it attests was truncated")
	allowUnsealed := fs.Bool("allow-unsealed", false, "accept records after the latest signed checkpoint (the report says no signature covers them)")
	origin := fs.String("origin", "", "pin the log origin enrolled for this node")
	controls := fs.String("controls", "", "evaluate these compliance controls on the trail (compliance/controls.yaml)")
	format := fs.String("format", "html", "html (one self-contained file), json or markdown")
	out := fs.String("out", "", "write the report to this file (default: stdout)")
	s3 := addS3Flags(fs)
	if code, stop := fs.parse(args); stop {
		return code
	}
	if fs.NArg() != 1 {
		return fs.usageError("exactly one trail directory is required, %d given", fs.NArg())
	}
	var render func(*report.Report, io.Writer) error
	switch *format {
	case "html":
		render = (*report.Report).WriteHTML
	case "json":
		render = (*report.Report).WriteJSON
	case "markdown", "md":
		render = (*report.Report).WriteMarkdown
	default:
		return fs.usageError("unknown --format %q (html, json or markdown)", *format)
	}
	if !keys.given() {
		return fs.usageError("--pubkey is required (or --keyring): a report rests on the trail's signatures")
	}
	path := fs.Arg(0)
	opts := forensic.VerifyOptions{Origin: *origin, AllowUnsealed: *allowUnsealed}
	if err := keys.load(&opts); err != nil {
		return errorf(stderr, "report: %v", err)
	}
	for _, c := range *ckpts {
		ns, err := s3.externalCheckpoints(c)
		if err != nil {
			return errorf(stderr, "report: --checkpoint: %v", err)
		}
		opts.External = append(opts.External, ns...)
	}
	var ctl *compliance.File
	if *controls != "" {
		var err error
		if ctl, err = compliance.Load(*controls); err != nil {
			return errorf(stderr, "report: controls: %v", err)
		}
	}
	if err := checkTrailDir(path); err != nil {
		return errorf(stderr, "report: %v", err)
	}
	rep, err := forensic.Verify(path, opts)
	if err != nil {
		return errorf(stderr, "report: %v", err)
	}
	if err := wrongKey(path, rep, opts); err != nil {
		return errorf(stderr, "report: %v", err)
	}
	if !rep.OK {
		settle(rep)
		fmt.Fprintf(stderr, "kvh-verify report: refusing to draw a report over a trail that fails verification: %s\n\n", rep.Problem)
		printReport(stderr, path, rep, opts)
		return exitFail
	}
	r, err := report.Build(report.Input{
		Dir: path, Verify: rep, Key: trustedKeys(opts), OffNode: len(opts.External),
		Controls: ctl, Tool: version(),
	})
	if err != nil {
		return errorf(stderr, "report: the trail verified, but %v", err)
	}
	var b bytes.Buffer
	if err := render(r, &b); err != nil {
		return errorf(stderr, "report: %v", err)
	}
	if *out == "" {
		if _, err := stdout.Write(b.Bytes()); err != nil {
			return errorf(stderr, "report: %v", err)
		}
		return exitOK
	}
	// Whole or not at all: a reader never sees half a report.
	if err := atomicfile.Write(*out, b.Bytes(), 0o600); err != nil {
		return errorf(stderr, "report: %v", err)
	}
	fmt.Fprintf(stdout, "kvh-verify: trail %s VERIFIED; report (%s, %d events) written to %s\n", path, *format, r.Events.Total, *out)
	return exitOK
}
