//go:build !(linux && (amd64 || arm64))

package bpf

import "fmt"

// Witness is not available on this platform.
type Witness struct{}

// Start always fails here.
func Start(Options) (*Witness, error) {
	return nil, fmt.Errorf("%w: built for linux/amd64 and linux/arm64 only", ErrUnavailable)
}

func (*Witness) Events() <-chan []Event    { return nil }
func (*Witness) Attached() []string        { return nil }
func (*Witness) Lost() uint64              { return 0 }
func (*Witness) Failed() map[string]uint64 { return nil }
func (*Witness) Close() error              { return nil }
