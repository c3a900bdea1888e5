// Command kvh-verify is the auditor's tool: it verifies a node's trail with
// the node's public key, draws an evidence report over a verified trail,
// gates CI on exported hygiene metrics, prunes a trail with proof, and makes
// keys.
//
// Exit codes: 0 verified or passed; 2 the evidence shows tampering or fails
// the gate; 1 anything else (usage, I/O, permissions, a key that is not the
// trail's). Help and --version go to stdout and exit 0; every error goes to
// stderr.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/pflag"
)

const (
	exitOK    = 0
	exitError = 1
	exitFail  = 2
)

// synopses are the commands' usage lines, in the order help lists them.
var synopses = []struct{ name, line string }{
	{"log", "log [flags] TRAIL_DIR"},
	{"log", "log [flags] s3://BUCKET/PREFIX/NODE"},
	{"log", "log --format seed [flags] SEED_LOG"},
	{"fleet", "fleet --pubkey KEY | --pubkey-dir DIR [--json] [flags] s3://BUCKET/PREFIX"},
	{"report", "report --pubkey KEY [--controls FILE] [--format html|json|markdown] [--out FILE] [flags] TRAIL_DIR"},
	{"gate", "gate [flags] METRICS_JSON"},
	{"prune", "prune [flags] TRAIL_DIR"},
	{"keygen", "keygen --out DIR [flags]"},
}

const exitCodes = `Exit codes: 0 verified/passed; 2 the evidence shows tampering, or the gate failed;
1 usage, I/O or permission error, or a key that is not the trail's.`

func topUsage(w io.Writer) {
	fmt.Fprint(w, "kvh-verify: verify and gate kvh hygiene evidence\n\nUsage:\n")
	for _, s := range synopses {
		fmt.Fprintf(w, "  kvh-verify %s\n", s.line)
	}
	fmt.Fprintf(w, "  kvh-verify --version\n\n%s\nRun 'kvh-verify help COMMAND' for a command's flags.\n", exitCodes)
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

var commands = map[string]func([]string, io.Writer, io.Writer) int{
	"log":    cmdLog,
	"fleet":  cmdFleet,
	"report": cmdReport,
	"gate":   cmdGate,
	"prune":  cmdPrune,
	"keygen": cmdKeygen,
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, "kvh-verify: a command is required\n\n")
		topUsage(stderr)
		return exitError
	}
	switch args[0] {
	case "-h", "--help":
		topUsage(stdout)
		return exitOK
	case "help":
		if len(args) == 1 {
			topUsage(stdout)
			return exitOK
		}
		args = []string{args[1], "--help"}
	case "--version", "version":
		fmt.Fprintln(stdout, version())
		return exitOK
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "kvh-verify: unknown command %q\n\n", args[0])
		topUsage(stderr)
		return exitError
	}
	return c(args[1:], stdout, stderr)
}

// command is one subcommand's flags and how it reports usage: help to
// stdout, usage errors with the usage to stderr.
type command struct {
	*pflag.FlagSet
	name           string
	stdout, stderr io.Writer
}

func newCommand(name string, stdout, stderr io.Writer) *command {
	fs := pflag.NewFlagSet("kvh-verify "+name, pflag.ContinueOnError)
	// pflag prints nothing for errors under ContinueOnError, and help to
	// this output; parse prints both itself, each to its stream.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.SortFlags = false
	return &command{FlagSet: fs, name: name, stdout: stdout, stderr: stderr}
}

func (c *command) usage(w io.Writer) {
	for i, s := range synopses {
		if s.name != c.name {
			continue
		}
		lead := "Usage: "
		if i > 0 && synopses[i-1].name == c.name {
			lead = "       "
		}
		fmt.Fprintf(w, "%skvh-verify %s\n", lead, s.line)
	}
	fmt.Fprintf(w, "\nFlags:\n%s\n%s\n", c.FlagUsages(), exitCodes)
}

// parse parses flags; it returns an exit code when the caller should stop.
func (c *command) parse(args []string) (int, bool) {
	if err := c.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			c.usage(c.stdout)
			return exitOK, true
		}
		return c.usageError("%v", err), true
	}
	return 0, false
}

// usageError reports a mistake in how the command was called, then its usage.
func (c *command) usageError(format string, args ...any) int {
	fmt.Fprintf(c.stderr, "kvh-verify %s: %s\n\n", c.name, strings.TrimSpace(fmt.Sprintf(format, args...)))
	c.usage(c.stderr)
	return exitError
}

// errorf reports an error that is not the evidence's fault: exit 1.
func errorf(stderr io.Writer, format string, args ...any) int {
	fmt.Fprintf(stderr, "kvh-verify: "+format+"\n", args...)
	return exitError
}
