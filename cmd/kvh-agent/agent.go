package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/kvhygiene/kvh/action"
	"github.com/kvhygiene/kvh/bpf"
	"github.com/kvhygiene/kvh/forensic"
	"github.com/kvhygiene/kvh/gpu"
	"github.com/kvhygiene/kvh/ingest"
	"github.com/kvhygiene/kvh/internal/nriplugin"
	"github.com/kvhygiene/kvh/internal/proc"
	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/ship"
	"github.com/kvhygiene/kvh/tracer"
	"github.com/kvhygiene/kvh/trailevent"
	"github.com/kvhygiene/kvh/violation"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// agent holds what start built, for reload and stop.
type agent struct {
	cfg      *Config
	log      hclog.Logger
	trail    *forensic.Log
	ledger   *tracer.Ledger
	server   *ingest.Server
	http     *http.Server
	inv      gpu.Inventory
	witness  *bpf.Witness
	queue    *violation.Queue
	ready    atomic.Bool
	cancel   context.CancelFunc
	detect   sync.WaitGroup // detectors: sweeper, GPU watcher, witness, exports
	enforced chan struct{}  // closed when the enforcer has drained the queue
	stopEnf  context.CancelFunc
	shipper  *ship.Shipper // nil without --ship-to
	stopShip context.CancelFunc
	shipped  chan struct{} // closed when the shipper's Run has returned
}

