package forensic_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kvhygiene/kvh/forensic"
	"golang.org/x/mod/sumdb/note"
)

// Write a trail, then verify it as an auditor would: with the public key only.
func Example() {
	dir, _ := os.MkdirTemp("", "trail")
	defer os.RemoveAll(dir)
	skey, vkey, _ := note.GenerateKey(rand.Reader, "kvh-node-1")
	signer, _ := note.NewSigner(skey)
	verifier, _ := forensic.NewVerifier(vkey)

	log, err := forensic.Open(dir, forensic.Options{Signer: signer, Origin: "kvh/node-1/example"})
	if err != nil {
		panic(err)
	}
	seq, _ := log.Append(map[string]any{"ev": "free", "tenant": "a", "bytes": 4096, "coverage_pct": 100})
	fmt.Println("appended seq", seq)
	log.Close()

	rep, _ := forensic.Verify(dir, forensic.VerifyOptions{Verifier: verifier})
	fmt.Println("ok:", rep.OK, "records:", rep.Records, "signatures:", rep.Signatures)
	// Output:
	// appended seq 1
	// ok: true records: 3 signatures: verified
}

// A second writer on the same directory is refused.
func ExampleOpen_locked() {
	dir, _ := os.MkdirTemp("", "trail")
	defer os.RemoveAll(dir)
	skey, _, _ := note.GenerateKey(rand.Reader, "kvh-node-1")
	signer, _ := note.NewSigner(skey)
	first, _ := forensic.Open(dir, forensic.Options{Signer: signer})
	defer first.Close()
	_, err := forensic.Open(dir, forensic.Options{Signer: signer})
	fmt.Println(err != nil)
	// Output: true
}

// A trail whose last segment holds complete records after a line that does
// not verify was tampered with (a crash leaves only an incomplete final
// line): Open refuses it and says where.
func ExampleOpen_tampered() {
	dir, _ := os.MkdirTemp("", "trail")
	defer os.RemoveAll(dir)
	skey, _, _ := note.GenerateKey(rand.Reader, "kvh-node-1")
	signer, _ := note.NewSigner(skey)
	log, _ := forensic.Open(dir, forensic.Options{Signer: signer})
	log.Append(map[string]any{"ev": "free", "tenant": "a"})
	log.Close()

	seg := filepath.Join(dir, "seg-000000.jsonl")
	data, _ := os.ReadFile(seg)
	os.WriteFile(seg, bytes.Replace(data, []byte(`"tenant":"a"}}`), []byte(`"tenant":"b"}`), 1), 0o600)

	_, err := forensic.Open(dir, forensic.Options{Signer: signer})
	var te *forensic.TamperError
	if errors.As(err, &te) {
		fmt.Println(errors.Is(err, forensic.ErrTampered), te.File, "line", te.Line, "seq", te.Seq)
	}
	// Output: true seg-000000.jsonl line 2 seq 1
}
