// Package bpf is kvh's witness: eBPF uprobes on every CUDA driver and
// runtime library the node's processes map, reporting each allocation and
// free through a ring buffer, whatever way the caller reached the function
// and whether or not it loaded the interposer.
//
// Lifecycle: Start loads the programs (their object is embedded by bpf2go;
// see gen.go), attaches them to the libraries given and to every distinct
// libcuda/libcudart inode found in /proc/*/maps (opened through
// /proc/<pid>/root, deduplicated by device and inode), then rescans /proc on
// an interval so that libraries of processes started later are covered too.
// Events arrive on the Events channel; Close detaches everything. Needs root
// (CAP_BPF, CAP_PERFMON); Start says why when it cannot run.
package bpf
