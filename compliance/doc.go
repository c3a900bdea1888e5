// Package compliance maps kvh to the controls an auditor of a multi-tenant
// GPU service asks about, and evaluates each control against a verified
// trail.
//
// controls.yaml (beside this file) is the one list: per
// control, what kvh does, the exact evidence (trail event kinds, metric
// names, kvh-verify commands), how an auditor checks it, what kvh does not
// cover, and a Rule over named facts that the report computes from the trail
// (Facts lists every fact and what it counts). README.md says the same for
// people. Parse refuses a file that names an event kind trailevent does not
// know or a fact the report does not compute; the package's tests also hold
// every metric to the agent's and the ledger's golden expositions, and
// cmd/kvh-verify's tests hold every command to the real CLI.
//
// Lifecycle: Parse (or Load) once, then Evaluate per control with the facts
// of one trail. Nothing here keeps state or locks.
package compliance
