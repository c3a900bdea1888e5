// Package ingest is the agent's end of the interposer socket: a
// SOCK_SEQPACKET listener whose every connection is identified by the kernel
// (SO_PEERCRED, then /proc/<pid>), never by what the client claims. Records
// feed the ledger as remote buffers (allocation → attestation → free); the
// ledger writes each transition to the trail itself, and ingest writes its
// own events (connections, drops) as trailevent bodies. Violations it sees
// (a quarantined buffer, a free without a passing sanitize, too many dropped
// events) are emitted to the violation queue and never acted on here. The
// Correlator joins the eBPF witness's frees with attestations and is a
// detector too.
//
// Lifecycle: Listen binds the socket; New; Serve accepts until Close; each
// connection is read by one goroutine, so one process's records are handled
// in order. Hostile input — garbage, truncated or oversized packets, floods
// of connections — is counted and logged and never stops the agent.
// Locking: the connection set has one mutex, never held across I/O; writes
// to a client (deny) have a deadline; per-connection state is owned by its
// goroutine; Peers and the Correlator have their own mutexes.
package ingest
