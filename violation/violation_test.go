package violation

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

func TestKindsDocumentedAndValid(t *testing.T) {
	seen := map[Kind]bool{}
	for _, k := range Kinds() {
		if seen[k] {
			t.Fatalf("%s listed twice", k)
		}
		seen[k] = true
		if !k.Valid() || k.Doc() == "" {
			t.Errorf("%s: valid %v, doc %q", k, k.Valid(), k.Doc())
		}
	}
	if len(seen) != len(docs) {
		t.Fatalf("Kinds lists %d kinds, docs has %d", len(seen), len(docs))
	}
	if Kind("made_up").Valid() {
		t.Fatal("an unknown kind is valid")
	}
}

func TestQueueOrderAndOverflow(t *testing.T) {
	q := NewQueue(3)
	for i := 1; i <= 5; i++ {
		q.Emit(Violation{Kind: TTLExpired, PID: i})
	}
	q.Emit(Violation{Kind: UnattestedFree, PID: 6})
	vs, over, ok := q.Next(context.Background())
	if !ok || len(vs) != 3 || vs[0].PID != 1 || vs[2].PID != 3 {
		t.Fatalf("Next = %v %v", vs, ok)
	}
	if over[TTLExpired] != 2 || over[UnattestedFree] != 1 {
		t.Fatalf("overflow = %v", over)
	}
	if vs[0].At.IsZero() {
		t.Fatal("Emit did not stamp the time")
	}
	// The queue has room again.
	q.Emit(Violation{Kind: TTLExpired, PID: 7})
	vs, over, _ = q.Next(context.Background())
	if len(vs) != 1 || vs[0].PID != 7 || len(over) != 0 {
		t.Fatalf("after drain: %v %v", vs, over)
	}
}

// Emit never blocks, whatever the consumer does.
func TestEmitNeverBlocks(t *testing.T) {
	q := NewQueue(1)
	done := make(chan struct{})
	go func() {
		for i := 0; i < 100000; i++ {
			q.Emit(Violation{Kind: DroppedEvents, PID: i})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Emit blocked with no consumer")
	}
	_, over, _ := q.Next(context.Background())
	if over[DroppedEvents] != 99999 {
		t.Fatalf("overflow %v, want 99999", over)
	}
}

func TestNextWaitsAndCloses(t *testing.T) {
	q := NewQueue(0)
	got := make(chan []Violation)
	go func() {
		vs, _, _ := q.Next(context.Background())
		got <- vs
	}()
	time.Sleep(20 * time.Millisecond)
	q.Emit(Violation{Kind: QuarantinedBuffer, PID: 9})
	select {
	case vs := <-got:
		if len(vs) != 1 || vs[0].PID != 9 {
			t.Fatalf("Next = %v", vs)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Next did not wake on Emit")
	}
	q.Emit(Violation{Kind: QuarantinedBuffer, PID: 10})
	q.Close()
	q.Emit(Violation{Kind: QuarantinedBuffer, PID: 11}) // after Close: ignored
	vs, _, ok := q.Next(context.Background())
	if !ok || len(vs) != 1 || vs[0].PID != 10 {
		t.Fatalf("drain after Close = %v %v", vs, ok)
	}
	if _, _, ok := q.Next(context.Background()); ok {
		t.Fatal("Next after drain of a closed queue reported ok")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, ok := NewQueue(1).Next(ctx); ok {
		t.Fatal("Next ignored a cancelled context")
	}
}

// The README's table of kinds names every kind.
func TestREADMEListsEveryKind(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range Kinds() {
		if !strings.Contains(string(b), "| `"+string(k)+"` |") {
			t.Errorf("README.md's table of violation kinds lacks %s", k)
		}
	}
}
