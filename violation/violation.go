// Package violation is kvh's one path for hygiene violations. Every detector
// (the ledger, ingest, the witness correlator, the GPU watcher) emits a typed
// Violation into a Queue and carries on; one consumer, the agent's enforcer,
// takes them out in order, records each in the trail, applies the policy's
// action and counts it.
//
// Lifecycle: NewQueue, then any number of Emit calls from any goroutine, and
// one consumer calling Next until it reports the queue closed. Locking: Emit
// takes the queue's own mutex for a few instructions and never blocks, so a
// detector may emit while holding its own locks (the ledger does, under a
// buffer lock). A full queue never blocks and never loses silently: the
// overflow is counted per kind and handed to the consumer with the next
// violation, which records it.
package violation

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/kvhygiene/kvh/internal/proc"
)

// Kind names what was breached. The list is closed: Kinds returns every
// kind, and the metrics, the trail schema and the README are checked
// against it.
type Kind string

// The kinds of violation.
const (
	QuarantinedBuffer    Kind = "quarantined_buffer"
	FreeWithoutSanitize  Kind = "free_without_sanitize"
	ReuseWithoutSanitize Kind = "reuse_without_sanitize"
	ReuseLimit           Kind = "reuse_limit_exceeded"
	TTLExpired           Kind = "ttl_expired"
	DroppedEvents        Kind = "dropped_events"
	UnattestedFree       Kind = "unattested_free"
	UncoveredProcess     Kind = "uncovered_process"
	ConnectionLimit      Kind = "connection_limit"
	LiveBufferLimit      Kind = "live_buffer_limit"
	EventRateLimit       Kind = "event_rate_limit"
	VerifyBelowFloor     Kind = "verify_below_floor"
	// ShippingBacklog is the node's, not a process's: the enforcer records
	// it and acts on no one (NodeLevel).
	ShippingBacklog Kind = "shipping_backlog"
)

var docs = map[Kind]string{
	QuarantinedBuffer:    "the interposer could not zeroize or verify a buffer and kept it from the driver",
	FreeWithoutSanitize:  "a buffer was released with less verified coverage than the policy's threshold",
	ReuseWithoutSanitize: "a buffer was handed to a new request without a passing sanitize",
	ReuseLimit:           "a buffer was reused more often than max_reuse allows",
	TTLExpired:           "a buffer outlived its ttl_sec without being sanitized and freed",
	DroppedEvents:        "retired: no longer raised (events an interposer drops because the agent is slow are an evidence gap, in interposer_drops and process_account records); kept to read older trails",
	UnattestedFree:       "the eBPF witness saw a free in the driver with no zeroize attestation from the interposer",
	UncoveredProcess:     "a process uses the GPU or the CUDA driver without the interposer",
	ConnectionLimit:      "a process (or its uid) opened more interposer connections than the agent allows",
	LiveBufferLimit:      "a process holds more live buffers than max_live_buffers; the excess is summarised, not recorded one by one",
	EventRateLimit:       "a process sends more events than max_event_rate; the excess is summarised, not ingested one by one",
	VerifyBelowFloor:     "an interposer zeroized with weaker verification than the agent's floor (verify mode, samples, double pass)",
	ShippingBacklog:      "trail bytes waited longer than --ship-max-backlog-age to reach object storage (a node-level violation: recorded, no process is acted on)",
}

// Kinds returns every kind, in a fixed order.
func Kinds() []Kind {
	return []Kind{QuarantinedBuffer, FreeWithoutSanitize, ReuseWithoutSanitize, ReuseLimit, TTLExpired, DroppedEvents, UnattestedFree, UncoveredProcess,
		ConnectionLimit, LiveBufferLimit, EventRateLimit, VerifyBelowFloor, ShippingBacklog}
}

// NodeLevel reports whether k is a violation of the node rather than of a
// process: it is recorded, and no action is applied to anyone.
func (k Kind) NodeLevel() bool { return k == ShippingBacklog }

// Doc says in one line what the kind means.
func (k Kind) Doc() string { return docs[k] }

// Valid reports whether k is one of Kinds.
func (k Kind) Valid() bool { _, ok := docs[k]; return ok }

// Violation is one breach by one process, as a detector saw it.
type Violation struct {
	Kind   Kind
	PID    int
	Tenant string // empty: the enforcer identifies the process
	Detail string
	Source string // the detector: ledger, ingest, witness, gpu
	At     time.Time
	// Process is the violator held by a pidfd, when the detector has it
	// (ingest does, for a connection); otherwise the enforcer resolves PID,
	// refusing a process that started after At.
	Process *proc.Handle
}

// Sink takes violations. Emit must never block.
type Sink interface {
	Emit(Violation)
}

// Overflow counts violations a full queue could not hold, by kind.
type Overflow map[Kind]uint64

// Queue is a bounded, non-blocking FIFO of violations with one consumer.
// No one process may hold more than a sixteenth of it, nor one tenant more
// than a quarter, so a process that provokes violations faster than they
// are recorded cannot crowd out another's.
type Queue struct {
	mu        sync.Mutex
	buf       []Violation
	cap       int
	perProc   map[string]int // queued, by process (pidfd key, else pid)
	perTenant map[string]int // queued, by tenant (when the detector named it)
	overflow  Overflow
	closed    bool
	ready     chan struct{} // one pending wake-up for the consumer
}

// NewQueue returns a queue that holds up to capacity violations (default 4096).
func NewQueue(capacity int) *Queue {
	if capacity <= 0 {
		capacity = 4096
	}
	return &Queue{cap: capacity, ready: make(chan struct{}, 1), perProc: map[string]int{}, perTenant: map[string]int{}}
}

func procKey(v *Violation) string {
	if v.Process != nil {
		return v.Process.Key()
	}
	return "pid:" + strconv.Itoa(v.PID)
}

// Emit queues v. It never blocks: when the queue, or the violator's or its
// tenant's share of it, is full, v is counted as overflow of its kind (and
// the consumer records the count).
func (q *Queue) Emit(v Violation) {
	if v.At.IsZero() {
		v.At = time.Now()
	}
	pk := procKey(&v)
	q.mu.Lock()
	switch {
	case q.closed:
		q.mu.Unlock()
		return
	case len(q.buf) >= q.cap || q.perProc[pk] >= max(q.cap/16, 1) || v.Tenant != "" && q.perTenant[v.Tenant] >= max(q.cap/4, 1):
		if q.overflow == nil {
			q.overflow = Overflow{}
		}
		q.overflow[v.Kind]++
	default:
		q.buf = append(q.buf, v)
		q.perProc[pk]++
		if v.Tenant != "" {
			q.perTenant[v.Tenant]++
		}
	}
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// Len returns how many violations wait.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.buf)
}

// Close stops taking violations; Next drains what is queued, then reports
// false.
func (q *Queue) Close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// Next waits for violations and returns all that are queued, in order, with
// any overflow counted since the last call. It returns ok false once the
// queue is closed and drained, or when ctx ends.
func (q *Queue) Next(ctx context.Context) (vs []Violation, over Overflow, ok bool) {
	for {
		q.mu.Lock()
		if len(q.buf) > 0 || len(q.overflow) > 0 {
			vs, over = q.buf, q.overflow
			q.buf, q.overflow = nil, nil
			clear(q.perProc)
			clear(q.perTenant)
			q.mu.Unlock()
			return vs, over, true
		}
		closed := q.closed
		q.mu.Unlock()
		if closed {
			return nil, nil, false
		}
		select {
		case <-ctx.Done():
			return nil, nil, false
		case <-q.ready:
		}
	}
}
