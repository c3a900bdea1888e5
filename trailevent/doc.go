// Package trailevent is the vocabulary of kvh's trail: every record body the
// agent and the ledger write is one of the typed structs here, and the
// auditor's tools read them back with Decode and Read.
//
// A body is a JSON object whose "ev" field names its event; Kinds lists every
// event name with its Go type and meaning, and docs/trail-schema.md is
// generated from that list (a test fails when they differ, and when a kind or
// a field has no description).
//
// Versioning: Version is written in the agent_start record that opens every
// agent run. Adding an event or an optional field keeps the version (readers
// ignore fields they do not know, and report events they do not know with
// ErrUnknownEvent); renaming or removing a field, or changing its meaning or
// type, bumps it.
package trailevent
