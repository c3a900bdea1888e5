package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/kvhygiene/kvh/forensic"
)

func cmdKeygen(args []string, stdout, stderr io.Writer) int {
	fs := newCommand("keygen", stdout, stderr)
	out := fs.String("out", "", "directory for kvh.key (0600) and kvh.pub")
	host, _ := os.Hostname()
	name := fs.String("name", "kvh-"+strings.ReplaceAll(host, "+", "-"), "key name shown in signatures")
	if code, stop := fs.parse(args); stop {
		return code
	}
	if *out == "" {
		return fs.usageError("--out DIR is required")
	}
	if fs.NArg() != 0 {
		return fs.usageError("unexpected arguments %q", fs.Args())
	}
	skey, vkey, err := forensic.GenerateKeys(*out, *name)
	if err != nil {
		return errorf(stderr, "keygen: %v", err)
	}
	pub, _ := os.ReadFile(vkey)
	fmt.Fprintf(stdout, "signing key:      %s (keep it on the node, mode 0600)\nverification key: %s\n%s", skey, vkey, pub)
	return exitOK
}
