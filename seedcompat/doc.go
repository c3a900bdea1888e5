// Package seedcompat holds the seed-compatible hygiene exports that users'
// gates already read — the JSON file with the seed's 13 keys and the
// node_exporter textfile with its kv_hygiene_* series — and the gate that
// judges them (kvh-verify gate). It renders and judges bytes; callers write
// the files (atomically, with internal/atomicfile). Nothing here keeps state;
// callers own locking.
package seedcompat
