//go:build !(linux && cgo)

package bpf

import "errors"

// ErrNotTestable means the library has no resolver to test: nothing passed.
var ErrNotTestable = errors.New("witness self-test: not testable")

// SelfTest needs cgo (dlopen, dladdr).
func SelfTest(path string) ([]string, error) {
	return nil, errors.New("witness self-test needs a cgo build on linux")
}
