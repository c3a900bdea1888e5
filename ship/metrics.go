package ship

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the shipper's Prometheus metrics.
type Metrics struct {
	rounds      prometheus.Counter
	errors      prometheus.Counter
	objects     prometheus.Counter
	bytes       prometheus.Counter
	generations prometheus.Counter
	lastSeq     prometheus.Gauge
	lastSuccess prometheus.Gauge
	reg         prometheus.Registerer
}

// NewMetrics registers the shipper's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	c := func(name, help string) prometheus.Counter {
		m := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kvh", Subsystem: "ship", Name: name, Help: help})
		reg.MustRegister(m)
		return m
	}
	g := func(name, help string) prometheus.Gauge {
		m := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "kvh", Subsystem: "ship", Name: name, Help: help})
		reg.MustRegister(m)
		return m
	}
	m := &Metrics{
		rounds:      c("rounds_total", "Shipping rounds run."),
		errors:      c("errors_total", "Shipping rounds that failed (the store unreachable, refused, or no Object Lock); retried with backoff."),
		objects:     c("objects_total", "Chunks uploaded to object storage, each locked in compliance mode."),
		bytes:       c("bytes_total", "Trail bytes uploaded to object storage."),
		generations: c("generations_total", "Trail files found truncated, replaced or rewritten after they were shipped, and shipped again as a new generation."),
		lastSeq:     g("last_shipped_seq", "The newest checkpoint in object storage covers records up to this seq (-1: none yet)."),
		lastSuccess: g("last_success_timestamp_seconds", "When a round last shipped everything it found (Unix time)."),
		reg:         reg,
	}
	m.lastSeq.Set(-1)
	return m
}

func (m *Metrics) bind(s *Shipper) {
	m.lastSeq.Set(float64(s.stats.LastShippedSeq))
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "kvh", Subsystem: "ship", Name: "backlog_bytes",
			Help: "Trail bytes on the node not yet in object storage (as of the last round)."},
			func() float64 { return float64(s.Stats().BacklogBytes) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "kvh", Subsystem: "ship", Name: "oldest_unshipped_age_seconds",
			Help: "How long the oldest trail bytes not yet in object storage have waited (0: none); past --ship-max-backlog-age it is a shipping_backlog violation."},
			func() float64 { return s.Stats().OldestUnshipped.Seconds() }),
	)
}
