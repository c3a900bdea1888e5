// Command kvh-agent is kvh's node agent: one privileged process per GPU node
// that turns every interposer event into a judged, durable, signed trail
// record, exposes hygiene to Prometheus, and acts on violators.
//
// Sources of configuration, later wins: defaults, --policy FILE, the
// environment (KV_*/KVH_*, FORENSIC_HMAC_SECRET), flags. SIGTERM or SIGINT
// drains and closes the trail cleanly; SIGHUP reloads the policy.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/kvhygiene/kvh/action"
	"github.com/kvhygiene/kvh/bpf"
	"github.com/kvhygiene/kvh/forensic"
	"github.com/kvhygiene/kvh/gpu"
	"github.com/kvhygiene/kvh/ingest"
	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/tracer"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"
)

// Config is everything the agent is told, validated once.
type Config struct {
	Socket          string
	Listen          string
	TrailDir        string
	SigningKey      string
	HMACKeyFile     string
	Origin          string
	MetricsJSON     string
	MetricsTextfile string
	ExportInterval  time.Duration
	SweepInterval   time.Duration
	GPUInterval     time.Duration
	LogFormat       string
	LogLevel        string
	AppendOnly      bool
	Witness         string
	WitnessLibs     []string
	AttestWindow    time.Duration
	DropThreshold   uint64
	ProcRoot        string
	CgroupRoot      string
	NVIDIAParams    string
	ModprobeDir     string
	policyFlags     *policy.Flags
}

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func parseFlags(args []string) (*Config, *pflag.FlagSet, error) {
	c := &Config{}
	fs := pflag.NewFlagSet("kvh-agent", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.StringVar(&c.Socket, "socket", "/run/kvh/kvh.sock", "interposer socket (SOCK_SEQPACKET, mode 0660)")
	fs.StringVar(&c.Listen, "listen", ":9478", "HTTP address for /metrics, /healthz and /readyz")
	fs.StringVar(&c.TrailDir, "trail-dir", "/var/lib/kvh/trail", "the tamper-evident trail's directory")
	fs.StringVar(&c.SigningKey, "signing-key", "/etc/kvh/kvh.key", "checkpoint signing key (from kvh-verify keygen; mode 0600)")
	fs.StringVar(&c.HMACKeyFile, "hmac-key-file", "", "HMAC key file for record MACs (default: $FORENSIC_HMAC_SECRET; none: no MACs)")
	fs.StringVar(&c.Origin, "origin", "", "log origin for a new trail (default kvh/<hostname>/<random id>)")
	fs.StringVar(&c.MetricsJSON, "metrics-json", "", "write the seed-compatible metrics JSON here periodically (atomic)")
	fs.StringVar(&c.MetricsTextfile, "metrics-textfile", "", "write the seed-compatible node_exporter textfile here periodically (atomic)")
	fs.DurationVar(&c.ExportInterval, "export-interval", 10*time.Second, "how often to write the metrics files")
	fs.DurationVar(&c.SweepInterval, "sweep-interval", time.Second, "how often TTLs are enforced on idle buffers")
	fs.DurationVar(&c.GPUInterval, "gpu-interval", 10*time.Second, "how often NVML's GPU processes are checked for interposer coverage")
	fs.StringVar(&c.LogFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: trace, debug, info, warn, error")
	fs.BoolVar(&c.AppendOnly, "append-only", true, "set the append-only attribute on trail files when permitted")
	fs.StringVar(&c.Witness, "witness", "auto", "eBPF witness: auto (on when possible), on (required) or off")
	fs.StringArrayVar(&c.WitnessLibs, "witness-lib", nil, "a CUDA driver or runtime library to probe (repeatable; default: the node's libcuda.so.1, plus every copy processes map)")
	fs.DurationVar(&c.AttestWindow, "attest-window", 2*time.Second, "how long a witnessed free waits for its interposer attestation")
	fs.Uint64Var(&c.DropThreshold, "drop-threshold", 1000, "events an interposer may drop before it is a violation")
	fs.StringVar(&c.ProcRoot, "proc-root", "/proc", "procfs mount (identity of connected processes)")
	fs.StringVar(&c.CgroupRoot, "cgroup-root", "/sys/fs/cgroup", "cgroup v2 mount (freeze action)")
	fs.StringVar(&c.NVIDIAParams, "nvidia-params", "/proc/driver/nvidia/params", "the driver's live parameters (scrub-on-free posture)")
	fs.StringVar(&c.ModprobeDir, "modprobe-dir", "/etc/modprobe.d", "modprobe configuration (scrub-on-free posture fallback)")
	c.policyFlags = policy.Register(fs)
	if err := fs.Parse(args); err != nil {
		return nil, fs, err
	}
	if fs.NArg() > 0 {
		return nil, fs, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		return nil, fs, fmt.Errorf("--log-format %q is not text or json", c.LogFormat)
	}
	if hclog.LevelFromString(c.LogLevel) == hclog.NoLevel {
		return nil, fs, fmt.Errorf("--log-level %q is not trace, debug, info, warn or error", c.LogLevel)
	}
	switch c.Witness {
	case "auto", "on", "off":
	default:
		return nil, fs, fmt.Errorf("--witness %q is not auto, on or off", c.Witness)
	}
	for name, d := range map[string]time.Duration{"export-interval": c.ExportInterval, "sweep-interval": c.SweepInterval, "gpu-interval": c.GPUInterval, "attest-window": c.AttestWindow} {
		if d <= 0 {
			return nil, fs, fmt.Errorf("--%s must be positive", name)
		}
	}
	return c, fs, nil
}

func run(args []string, stderr *os.File) int {
	cfg, _, err := parseFlags(args)
	if err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "kvh-agent:", err)
		return 2
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "kvh-agent", Level: hclog.LevelFromString(cfg.LogLevel), JSONFormat: cfg.LogFormat == "json", Output: stderr})
	pol, err := cfg.policyFlags.Load(os.LookupEnv)
	if err != nil {
		fmt.Fprintln(stderr, "kvh-agent: invalid policy:", err)
		return 2
	}
	// Take the signals before anything else: a SIGHUP or SIGTERM that
	// arrives while starting is handled once started, not fatal.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	a := &agent{cfg: cfg, log: log}
	if err := a.start(pol); err != nil {
		log.Error("start failed", "error", err)
		a.stop()
		return 1
	}
	for s := range sigs {
		if s == syscall.SIGHUP {
			a.reload()
			continue
		}
		log.Info("shutting down", "signal", s.String())
		break
	}
	if err := a.stop(); err != nil {
		log.Error("shutdown", "error", err)
		return 1
	}
	log.Info("trail closed cleanly")
	return 0
}

