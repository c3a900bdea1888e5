package trailevent

import (
	"github.com/kvhygiene/kvh/policy"
)

// Version is the schema version of the bodies in this package.
const Version = 1

// Event names that are not buffer transitions.
const (
	EvAgentStart          = "agent_start"
	EvPolicy              = "policy"
	EvPosture             = "posture"
	EvProcessConnected    = "process_connected"
	EvProcessDisconnected = "process_disconnected"
	EvInterposerDrops     = "interposer_drops"
	EvViolation           = "violation"
	EvViolationsOverflow  = "violations_overflow"
	EvAction              = "action"
	EvAnomaly             = "anomaly"
	EvFloodSummary        = "flood_summary"
	EvOptOut              = "opt_out"
	EvProcessAccount      = "process_account"
	EvEventWindow         = "event_window"
)

// Buffer transition event names (the ledger's state machine).
const (
	EvAllocate      = "allocate"
	EvBind          = "bind"
	EvWrite         = "write"
	EvReuse         = "reuse"
	EvQuarantine    = "quarantine"
	EvSanitize      = "sanitize"
	EvSanitizeStart = "sanitize_start"
	EvSanitizeEnd   = "sanitize_end"
	EvAttest        = "attest"
	EvDoubleFree    = "double_free"
	EvFree          = "free"
	EvRelease       = "release"
	EvRetire        = "retire"
)

// AgentStart opens every run of the agent.
type AgentStart struct {
	Ev      string `json:"ev" doc:"agent_start"`
	Schema  int    `json:"schema" doc:"the trailevent.Version the bodies that follow use"`
	Version string `json:"version" doc:"the agent's build version"`
	PID     int    `json:"pid" doc:"the agent's process id"`
	Host    string `json:"host,omitempty" doc:"the node's hostname"`
}

// Policy records the full effective policy, at start and on every reload.
type Policy struct {
	Ev     string        `json:"ev" doc:"policy"`
	Reason string        `json:"reason" doc:"start (the agent starting) or reload (SIGHUP, or Ledger.SetPolicy in a Go program)"`
	Policy policy.Config `json:"policy" doc:"every key of the policy, tenant overrides included"`
}

// Device is one GPU as NVML reports it.
type Device struct {
	Index       int    `json:"index" doc:"NVML device index"`
	UUID        string `json:"uuid" doc:"device UUID"`
	Name        string `json:"name" doc:"product name"`
	MemoryTotal uint64 `json:"memory_total_bytes" doc:"device memory in bytes"`
	MemoryUsed  uint64 `json:"memory_used_bytes" doc:"device memory in use when read"`
	MIG         bool   `json:"mig" doc:"MIG mode is enabled"`
	Persistence bool   `json:"persistence" doc:"persistence mode is on"`
}

// Posture is the node's hygiene posture as read at start.
type Posture struct {
	Ev          string   `json:"ev" doc:"posture"`
	ScrubOnFree int      `json:"scrub_on_free" doc:"1: the driver scrubs memory returned to it; 0: RmDisableScrubOnFree turns that off; -1: unknown"`
	Source      string   `json:"source" doc:"where scrub_on_free was read"`
	NVML        string   `json:"nvml,omitempty" doc:"\"not available\" when NVML could not be opened"`
	Driver      string   `json:"driver,omitempty" doc:"the NVIDIA driver version"`
	Devices     []Device `json:"devices,omitempty" doc:"the node's GPUs"`
	Witness     bool     `json:"witness" doc:"the eBPF witness is attached"`
}

