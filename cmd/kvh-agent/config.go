package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/ship"
	"github.com/spf13/pflag"
)

// Config is everything the agent is told, validated once.
type Config struct {
	Socket          string
	SocketMode      uint32
	SocketGroup     string
	MaxConns        int
	MaxConnsPerUID  int
	MaxConnsPerProc int
	Listen          string
	TrailDir        string
	SigningKey      string
	HMACKeyFile     string
	// Key rotation: the trail's current keys, when SigningKey/HMACKeyFile
	// are new ones (forensic.Options.PreviousSigner/PreviousMACKey).
	PreviousSigningKey  string
	PreviousHMACKeyFile string
	RekeyReason         string
	Origin              string
	MetricsJSON         string
	MetricsTextfile     string
	ExportInterval      time.Duration
	SweepInterval       time.Duration
	GPUInterval         time.Duration
	LogFormat           string
	LogLevel            string
	AppendOnly          bool
	Witness             string
	Profiling           bool
	WitnessLibs         []string
	AttestWindow        time.Duration
	DropThreshold       uint64
	ActionTimeout       time.Duration
	ProcRoot            string
	CgroupRoot          string
	NVIDIAParams        string
	ModprobeDir         string
	PolicyWatch         time.Duration
	Version             bool
	policyFlags         *policy.Flags

	// NRI injects libkvh into GPU containers and learns their pods
	// (internal/nriplugin); PublishLibkvh is copied into LibkvhDir at start.
	NRI           bool
	NRISocket     string
	LibkvhDir     string
	PublishLibkvh string

	// Ship* keep the trail off the node (ship/): --ship-to names the
	// bucket and prefix; credentials come from the environment or a file.
	ShipTo            string
	ShipNode          string
	ShipEndpoint      string
	ShipRegion        string
	ShipInsecure      bool
	ShipCAFile        string
	ShipCredentials   string
	ShipInterval      time.Duration
	ShipMaxBacklogAge time.Duration
	shipTo            ship.Location

	// AcceptTamperedTrail starts on a trail that fails recovery's checks,
	// keeping its files as evidence (forensic.Options.AcceptTampered).
	AcceptTamperedTrail bool
}

