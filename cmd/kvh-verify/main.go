// Command kvh-verify is the auditor's tool: it verifies a node's trail with
// the node's public key, gates CI on exported hygiene metrics, prunes a trail
// with proof, and makes keys.
//
// Exit codes: 0 verified or passed, 2 tampered or failed the gate, 1 usage or
// I/O error.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/pflag"
)

const (
	exitOK    = 0
	exitError = 1
	exitFail  = 2
)

const usage = `kvh-verify: verify and gate kvh hygiene evidence

Usage:
  kvh-verify log DIR --pubkey FILE [--hmac-key-file F] [--checkpoint F] [--json]
  kvh-verify log --format seed PATH [--hmac-key-file F] [--json]
  kvh-verify gate METRICS.json [--coverage-min 99.9] [--unsanitized-max 0] [--quarantine-max 0]
                  [--reuse-rate-max X] [--sanitize-p95-ms-max X] [--out FILE]
  kvh-verify prune DIR --retention-days N --max-rotated N --key FILE --pubkey FILE [--archive-dir D]
  kvh-verify keygen --out DIR [--name NAME]

Exit codes: 0 verified/passed, 2 tampered/failed, 1 usage or I/O error.
Run 'kvh-verify COMMAND --help' for a command's flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitError
	}
	cmds := map[string]func([]string, io.Writer, io.Writer) int{
		"log":    cmdLog,
		"gate":   cmdGate,
		"prune":  cmdPrune,
		"keygen": cmdKeygen,
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	c, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "kvh-verify: unknown command %q\n\n%s", args[0], usage)
		return exitError
	}
	return c(args[1:], stdout, stderr)
}

// newFlags returns a flag set whose errors are reported, not fatal.
func newFlags(name string, stderr io.Writer) *pflag.FlagSet {
	fs := pflag.NewFlagSet("kvh-verify "+name, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.SortFlags = false
	return fs
}

// parse parses flags; it returns an exit code when the caller should stop.
func parse(fs *pflag.FlagSet, args []string) (int, bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return exitOK, true
		}
		return exitError, true
	}
	return 0, false
}

func errorf(stderr io.Writer, format string, args ...any) int {
	fmt.Fprintf(stderr, "kvh-verify: "+format+"\n", args...)
	return exitError
}
