package violation

import (
	"context"
	"testing"
)

// Attack: one process provokes violations faster than the enforcer records
// them (a quarantine per record, a floor ack per record, a drop report per
// connection) and keeps the queue full; a real violator's violation then
// arrives at a full queue and is counted as overflow, never acted on.
func TestAttackOneProcessCannotCrowdOutAnother(t *testing.T) {
	q := NewQueue(4096)
	for i := 0; i < 10000; i++ {
		q.Emit(Violation{Kind: QuarantinedBuffer, PID: 100, Tenant: "uid:65534", Source: "ingest"})
	}
	q.Emit(Violation{Kind: UnattestedFree, PID: 200, Source: "witness"})
	q.Emit(Violation{Kind: FreeWithoutSanitize, PID: 300, Tenant: "uid:1000", Source: "ledger"})
	vs, over, _ := q.Next(context.Background())
	got := map[int]bool{}
	for _, v := range vs {
		got[v.PID] = true
	}
	if !got[200] || !got[300] {
		t.Fatalf("another process's violation was lost behind a flood (overflow %v)", over)
	}
	if over[QuarantinedBuffer] == 0 {
		t.Fatal("the flood's excess was not counted")
	}
}
