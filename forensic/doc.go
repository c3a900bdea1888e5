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
// What Open refuses, and why. A crash leaves at most an incomplete final line
// in the last, open segment, so that is all a torn tail may be: a complete line
// that does not verify (records after it were cut off, not torn), anything
// after a close record, or checkpoints attesting records that are not there is
// tampering, and Open returns a *TamperError (ErrTampered) naming the file,
// line and seq instead of sealing over it. With Options.AcceptTampered it moves
// every trail file, untouched, into evidence-<time>/ and starts a new log whose
// first record after the genesis is a signed tamper_detected record binding
// those files by SHA-256. Open also refuses a trail directory that another uid
// owns or that group or others may write (they could swap the files the root
// agent opens), any trail file that is not a regular file (files are opened
// relative to the directory with O_NOFOLLOW), and a signing key other than the
// one the trail's checkpoints carry (a second key would leave the trail
// verifiable by neither).
//
// Key rotation (rekey.go): given the trail's key as Options.PreviousSigner
// (and its MAC key as PreviousMACKey), Open writes a rekey record naming the
// new verifier key and MAC key id, MAC'd under the old MAC key and sealed by
// a checkpoint the old key signs and the new key cosigns, then continues
// with the new keys. Verify follows the chain from any key the auditor
// trusts: a rekey record counts only when its seal is signed by the key it
// retires and that key is the current one; a retired key signs nothing
// after its seal. Prune carries pruned rekey records, with the frontier that
// proves each against its seal, in its prune record.
//
// Locking: one writer goroutine owns the files; Append is safe for concurrent
// use; a second Open of the same directory, in any process, fails with
// ErrLocked. Verify and VerifySeed only read and need no lock.
package forensic