// Identity is who a connected process is, as the kernel says: pid and uid
// from SO_PEERCRED, the rest from /proc/<pid>. Nothing comes from what the
// process claims on the wire.
type Identity struct {
	PID           int    `json:"pid" doc:"process id (SO_PEERCRED)"`
	UID           uint32 `json:"uid" doc:"user id (SO_PEERCRED)"`
	Comm          string `json:"comm,omitempty" doc:"/proc/<pid>/comm"`
	Cgroup        string `json:"cgroup,omitempty" doc:"the process's cgroup v2 path"`
	ContainerID   string `json:"container_id,omitempty" doc:"container id parsed from the cgroup"`
	PodUID        string `json:"pod_uid,omitempty" doc:"Kubernetes pod UID: from the orchestrator (NRI) when it knows the container, else parsed from the cgroup"`
	PodNamespace  string `json:"pod_namespace,omitempty" doc:"the pod's namespace, from the orchestrator (NRI)"`
	PodName       string `json:"pod_name,omitempty" doc:"the pod's name, from the orchestrator (NRI)"`
	ContainerName string `json:"container_name,omitempty" doc:"the container's name in its pod, from the orchestrator (NRI)"`
	Tenant        string `json:"tenant" doc:"the tenant the agent judges the process as"`
	TenantSource  string `json:"tenant_source" doc:"where the tenant came from, in this order: namespace or label (the pod's namespace or tenant label, as the orchestrator told the agent over NRI and the policy's tenant_key chooses), pod (pod UID from the cgroup), container (container id from the cgroup), claim (the process's own KVH_TENANT, only where the policy's trust_tenant_claims is on), uid, or exited (gone before /proc was read)"`
	ClaimedTenant string `json:"claimed_tenant,omitempty" doc:"the process's own KVH_TENANT (a claim: honoured only as tenant_source says)"`
}

// ProcessConnected records an interposer's hello.
type ProcessConnected struct {
	Ev       string   `json:"ev" doc:"process_connected"`
	Identity Identity `json:"identity" doc:"who the process is, from the kernel"`
	Claimed  string   `json:"claimed_tenant,omitempty" doc:"a tenant the process claimed that differs from its identity's"`
	Mode     string   `json:"mode,omitempty" doc:"the interposer's mode: enforce, observe or off"`
	Verify   string   `json:"verify,omitempty" doc:"the interposer's verify mode: off, sample or full"`
}

// ProcessDisconnected records the end of an interposer connection.
type ProcessDisconnected struct {
	Ev     string `json:"ev" doc:"process_disconnected"`
	PID    int    `json:"pid" doc:"process id"`
	Tenant string `json:"tenant,omitempty" doc:"tenant"`
	Open   int    `json:"open_buffers,omitempty" doc:"buffers still allocated when it went (retired: the memory went back with the process)"`
	Reason string `json:"reason,omitempty" doc:"why the agent ended it (a client that does not read, repeated malformed packets); empty when the client closed it"`
}

// InterposerDrops records events an interposer could not deliver: an
// evidence gap (the agent was absent or slow; libkvh still zeroized), never
// a violation of the tenant's.
type InterposerDrops struct {
	Ev     string `json:"ev" doc:"interposer_drops"`
	PID    int    `json:"pid" doc:"process id"`
	Tenant string `json:"tenant,omitempty" doc:"tenant"`
	Count  uint64 `json:"count" doc:"events dropped since the previous report"`
}

// ProcessAccount closes a process's event account when its last connection
// ends and the process has exited: from the counters page its interposer
// kept (a claim, read after the process was gone), every event it emitted
// was received, or dropped by the interposer, or lost with the process.
// Dropped and lost events are an evidence gap (libkvh still zeroized
// them), not a violation of the tenant's.
type ProcessAccount struct {
	Ev       string `json:"ev" doc:"process_account"`
	PID      int    `json:"pid" doc:"the process"`
	Tenant   string `json:"tenant,omitempty" doc:"its tenant"`
	Emitted  uint64 `json:"emitted" doc:"records the interposer gave a seq (its counters page)"`
	Received uint64 `json:"received" doc:"of those, records the agent received, over all the process's connections"`
	Dropped  uint64 `json:"dropped" doc:"of those, records the interposer counted as dropped (its counters page)"`
	Reported uint64 `json:"reported" doc:"drops it had reported in interposer_drops records before"`
	Lost     uint64 `json:"lost" doc:"emitted - received - dropped: records lost with the process (killed with events queued)"`
	Excess   uint64 `json:"excess,omitempty" doc:"received + dropped - emitted when positive: the page's counts are inconsistent (a client that lies)"`
	Exited   bool   `json:"exited" doc:"true when the process had exited when its account was read (false: read at the agent's stop, still running)"`
}

