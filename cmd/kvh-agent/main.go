// Command kvh-agent is kvh's node agent: one privileged process per GPU node
// that turns every interposer event into a judged, durable, signed trail
// record, exposes hygiene to Prometheus, and acts on violators.
//
// Sources of configuration, later wins: defaults, --policy FILE, the
// environment (KV_*/KVH_*, FORENSIC_HMAC_SECRET), flags. SIGTERM or SIGINT
// drains and closes the trail cleanly; SIGHUP reloads the policy.
//
// The wiring, one concern a file: config.go (flags), agent.go (objects built
// in dependency order, start and stop), metrics.go (the agent's own series),
// gpu.go (posture and the NVML watcher), witness.go (the eBPF witness and
// its correlator), http.go (/metrics, /healthz, /readyz), nri.go (the NRI
// plugin and libkvh's publication), cdi.go (`kvh-agent cdi generate`).
package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/pflag"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr *os.File) int {
	if len(args) > 0 && args[0] == "cdi" {
		return runCDI(args[1:], os.Stdout, stderr)
	}
	cfg, _, err := parseFlags(args)
	if err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "kvh-agent:", err)
		return 2
	}
	if cfg.Version {
		fmt.Println(version())
		return 0
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "kvh-agent", Level: hclog.LevelFromString(cfg.LogLevel), JSONFormat: cfg.LogFormat == "json", Output: stderr})
	pol, err := cfg.policyFlags.Load(os.LookupEnv)
	if err != nil {
		fmt.Fprintln(stderr, "kvh-agent: invalid policy:", err)
		return 2
	}
	// Take the signals before anything else: a SIGHUP or SIGTERM that
	// arrives while starting is handled once started, not fatal.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	a, err := start(cfg, pol, log)
	if err != nil {
		log.Error("start failed", "error", err)
		return 1
	}
	w := newPolicyWatch(cfg.policyFlags.File(), cfg.PolicyWatch)
	defer w.stop()
	for {
		select {
		case <-w.changed():
			log.Info("policy file changed", "file", cfg.policyFlags.File())
			a.reload()
			continue
		case s := <-sigs:
			if s == syscall.SIGHUP {
				a.reload()
				continue
			}
			log.Info("shutting down", "signal", s.String())
		}
		break
	}
	if err := a.stop(); err != nil {
		log.Error("shutdown", "error", err)
		return 1
	}
	log.Info("trail closed cleanly")
	return 0
}
