// Package zeroize clears and verifies host memory: Zero at memory bandwidth
// (clear, split across cores above ParallelThreshold), IsZero as fast as a
// plain read scan, deterministic sampled verification whose seed is recorded
// so an auditor can recompute the offsets, and a double pass (a pattern, then
// zeros). Sanitize combines them and reports coverage. Functions are safe for
// concurrent use on distinct buffers; Faults is a test seam.
package zeroize
