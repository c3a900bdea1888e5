package main

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/gpu"
	"github.com/kvhygiene/kvh/violation"
)

type fakeInventory struct{ procs []gpu.Process }

func (f fakeInventory) Devices() ([]gpu.Device, error)    { return nil, nil }
func (f fakeInventory) DriverVersion() (string, error)    { return "535", nil }
func (f fakeInventory) Processes() ([]gpu.Process, error) { return f.procs, nil }
func (f fakeInventory) Close() error                      { return nil }

// The NVML watcher reports each uncovered process once, whatever the ticks,
// and never a connected one.
func TestWatchGPU(t *testing.T) {
	self := uint32(os.Getpid())
	inv := fakeInventory{procs: []gpu.Process{{PID: self, Device: "GPU-1", UsedBytes: 1 << 20}, {PID: 1, Device: "GPU-1"}}}
	q := violation.NewQueue(0)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	watchGPU(ctx, inv, 20*time.Millisecond, "/proc", func(pid int) bool { return pid == 1 }, q)
	q.Close()
	vs, _, _ := q.Next(context.Background())
	if len(vs) != 1 || vs[0].PID != int(self) || vs[0].Kind != violation.UncoveredProcess || vs[0].Source != "gpu" {
		t.Fatalf("violations %+v, want one uncovered_process for pid %d", vs, self)
	}
}
