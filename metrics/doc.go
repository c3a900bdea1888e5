// Package metrics holds the seed-compatible hygiene exports that users' gates
// already read — the JSON file with the seed's 13 keys and the node_exporter
// textfile with its kv_hygiene_* series — and the gate that judges them
// (kvh-verify gate). File exports are atomic: a temp file in the same
// directory, fsync, rename. Nothing here keeps state; callers own locking.
package metrics
