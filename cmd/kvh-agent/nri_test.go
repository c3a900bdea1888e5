package main

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"tags.cncf.io/container-device-interface/pkg/cdi"
)

func TestCDIGenerate(t *testing.T) {
	dir := t.TempDir()
	var out, errb bytes.Buffer
	if rc := runCDI([]string{"generate", "--output-dir", dir, "--libkvh-dir", "/opt/kvh/lib", "--socket", "/run/kvh/kvh.sock"}, &out, &errb); rc != 0 {
		t.Fatalf("rc %d: %s", rc, errb.String())
	}
	path := filepath.Join(dir, "kvh.io-interposer.yaml")
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("spec file: %v %v", st, err)
	}
	// The CDI library reads it back, validating it, and resolves the device.
	spec, err := cdi.ReadSpec(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	d := spec.GetDevice("libkvh")
	if spec.GetVendor() != "kvh.io" || spec.GetClass() != "interposer" || d == nil {
		t.Fatalf("spec %s/%s device %v", spec.GetVendor(), spec.GetClass(), d)
	}
	e := d.ContainerEdits
	if !reflect.DeepEqual(e.Env, []string{"LD_PRELOAD=/opt/kvh/lib/libkvh.so", "KVH_SOCKET=/run/kvh/kvh.sock"}) || len(e.Mounts) != 2 ||
		e.Mounts[0].HostPath != "/opt/kvh/lib" || e.Mounts[0].ContainerPath != "/opt/kvh/lib" || e.Mounts[1].HostPath != "/run/kvh" ||
		!reflect.DeepEqual(e.Mounts[1].Options, []string{"rbind", "ro", "nosuid", "nodev"}) {
		t.Fatalf("edits %+v", e)
	}
	out.Reset()
	if rc := runCDI([]string{"generate", "--output", "-"}, &out, &errb); rc != 0 || !strings.Contains(out.String(), "kind: kvh.io/interposer") {
		t.Fatalf("stdout: rc %d %q %s", rc, out.String(), errb.String())
	}
	for _, bad := range [][]string{{"generate", "--libkvh-dir", "lib"}, {"frobnicate"}, {"generate", "--output", "x.yaml"}} {
		errb.Reset()
		if rc := runCDI(bad, &out, &errb); rc != 2 || errb.Len() == 0 {
			t.Errorf("%q: rc %d, %q", bad, rc, errb.String())
		}
	}
}

func TestPublishLibkvh(t *testing.T) {
	src := filepath.Join(t.TempDir(), "libkvh.so")
	os.WriteFile(src, []byte("v1"), 0o600)
	dir := filepath.Join(t.TempDir(), "lib")
	dst, err := publishLibkvh(src, dir)
	if err != nil {
		t.Fatal(err)
	}
	// A container already running keeps the inode it mapped.
	old, _ := os.Open(dst)
	defer old.Close()
	os.WriteFile(src, []byte("v2"), 0o600)
	if _, err := publishLibkvh(src, dir); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(dst)
	ob := make([]byte, 2)
	old.Read(ob)
	st, _ := os.Stat(dst)
	ents, _ := os.ReadDir(dir)
	if string(b) != "v2" || string(ob) != "v1" || st.Mode().Perm() != 0o644 || len(ents) != 1 {
		t.Fatalf("published %q (old %q), mode %v, %d files", b, ob, st.Mode(), len(ents))
	}
	if _, err := publishLibkvh(filepath.Join(t.TempDir(), "none.so"), dir); err == nil || !strings.Contains(err.Error(), "--publish-libkvh") {
		t.Fatalf("a missing library: %v", err)
	}
}

func TestNRIConfigIsRefused(t *testing.T) {
	if _, _, err := parseFlags([]string{"--nri", "--libkvh-dir", "lib"}); err == nil || !strings.Contains(err.Error(), `--libkvh-dir "lib" must be an absolute path`) {
		t.Errorf("a relative --libkvh-dir: %v", err)
	}
	if _, _, err := parseFlags([]string{"--nri", "--socket", "kvh.sock"}); err == nil || !strings.Contains(err.Error(), "--socket") {
		t.Errorf("a relative --socket: %v", err)
	}
	cfg, _, err := parseFlags([]string{"--nri", "--libkvh-dir", t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	// No libkvh.so there: every container injected would fail to start.
	if _, err := startNRI(cfg, nil, nil, nil); err == nil || !strings.Contains(err.Error(), "--publish-libkvh") {
		t.Errorf("a --libkvh-dir without libkvh.so: %v", err)
	}
}
