package main

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/kvhygiene/kvh/forensic"
)

func cmdPrune(args []string, stdout, stderr io.Writer) int {
	fs := newCommand("prune", stdout, stderr)
	days := fs.Int("retention-days", -1, "remove rotated segments whose last record is older than N days")
	maxRot := fs.Int("max-rotated", -1, "keep at most N rotated segments (0 keeps none)")
	archive := fs.String("archive-dir", "", "move pruned segments here instead of deleting them")
	keyFile := fs.String("key", "", "the trail's signing key (the prune record is signed like any other)")
	trust := trustFlags(fs)
	reason := fs.String("reason", "", "reason recorded in the prune record")
	if code, stop := fs.parse(args); stop {
		return code
	}
	if fs.NArg() != 1 {
		return fs.usageError("exactly one trail directory is required, %d given", fs.NArg())
	}
	if *days < 0 && *maxRot < 0 {
		return fs.usageError("give --retention-days and/or --max-rotated")
	}
	if *keyFile == "" || !trust.given() {
		return fs.usageError("--key and --pubkey (or --keyring) are required: pruning is authorised by a signed record and checked before and after")
	}
	signer, err := forensic.LoadSigner(*keyFile)
	if err != nil {
		return errorf(stderr, "prune: %v", err)
	}
	var vopts forensic.VerifyOptions
	if err := trust.load(&vopts); err != nil {
		return errorf(stderr, "prune: %v", err)
	}
	if err := checkTrailDir(fs.Arg(0)); err != nil {
		return errorf(stderr, "prune: %v", err)
	}
	rep, err := forensic.Prune(fs.Arg(0), forensic.PruneOptions{
		Signer: signer, Verifier: vopts.Verifier, Keyring: vopts.Keyring, MACKey: vopts.MACKey, MACKeys: vopts.MACKeys,
		RetentionDays: *days, MaxRotated: *maxRot, ArchiveDir: *archive, Reason: *reason,
	})
	if err != nil {
		return errorf(stderr, "prune: %v", err)
	}
	if !rep.OK && rep.Before != nil {
		if err := wrongKey(fs.Arg(0), rep.Before, vopts); err != nil {
			return errorf(stderr, "prune: nothing was removed: %v", err)
		}
	}
	b, _ := json.MarshalIndent(rep, "", "  ")
	fmt.Fprintln(stdout, string(b))
	if !rep.OK {
		if rep.Refused != "" {
			fmt.Fprintln(stderr, "kvh-verify: prune refused:", rep.Refused)
		}
		return exitFail
	}
	return exitOK
}
