package main

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/kvhygiene/kvh/forensic"
)

// trust is what an auditor trusts, as log and report take it: the trail's
// public key and/or a keyring (keys that rotated: the verifier also follows
// sealed rekey records from any of them), and the HMAC keys (repeatable:
// one per MAC epoch; each epoch is checked with the key its rekey record
// names).
type trust struct {
	pubkey   *string
	keyring  *string
	macFiles *[]string
}

func trustFlags(fs *command) *trust {
	return &trust{
		pubkey:   fs.String("pubkey", "", "the trail's verification key (note vkey format, from keygen); after a rotation the original key still verifies the whole trail, by following its rekey records"),
		keyring:  fs.String("keyring", "", "a file of verification keys the auditor trusts, one per line (# comments), e.g. kept with keygen --keyring; with or instead of --pubkey"),
		macFiles: fs.StringArray("hmac-key-file", nil, "HMAC key file (repeatable: after a MAC key rotation give the old and the new key; default: $FORENSIC_HMAC_SECRET if set)"),
	}
}

// given reports whether any signature key was given.
func (t *trust) given() bool { return *t.pubkey != "" || *t.keyring != "" }

// load fills the keys of opts.
func (t *trust) load(opts *forensic.VerifyOptions) error {
	var err error
	if *t.pubkey != "" {
		if opts.Verifier, err = forensic.LoadVerifier(*t.pubkey); err != nil {
			return err
		}
	}
	if *t.keyring != "" {
		b, err := os.ReadFile(*t.keyring)
		if err != nil {
			return err
		}
		if opts.Keyring, err = forensic.ParseKeyring(b); err != nil {
			return fmt.Errorf("%s: %w", *t.keyring, err)
		}
	}
	files := *t.macFiles
	if len(files) == 0 {
		files = []string{""} // $FORENSIC_HMAC_SECRET
	}
	for _, f := range files {
		k, err := forensic.LoadMACKey(f)
		if err != nil {
			return err
		}
		if k == nil {
			continue
		}
		if opts.MACKey == nil {
			opts.MACKey = k
		} else {
			opts.MACKeys = append(opts.MACKeys, k)
		}
	}
	return nil
}

// macKey is the single MAC key for the seed format, which has no rotation.
func (t *trust) macKey() ([]byte, error) {
	switch len(*t.macFiles) {
	case 0:
		return forensic.LoadMACKey("")
	case 1:
		return forensic.LoadMACKey((*t.macFiles)[0])
	}
	return nil, errors.New("the seed format has one HMAC key: give --hmac-key-file once")
}

// trustedKeys names the keys the auditor gave, for the report.
func trustedKeys(opts forensic.VerifyOptions) string {
	var names []string
	if opts.Verifier != nil {
		names = append(names, keyName(opts.Verifier))
	}
	for _, k := range opts.Keyring {
		if n := keyName(k); !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	return strings.Join(names, ", ")
}
