// Package ingest is the agent's end of the interposer socket: a
// SOCK_SEQPACKET listener whose every connection is identified by the kernel
// (SO_PEERCRED, then /proc/<pid>), never by what the client claims. Records
// feed the ledger as remote buffers (allocation → attestation → free), every
// verdict reaches the trail through the ledger before anything acts on it,
// and violations go to the action.Enforcer.
//
// Lifecycle: New listens; Serve accepts until Close; each connection is read
// by one goroutine, so one process's records are handled in order. Hostile
// input — garbage, truncated or oversized packets, floods of connections —
// is counted and logged and never stops the agent. Locking: the connection
// set has one mutex; per-connection state is owned by its goroutine.
package ingest