// start builds the agent in dependency order, each object given its
// collaborators: the sockets first (a start that fails writes no records),
// then the trail, the violation queue, the ledger and the detectors that
// feed the queue, and last the enforcer, its one consumer. On error it
// releases what it built.
func start(cfg *Config, pol policy.Config, log hclog.Logger) (_ *agent, err error) {
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	signer, err := forensic.LoadSigner(cfg.SigningKey)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w (make one with: kvh-verify keygen --out DIR)", err)
	}
	macKey, err := forensic.LoadMACKey(cfg.HMACKeyFile)
	if err != nil {
		return nil, fmt.Errorf("hmac key: %w", err)
	}
	topts := forensic.Options{Signer: signer, MACKey: macKey, Origin: cfg.Origin, AppendOnly: cfg.AppendOnly,
		AcceptTampered: cfg.AcceptTamperedTrail, RekeyReason: cfg.RekeyReason}
	if cfg.PreviousSigningKey != "" {
		if topts.PreviousSigner, err = forensic.LoadSigner(cfg.PreviousSigningKey); err != nil {
			return nil, fmt.Errorf("previous signing key: %w", err)
		}
	}
	if cfg.PreviousHMACKeyFile != "" {
		if topts.PreviousMACKey, err = forensic.LoadMACKey(cfg.PreviousHMACKeyFile); err != nil {
			return nil, fmt.Errorf("previous hmac key: %w", err)
		}
		if macKey == nil {
			return nil, errors.New("--previous-hmac-key-file needs the new key in --hmac-key-file")
		}
	}
	gid, err := lookupGroup(cfg.SocketGroup)
	if err != nil {
		return nil, err
	}
	sock, err := ingest.Listen(cfg.Socket, os.FileMode(cfg.SocketMode), gid)
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { sock.Close() })
	httpLn, err := listenHTTP(cfg.Listen)
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { httpLn.Close() })

	trail, err := forensic.Open(cfg.TrailDir, topts)
	if err != nil {
		if te := (*forensic.TamperError)(nil); errors.As(err, &te) {
			log.Error("the trail has been tampered with: refusing to start; investigate, then --accept-tampered-trail keeps its files as evidence and starts a new log",
				"dir", cfg.TrailDir, "file", te.File, "line", te.Line, "seq", te.Seq, "found", te.Found)
		}
		return nil, fmt.Errorf("opening trail %s: %w", cfg.TrailDir, err)
	}
	if tb := trail.Stats().Tamper; tb != nil {
		log.Warn("the trail had been tampered with (--accept-tampered-trail): its files are kept untouched as evidence, and a new log opens with a tamper_detected record",
			"file", tb.File, "line", tb.Line, "seq", tb.Seq, "found", tb.Found, "evidence", filepath.Join(cfg.TrailDir, tb.Evidence))
	}
	if rb := trail.Stats().Rekeyed; rb != nil {
		log.Info("the trail's keys rotated: a rekey record sealed by the previous signing key hands the trail to the new keys; the previous key files may now be destroyed",
			"signing_key", fmt.Sprintf("%s+%08x", signer.Name(), signer.KeyHash()), "mac_key_id", rb.NewMACKeyID, "reason", rb.Reason)
	}
	undo = append(undo, func() { trail.Close() })
	st := trail.Stats()
	log.Info("trail open", "dir", cfg.TrailDir, "origin", trail.Origin(), "records", st.Records, "segment", st.Segment, "macs", macKey != nil)
	if st.Recovered != nil {
		log.Warn("previous run did not close the trail cleanly; torn bytes declared, nothing truncated", "file", st.Recovered.File, "torn_bytes", st.Recovered.TornLen)
	}
	host, _ := os.Hostname()
	if _, err := trail.Append(trailevent.AgentStart{Ev: trailevent.EvAgentStart, Schema: trailevent.Version, Version: version(), PID: os.Getpid(), Host: host}); err != nil {
		return nil, err
	}
	if _, err := trail.Append(trailevent.Policy{Ev: trailevent.EvPolicy, Reason: "start", Policy: pol}); err != nil {
		return nil, err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	am := newAgentMetrics(reg, trail, runtime.Version())
	queue := violation.NewQueue(0)
	ledger, err := tracer.New(tracer.Options{Trail: trail, AsyncTrail: true, Policy: pol, Logger: log.Named("ledger"), Violations: queue})
	if err != nil {
		return nil, err
	}
	reg.MustRegister(ledger)

	inv, posture := readPosture(cfg, log, am)
	if inv != nil {
		undo = append(undo, func() { inv.Close() })
	}
	witness, err := startWitness(cfg, log, reg, am, queue)
	if err != nil {
		return nil, err
	}
	if witness != nil {
		undo = append(undo, func() { witness.Close() })
	}
	posture.Witness = witness != nil
	if _, err := trail.Append(posture); err != nil {
		return nil, err
	}

	if cfg.PublishLibkvh != "" {
		dst, err := publishLibkvh(cfg.PublishLibkvh, cfg.LibkvhDir)
		if err != nil {
			return nil, err
		}
		log.Info("published libkvh", "from", cfg.PublishLibkvh, "to", dst)
	}
	var pods ingest.Pods
	var nri *nriplugin.Plugin
	var pidSink violation.Sink = queue
	if cfg.NRI {
		if nri, err = startNRI(cfg, ledger.Policy, trail, log); err != nil {
			return nil, err
		}
		pods = nri
		pidSink = podNamer{Sink: queue, procRoot: cfg.ProcRoot, pods: nri}
	}

	peers := ingest.NewPeers()
	var server *ingest.Server
	corr, err := ingest.NewCorrelator(ingest.CorrelatorConfig{Window: cfg.AttestWindow, Covered: peers.Covered, Violations: pidSink,
		Progress: func(pid int) (uint64, uint64, uint64, bool) { return server.Progress(pid) }}, reg)
	if err != nil {
		return nil, err
	}
	var attested func(int, uint64, time.Time) // attestations are kept for joining only while a witness reports frees
	if witness != nil {
		attested = corr.Attested
	}
	server, err = ingest.New(sock, ingest.Config{Ledger: ledger, Trail: trail, Violations: queue, Peers: peers, Metrics: ingest.NewMetrics(reg),
		Policy: ledger.Policy, Log: log.Named("ingest"), ProcRoot: cfg.ProcRoot, Pods: pods, DropThreshold: cfg.DropThreshold, Attested: attested,
		MaxConns: cfg.MaxConns, MaxConnsPerUID: cfg.MaxConnsPerUID, MaxConnsPerProcess: cfg.MaxConnsPerProc})
	if err != nil {
		return nil, err
	}
	enf, err := action.New(action.Config{Trail: trail, Policy: ledger.Policy, Log: log.Named("action"), Denier: server,
		Identify: func(h *proc.Handle) string {
			return ingest.IdentifyProcess(cfg.ProcRoot, h, ledger.Policy().TrustTenantClaims, pods).Tenant
		},
		Connected: peers.Process,
		ProcRoot:  cfg.ProcRoot, CgroupRoot: cfg.CgroupRoot, ActionTimeout: cfg.ActionTimeout,
		Metrics: action.NewMetrics(reg, func() float64 { return float64(queue.Len()) })})
	if err != nil {
		return nil, err
	}

	shipper, err := newShipper(cfg, log, reg, ledger.Policy, queue)
	if err != nil {
		return nil, err
	}

	a := &agent{cfg: cfg, log: log, trail: trail, ledger: ledger, server: server, inv: inv, witness: witness, queue: queue, enforced: make(chan struct{}), shipper: shipper}
	enfCtx, stopEnf := context.WithCancel(context.Background())
	a.stopEnf = stopEnf
	go func() { enf.Run(enfCtx, queue); close(a.enforced) }()

	go server.Serve()
	log.Info("listening for interposers", "socket", cfg.Socket)
	a.http = newHTTP(reg, trail, &a.ready, cfg.Profiling)
	go a.http.Serve(httpLn)
	log.Info("HTTP", "listen", httpLn.Addr().String())

	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	a.detect.Add(1)
	go func() { defer a.detect.Done(); ledger.Run(ctx, cfg.SweepInterval) }()
	if cfg.MetricsJSON != "" || cfg.MetricsTextfile != "" {
		a.detect.Add(1)
		go func() { defer a.detect.Done(); a.exportEvery(ctx) }()
	}
	if inv != nil {
		a.detect.Add(1)
		go func() {
			defer a.detect.Done()
			watchGPU(ctx, inv, cfg.GPUInterval, cfg.ProcRoot, peers.Connected, pidSink)
		}()
	}
	if witness != nil {
		runWitness(ctx, &a.detect, witness, corr, am.witnessEvents)
	}
	if nri != nil {
		a.detect.Add(1)
		go func() { defer a.detect.Done(); runNRI(ctx, nri) }()
		log.Info("NRI plugin started", "socket", cfg.NRISocket, "libkvh_dir", cfg.LibkvhDir)
	}
	if shipper != nil {
		// Its own context: it ships the trail's close record after stop
		// has closed the trail.
		shipCtx, stopShip := context.WithCancel(context.Background())
		a.stopShip, a.shipped = stopShip, make(chan struct{})
		go func() { shipper.Run(shipCtx); close(a.shipped) }()
		log.Info("shipping the trail off the node", "to", cfg.shipTo.String(), "endpoint", cfg.ShipEndpoint)
	}
	a.ready.Store(true)
	return a, nil
}

