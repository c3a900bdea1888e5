// Package forensic is kvh's tamper-evident trail: an append-only, segmented JSONL
// log whose exact line bytes are RFC 6962 Merkle leaves, chained by seq and prev,
// optionally HMAC'd (mandatory once the genesis declares it), and sealed by
// Ed25519-signed checkpoints in the C2SP signed-note format.
//
// Lifecycle: Open takes an exclusive lock on the trail directory, recovers the
// last segment without ever truncating it (a torn tail is declared, by length
// and SHA-256, in the segment that follows), and starts a new segment. Append
// hands a record to the single writer goroutine, which batches whatever arrived
// during the previous flush into one write and one fdatasync, signs a
// checkpoint, and only then acknowledges: when Append returns nil the record is
// durable. Close writes a final close record and checkpoint.
//
// Locking: one writer goroutine owns the files; Append is safe for concurrent
// use; a second Open of the same directory, in any process, fails with
// ErrLocked. Verify and VerifySeed only read and need no lock.
package forensic
