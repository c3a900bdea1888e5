package ingest

import "github.com/prometheus/client_golang/prometheus"

// Metrics are ingest's series (the ledger and the enforcer export their own).
type Metrics struct {
	Frees         *prometheus.CounterVec
	ZeroizedBytes prometheus.Counter
	Quarantined   prometheus.Counter
	Dropped       prometheus.Counter
	Lost          prometheus.Counter
	Accounts      prometheus.Counter
	Hygiene       prometheus.Counter
	Connected     prometheus.Gauge
	IngestErrors  *prometheus.CounterVec
	Events        prometheus.Counter
	Flooded       *prometheus.CounterVec

	freesOK prometheus.Counter // Frees{result="ok"}, resolved once
}

// NewMetrics registers ingest's series on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Frees:         prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kvh", Name: "frees_total", Help: "Frees reported by interposers, by result: ok, quarantined, failed (released unverified in observe mode), passthrough (not zeroized: importer, mode off or unknown pointer)."}, []string{"result"}),
		ZeroizedBytes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kvh", Name: "zeroized_bytes_total", Help: "Bytes zeroized and verified before release, as attested by interposers."}),
		Quarantined:   prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kvh", Name: "quarantined_buffers_total", Help: "Buffers kept from the driver because zeroize or verify failed."}),
		Dropped:       prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kvh", Name: "interposer_dropped_events_total", Help: "Events interposers could not deliver (agent absent or slow): an evidence gap, the agent's health, not a tenant's violation. From DROPS records, and at a process's end from its counters page."}),
		Lost:          prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kvh", Name: "interposer_lost_events_total", Help: "Events a process emitted that neither arrived nor were counted dropped (it was killed with events queued): emitted - received - dropped from its counters page."}),
		Accounts:      prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kvh", Name: "ingest_process_accounts_total", Help: "Process event accounts closed (process_account records)."}),
		Hygiene:       prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kvh", Name: "ingest_hygiene_events_total", Help: "Allocation, free and quarantine records received (each one hooked call)."}),
		Connected:     prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "kvh", Name: "connected_processes", Help: "Processes whose interposer is connected."}),
		IngestErrors:  prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kvh", Name: "ingest_errors_total", Help: "Packets or connections refused, by reason."}, []string{"reason"}),
		Flooded:       prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kvh", Name: "ingest_flooded_events_total", Help: "Records a process sent past one of its caps (max_event_rate, max_live_buffers): counted in flood_summary records, not ingested one by one."}, []string{"cap"}),
		Events:        prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kvh", Name: "ingest_events_total", Help: "Interposer records received."}),
	}
	reg.MustRegister(m.Frees, m.ZeroizedBytes, m.Quarantined, m.Dropped, m.Lost, m.Accounts, m.Hygiene, m.Connected, m.IngestErrors, m.Events, m.Flooded)
	for _, c := range []string{"max_event_rate", "max_live_buffers"} {
		m.Flooded.WithLabelValues(c)
	}
	for _, r := range []string{"malformed", "absurd_value", "too_many_connections", "peer_gone"} {
		m.IngestErrors.WithLabelValues(r)
	}
	for _, r := range []string{"ok", "quarantined", "failed", "passthrough"} {
		m.Frees.WithLabelValues(r)
	}
	m.freesOK = m.Frees.WithLabelValues("ok")
	return m
}
