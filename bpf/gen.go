package bpf

// bpf2go compiles kvh.bpf.c and writes the Go bindings with the object
// embedded, so go build and go vet need no clang. Regenerate with
// `make generate` (clang, llvm, libbpf-dev); CI fails if the committed output
// differs. The programs read pt_regs, whose layout is per architecture:
// x86's comes from the host's uapi headers, arm64's is declared in kvh.bpf.c.
//go:generate go tool bpf2go -tags linux -target amd64,arm64 -type event kvh kvh.bpf.c -- -I/usr/include/x86_64-linux-gnu -O2 -g -Wall -Werror