// Granularity states, for docs/trail-schema.md, which events are records of
// their own and what the summaries guarantee.
const Granularity = `Every buffer at or above the policy's ` + "`trail_event_min_bytes`" + ` (0, the default: every buffer) is recorded one by one: ` +
	"`allocate`, `attest`, `free`" + ` (or ` + "`quarantine`, `retire`" + `). So is everything an auditor must be able to point at, whatever its size: ` +
	`each violation and action, each quarantine, and each free that fails the coverage threshold or the verify floor (the buffer is brought into the ledger and judged one by one). ` +
	`Below the size, for tenants without ` + "`ttl_sec`" + `, allocations and frees that pass are counted exactly in ` + "`event_window`" + ` records, one per connection per second at most: ` +
	`counts, bytes, zeroed bytes, verified frees, the minimum coverage, the seq range, buffers still open at the end, and a SHA-256 over the events' 160-byte wire records in arrival order. ` +
	`Guarantees: every allocation and free the agent accepted is in exactly one per-event record or one window. What it received and did not accept is counted, not listed: ` +
	`records past a cap in ` + "`flood_summary`" + ` records, records with absurd values in the ` + "`kvh_ingest_errors_total`" + ` metric only; allocations flagged as imported (memory another process owns) ` +
	`and frees that report success for memory the agent never saw allocated are in no record (the witness, where it runs, judges such frees). ` +
	`A window's digest can be checked only against a log of the same wire records kept by the client, and libkvh keeps none: an auditor with the trail alone can check a window's counts, not its digest; ` +
	`no event that breaches the policy is ever only in a window. ` +
	`Events the agent did not receive are counted: ` + "`interposer_drops`" + ` as the interposer reports them, and ` + "`process_account`" + ` when the process has exited — ` +
	`emitted = received + dropped + lost, from the counters page the interposer kept. Drops and losses are an evidence gap (the interposer zeroized those buffers anyway), never a violation of the tenant's; ` +
	"`event_rate_limit`" + ` is raised only when what a process offered, dropped or not, exceeds its ` + "`max_event_rate`" + `.`

// EventWindow is the exact summary of a connection's routine events in one
// window: allocations, and frees of buffers below the policy's
// trail_event_min_bytes that met the coverage threshold and the verify
// floor. Anything an auditor must be able to point at (a violation, an
// action, a quarantine, a free at or above the size, a free below the
// threshold or the floor) is a per-event record instead.
type EventWindow struct {
	Ev          string  `json:"ev" doc:"event_window"`
	PID         int     `json:"pid" doc:"the process"`
	Tenant      string  `json:"tenant,omitempty" doc:"its tenant"`
	FromNS      int64   `json:"from_ns" doc:"first event's arrival, Unix nanoseconds"`
	ToNS        int64   `json:"to_ns" doc:"last event's arrival, Unix nanoseconds"`
	FirstSeq    uint64  `json:"first_seq" doc:"lowest interposer seq among the events"`
	LastSeq     uint64  `json:"last_seq" doc:"highest interposer seq among the events"`
	Allocs      uint64  `json:"allocs" doc:"allocations summarised"`
	AllocBytes  uint64  `json:"alloc_bytes" doc:"bytes they claimed"`
	Frees       uint64  `json:"frees" doc:"frees summarised, each zeroized at or above the coverage threshold"`
	FreeBytes   uint64  `json:"free_bytes" doc:"bytes those frees released"`
	Zeroed      uint64  `json:"zeroed_bytes" doc:"bytes they attested zeroized (verified, where the floor asks)"`
	Verified    uint64  `json:"verified" doc:"frees among them that were verified"`
	MinCoverage float64 `json:"min_coverage" doc:"lowest coverage percent among the frees (100 when none)"`
	Retired     uint64  `json:"retired,omitempty" doc:"buffers summarised as allocated and still open when the connection ended"`
	Digest      string  `json:"digest" doc:"hex SHA-256 over the events' wire records (160 bytes each, in arrival order): checkable only against a log of those records kept by the client (libkvh keeps none)"`
}

