package main

import "runtime/debug"

// version is the build's version: the module version when built from a
// tagged module, else the commit, else "devel". It is kvh-agent's version()
// (cmd/kvh-agent/metrics.go) line for line, so the two commands of one build
// say the same; TestVersion runs both binaries and compares.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	return versionOf(bi)
}

func versionOf(bi *debug.BuildInfo) string {
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return s.Value[:12]
		}
	}
	return "devel"
}
