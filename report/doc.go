// Package report draws the auditor's evidence report from a verified trail:
// the verdict and what it did not check, per tenant and per process counts
// and distributions, violations over time, the node's posture over time,
// the trail's prune and key history, and, given compliance controls, each
// control's outcome. It renders one self-contained HTML file (inline CSS
// and SVG, no script, nothing fetched), Markdown, or JSON.
//
// Lifecycle: Build reads the trail once, streaming: forensic.Events for the
// bodies (decoded by trailevent), and the records' timestamps read beside
// them (stamps.go). Everything is folded into bounded aggregates: fixed
// histogram buckets, a timeline of at most maxBuckets buckets whose width
// grows with the span, and at most Limits rows per tenant and per process,
// the rest summed into one row that says how many more there were. Memory
// does not grow with the trail. Build refuses a verdict that is not OK.
//
// Locking: none shared. A Build reads lines on one goroutine and folds them
// on its caller's, handing batches over channels; the aggregates belong to
// the folding goroutine alone. A Report is a value the renderers only read.
package report
