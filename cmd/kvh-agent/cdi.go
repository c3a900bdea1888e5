package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/kvhygiene/kvh/internal/nriplugin"
	"github.com/spf13/pflag"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	cdispec "tags.cncf.io/container-device-interface/specs-go"
)

// CDI names of the spec `kvh-agent cdi generate` writes: a container that
// asks for the device kvh.io/interposer=libkvh (beside its GPU) gets the
// same mounts and environment the NRI plugin adds.
const (
	cdiKind   = "kvh.io/interposer"
	cdiDevice = "libkvh"
)

// cdiSpec is the CDI spec for a runtime without NRI. CDI sets environment
// variables and cannot prepend to one: an image's own LD_PRELOAD is
// replaced, not kept, which is why NRI comes first.
func cdiSpec(libDir, socket string) *cdispec.Spec {
	in := nriplugin.Edits(libDir, socket, nil)
	edits := cdispec.ContainerEdits{Env: []string{"LD_PRELOAD=" + in.Env["LD_PRELOAD"], "KVH_SOCKET=" + in.Env["KVH_SOCKET"]}}
	for _, m := range in.Mounts {
		edits.Mounts = append(edits.Mounts, &cdispec.Mount{HostPath: m.Source, ContainerPath: m.Destination, Type: "bind", Options: append([]string(nil), nriplugin.MountOptions...)})
	}
	spec := &cdispec.Spec{Kind: cdiKind, Devices: []cdispec.Device{{Name: cdiDevice, ContainerEdits: edits}}}
	spec.Version, _ = cdispec.MinimumRequiredVersion(spec)
	return spec
}

// runCDI is `kvh-agent cdi generate`: it writes the spec, validated by the
// CDI library, atomically (mode 0600) into --output-dir, or to stdout.
func runCDI(args []string, stdout io.Writer, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "generate" {
		fmt.Fprintln(stderr, "usage: kvh-agent cdi generate [--output-dir DIR | --output -] [--libkvh-dir DIR] [--socket PATH]")
		return 2
	}
	fs := pflag.NewFlagSet("kvh-agent cdi generate", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("output-dir", "/etc/cdi", "CDI spec directory to write "+cdiKind+".yaml into")
	out := fs.String("output", "", "\"-\": write the spec to stdout instead")
	libDir := fs.String("libkvh-dir", "/var/lib/kvh/lib", "host directory holding libkvh.so (mounted read-only at the same path)")
	socket := fs.String("socket", "/run/kvh/kvh.sock", "the agent's interposer socket (its directory is mounted read-only at the same path)")
	if err := fs.Parse(args[1:]); err != nil {
		if err == pflag.ErrHelp {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 || (*out != "" && *out != "-") {
		fmt.Fprintf(stderr, "kvh-agent cdi generate: unexpected arguments %q (--output takes only -)\n", append(fs.Args(), *out))
		return 2
	}
	if !filepath.IsAbs(*libDir) || !filepath.IsAbs(*socket) {
		fmt.Fprintf(stderr, "kvh-agent cdi generate: --libkvh-dir %q and --socket %q must be absolute paths\n", *libDir, *socket)
		return 2
	}
	spec := cdiSpec(*libDir, *socket)
	target := *dir
	if *out == "-" {
		tmp, err := os.MkdirTemp("", "kvh-cdi-")
		if err != nil {
			fmt.Fprintln(stderr, "kvh-agent cdi generate:", err)
			return 1
		}
		defer os.RemoveAll(tmp)
		target = tmp
	}
	name := strings.ReplaceAll(cdiKind, "/", "-") + ".yaml"
	cache, err := cdi.NewCache(cdi.WithSpecDirs(target), cdi.WithAutoRefresh(false))
	if err == nil {
		err = cache.WriteSpec(spec, name)
	}
	if err != nil {
		fmt.Fprintln(stderr, "kvh-agent cdi generate: invalid or unwritable spec:", err)
		return 1
	}
	path := filepath.Join(target, name)
	if *out == "-" {
		b, err := os.ReadFile(path)
		if err != nil {
			fmt.Fprintln(stderr, "kvh-agent cdi generate:", err)
			return 1
		}
		stdout.Write(b)
		return 0
	}
	fmt.Fprintf(stderr, "kvh-agent cdi generate: wrote %s; request the device %s=%s beside the GPU\n", path, cdiKind, cdiDevice)
	return 0
}
