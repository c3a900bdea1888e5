package main

import (
	"runtime/debug"

	"github.com/kvhygiene/kvh/forensic"
	"github.com/kvhygiene/kvh/gpu"
	"github.com/prometheus/client_golang/prometheus"
)

// version is the agent's build version: the module version, else the VCS
// revision, else "devel".
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return s.Value[:12]
		}
	}
	return "devel"
}

// trailSource is what the trail series read.
type trailSource interface {
	Stats() forensic.Stats
	Err() error
}

// agentMetrics are the agent's own series beside ingest's, the enforcer's,
// the correlator's and the ledger's (each registered by its owner).
type agentMetrics struct {
	scrub           prometheus.Gauge
	mig, pers       *prometheus.GaugeVec
	witness         prometheus.Gauge
	witnessEvents   prometheus.Counter
	witnessMismatch prometheus.Gauge
}

func newAgentMetrics(reg prometheus.Registerer, trail trailSource, goVersion string) *agentMetrics {
	m := &agentMetrics{
		scrub:           prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "kvh", Name: "posture_scrub_on_free", Help: "1: the driver scrubs memory returned to it; 0: RmDisableScrubOnFree turns that off; -1: unknown (no driver)."}),
		mig:             prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "kvh", Name: "posture_mig_enabled", Help: "1 when MIG is enabled on the device."}, []string{"device"}),
		pers:            prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "kvh", Name: "posture_persistence_mode", Help: "1 when persistence mode is on."}, []string{"device"}),
		witness:         prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "kvh", Name: "witness_enabled", Help: "1 when the eBPF witness is attached."}),
		witnessEvents:   prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kvh", Name: "witness_events_total", Help: "Calls the witness saw in CUDA libraries."}),
		witnessMismatch: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "kvh", Name: "witness_selftest_mismatches", Help: "Probed driver functions whose cuGetProcAddress entry point is not the exported symbol the probe sits on."}),
	}
	reg.MustRegister(m.scrub, m.mig, m.pers, m.witness, m.witnessEvents, m.witnessMismatch)
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "kvh", Name: "build_info", Help: "Always 1; the labels say which build runs.",
		ConstLabels: prometheus.Labels{"version": version(), "goversion": goVersion}}, func() float64 { return 1 }))
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "kvh", Name: "trail_records_total", Help: "Records in the trail (its size)."}, func() float64 { return float64(trail.Stats().Records) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "kvh", Name: "trail_checkpoint_size", Help: "Size attested by the latest signed checkpoint."}, func() float64 { return float64(trail.Stats().CheckpointSize) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "kvh", Name: "trail_tamper_detected", Help: "1 when the agent found the trail tampered with and started over it (--accept-tampered-trail: the evidence is kept aside and a tamper_detected record opens the new log)."}, func() float64 {
		if trail.Stats().Tamper != nil {
			return 1
		}
		return 0
	}))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "kvh", Name: "trail_healthy", Help: "1 while the trail accepts records; 0 after a write error (hygiene events are then refused)."}, func() float64 {
		if trail.Err() != nil {
			return 0
		}
		return 1
	}))
	return m
}

func (m *agentMetrics) posture(p gpu.Posture, devs []gpu.Device) {
	m.scrub.Set(float64(p.ScrubOnFree))
	for _, d := range devs {
		m.mig.WithLabelValues(d.UUID).Set(b2f(d.MIG))
		m.pers.WithLabelValues(d.UUID).Set(b2f(d.Persistence))
	}
}

// witnessSource is what the witness series read.
type witnessSource interface {
	Lost() uint64
	Attached() []string
}

func registerWitnessMetrics(reg prometheus.Registerer, w witnessSource) {
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "kvh", Name: "witness_lost_events_total", Help: "Witness events lost (ring buffer full or reader behind)."}, func() float64 { return float64(w.Lost()) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "kvh", Name: "witness_attached_libraries", Help: "CUDA library inodes probed."}, func() float64 { return float64(len(w.Attached())) }))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
