package libkvhtest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/wire"
)

// floorGreeting is an agent's FLOOR with nothing to raise and max_batch n
// (0: an agent from before the field).
func floorGreeting(n uint32) func(int, int32) [][]byte {
	msg := wire.ControlMsg{Type: wire.CtlFloor, MaxBatch: n}.Encode()
	return func(int, int32) [][]byte { return [][]byte{msg} }
}

// TestBatchNegotiated: libkvh sends at most wire.BaseBatch records a packet
// (what every agent takes) until the agent's FLOOR says it takes more, then
// up to what it said, never above wire.MaxBatch (and never below the base:
// packets of the base may already be on their way when the FLOOR arrives). A slow reader fills the
// ring, so packets are as large as allowed: the largest seen must be the
// limit itself, and none refused.
func TestBatchNegotiated(t *testing.T) {
	for _, tc := range []struct {
		name  string
		floor uint32 // the FLOOR's max_batch
		want  int
	}{
		{"agent that takes more", wire.MaxBatch, wire.MaxBatch},
		{"agent from before max_batch", 0, wire.BaseBatch},
		{"agent that asks for fewer than every agent takes", 8, wire.BaseBatch},
		{"agent that takes a few more", 40, 40},
		{"agent that claims too many", 1 << 20, wire.MaxBatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := listen(t)
			l.SetLimit(tc.want)
			l.SetSlow(2 * time.Millisecond)
			l.SetGreeting(floorGreeting(tc.floor))
			// About a second: 100 pairs a millisecond.
			run := Exec("churn", Lib(), []string{"KVH_SOCKET=" + l.Path, "KVH_VERIFY=off"}, "100000", "100", "100", "256")
			if run.Err != nil || run.Value("CALLS") <= 0 {
				t.Fatalf("%v\n%s%s", run.Err, run.Stdout, run.Stderr)
			}
			if got := l.MaxPacket(); got != tc.want || l.Errs() != 0 {
				t.Fatalf("largest packet %d records, %d refused; want %d, none refused", got, l.Errs(), tc.want)
			}
		})
	}
}

// TestBatchFollowsReconnect: an agent that took 128 records a packet goes,
// one from before max_batch takes its socket (a rollback): libkvh sends it
// BaseBatch at most, batches taken for the first included.
func TestBatchFollowsReconnect(t *testing.T) {
	dir := t.TempDir()
	l1, err := Listen(dir)
	if err != nil {
		t.Fatal(err)
	}
	l1.SetSlow(2 * time.Millisecond)
	l1.SetGreeting(floorGreeting(wire.MaxBatch))
	p := Start("churn", Lib(), []string{"KVH_SOCKET=" + l1.Path, "KVH_VERIFY=off"}, "300000", "100", "100", "256")
	deadline := time.Now().Add(10 * time.Second)
	for l1.MaxPacket() < wire.MaxBatch && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if l1.MaxPacket() != wire.MaxBatch {
		p.cmd.Process.Kill()
		p.Wait()
		t.Fatalf("the first agent's largest packet: %d records, want %d", l1.MaxPacket(), wire.MaxBatch)
	}
	l1.Close()
	os.Remove(filepath.Join(dir, "kvh.sock"))
	l2, err := Listen(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	l2.SetLimit(wire.BaseBatch)
	l2.SetSlow(2 * time.Millisecond)
	l2.SetGreeting(floorGreeting(0))
	run := p.Wait()
	if run.Err != nil {
		t.Fatalf("%v\n%s%s", run.Err, run.Stdout, run.Stderr)
	}
	if got := l2.MaxPacket(); got != wire.BaseBatch || l2.Errs() != 0 {
		t.Fatalf("after reconnecting: largest packet %d records, %d refused; want %d, none refused", got, l2.Errs(), wire.BaseBatch)
	}
}

// TestDenyHeardWhileBusy: an agent that reads, but more slowly than the
// process emits, never sees the process's ring empty. A deny it sends then
// must still be heard, within the run: the reporter reads the agent every
// millisecond, busy or not (it used to read only when the ring was empty,
// so a busy process never heard a deny or a floor).
func TestDenyHeardWhileBusy(t *testing.T) {
	l := listen(t)
	l.SetSlow(2 * time.Millisecond)
	// Flat out, several seconds: the ring stays full behind the slow reader.
	p := Start("churn", Lib(), []string{"KVH_SOCKET=" + l.Path, "KVH_VERIFY=off"}, "20000000", "100", "0", "256")
	time.Sleep(300 * time.Millisecond)
	l.Broadcast(wire.Control(wire.CtlDeny))
	run := p.Wait()
	if run.Err == nil || !strings.Contains(run.Stderr, "cuMemAlloc") {
		t.Fatalf("the churn ran to its end (%v), the deny unheard:\n%s%s", run.Err, run.Stdout, run.Stderr)
	}
}
