// Package libkvhtest holds the end-to-end tests of libkvh.so (interpose/,
// which is C only): they build the interposer, the fake CUDA libraries and
// one client per way into the driver with make, run each client with and
// without LD_PRELOAD, and listen on a SOCK_SEQPACKET socket for its reports.
// It has no non-test code beyond the helpers other packages' tests share.
package libkvhtest
