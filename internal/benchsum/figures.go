package benchsum

// Figures are the targets of make bench (issue 14, docs in README
// "Measured"): where each figure comes from and what it must be. Units
// list the names a figure has had; the first one a run reports is used.
var Figures = []Figure{
	{What: "agent ingest, interposer events end to end with 0 dropped (clients paced, the highest rate without a drop)", Pkg: "/cmd/kvh-agent", Bench: `BenchmarkAgentIngest.*`, Units: []string{"zero-drop-events/s", "events/s"}, Op: ">=", Target: 1e6},
	{What: "agent ingest, clients flat out (they take the agent's cores): events ingested", Pkg: "/cmd/kvh-agent", Bench: `BenchmarkAgentIngest.*`, Units: []string{"flat-out-events/s"}},
	{What: "agent ingest, clients flat out: events dropped, every one counted", Pkg: "/cmd/kvh-agent", Bench: `BenchmarkAgentIngest.*`, Units: []string{"flat-out-dropped", "dropped"}},
	{What: "agent ingest: events neither ingested nor counted (outside count)", Pkg: "/cmd/kvh-agent", Bench: `BenchmarkAgent.*`, Units: []string{"unaccounted"}, Op: "==", Target: 0},
	{What: "agent ingest: events lost", Pkg: "/cmd/kvh-agent", Bench: `BenchmarkAgentIngest.*`, Units: []string{"lost"}, Op: "==", Target: 0},
	{What: "agent cost per event (agent CPU ÷ events), vs a trail record per event", Pkg: "/cmd/kvh-agent", Bench: `BenchmarkAgent.*`, Units: []string{"agent-cpu-us/event"}, Ref: "ref-agent-cpu-us/event", Ratio: "cpu-ratio-vs-per-event", Op: "<=", Target: 1},
	{What: "agent RSS under load", Pkg: "/cmd/kvh-agent", Bench: `BenchmarkAgent.*`, Units: []string{"rss-MiB", "rss-after-1M-MiB"}, Op: "<=", Target: 128},
	{What: "agent memory per idle interposer connection (heap and stacks; packets being handled are pooled, 8 MiB at most)", Pkg: "/ingest", Bench: `BenchmarkConnMemory`, Units: []string{"KiB/conn"}},
	{What: "durable trail append, 256 producers, HMAC, vs the seed's unsynced append", Pkg: "/forensic", Bench: `BenchmarkAppendDurable/producers=256/mac=true`, Units: []string{"records/s"}, Ref: "seed-records/s", Ratio: "x-seed", Op: ">=", Target: 10, OnRate: true},
	{What: "durable trail append, 1 and 64 producers, HMAC", Pkg: "/forensic", Bench: `BenchmarkAppendDurable/producers=(1|64)/mac=true`, Units: []string{"records/s"}, Ref: "seed-records/s", Ratio: "x-seed"},
	{What: "trail verify per core, HMAC, vs one SHA-256 per line", Pkg: "/forensic", Bench: `BenchmarkVerify/mac=true`, Procs: 1, Units: []string{"records/s/core"}, Ref: "sha256-lines/s/core", Ratio: "x-sha256/core", Op: ">=", Target: 1e6},
	{What: "trail verify, HMAC, 2 cores vs 1", Pkg: "/forensic", Bench: `BenchmarkVerify/mac=true`, Procs: 2, Units: []string{"records/s"}, Ref: "records/s", RefProcs: 1},
	{What: "trail verify per core, no MAC", Pkg: "/forensic", Bench: `BenchmarkVerify/mac=false`, Units: []string{"records/s/core"}, Ref: "sha256-lines/s/core", Ratio: "x-sha256/core"},
	{What: "seed-format verify of a 60k-line HMAC'd seed log vs the seed's verify_chain", Pkg: "/forensic", Bench: `BenchmarkVerifySeed`, Units: []string{"lines/s"}, Ref: "seed-lines/s", Ratio: "x-seed", Op: ">=", Target: 5, OnRate: true},
	{What: "ledger lifecycle, durable, 256 goroutines, vs every record waited for", Pkg: "/tracer", Bench: `BenchmarkLifecycleDurable`, Units: []string{"lifecycles/s"}, Ref: "ref-every-record-lifecycles/s", Ratio: "ratio-vs-every-record", Op: ">=", Target: 1e5},
	{What: "ledger cost per lifecycle", Pkg: "/tracer", Bench: `BenchmarkLifecycleDurable`, Units: []string{"cpu-us/lifecycle"}, Ref: "ref-cpu-us/lifecycle"},
	{What: "ledger lifecycle with tracer.Pool (freed buffers reused; see its caveat), vs the default allocator", Pkg: "/tracer", Bench: `BenchmarkLifecycleDurable`, Units: []string{"pooled-lifecycles/s"}, Ref: "lifecycles/s"},
	{What: "ledger cost per lifecycle with tracer.Pool", Pkg: "/tracer", Bench: `BenchmarkLifecycleDurable`, Units: []string{"pooled-cpu-us/lifecycle"}, Ref: "cpu-us/lifecycle"},
	{What: "ledger heap after 1M lifecycles", Pkg: "/tracer", Bench: `BenchmarkRSSAfterLifecycles`, Units: []string{"heap-MiB"}},
	{What: "host zeroize / clear()", Pkg: "/zeroize", Bench: `BenchmarkZeroize/.*`, Units: []string{"zero/clear"}, Op: ">=", Target: 0.9},
	{What: "full verify / plain read scan", Pkg: "/zeroize", Bench: `BenchmarkZeroize/.*`, Units: []string{"verify/read"}, Op: ">=", Target: 0.8},
	{What: "interposer overhead per alloc", Pkg: "/internal/libkvhtest", Bench: `BenchmarkInterposer`, UnitRe: `.*-alloc-overhead-ns`, Op: "<=", Target: 300},
	{What: "interposer overhead per free (excluding the memset)", Pkg: "/internal/libkvhtest", Bench: `BenchmarkInterposer`, UnitRe: `.*-free-overhead-ns`, Op: "<=", Target: 2000},
	{What: "witness ring buffer, producers paced at 1.25M events/s", Pkg: "/bpf", Bench: `BenchmarkWitness.*`, Units: []string{"events/s", "ring-events/s"}, Op: ">=", Target: 1e6},
	{What: "witness ring buffer, producers paced at 1.25M events/s: events lost", Pkg: "/bpf", Bench: `BenchmarkWitness.*`, Units: []string{"lost", "ring-lost"}, Op: "==", Target: 0},
	{What: "witness ring buffer, producers unpaced on the reader's cores: delivered", Pkg: "/bpf", Bench: `BenchmarkWitness.*`, Units: []string{"ring-max-events/s"}},
	{What: "witness ring buffer, producers unpaced: events lost, every one counted", Pkg: "/bpf", Bench: `BenchmarkWitness.*`, Units: []string{"ring-max-lost"}},
	{What: "witness probe cost, probed / unprobed driver call", Pkg: "/bpf", Bench: `BenchmarkWitness.*`, Units: []string{"probed/unprobed"}},
	{What: "shipping sealed segments to S3-compatible storage, vs plain PUTs of the same files", Pkg: "/ship", Bench: `BenchmarkShip.*`, Units: []string{"ship-MiB/s"}, Ratio: "ship/put"},
	{What: "evidence report pass", Pkg: "/report", Bench: `BenchmarkReport`, Units: []string{"report-records/s"}},
	{What: "evidence report peak heap", Pkg: "/report", Bench: `BenchmarkReport`, Units: []string{"peak-heap-MiB"}},
}