func parseFlags(args []string) (*Config, *pflag.FlagSet, error) {
	c := &Config{}
	fs := pflag.NewFlagSet("kvh-agent", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.StringVar(&c.Socket, "socket", "/run/kvh/kvh.sock", "interposer socket (SOCK_SEQPACKET)")
	fs.Uint32Var(&c.SocketMode, "socket-mode", 0o660, "the socket's mode (octal, e.g. 0660; 0666 lets any local process connect: identity comes from the kernel and the caps below hold either way)")
	fs.StringVar(&c.SocketGroup, "socket-group", "", "the socket's group, by name or gid (default: the agent's), so that non-root serving processes can connect")
	fs.IntVar(&c.MaxConns, "max-conns", 1024, "interposer connections the agent accepts in all (each costs about 11 KiB of agent memory)")
	fs.IntVar(&c.MaxConnsPerUID, "max-conns-per-uid", 256, "interposer connections one uid may hold")
	fs.IntVar(&c.MaxConnsPerProc, "max-conns-per-process", 8, "interposer connections one process may hold (more is a connection_limit violation)")
	fs.StringVar(&c.Listen, "listen", ":9478", "HTTP address for /metrics, /healthz and /readyz")
	fs.StringVar(&c.TrailDir, "trail-dir", "/var/lib/kvh/trail", "the tamper-evident trail's directory")
	fs.StringVar(&c.SigningKey, "signing-key", "/etc/kvh/kvh.key", "checkpoint signing key (from kvh-verify keygen; mode 0600)")
	fs.StringVar(&c.HMACKeyFile, "hmac-key-file", "", "HMAC key file for record MACs (default: $FORENSIC_HMAC_SECRET; none: no MACs)")
	fs.StringVar(&c.PreviousSigningKey, "previous-signing-key", "", "key rotation: the trail's current signing key, when --signing-key is a new one; the agent writes a rekey record that this key seals and continues with the new key (harmless once rotated, so it may stay set until the old key file is destroyed)")
	fs.StringVar(&c.PreviousHMACKeyFile, "previous-hmac-key-file", "", "key rotation: the trail's current HMAC key file, when --hmac-key-file is a new one (same rekey record)")
	fs.StringVar(&c.RekeyReason, "rekey-reason", "", "why the keys rotate, written in the rekey record (default \"key rotation\")")
	fs.StringVar(&c.Origin, "origin", "", "log origin for a new trail (default kvh/<hostname>/<random id>)")
	fs.StringVar(&c.MetricsJSON, "metrics-json", "", "write the seed-compatible metrics JSON here periodically (atomic)")
	fs.StringVar(&c.MetricsTextfile, "metrics-textfile", "", "write the seed-compatible node_exporter textfile here periodically (atomic)")
	fs.DurationVar(&c.ExportInterval, "export-interval", 10*time.Second, "how often to write the metrics files")
	fs.DurationVar(&c.SweepInterval, "sweep-interval", time.Second, "how often TTLs are enforced on idle buffers")
	fs.DurationVar(&c.GPUInterval, "gpu-interval", 10*time.Second, "how often NVML's GPU processes are checked for interposer coverage")
	fs.BoolVar(&c.Profiling, "profiling", false, "serve Go's /debug/pprof/ on --listen (CPU and heap profiles, for performance work; off by default)")
	fs.StringVar(&c.LogFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: trace, debug, info, warn, error")
	fs.BoolVar(&c.AppendOnly, "append-only", true, "set the append-only attribute on trail files when permitted")
	fs.BoolVar(&c.AcceptTamperedTrail, "accept-tampered-trail", false, "start even when the trail has been tampered with (by default the agent refuses, naming the file, line and seq): its files are kept untouched as evidence in <trail-dir>/evidence-<time>/ and a new log starts with a signed tamper_detected record saying what was found")
	fs.StringVar(&c.Witness, "witness", "auto", "eBPF witness: auto (on when possible), on (required) or off")
	fs.StringArrayVar(&c.WitnessLibs, "witness-lib", nil, "a CUDA driver or runtime library to probe (repeatable; default: the node's libcuda.so.1, plus every copy processes map)")
	fs.DurationVar(&c.AttestWindow, "attest-window", 2*time.Second, "how long a witnessed free waits for its interposer attestation")
	fs.Uint64Var(&c.DropThreshold, "drop-threshold", 1000, "events one connection may drop before the agent logs that it is not keeping up (drops are an evidence gap, never a violation)")
	fs.DurationVar(&c.ActionTimeout, "action-timeout", 5*time.Second, "how long one action (deny, freeze, kill) may take before it is recorded as timed out")
	fs.StringVar(&c.ProcRoot, "proc-root", "/proc", "procfs mount (identity of connected processes)")
	fs.StringVar(&c.CgroupRoot, "cgroup-root", "/sys/fs/cgroup", "cgroup v2 mount (freeze action)")
	fs.StringVar(&c.NVIDIAParams, "nvidia-params", "/proc/driver/nvidia/params", "the driver's live parameters (scrub-on-free posture)")
	fs.StringVar(&c.ModprobeDir, "modprobe-dir", "/etc/modprobe.d", "modprobe configuration (scrub-on-free posture fallback)")
	fs.BoolVar(&c.NRI, "nri", false, "run the NRI plugin: inject libkvh into containers with an NVIDIA GPU (or the kvh.io/inject annotation), and take each container's pod, namespace and labels from the runtime as its identity")
	fs.StringVar(&c.NRISocket, "nri-socket", "/var/run/nri/nri.sock", "the container runtime's NRI socket")
	fs.StringVar(&c.LibkvhDir, "libkvh-dir", "/var/lib/kvh/lib", "host directory holding libkvh.so, bind-mounted read-only at the same path into injected containers")
	fs.StringVar(&c.PublishLibkvh, "publish-libkvh", "", "copy this libkvh.so (the one in the agent's image) into --libkvh-dir at start, atomically (default: publish nothing)")
	fs.StringVar(&c.ShipTo, "ship-to", "", "keep the trail off the node: ship every segment and checkpoint to s3://BUCKET/PREFIX/<node>/, each object locked in compliance mode for the policy's trail_retention_days (the bucket must have Object Lock). Credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, or a shared credentials file")
	fs.StringVar(&c.ShipNode, "ship-node", "", "this node's name under --ship-to (default: the hostname)")
	fs.StringVar(&c.ShipEndpoint, "ship-endpoint", "s3.amazonaws.com", "the object store's host[:port]")
	fs.StringVar(&c.ShipRegion, "ship-region", "", "the bucket's region (default: asked of the store)")
	fs.BoolVar(&c.ShipInsecure, "ship-insecure", false, "speak plain HTTP to the object store, without TLS (a store on loopback only)")
	fs.StringVar(&c.ShipCAFile, "ship-ca-file", "", "PEM CA bundle that verifies the object store (default: the system's)")
	fs.StringVar(&c.ShipCredentials, "ship-credentials-file", "", "AWS shared credentials file (profile $AWS_PROFILE or default; mode 0600) instead of the AWS_* variables (default: $AWS_SHARED_CREDENTIALS_FILE when the variables are unset)")
	fs.DurationVar(&c.ShipInterval, "ship-interval", 5*time.Second, "how often new trail bytes are shipped")
	fs.DurationVar(&c.ShipMaxBacklogAge, "ship-max-backlog-age", 15*time.Minute, "trail bytes unshipped for longer are a shipping_backlog violation (recorded; no process is acted on)")
	fs.DurationVar(&c.PolicyWatch, "policy-watch", 0, "reload the --policy file when its content changes, checked this often (e.g. 10s for a Kubernetes ConfigMap volume, which is updated in place); 0: only on SIGHUP")
	fs.BoolVar(&c.Version, "version", false, "print the version and exit")
	c.policyFlags = policy.Register(fs)
	if err := fs.Parse(args); err != nil {
		return nil, fs, err
	}
	if c.Version {
		return c, fs, nil // nothing else is used, so nothing else is judged
	}
	if c.PolicyWatch < 0 {
		return nil, fs, fmt.Errorf("--policy-watch must not be negative")
	}
	if c.PolicyWatch > 0 && c.policyFlags.File() == "" {
		return nil, fs, fmt.Errorf("--policy-watch needs --policy: there is no file to watch")
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
	for name, p := range map[string]string{"libkvh-dir": c.LibkvhDir, "socket": c.Socket} {
		if c.NRI && !filepath.IsAbs(p) {
			return nil, fs, fmt.Errorf("--%s %q must be an absolute path with --nri (it is mounted at the same path in containers)", name, p)
		}
	}
	if c.SocketMode&^0o777 != 0 || c.SocketMode&0o600 != 0o600 {
		return nil, fs, fmt.Errorf("--socket-mode %#o must be a permission mode that lets the agent read and write (0600 to 0777)", c.SocketMode)
	}
	for name, v := range map[string]int{"max-conns": c.MaxConns, "max-conns-per-uid": c.MaxConnsPerUID, "max-conns-per-process": c.MaxConnsPerProc} {
		if v < 1 {
			return nil, fs, fmt.Errorf("--%s must be at least 1", name)
		}
	}
	if err := c.checkShip(); err != nil {
		return nil, fs, err
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"ship-interval", c.ShipInterval}, {"ship-max-backlog-age", c.ShipMaxBacklogAge}, {"export-interval", c.ExportInterval}, {"sweep-interval", c.SweepInterval}, {"gpu-interval", c.GPUInterval}, {"attest-window", c.AttestWindow}, {"action-timeout", c.ActionTimeout}} {
		if d.v <= 0 {
			return nil, fs, fmt.Errorf("--%s must be positive", d.name)
		}
	}
	return c, fs, nil
}

// checkShip validates the shipping flags: a destination, a node name that
// is one path element, and no shipping flag without --ship-to.
func (c *Config) checkShip() error {
	if c.ShipTo == "" {
		if c.ShipNode != "" || c.ShipCredentials != "" || c.ShipCAFile != "" {
			return fmt.Errorf("--ship-node, --ship-credentials-file and --ship-ca-file need --ship-to")
		}
		return nil
	}
	loc, err := ship.ParseLocation(c.ShipTo)
	if err != nil {
		return fmt.Errorf("--ship-to: %w", err)
	}
	node := c.ShipNode
	if node == "" {
		if node, err = os.Hostname(); err != nil || node == "" {
			return fmt.Errorf("--ship-node: the hostname is unknown (%v); name the node", err)
		}
	}
	if strings.ContainsAny(node, "/\\") || node == "." || node == ".." || strings.TrimSpace(node) != node {
		return fmt.Errorf("--ship-node %q must be one path element", node)
	}
	c.ShipNode = node
	c.shipTo = loc.Join(node)
	return nil
}
