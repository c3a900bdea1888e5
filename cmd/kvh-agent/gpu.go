package main

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/kvhygiene/kvh/gpu"
	"github.com/kvhygiene/kvh/internal/proc"
	"github.com/kvhygiene/kvh/trailevent"
	"github.com/kvhygiene/kvh/violation"
)

// readPosture reads the driver's scrub-on-free setting and, when NVML
// answers, the GPUs. inv is nil without an NVIDIA driver.
func readPosture(cfg *Config, log hclog.Logger, m *agentMetrics) (gpu.Inventory, trailevent.Posture) {
	post := gpu.ReadPosture(cfg.NVIDIAParams, cfg.ModprobeDir)
	rec := trailevent.Posture{Ev: trailevent.EvPosture, ScrubOnFree: post.ScrubOnFree, Source: post.Source}
	if post.ScrubOnFree == 0 {
		log.Warn("driver scrub-on-free is DISABLED: memory returned to the driver keeps its contents", "source", post.Source)
	}
	inv, err := gpu.Open(nil)
	if err != nil {
		log.Warn("no NVIDIA driver: GPU inventory and uncovered-process checks are off; interposer events are still judged", "error", err)
		rec.NVML = "not available"
		m.posture(post, nil)
		return nil, rec
	}
	devs, err := inv.Devices()
	if err != nil {
		log.Warn("NVML devices", "error", err)
	}
	drv, err := inv.DriverVersion()
	if err != nil {
		log.Warn("NVML driver version", "error", err)
	}
	rec.Driver = drv
	for _, d := range devs {
		rec.Devices = append(rec.Devices, trailevent.Device{Index: d.Index, UUID: d.UUID, Name: d.Name, MemoryTotal: d.MemoryTotal, MemoryUsed: d.MemoryUsed, MIG: d.MIG, Persistence: d.Persistence})
	}
	m.posture(post, devs)
	log.Info("NVML", "driver", drv, "devices", len(devs))
	return inv, rec
}

// watchGPU is a detector: it emits an uncovered_process for each process NVML
// sees using a GPU with no interposer connection (once per process).
func watchGPU(ctx context.Context, inv gpu.Inventory, every time.Duration, procRoot string, connected func(pid int) bool, out violation.Sink) {
	seen := map[string]bool{} // by process (pid and start time): a pid reused later is a new process
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ps, err := inv.Processes()
		if err != nil {
			continue
		}
		if len(seen) > 65536 {
			clear(seen) // bounded; a process still uncovered is reported again
		}
		for _, p := range ps {
			key, err := proc.KeyOf(procRoot, int(p.PID))
			if err != nil || seen[key] || connected(int(p.PID)) {
				continue
			}
			seen[key] = true
			out.Emit(violation.Violation{Kind: violation.UncoveredProcess, PID: int(p.PID), Source: "gpu", Detail: fmt.Sprintf("uses %d bytes on %s without an interposer", p.UsedBytes, p.Device)})
		}
	}
}
