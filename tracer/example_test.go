package tracer_test

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"

	"github.com/kvhygiene/kvh/forensic"
	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/tracer"
	"golang.org/x/mod/sumdb/note"
)

func newTrail() (*forensic.Log, func()) {
	dir, _ := os.MkdirTemp("", "trail")
	skey, _, _ := note.GenerateKey(rand.Reader, "kvh-example")
	signer, _ := note.NewSigner(skey)
	log, err := forensic.Open(dir, forensic.Options{Signer: signer})
	if err != nil {
		panic(err)
	}
	return log, func() { log.Close(); os.RemoveAll(dir) }
}

// A KV block's life: allocate, write, sanitize (zeroize and verify), free.
func Example() {
	trail, done := newTrail()
	defer done()
	l, _ := tracer.New(tracer.Options{Trail: trail, Policy: policy.Default()})

	h, _ := l.Allocate(tracer.Tags{Tenant: "acme", Request: "req-1", Model: "llama"}, 4096, tracer.AllocOptions{})
	l.MarkInUse(h)
	buf, _ := l.Buffer(h)
	copy(buf, "tenant acme's KV cache")

	res, _ := l.Sanitize(h)
	fmt.Println("verified:", res.Verified, "coverage:", res.CoveragePct())
	fmt.Println("free:", l.Free(h))
	s := l.Snapshot()
	fmt.Println("freed:", s.FreedTotal, "min coverage:", s.MinCoveragePct)
	// Output:
	// verified: true coverage: 100
	// free: <nil>
	// freed: 1 min coverage: 100
}

// Freeing a buffer that was written after its last sanitize is refused, and
// the buffer is quarantined until it is sanitized again and released.
func Example_quarantine() {
	trail, done := newTrail()
	defer done()
	l, _ := tracer.New(tracer.Options{Trail: trail, Policy: policy.Default()})

	h, _ := l.Allocate(tracer.Tags{Tenant: "acme"}, 4096, tracer.AllocOptions{})
	l.MarkInUse(h)
	err := l.Free(h)
	fmt.Println(errors.Is(err, tracer.ErrFreeWithoutSanitize))
	state, _ := l.State(h)
	fmt.Println(state)
	fmt.Println(errors.Is(l.Free(h), tracer.ErrQuarantined))

	l.Sanitize(h)
	fmt.Println(l.Release(h, "reviewed by on-call"))
	// Output:
	// true
	// quarantined
	// true
	// <nil>
}
