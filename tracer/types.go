package tracer

import (
	"fmt"
	"math/bits"
	"sync"
	"time"
	"unsafe"

	"github.com/kvhygiene/kvh/violation"

	"github.com/hashicorp/go-hclog"
	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/zeroize"
)

// Trail is where transitions are recorded; *forensic.Log satisfies it.
// Append must return only once the record is durable.
type Trail interface {
	Append(body any) (uint64, error)
}

type asyncTrail interface {
	AppendAsync(body any) error
}

// Allocator provides host memory for local buffers. Put receives only memory
// that was zeroized and verified; quarantined memory is never returned.
type Allocator interface {
	Get(n int) []byte
	Put(b []byte)
}

// heap is the default Allocator: the Go heap. A slice an owner keeps past
// Free still holds the old, zeroized memory, never another buffer's.
type heap struct{}

func (heap) Get(n int) []byte { return make([]byte, n) }
func (heap) Put([]byte)       {}

// Pool is an Allocator that keeps freed buffers of up to 1 MiB for reuse,
// by power-of-two size class, and clears each again when it hands it out
// (a free passes at the policy's coverage threshold, which may be under
// 100%). It spares the garbage collector: at 4 KiB per lifecycle the
// collector was a fifth of the ledger's CPU profile with the Go heap. The
// price is C's: memory is reused, so an owner that keeps a buffer's slice
// past Free reads and writes whatever buffer, of any tenant, gets that
// memory next. Use it only where every owner drops its slices at Free.
// The zero value is ready to use.
type Pool struct {
	// classes[k] holds buffers of exactly 1<<k bytes, as their first
	// byte's address (an interface holding a pointer does not allocate).
	classes [21]sync.Pool
}

const maxPooled = 1 << 20

func sizeClass(n int) int { return bits.Len(uint(n - 1)) }

// Get returns n zero bytes.
func (p *Pool) Get(n int) []byte {
	if n <= 0 || n > maxPooled {
		return make([]byte, n)
	}
	k := sizeClass(n)
	if b, ok := p.classes[k].Get().(*byte); ok {
		m := unsafe.Slice(b, 1<<k)
		clear(m) // all of it: nothing past n is handed out, but nothing stays either
		return m[:n]
	}
	return make([]byte, n, 1<<k)
}

// Put keeps b for reuse when its capacity is a size class.
func (p *Pool) Put(b []byte) {
	c := cap(b)
	if c == 0 || c > maxPooled || c&(c-1) != 0 {
		return
	}
	p.classes[sizeClass(c)].Put(unsafe.SliceData(b))
}

// Tags label a buffer; they are written in every record about it.
type Tags struct {
	Tenant    string `json:"tenant,omitempty"`
	Request   string `json:"request,omitempty"`
	Model     string `json:"model,omitempty"`
	Device    string `json:"device,omitempty"`
	Framework string `json:"framework,omitempty"`
	PID       int    `json:"pid,omitempty"`
	Stream    string `json:"stream,omitempty"`
	// Claimed is a tenant the buffer's owner claimed for itself (e.g. an
	// engine tagging requests), recorded beside the kernel-derived Tenant.
	Claimed string `json:"claimed_tenant,omitempty"`
}

// Kind says who owns a buffer's memory.
type Kind uint8

const (
	Local  Kind = iota + 1 // host memory the ledger owns and zeroizes
	Remote                 // memory in another process, attested by the interposer
)

func (k Kind) String() string {
	if k == Remote {
		return "remote"
	}
	return "local"
}

// Handle names a buffer. Handles are never reused.
type Handle uint64

func (h Handle) String() string { return fmt.Sprintf("b-%d", uint64(h)) }

// Attestation is a remote buffer's sanitize step, as the interposer reports it.
type Attestation struct {
	Bytes    int64         // bytes the zeroize covered
	Zeroed   int64         // bytes verified zero (or zeroed, when unverified)
	Verified bool          // a verification ran and passed
	Method   string        // e.g. "memset+full", "memsetD8Async+sample"
	Seed     uint64        // sample seed, when sampled
	Duration time.Duration // zeroize plus verify
}

// Options configure a Ledger.
type Options struct {
	Trail     Trail           // required
	Policy    policy.Config   // validated by New
	Allocator Allocator       // local memory; default: the Go heap (see Pool)
	Faults    *zeroize.Faults // test seam for local sanitize
	Logger    hclog.Logger
	Now       func() time.Time
	// AsyncTrail queues transition records without waiting for each to be
	// durable (the trail must implement AppendAsync; *forensic.Log does).
	// Records stay in transition order, and anything that waits on the trail
	// later (an Append, a Sync) waits for them: the agent uses this so that a
	// connection's events are not serialised on fdatasync, while every action
	// it takes is still recorded, durably, after the verdict it rests on.
	AsyncTrail bool
	// Without AsyncTrail, a trail that implements AppendAsync is used
	// this way: a transition that lets memory go or changes what may be
	// done with it — free, release, retire, quarantine, double free —
	// returns only once it and every transition before it are durable (the
	// trail keeps order, so its fdatasync covers them); allocate, bind,
	// write, reuse, attest and sanitize records are queued and become
	// durable with the next such barrier or group commit. One fdatasync
	// wait per lifecycle instead of four: nothing leaves the ledger before
	// its whole history is on disk.
	// Violations, when set, is told of every policy violation after the
	// quarantine it causes is recorded. Emit is called with the buffer's lock
	// held, so it must never block, act or call back into the Ledger: a
	// violation.Queue, whose one consumer (the agent's enforcer) records and
	// acts outside every ledger lock, is what the agent passes.
	Violations violation.Sink
	// RetiredWindow is how many freed handles are remembered so that a second
	// Free is recognised as a double free (default 65536).
	RetiredWindow int
}

// AllocOptions override the policy for one buffer.
type AllocOptions struct {
	TTLSec   *float64
	MaxReuse *int
}

type buffer struct {
	mu       sync.Mutex
	h        Handle
	kind     Kind
	tags     Tags
	size     int64
	mem      []byte
	state    State
	created  time.Time
	firstUse time.Time
	reuse    int
	coverage float64
	covered  bool // sanitized or attested since the last write
	clean    bool // a passing sanitize since it was quarantined
	pol      policy.Effective
	async    chan struct{}
	result   zeroize.Result
	// out holds the values the record being written points to (b.mu held):
	// pointers to locals made each an allocation, three per lifecycle in
	// the ledger's profile. record copies them when the trail keeps bodies.
	out struct {
		cov      float64
		verified bool
		maxReuse int
	}
}

const shards = 64

type shard struct {
	mu sync.RWMutex
	m  map[Handle]*buffer
}
