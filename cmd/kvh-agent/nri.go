package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/hashicorp/go-hclog"
	"github.com/kvhygiene/kvh/ingest"
	"github.com/kvhygiene/kvh/internal/nriplugin"
	"github.com/kvhygiene/kvh/policy"
	"github.com/kvhygiene/kvh/violation"
)

// publishLibkvh copies src to dir/libkvh.so atomically (a temporary file in
// dir, synced, then renamed over the old one): a container starting while
// the agent upgrades maps either the old library or the new, never a torn
// one, and one already running keeps the inode it mapped. The directory is
// 0755 and the library 0644: every container's processes, whatever their
// uid, must be able to map it; nothing in it is secret.
func publishLibkvh(src, dir string) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("--publish-libkvh: %w", err)
	}
	defer in.Close()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("--libkvh-dir: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".libkvh-*.so")
	if err != nil {
		return "", fmt.Errorf("--libkvh-dir: %w", err)
	}
	defer os.Remove(tmp.Name()) // after the rename, nothing is there
	_, err = io.Copy(tmp, in)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	dst := filepath.Join(dir, nriplugin.LibName)
	if err == nil {
		err = os.Rename(tmp.Name(), dst)
	}
	if err != nil {
		return "", fmt.Errorf("publishing %s to %s: %w", src, dst, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return dst, nil
}

// startNRI builds the NRI plugin; run connects it (and reconnects) until
// ctx ends. A missing libkvh.so is an error: every container it injected
// would fail to start.
func startNRI(cfg *Config, pol func() policy.Config, trail nriplugin.Trail, log hclog.Logger) (*nriplugin.Plugin, error) {
	lib := filepath.Join(cfg.LibkvhDir, nriplugin.LibName)
	if _, err := os.Stat(lib); err != nil {
		return nil, fmt.Errorf("--nri: %w (publish it with --publish-libkvh, or copy build/lib/libkvh.so there)", err)
	}
	return nriplugin.New(nriplugin.Config{Socket: cfg.NRISocket, LibDir: cfg.LibkvhDir, AgentSocket: cfg.Socket, Policy: pol, Trail: trail, Log: log.Named("nri")})
}

func runNRI(ctx context.Context, p *nriplugin.Plugin) {
	p.Run(ctx, nriRetry)
}

const nriRetry = 2e9 // 2 s between connection attempts

// podNamer names the pod of a violator a detector saw only by pid (the
// witness's uncovered_process and unattested_free, NVML's uncovered GPU
// process) in the violation's detail, from what the runtime told the NRI plugin. The tenant is still
// the enforcer's to find, through a pidfd.
type podNamer struct {
	violation.Sink
	procRoot string
	pods     ingest.Pods
}

func (n podNamer) Emit(v violation.Violation) {
	if v.PID > 0 {
		id := ingest.IdentifyWith(n.procRoot, v.PID, 0, false, n.pods)
		if id.PodName != "" {
			v.Detail += " (pod " + id.PodNamespace + "/" + id.PodName + ", container " + id.ContainerName + ", pid " + strconv.Itoa(v.PID) + ")"
		}
	}
	n.Sink.Emit(v)
}
