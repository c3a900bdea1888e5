//go:build !(linux && cgo)

package bpf

import "errors"

// SelfTest needs cgo (dlopen, dladdr).
func SelfTest(path string) ([]string, error) {
	return nil, errors.New("witness self-test needs a cgo build on linux")
}
