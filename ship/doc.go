// Package ship keeps a node's trail off the node: it copies every byte of
// every segment and of checkpoints.jsonl to S3-compatible object storage
// with Object Lock (compliance mode), and reads a shipped trail back for
// kvh-verify.
//
// Layout. Trail files are append-only, so the shipper ships each one as a
// sequence of immutable chunks, one object each, named by the file, a
// generation and the byte offset the chunk starts at:
//
//	<prefix>/<node>/<file>/g<generation>/<offset, 20 digits>
//
// Concatenating a file's chunks in offset order gives back a prefix of the
// file, byte for byte. A chunk is never written twice: every object is
// locked when it is written, and the bucket keeps versions, so a rewrite
// shows up as a second version. A file that changed behind the shipper's
// back (shorter than what was shipped, a different inode, different bytes
// where the last chunk ended: truncated, deleted and recreated, rewritten)
// starts a new generation instead of overwriting anything, and the old one
// stays in the bucket under its lock; kvh-verify takes each file's newest
// generation as the node's trail and every generation's newest checkpoint as
// off-node checkpoints, so truncation together with deletion of the local
// checkpoints fails verification.
//
// Consistency. A round reads checkpoints.jsonl first, then ships segment
// bytes only up to the records its newest checkpoint attests, then the
// checkpoint lines: the bucket never holds a checkpoint for records it does
// not hold, and never holds records no shipped checkpoint covers.
//
// The queue is durable and local: the trail files themselves hold what is
// to ship, and <trail>/ship/state.json (0600, written by rename after
// fsync, every 16 chunks and after every round) holds how far each file has
// been shipped. After a start or a failed upload, the next round asks the
// store for each chunk before sending it and takes one that is there with
// the node's bytes, so a crash, a restart or a lost answer never writes an
// object twice.
//
// Lifecycle and locking: New validates the configuration and credentials;
// Run ships in rounds until its context ends, backing off after a failed
// round; it only reads the trail files and never takes the trail's lock, so
// it never blocks the writer. Stats and the metrics are safe for concurrent
// use; everything else belongs to Run's goroutine.
package ship
