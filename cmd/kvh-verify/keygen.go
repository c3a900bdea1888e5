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
	hmac := fs.Bool("hmac", false, "also write a new random HMAC key, kvh.hmac (0600), for the agent's --hmac-key-file")
	keyring := fs.String("keyring", "", "also append the new verification key to this keyring file (created if missing), which kvh-verify log --keyring reads")
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
	if *hmac {
		p, err := forensic.GenerateMACKey(*out)
		if err != nil {
			return errorf(stderr, "keygen: %v", err)
		}
		k, _ := forensic.LoadMACKey(p)
		fmt.Fprintf(stdout, "hmac key:         %s (keep it on the node, mode 0600; key id %s)\n", p, forensic.KeyID(k))
	}
	if *keyring != "" {
		if err := appendKeyring(*keyring, strings.TrimSpace(string(pub))); err != nil {
			return errorf(stderr, "keygen: %v", err)
		}
		fmt.Fprintf(stdout, "keyring:          %s (the new key appended)\n", *keyring)
	}
	return exitOK
}

// appendKeyring adds a verification key to a keyring file, after checking
// that the file is one (a keyring is public: mode 0644).
func appendKeyring(path, vkey string) error {
	if b, err := os.ReadFile(path); err == nil {
		if _, err := forensic.ParseKeyring(b); err != nil && strings.TrimSpace(string(b)) != "" {
			return fmt.Errorf("%s: %w", path, err)
		}
	} else if !os.IsNotExist(err) {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintln(f, vkey); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
