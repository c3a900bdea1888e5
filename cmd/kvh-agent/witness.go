package main

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/kvhygiene/kvh/bpf"
	"github.com/kvhygiene/kvh/ingest"
	"github.com/kvhygiene/kvh/violation"
	"github.com/prometheus/client_golang/prometheus"
)

var defaultDriverLibs = []string{"/usr/lib/x86_64-linux-gnu/libcuda.so.1", "/usr/lib64/libcuda.so.1", "/usr/local/nvidia/lib64/libcuda.so.1", "/usr/lib/libcuda.so.1"}

// startWitness attaches the eBPF witness unless --witness=off. It returns
// nil (and logs why) when the witness is off or cannot attach under auto;
// under --witness=on that is an error.
//
// A process that maps a CUDA library the witness cannot probe (the path
// its maps name was deleted or replaced after the mapping) is an
// uncovered_process violation on out: its calls through that library go
// unwitnessed.
func startWitness(cfg *Config, log hclog.Logger, reg prometheus.Registerer, m *agentMetrics, out violation.Sink) (*bpf.Witness, error) {
	if cfg.Witness == "off" {
		log.Info("eBPF witness off (--witness=off): frees are judged from interposer attestations only")
		return nil, nil
	}
	libs := cfg.WitnessLibs
	if len(libs) == 0 {
		for _, p := range defaultDriverLibs {
			if _, err := os.Stat(p); err == nil {
				libs = append(libs, p)
			}
		}
	}
	unprobed := func(pid int, lib, why string) {
		out.Emit(violation.Violation{Kind: violation.UncoveredProcess, PID: pid, Source: "witness",
			Detail: fmt.Sprintf("maps a CUDA library the witness cannot probe (%s): %s", why, lib)})
	}
	w, err := bpf.Start(bpf.Options{Libraries: libs, ProcRoot: cfg.ProcRoot, Log: log.Named("witness"), Unprobed: unprobed})
	switch {
	case err != nil && cfg.Witness == "on":
		return nil, fmt.Errorf("--witness=on: %w", err)
	case err != nil:
		log.Warn("eBPF witness off: frees are judged from interposer attestations only", "reason", err)
		return nil, nil
	}
	m.witness.Set(1)
	registerWitnessMetrics(reg, w)
	log.Info("eBPF witness attached", "libraries", w.Attached())
	for _, lib := range libs {
		bad, err := bpf.SelfTest(lib)
		if err != nil {
			log.Warn("witness self-test could not run", "library", lib, "error", err)
			continue
		}
		m.witnessMismatch.Add(float64(len(bad)))
		for _, b := range bad {
			log.Warn("witness self-test: a way in the probes do not see", "library", lib, "detail", b)
		}
		if len(bad) == 0 {
			log.Info("witness self-test passed: cuGetProcAddress hands out the probed entry points", "library", lib)
		}
	}
	return w, nil
}

// runWitness feeds the witness's driver calls to the correlator and settles
// it on a ticker, until the witness closes and ctx ends.
func runWitness(ctx context.Context, wg *sync.WaitGroup, w *bpf.Witness, corr *ingest.Correlator, events prometheus.Counter) {
	self := os.Getpid()
	wg.Add(2)
	go func() {
		defer wg.Done()
		for batch := range w.Events() {
			events.Add(float64(len(batch)))
			at := time.Now()
			for _, ev := range batch {
				if ev.Driver() && int(ev.TGID) != self {
					corr.Witness(ingest.Witnessed{PID: int(ev.TGID), Ptr: ev.Ptr, Fn: ev.Fn, Free: ev.Free, At: at})
				}
			}
		}
	}()
	go func() {
		defer wg.Done()
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				corr.Check(now)
			}
		}
	}()
}
