// Package bpf is kvh's witness: eBPF uprobes on every CUDA driver and
// runtime library the node's processes map, reporting each allocation and
// free through a ring buffer, whatever way the caller reached the function
// (v1 and v2 entry points alike) and whether or not it loaded the
// interposer. A call is reported on its return and only when it succeeded;
// refused calls are counted per function (Failed). SelfTest checks that a
// driver's cuGetProcAddress, at the versions and flags real runtimes use,
// hands out only entry points the probes sit on.
//
// Lifecycle: Start loads the programs (their object is embedded by bpf2go;
// see gen.go), attaches them to the libraries given and to every distinct
// libcuda/libcudart inode found in /proc/*/maps (opened through
// /proc/<pid>/root, deduplicated by device and inode), then rescans /proc on
// an interval so that libraries of processes started later are covered too.
// Events arrive on the Events channel; Close detaches everything. Needs root
// (CAP_BPF, CAP_PERFMON); Start says why when it cannot run.
package bpf
