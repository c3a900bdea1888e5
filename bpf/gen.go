package bpf

// bpf2go compiles kvh.bpf.c and writes the Go bindings with the object
// embedded, so go build and go vet need no clang. Regenerate with
// `make generate` (clang, llvm, libbpf-dev); CI fails if the committed output
// differs. Only amd64 is generated: the uprobe programs read pt_regs, whose
// layout is per architecture, and arm64 headers are not on this build host.
//go:generate go tool bpf2go -tags linux -target amd64 -type event kvh kvh.bpf.c -- -I/usr/include/x86_64-linux-gnu -O2 -g -Wall -Werror