type agent struct {
	cfg     *Config
	log     hclog.Logger
	trail   *forensic.Log
	ledger  *tracer.Ledger
	server  *ingest.Server
	http    *http.Server
	inv     gpu.Inventory
	ready   atomic.Bool
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	metrics *ingest.Metrics
	enf     *action.Enforcer
	witness *bpf.Witness
	corr    *ingest.Correlator
}

func (a *agent) start(pol policy.Config) error {
	cfg, log := a.cfg, a.log
	signer, err := forensic.LoadSigner(cfg.SigningKey)
	if err != nil {
		return fmt.Errorf("signing key: %w (make one with: kvh-verify keygen --out DIR)", err)
	}
	macKey, err := forensic.LoadMACKey(cfg.HMACKeyFile)
	if err != nil {
		return fmt.Errorf("hmac key: %w", err)
	}
	a.trail, err = forensic.Open(cfg.TrailDir, forensic.Options{Signer: signer, MACKey: macKey, Origin: cfg.Origin, AppendOnly: cfg.AppendOnly})
	if err != nil {
		return fmt.Errorf("opening trail %s: %w", cfg.TrailDir, err)
	}
	st := a.trail.Stats()
	log.Info("trail open", "dir", cfg.TrailDir, "origin", a.trail.Origin(), "records", st.Records, "segment", st.Segment, "macs", macKey != nil)
	if st.Recovered != nil {
		log.Warn("previous run did not close the trail cleanly; torn bytes declared, nothing truncated", "file", st.Recovered.File, "torn_bytes", st.Recovered.TornLen)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a.metrics = ingest.NewMetrics(reg)
	a.enf = &action.Enforcer{Trail: a.trail, Log: log.Named("action"), ProcRoot: cfg.ProcRoot, CgroupRoot: cfg.CgroupRoot, Violations: a.metrics.Violations, Actions: a.metrics.Actions}
	a.ledger, err = tracer.New(tracer.Options{Trail: a.trail, AsyncTrail: true, Policy: pol, Logger: log.Named("ledger"), OnViolation: func(t tracer.Tags, kind, reason string) {
		a.enf.Handle(action.Violation{Kind: kind, PID: t.PID, Tenant: t.Tenant, Detail: reason})
	}})
	if err != nil {
		return err
	}
	a.enf.Policy = a.ledger.Policy
	reg.MustRegister(a.ledger)
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "kvh", Name: "trail_records_total", Help: "Records in the trail (its size)."}, func() float64 { return float64(a.trail.Stats().Records) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "kvh", Name: "trail_checkpoint_size", Help: "Size attested by the latest signed checkpoint."}, func() float64 { return float64(a.trail.Stats().CheckpointSize) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "kvh", Name: "trail_healthy", Help: "1 while the trail accepts records; 0 after a write error (hygiene events are then refused)."}, func() float64 {
		if a.trail.Err() != nil {
			return 0
		}
		return 1
	}))

	// Posture and GPUs.
	post := gpu.ReadPosture(cfg.NVIDIAParams, cfg.ModprobeDir)
	postRec := map[string]any{"ev": "posture", "scrub_on_free": post.ScrubOnFree, "source": post.Source}
	scrub := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "kvh", Name: "posture_scrub_on_free", Help: "1: the driver scrubs memory returned to it; 0: RmDisableScrubOnFree turns that off; -1: unknown (no driver)."})
	scrub.Set(float64(post.ScrubOnFree))
	reg.MustRegister(scrub)
	if post.ScrubOnFree == 0 {
		log.Warn("driver scrub-on-free is DISABLED: memory returned to the driver keeps its contents", "source", post.Source)
	}
	a.inv, err = gpu.Open(nil)
	if err != nil {
		log.Warn("no NVIDIA driver: GPU inventory and uncovered-process checks are off; interposer events are still judged", "error", err)
		postRec["nvml"] = "not available"
	} else {
		devs, _ := a.inv.Devices()
		drv, _ := a.inv.DriverVersion()
		postRec["driver"], postRec["devices"] = drv, devs
		mig := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "kvh", Name: "posture_mig_enabled", Help: "1 when MIG is enabled on the device."}, []string{"device"})
		pers := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "kvh", Name: "posture_persistence_mode", Help: "1 when persistence mode is on."}, []string{"device"})
		for _, d := range devs {
			mig.WithLabelValues(d.UUID).Set(b2f(d.MIG))
			pers.WithLabelValues(d.UUID).Set(b2f(d.Persistence))
		}
		reg.MustRegister(mig, pers)
		log.Info("NVML", "driver", drv, "devices", len(devs))
	}
	if _, err := a.trail.Append(postRec); err != nil {
		return err
	}

	// The witness: eBPF uprobes on the driver library, joined with attestations.
	witness := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "kvh", Name: "witness_enabled", Help: "1 when the eBPF witness is attached."})
	a.corr = &ingest.Correlator{Window: cfg.AttestWindow,
		Matched: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kvh", Name: "witness_matched_frees_total", Help: "Witnessed frees with an interposer attestation."}),
		Unatt:   prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kvh", Name: "witness_unattested_frees_total", Help: "Witnessed frees with no attestation within the window."}),
		Covered: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "kvh", Name: "uncovered_processes", Help: "Processes seen using the GPU without the interposer."}),
	}
	wevents := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kvh", Name: "witness_events_total", Help: "Calls the witness saw in CUDA libraries."})
	reg.MustRegister(witness, a.corr.Matched, a.corr.Unatt, a.corr.Covered, wevents)
	if cfg.Witness != "off" {
		libs := cfg.WitnessLibs
		if len(libs) == 0 {
			for _, p := range []string{"/usr/lib/x86_64-linux-gnu/libcuda.so.1", "/usr/lib64/libcuda.so.1", "/usr/local/nvidia/lib64/libcuda.so.1", "/usr/lib/libcuda.so.1"} {
				if _, err := os.Stat(p); err == nil {
					libs = append(libs, p)
				}
			}
		}
		w, err := bpf.Start(bpf.Options{Libraries: libs, ProcRoot: cfg.ProcRoot, Log: log.Named("witness")})
		switch {
		case err != nil && cfg.Witness == "on":
			return fmt.Errorf("--witness=on: %w", err)
		case err != nil:
			log.Warn("eBPF witness off: frees are judged from interposer attestations only", "reason", err)
		default:
			a.witness = w
			witness.Set(1)
			reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "kvh", Name: "witness_lost_events_total", Help: "Witness events lost (ring buffer full or reader behind)."}, func() float64 { return float64(w.Lost()) }))
			reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "kvh", Name: "witness_attached_libraries", Help: "CUDA library inodes probed."}, func() float64 { return float64(len(w.Attached())) }))
			log.Info("eBPF witness attached", "libraries", w.Attached())
			mism := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "kvh", Name: "witness_selftest_mismatches", Help: "Probed driver functions whose cuGetProcAddress entry point is not the exported symbol the probe sits on."})
			reg.MustRegister(mism)
			for _, lib := range libs {
				bad, err := bpf.SelfTest(lib)
				if err != nil {
					log.Warn("witness self-test could not run", "library", lib, "error", err)
					continue
				}
				mism.Add(float64(len(bad)))
				for _, b := range bad {
					log.Warn("witness self-test: a way in the probes do not see", "library", lib, "detail", b)
				}
				if len(bad) == 0 {
					log.Info("witness self-test passed: cuGetProcAddress hands out the probed entry points", "library", lib)
				}
			}
		}
	} else {
		log.Info("eBPF witness off (--witness=off): frees are judged from interposer attestations only")
	}

	var corr *ingest.Correlator // attestations are kept for joining only while a witness reports frees
	if a.witness != nil {
		corr = a.corr
	}
	a.server, err = ingest.New(ingest.Config{Socket: cfg.Socket, Ledger: a.ledger, Trail: a.trail, Enforcer: a.enf, Metrics: a.metrics, Log: log.Named("ingest"), ProcRoot: cfg.ProcRoot, DropThreshold: cfg.DropThreshold, Correlator: corr})
	if err != nil {
		return err
	}
	a.enf.Denier = a.server
	a.corr.Server = a.server
	go a.server.Serve()
	log.Info("listening for interposers", "socket", cfg.Socket)

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := a.trail.Err(); err != nil {
			http.Error(w, "trail: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if !a.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", cfg.Listen, err)
	}
	a.http = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go a.http.Serve(ln)
	log.Info("HTTP", "listen", ln.Addr().String())

	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	a.wg.Add(1)
	go func() { defer a.wg.Done(); a.ledger.Run(ctx, cfg.SweepInterval) }()
	if cfg.MetricsJSON != "" || cfg.MetricsTextfile != "" {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			t := time.NewTicker(cfg.ExportInterval)
			defer t.Stop()
			for {
				a.export()
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}
	if a.inv != nil {
		a.wg.Add(1)
		go func() { defer a.wg.Done(); a.watchGPU(ctx) }()
	}
	if a.witness != nil {
		a.wg.Add(2)
		go func() {
			defer a.wg.Done()
			for ev := range a.witness.Events() {
				wevents.Inc()
				if ev.Driver() && int(ev.TGID) != os.Getpid() {
					a.corr.Witness(ingest.Witnessed{PID: int(ev.TGID), Ptr: ev.Ptr, Fn: ev.Fn, Free: ev.Free, At: time.Now()})
				}
			}
		}()
		go func() {
			defer a.wg.Done()
			t := time.NewTicker(200 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case now := <-t.C:
					a.corr.Check(now)
				}
			}
		}()
	}
	a.ready.Store(true)
	return nil
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (a *agent) export() {
	if err := a.ledger.Export(a.cfg.MetricsJSON, a.cfg.MetricsTextfile); err != nil {
		a.log.Error("metrics export", "error", err)
	}
}