// lookupGroup resolves --socket-group (a name or a gid); "" is -1 (keep the
// agent's own group).
func lookupGroup(g string) (int, error) {
	if g == "" {
		return -1, nil
	}
	if n, err := strconv.Atoi(g); err == nil && n >= 0 {
		return n, nil
	}
	grp, err := user.LookupGroup(g)
	if err != nil {
		return 0, fmt.Errorf("--socket-group: %w", err)
	}
	return strconv.Atoi(grp.Gid)
}

func (a *agent) exportEvery(ctx context.Context) {
	t := time.NewTicker(a.cfg.ExportInterval)
	defer t.Stop()
	for {
		a.export()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (a *agent) export() {
	if err := a.ledger.Export(a.cfg.MetricsJSON, a.cfg.MetricsTextfile); err != nil {
		a.log.Error("metrics export", "error", err)
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

// drainTimeout bounds how long stop waits for the enforcer to record what
// is still queued.
const drainTimeout = 15 * time.Second

// stop drains in the reverse order of start: no new connections, every
// connection's records judged, detectors stopped, the violation queue
// recorded and acted on, the exports written, and the trail closed.
func (a *agent) stop() error {
	a.ready.Store(false)
	a.server.Close()
	a.cancel()
	if a.witness != nil {
		a.witness.Close() // ends the events goroutine
	}
	a.detect.Wait()
	a.queue.Close()
	select {
	case <-a.enforced:
	case <-time.After(drainTimeout):
		a.log.Error("enforcer did not drain in time; violations still queued are not recorded", "queued", a.queue.Len())
		a.stopEnf()
		<-a.enforced
	}
	a.stopEnf()
	if a.cfg.MetricsJSON != "" || a.cfg.MetricsTextfile != "" {
		a.export()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	a.http.Shutdown(ctx)
	cancel()
	if a.inv != nil {
		a.inv.Close()
	}
	err := a.trail.Close()
	if a.shipper != nil {
		a.stopShip()
		<-a.shipped
		// One last round for the close record, bounded: what it cannot
		// ship now waits on disk for the next start.
		ctx, cancel := context.WithTimeout(context.Background(), shipFinalTimeout)
		if serr := a.shipper.Round(ctx); serr != nil {
			a.log.Warn("the trail's last records were not shipped before exit; the next start ships them", "error", serr)
		}
		cancel()
	}
	return err
}

// shipFinalTimeout bounds the last shipping round at stop.
const shipFinalTimeout = 10 * time.Second

// newShipper builds the trail shipper for --ship-to (nil without it). Bad
// credentials or options fail the start; an unreachable store does not:
// the trail waits on disk and the backlog is measured.
func newShipper(cfg *Config, log hclog.Logger, reg prometheus.Registerer, pol func() policy.Config, sink violation.Sink) (*ship.Shipper, error) {
	if cfg.ShipTo == "" {
		return nil, nil
	}
	client, err := ship.Endpoint{Host: cfg.ShipEndpoint, Region: cfg.ShipRegion, Insecure: cfg.ShipInsecure, CAFile: cfg.ShipCAFile,
		CredentialsFile: cfg.ShipCredentials}.Client()
	if err != nil {
		return nil, fmt.Errorf("--ship-to: %w", err)
	}
	return ship.New(ship.Config{TrailDir: cfg.TrailDir, Node: cfg.shipTo, Client: client,
		Retention:     func() time.Duration { return time.Duration(pol().TrailRetentionDays) * 24 * time.Hour },
		Interval:      cfg.ShipInterval,
		MaxBacklogAge: cfg.ShipMaxBacklogAge,
		Violations:    sink,
		Metrics:       ship.NewMetrics(reg),
		Log:           log.Named("ship"),
	})
}
