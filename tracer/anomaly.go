package tracer

import (
	"github.com/kvhygiene/kvh/trailevent"
	"math"
	"time"
)

// maxTenants bounds per-tenant anomaly state.
const maxTenants = 4096

type tenantStats struct {
	dur, size welford
	lastFlag  time.Time
}

// anomaly updates the tenant's running statistics and records an anomaly
// when a sanitize duration or buffer size is more than anomaly_z standard
// deviations from the tenant's mean (after 30 samples; at most one record
// per tenant per second). b.mu is held.
func (l *Ledger) anomaly(b *buffer, d time.Duration) {
	z := l.Policy().AnomalyZ
	a := &l.agg
	now := l.now()
	a.mu.Lock()
	ts := a.tenants[b.tags.Tenant]
	if ts == nil {
		if len(a.tenants) >= maxTenants {
			a.mu.Unlock()
			return
		}
		ts = &tenantStats{}
		a.tenants[b.tags.Tenant] = ts
	}
	var flags []trailevent.Anomaly
	check := func(w *welford, metric string, x float64) {
		if w.n >= 30 {
			if sd := w.std(); sd > 0 {
				if zz := math.Abs(x-w.mean) / sd; zz > z && now.Sub(ts.lastFlag) >= time.Second {
					ts.lastFlag = now
					flags = append(flags, trailevent.Anomaly{Ev: trailevent.EvAnomaly, H: uint64(b.h), Tenant: b.tags.Tenant, Metric: metric, Value: x, Mean: w.mean, Std: sd, Z: zz})
				}
			}
		}
		w.add(x)
	}
	check(&ts.dur, "sanitize_duration_us", float64(d.Microseconds()))
	check(&ts.size, "buffer_bytes", float64(b.size))
	a.anomalies += int64(len(flags))
	a.mu.Unlock()
	for _, r := range flags {
		if _, err := l.trail.Append(r); err != nil {
			l.log.Error("recording anomaly", "error", err)
		}
	}
}

// welford is a running mean and variance.
type welford struct {
	n    float64
	mean float64
	m2   float64
}

func (w *welford) add(x float64) {
	w.n++
	d := x - w.mean
	w.mean += d / w.n
	w.m2 += d * (x - w.mean)
}

func (w *welford) std() float64 {
	if w.n < 2 {
		return 0
	}
	return math.Sqrt(w.m2 / (w.n - 1))
}