// watchGPU flags processes NVML sees using a GPU with no interposer
// connection (once per pid).
func (a *agent) watchGPU(ctx context.Context) {
	seen := map[uint32]bool{}
	t := time.NewTicker(a.cfg.GPUInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ps, err := a.inv.Processes()
		if err != nil {
			continue
		}
		for _, p := range ps {
			if seen[p.PID] || a.server.Connected(int(p.PID)) {
				continue
			}
			seen[p.PID] = true
			id := ingest.Identify(a.cfg.ProcRoot, int(p.PID), 0)
			a.enf.Handle(action.Violation{Kind: action.UncoveredProcess, PID: int(p.PID), Tenant: id.Tenant, Detail: fmt.Sprintf("uses %d bytes on %s without an interposer", p.UsedBytes, p.Device)})
		}
	}
}

func (a *agent) reload() {
	pol, err := a.cfg.policyFlags.Load(os.LookupEnv)
	if err != nil {
		a.log.Error("policy reload refused; keeping the current policy", "error", err)
		return
	}
	if err := a.ledger.SetPolicy(pol); err != nil {
		a.log.Error("policy reload", "error", err)
		return
	}
	a.log.Info("policy reloaded", "file", a.cfg.policyFlags.File())
}

func (a *agent) stop() error {
	a.ready.Store(false)
	if a.server != nil {
		a.server.Close() // stop accepting, drain every connection's records
	}
	if a.cancel != nil {
		a.cancel()
	}
	if a.witness != nil {
		a.witness.Close() // ends the events goroutine
	}
	a.wg.Wait()
	if a.ledger != nil && (a.cfg.MetricsJSON != "" || a.cfg.MetricsTextfile != "") {
		a.export()
	}
	if a.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		a.http.Shutdown(ctx)
		cancel()
	}
	if a.inv != nil {
		a.inv.Close()
	}
	if a.trail != nil {
		if err := a.trail.Close(); err != nil && !strings.Contains(err.Error(), "closed") {
			return err
		}
	}
	return nil
}