// Violation records one breach, before any action on it.
type Violation struct {
	Ev     string `json:"ev" doc:"violation"`
	Kind   string `json:"kind" doc:"one of the violation kinds (docs/trail-schema.md, Violation kinds)"`
	PID    int    `json:"pid" doc:"the violating process"`
	Tenant string `json:"tenant,omitempty" doc:"its tenant"`
	Detail string `json:"detail,omitempty" doc:"what the detector saw"`
	Source string `json:"source,omitempty" doc:"the detector: ledger, ingest, witness or gpu"`
	Action string `json:"action" doc:"the action the policy names for this tenant: observe, deny, freeze or kill"`
}

// ViolationsOverflow records violations the queue could not hold.
type ViolationsOverflow struct {
	Ev    string `json:"ev" doc:"violations_overflow"`
	Kind  string `json:"kind" doc:"violation kind"`
	Count uint64 `json:"count" doc:"violations of this kind counted but not recorded one by one, nor acted on"`
}

// Action records an action taken on a violator, and its outcome.
type Action struct {
	Ev     string `json:"ev" doc:"action"`
	Action string `json:"action" doc:"deny, freeze or kill"`
	PID    int    `json:"pid" doc:"the process acted on"`
	Tenant string `json:"tenant,omitempty" doc:"its tenant"`
	Kind   string `json:"kind" doc:"the violation kind that caused it (empty for an inherited deny)"`
	Result string `json:"result" doc:"what happened, or error: ... (timed out: the action did not finish in time)"`
	Reason string `json:"reason,omitempty" doc:"why, when not a violation of this process: a deny inherited from a denied parent"`
}

// FloodSummary counts, exactly, what a process sent past one of its caps
// in one window, instead of one record per event.
type FloodSummary struct {
	Ev         string `json:"ev" doc:"flood_summary"`
	PID        int    `json:"pid" doc:"the process"`
	Tenant     string `json:"tenant,omitempty" doc:"its tenant"`
	OverRate   uint64 `json:"over_rate" doc:"records among them past max_event_rate"`
	OverLive   uint64 `json:"over_live" doc:"allocations among them past max_live_buffers"`
	FromNS     int64  `json:"from_ns" doc:"window start, Unix nanoseconds"`
	ToNS       int64  `json:"to_ns" doc:"window end, Unix nanoseconds"`
	Events     uint64 `json:"events" doc:"records in the window not ingested one by one"`
	Allocs     uint64 `json:"allocs" doc:"allocations among them"`
	AllocBytes uint64 `json:"alloc_bytes" doc:"bytes those allocations claimed"`
	Frees      uint64 `json:"frees" doc:"frees and quarantines among them"`
	FreeBytes  uint64 `json:"free_bytes" doc:"bytes those frees released"`
	Unverified uint64 `json:"unverified_frees" doc:"frees among them whose zeroize was not verified"`
	Other      uint64 `json:"other" doc:"other records (hello, drops)"`
}

// Anomaly records a sanitize duration or buffer size far from the tenant's mean.
type Anomaly struct {
	Ev     string  `json:"ev" doc:"anomaly"`
	H      uint64  `json:"h" doc:"the buffer handle"`
	Tenant string  `json:"tenant,omitempty" doc:"tenant"`
	Metric string  `json:"metric" doc:"sanitize_duration_us or buffer_bytes"`
	Value  float64 `json:"value" doc:"the value seen"`
	Mean   float64 `json:"mean" doc:"the tenant's running mean"`
	Std    float64 `json:"std" doc:"the tenant's running standard deviation"`
	Z      float64 `json:"z" doc:"the z-score (above the policy's anomaly_z)"`
}

// OptOut records a pod's request not to be injected with libkvh (the
// kvh.io/opt-out annotation), honoured or not.
type OptOut struct {
	Ev          string `json:"ev" doc:"opt_out"`
	PodUID      string `json:"pod_uid" doc:"the pod's UID, from the orchestrator (NRI)"`
	Namespace   string `json:"namespace" doc:"the pod's namespace"`
	Pod         string `json:"pod" doc:"the pod's name"`
	Container   string `json:"container" doc:"the container's name in its pod"`
	ContainerID string `json:"container_id" doc:"the runtime's container id"`
	Tenant      string `json:"tenant,omitempty" doc:"the pod's tenant under the policy's tenant_key"`
	Honoured    bool   `json:"honoured" doc:"true: the container started without libkvh (the policy's allow_opt_out is on); false: it was injected anyway"`
}
