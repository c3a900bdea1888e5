//go:build e2e && linux

package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kvhygiene/kvh/trailevent"
	"golang.org/x/sys/unix"
)

var repo, _ = filepath.Abs("..")

func must(t *testing.T, err error, what string, out ...[]byte) {
	t.Helper()
	if err != nil {
		s := ""
		if len(out) > 0 {
			s = string(out[0])
		}
		t.Fatalf("%s: %v\n%s", what, err, s)
	}
}

func run(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr // warnings; the answer is on stdout
	out, err := cmd.Output()
	must(t, err, name+" "+strings.Join(args, " "), append(out, stderr.Bytes()...))
	return strings.TrimSpace(string(out))
}

// world is one run: containerd under W, the agent, and what they started.
type world struct {
	t          *testing.T
	w          string
	env        []string
	containerd *exec.Cmd
	agent      *exec.Cmd
	agentLog   string
	pods       []string
}

func (x *world) crictl(args ...string) string {
	x.t.Helper()
	sock := "unix://" + filepath.Join(x.w, "run", "containerd.sock")
	return run(x.t, x.env, "crictl", append([]string{"--runtime-endpoint", sock, "--image-endpoint", sock, "--timeout", "30s"}, args...)...)
}

// TestContainerdNRI: two tenants' pods in two namespaces on a real
// containerd with NRI, the agent injecting libkvh into containers nobody
// changed. It asserts what the mission asks of it: libkvh is in each GPU
// container's own /proc/self/maps; the trail names each process's tenant by
// its pod's namespace; tenant B reads zero bytes of tenant A's secret after
// A's pod freed it (and, the control, does read an opted-out pod's); the
// opted-out pod is recorded; a container that strips LD_PRELOAD is caught by
// the witness as uncovered_process with its pod named; four pods of one
// image are one probe of its driver library, and the injected pods raise no
// violation at all; the trail verifies; and nothing is left behind.
func TestContainerdNRI(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("make e2e needs root: it starts containerd, mounts overlays and attaches eBPF probes")
	}
	for _, f := range []string{"build/bin/kvh-agent", "build/bin/kvh-verify", "build/lib/libkvh.so", "build/fakecuda/libcuda.so.1"} {
		if _, err := os.Stat(filepath.Join(repo, f)); err != nil {
			t.Fatalf("%s is missing: run make e2e (it builds it): %v", f, err)
		}
	}
	bs := exec.Command("bash", filepath.Join(repo, "scripts", "build-containerd.sh"))
	bs.Stderr = os.Stderr
	dirs, err := bs.Output()
	if err != nil {
		t.Fatalf("containerd and crictl could not be built or installed (scripts/build-containerd.sh): %v; this test does not pass without a real containerd", err)
	}
	w, err := os.MkdirTemp("/tmp", "kvhe2e-")
	must(t, err, "temp dir")
	os.Chmod(w, 0o755)
	t.Setenv("PATH", strings.TrimSpace(string(dirs))+":"+os.Getenv("PATH")) // exec looks commands up in this process's PATH
	x := &world{t: t, w: w, env: os.Environ()}
	t.Cleanup(x.teardown)

	x.buildImages()
	x.startContainerd()
	// A GPU pod that starts before the agent: not injected (NRI fails
	// open), learnt by Synchronize when the agent connects, and flagged by
	// the witness, its pod named, once it uses the driver. Its own arena.
	early := x.startPod("p0", "team-p", nil, []string{"/workload", "write", "SECRET-OF-TEAM-P"},
		[]map[string]string{{"key": "NVIDIA_VISIBLE_DEVICES", "value": "all"}, {"key": "FAKECUDA_ARENA_FILE", "value": "/gpu/arena-p0"}, {"key": "WORKLOAD_DELAY", "value": "20"}})
	x.startAgent()

	gpuEnv := []map[string]string{{"key": "NVIDIA_VISIBLE_DEVICES", "value": "all"}, {"key": "FAKECUDA_ARENA_FILE", "value": "/gpu/arena"}}
	// Tenant A writes its secret and frees it; tenant B then reads a fresh
	// block of the same "GPU": zero bytes of A's. Twice, so that four pods
	// of one image ran.
	var logs = map[string]string{}
	for i, p := range []struct{ name, ns, mode string }{{"a1", "team-a", "write"}, {"b1", "team-b", "read"}, {"a2", "team-a", "write"}, {"b2", "team-b", "read"}} {
		args := []string{p.mode}
		if p.mode == "write" {
			args = append(args, "SECRET-OF-TEAM-A-"+strconv.Itoa(i))
		}
		logs[p.name] = x.runPod(p.name, p.ns, nil, append([]string{"/workload"}, args...), gpuEnv)
	}
	for _, n := range []string{"a1", "b1", "a2", "b2"} {
		if !strings.Contains(logs[n], "LIBKVH mapped") {
			t.Errorf("pod %s: libkvh not in the container's own /proc/self/maps:\n%s", n, logs[n])
		}
	}
	for _, n := range []string{"b1", "b2"} {
		if !strings.Contains(logs[n], "RESIDUE 0\n") {
			t.Errorf("pod %s (tenant B) read tenant A's residue:\n%s", n, logs[n])
		}
	}
	// An opted-out pod (allow_opt_out is on) is not injected and leaves its
	// secret behind: the control that shows the residue check can fail.
	logs["o1"] = x.runPod("o1", "team-o", map[string]string{"kvh.io/opt-out": "true"}, []string{"/workload", "write", "SECRET-OF-TEAM-O"}, gpuEnv)
	logs["b3"] = x.runPod("b3", "team-b", nil, []string{"/workload", "read"}, gpuEnv)
	if !strings.Contains(logs["o1"], "LIBKVH absent") {
		t.Errorf("the opted-out pod was injected:\n%s", logs["o1"])
	}
	if strings.Contains(logs["b3"], "RESIDUE 0\n") || !strings.Contains(logs["b3"], "RESIDUE") {
		t.Errorf("after an uninjected writer the reader saw no residue: the residue check proves nothing:\n%s", logs["b3"])
	}
	// A container that strips LD_PRELOAD before it starts its GPU program.
	logs["s1"] = x.runPod("s1", "team-s", nil, []string{"/bin/busybox", "env", "-u", "LD_PRELOAD", "/workload", "write", "SECRET-OF-TEAM-S"}, gpuEnv)
	if !strings.Contains(logs["s1"], "LIBKVH absent") {
		t.Errorf("the stripping container still has libkvh:\n%s", logs["s1"])
	}
	// A container with no GPU gets nothing.
	logs["n1"] = x.runPod("n1", "team-a", nil, []string{"/bin/busybox", "env"}, nil)
	if strings.Contains(logs["n1"], "LD_PRELOAD") || strings.Contains(logs["n1"], "KVH_SOCKET") || !strings.Contains(logs["n1"], "PATH=") {
		t.Errorf("a container without a GPU was injected:\n%s", logs["n1"])
	}
	logs["p0"] = x.waitPod(early)
	if !strings.Contains(logs["p0"], "LIBKVH absent") {
		t.Errorf("the pod started before the agent has libkvh:\n%s", logs["p0"])
	}
	time.Sleep(3 * time.Second) // the last attestation window and violation records
	x.stopAgent()

	recs := x.trail()
	tenants := map[string]string{} // pod name -> tenant of its connected processes
	var optOuts []trailevent.OptOut
	var violations []trailevent.Violation
	for _, r := range recs {
		switch b := r.(type) {
		case *trailevent.ProcessConnected:
			if b.Identity.PodName != "" {
				tenants[b.Identity.PodName] = b.Identity.Tenant + "/" + b.Identity.TenantSource + "/" + b.Identity.PodNamespace
			}
		case *trailevent.OptOut:
			optOuts = append(optOuts, *b)
		case *trailevent.Violation:
			violations = append(violations, *b)
		}
	}
	for pod, want := range map[string]string{"a1": "team-a/namespace/team-a", "b1": "team-b/namespace/team-b", "a2": "team-a/namespace/team-a", "b2": "team-b/namespace/team-b", "b3": "team-b/namespace/team-b"} {
		if tenants[pod] != want {
			t.Errorf("pod %s: tenant %q in the trail, want %q (all: %v)", pod, tenants[pod], want, tenants)
		}
	}
	if len(optOuts) != 1 || optOuts[0].Pod != "o1" || optOuts[0].Namespace != "team-o" || !optOuts[0].Honoured {
		t.Errorf("opt-out records: %+v", optOuts)
	}
	// Violations of this run's pods carry their pod in the detail (the
	// agent names it while the process lives; each lingers after its
	// calls) or their namespace as tenant. The machine may run other GPU
	// processes (other tests): those are not this test's to judge.
	caught, early0, others := false, false, 0
	for _, v := range violations {
		ours := strings.Contains(v.Detail, "(pod team-")
		for _, ns := range []string{"team-a", "team-b", "team-o", "team-s", "team-p"} {
			ours = ours || v.Tenant == ns
		}
		switch {
		case !ours:
			others++
		case v.Tenant == "team-s" && strings.Contains(v.Detail, "pod team-s/s1,"):
			caught = caught || v.Kind == "uncovered_process"
		case v.Tenant == "team-o" && strings.Contains(v.Detail, "pod team-o/o1,"): // opted out: uncovered, as it should be
		case v.Tenant == "team-p" && strings.Contains(v.Detail, "pod team-p/p0,"): // started before the agent
			early0 = early0 || v.Kind == "uncovered_process"
		default:
			t.Errorf("a violation of an injected pod: %+v", v)
		}
	}
	if !early0 {
		t.Errorf("the pod started before the agent was not flagged as uncovered_process naming pod team-p/p0: %+v", violations)
	}
	if !caught {
		t.Errorf("the container that stripped LD_PRELOAD was not caught as uncovered_process naming pod team-s/s1: %+v", violations)
	}
	// One image file, four (and more) pods: one probe.
	attached := regexp.MustCompile(`witness attached: library=\S*/opt/fakegpu/lib/libcuda\.so\.1`).FindAllString(x.agentLog, -1)
	if len(attached) != 1 {
		t.Errorf("the image's driver library was probed %d times (want once): %q", len(attached), attached)
	}
	out, err := exec.Command(filepath.Join(repo, "build/bin/kvh-verify"), "log", "--pubkey", filepath.Join(w, "keys", "kvh.pub"), filepath.Join(w, "trail")).CombinedOutput()
	if err != nil {
		t.Errorf("kvh-verify log: %v\n%s", err, out)
	}
	t.Logf("pods ran: %d; trail records: %d; violations: %d (%d of processes outside this test)", len(logs), len(recs), len(violations), others)
}

// buildImages makes two images without a registry: the workload (a
// dynamically linked program, the fake driver at /opt/fakegpu/lib, the
// host's glibc, busybox) and a static pause.
func (x *world) buildImages() {
	t := x.t
	src := filepath.Join(x.w, "src")
	rootfs := filepath.Join(x.w, "rootfs")
	os.MkdirAll(src, 0o755)
	os.MkdirAll(filepath.Join(rootfs, "opt/fakegpu/lib"), 0o755)
	os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755)
	os.MkdirAll(filepath.Join(rootfs, "gpu"), 0o755)
	lib := filepath.Join(rootfs, "opt/fakegpu/lib/libcuda.so.1")
	copyFile(t, filepath.Join(repo, "build/fakecuda/libcuda.so.1"), lib, 0o755)
	run(t, x.env, "gcc", "-O1", "-Wall", "-Werror", "-I"+filepath.Join(repo, "interpose/include"), "-o", filepath.Join(rootfs, "workload"),
		filepath.Join(repo, "e2e/testdata/workload.c"), filepath.Join(rootfs, "opt/fakegpu/lib/libcuda.so.1"), "-Wl,-rpath,/opt/fakegpu/lib")
	// The host's glibc for the workload and for libkvh, as ldd finds them.
	for _, bin := range []string{filepath.Join(rootfs, "workload"), filepath.Join(repo, "build/lib/libkvh.so")} {
		out := run(t, x.env, "ldd", bin)
		for _, m := range regexp.MustCompile(`(/\S+\.so[.\d]*)`).FindAllString(out, -1) {
			if strings.HasPrefix(m, rootfs) || strings.Contains(m, "libcuda") {
				continue
			}
			real, err := filepath.EvalSymlinks(m)
			if err != nil {
				continue
			}
			copyFile(t, real, filepath.Join(rootfs, m), 0o755)
		}
	}
	copyFile(t, "/bin/busybox", filepath.Join(rootfs, "bin/busybox"), 0o755)
	pause := filepath.Join(src, "pause.c")
	os.WriteFile(pause, []byte("#include <signal.h>\n#include <unistd.h>\nstatic void bye(int s){(void)s;_exit(0);}\nint main(void){signal(SIGTERM,bye);signal(SIGINT,bye);for(;;)pause();}\n"), 0o644)
	prootfs := filepath.Join(x.w, "pauseroot")
	os.MkdirAll(prootfs, 0o755)
	run(t, x.env, "gcc", "-static", "-O1", "-o", filepath.Join(prootfs, "pause"), pause)

	layout := filepath.Join(x.w, "oci")
	run(t, x.env, "umoci", "init", "--layout", layout)
	for _, img := range []struct{ tag, root, cmd string }{{"localhost/kvh/workload:e2e", rootfs, "/workload"}, {"localhost/kvh/pause:e2e", prootfs, "/pause"}} {
		ref := layout + ":" + img.tag
		run(t, x.env, "umoci", "new", "--image", ref)
		run(t, x.env, "umoci", "insert", "--image", ref, img.root, "/")
		run(t, x.env, "umoci", "config", "--image", ref, "--config.cmd", img.cmd, "--config.env", "PATH=/bin")
	}
	run(t, x.env, "tar", "-C", layout, "-cf", filepath.Join(x.w, "images.tar"), ".")
	// The shared "GPU" the tenants' pods take turns on.
	os.MkdirAll(filepath.Join(x.w, "gpu"), 0o777)
	os.Chmod(filepath.Join(x.w, "gpu"), 0o777)
	os.WriteFile(filepath.Join(x.w, "gpu", "arena"), nil, 0o666)
	os.Chmod(filepath.Join(x.w, "gpu", "arena"), 0o666)
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	must(t, err, "reading "+from)
	os.MkdirAll(filepath.Dir(to), 0o755)
	must(t, os.WriteFile(to, b, mode), "writing "+to)
}

func (x *world) startContainerd() {
	t, w := x.t, x.w
	for _, d := range []string{"run", "s", "runc", "root", "state", "opt", "nri/plugins", "nri/conf", "logs"} {
		os.MkdirAll(filepath.Join(w, d), 0o755)
	}
	cfg := fmt.Sprintf(`version = 4
root = %[1]q
state = %[2]q

[plugins.'io.containerd.server.v1.grpc']
  address = %[3]q
[plugins.'io.containerd.server.v1.ttrpc']
  address = %[4]q
[plugins.'io.containerd.shim.v1.manager']
  socket_dir = %[5]q
[plugins.'io.containerd.internal.v1.opt']
  path = %[6]q
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = 'localhost/kvh/pause:e2e'
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  cdi_spec_dirs = []
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = 'io.containerd.runc.v2'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      SystemdCgroup = false
      Root = %[7]q
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [%[8]q]
    conf_dir = %[9]q
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'
[plugins.'io.containerd.nri.v1.nri']
  disable = false
  socket_path = %[10]q
  plugin_path = %[11]q
  plugin_config_path = %[12]q
  plugin_registration_timeout = '5s'
  plugin_request_timeout = '2s'
`, filepath.Join(w, "root"), filepath.Join(w, "state"), filepath.Join(w, "run/containerd.sock"), filepath.Join(w, "run/containerd.sock.ttrpc"),
		filepath.Join(w, "s"), filepath.Join(w, "opt"), filepath.Join(w, "runc"), filepath.Join(w, "cni/bin"), filepath.Join(w, "cni/conf"),
		filepath.Join(w, "run/nri.sock"), filepath.Join(w, "nri/plugins"), filepath.Join(w, "nri/conf"))
	must(t, os.WriteFile(filepath.Join(w, "config.toml"), []byte(cfg), 0o600), "config")
	logf, err := os.OpenFile(filepath.Join(w, "containerd.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	must(t, err, "containerd log")
	x.containerd = exec.Command("containerd", "--config", filepath.Join(w, "config.toml"))
	x.containerd.Env, x.containerd.Stdout, x.containerd.Stderr = x.env, logf, logf
	x.containerd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	must(t, x.containerd.Start(), "starting containerd")
	deadline := time.Now().Add(60 * time.Second)
	sock := "unix://" + filepath.Join(w, "run", "containerd.sock")
	for {
		c := exec.Command("crictl", "--runtime-endpoint", sock, "--timeout", "5s", "info")
		c.Env = x.env
		if err := c.Run(); err == nil {
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(w, "containerd.log"))
			t.Fatalf("containerd's CRI did not come up in 60 s:\n%s", tail(string(b), 4000))
		}
		time.Sleep(300 * time.Millisecond)
	}
	run(t, x.env, "ctr", "--address", filepath.Join(w, "run/containerd.sock"), "-n", "k8s.io", "images", "import", filepath.Join(w, "images.tar"))
}

func (x *world) startAgent() {
	t, w := x.t, x.w
	run(t, x.env, filepath.Join(repo, "build/bin/kvh-verify"), "keygen", "--out", filepath.Join(w, "keys"), "--name", "kvh-e2e")
	x.agentLog = filepath.Join(w, "agent.log")
	logf, err := os.OpenFile(x.agentLog, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	must(t, err, "agent log")
	x.agent = exec.Command(filepath.Join(repo, "build/bin/kvh-agent"), "--socket", filepath.Join(w, "kvh", "kvh.sock"), "--socket-mode", "0666",
		"--listen", "127.0.0.1:0", "--trail-dir", filepath.Join(w, "trail"), "--signing-key", filepath.Join(w, "keys", "kvh.key"), "--append-only=false",
		"--witness", "on", "--attest-window", "1s", "--nri", "--nri-socket", filepath.Join(w, "run/nri.sock"), "--libkvh-dir", filepath.Join(w, "lib"),
		"--publish-libkvh", filepath.Join(repo, "build/lib/libkvh.so"), "--allow-opt-out", "--log-level", "debug")
	x.agent.Env, x.agent.Stdout, x.agent.Stderr = x.env, logf, logf
	must(t, x.agent.Start(), "starting the agent")
	deadline := time.Now().Add(60 * time.Second)
	for {
		b, _ := os.ReadFile(x.agentLog)
		if strings.Contains(string(b), "NRI: synchronized with the runtime") {
			return
		}
		if x.agent.ProcessState != nil || time.Now().After(deadline) || syscall.Kill(x.agent.Process.Pid, 0) != nil {
			t.Fatalf("the agent did not connect to containerd's NRI in 60 s:\n%s", tail(string(b), 4000))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (x *world) stopAgent() {
	if x.agent == nil || x.agent.Process == nil {
		return
	}
	x.agent.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { x.agent.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		x.agent.Process.Kill()
		<-done
	}
	b, _ := os.ReadFile(x.agentLog)
	x.agentLog = string(b)
	x.agent = nil
}

// startPod starts one pod with one container.
func (x *world) startPod(name, ns string, ann map[string]string, cmd []string, env []map[string]string) started {
	w := x.w
	dir := filepath.Join(w, "specs", name)
	os.MkdirAll(dir, 0o755)
	logDir := filepath.Join(w, "logs", name)
	os.MkdirAll(logDir, 0o755)
	pod := map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": ns, "uid": fmt.Sprintf("00000000-0000-4000-8000-%012x", len(x.pods)+1), "attempt": 0},
		"labels":        map[string]string{"app": "kvh-e2e"},
		"annotations":   ann,
		"log_directory": logDir,
		"linux":         map[string]any{"security_context": map[string]any{"namespace_options": map[string]any{"network": 2}}},
	}
	ctr := map[string]any{
		"metadata": map[string]any{"name": "server"},
		"image":    map[string]any{"image": "localhost/kvh/workload:e2e"},
		"command":  cmd,
		"envs":     env,
		"mounts":   []map[string]any{{"container_path": "/gpu", "host_path": filepath.Join(w, "gpu")}},
		"log_path": "server.log",
		"linux":    map[string]any{"security_context": map[string]any{"run_as_user": map[string]any{"value": 1000}, "seccomp": map[string]any{"profile_type": 0}}},
	}
	write := func(f string, v any) string {
		b, _ := json.Marshal(v)
		p := filepath.Join(dir, f)
		os.WriteFile(p, b, 0o600)
		return p
	}
	pj, cj := write("pod.json", pod), write("ctr.json", ctr)
	podID := x.crictl("runp", pj)
	x.pods = append(x.pods, podID)
	ctrID := x.crictl("create", podID, cj, pj)
	x.crictl("start", ctrID)
	return started{name, ns, podID, ctrID}
}

type started struct{ name, ns, podID, ctrID string }

// runPod runs one pod with one container to its exit and returns the
// container's output.
func (x *world) runPod(name, ns string, ann map[string]string, cmd []string, env []map[string]string) string {
	return x.waitPod(x.startPod(name, ns, ann, cmd, env))
}

// waitPod waits for a started pod's container to exit, removes the pod and
// returns the container's output.
func (x *world) waitPod(p started) string {
	t := x.t
	name, ns, podID, ctrID := p.name, p.ns, p.podID, p.ctrID
	deadline := time.Now().Add(90 * time.Second)
	for {
		out := x.crictl("inspect", "-o", "go-template", "--template", "{{.status.state}}", ctrID)
		if strings.Contains(out, "EXITED") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s did not exit in 90 s (state %s)", name, out)
		}
		time.Sleep(300 * time.Millisecond)
	}
	logs := x.crictl("logs", ctrID) + "\n"
	x.crictl("stopp", podID)
	x.crictl("rmp", podID)
	for i, id := range x.pods {
		if id == podID {
			x.pods = append(x.pods[:i], x.pods[i+1:]...)
			break
		}
	}
	t.Logf("pod %s/%s: %s", ns, name, strings.ReplaceAll(strings.TrimSpace(logs), "\n", "; "))
	return logs
}

// trail reads every event the agent recorded.
func (x *world) trail() []any {
	var out []any
	files, _ := filepath.Glob(filepath.Join(x.w, "trail", "*"))
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var r struct {
				Kind string          `json:"kind"`
				Body json.RawMessage `json:"body"`
			}
			if json.Unmarshal(sc.Bytes(), &r) != nil || r.Kind != "event" {
				continue
			}
			if _, b, err := trailevent.Decode(r.Body); err == nil {
				out = append(out, b)
			}
		}
		fh.Close()
	}
	if len(out) == 0 {
		x.t.Fatalf("no events in the trail %s", filepath.Join(x.w, "trail"))
	}
	return out
}

// teardown stops the pods, the agent and containerd, its shims and their
// runc state, unmounts what is left under W, removes W, and fails the test
// if a process, mount or socket of this run survives.
func (x *world) teardown() {
	t, w := x.t, x.w
	sock := "unix://" + filepath.Join(w, "run", "containerd.sock")
	for _, id := range x.pods {
		for _, op := range []string{"stopp", "rmp"} {
			c := exec.Command("crictl", "--runtime-endpoint", sock, "--timeout", "20s", op, id)
			c.Env = x.env
			c.Run()
		}
	}
	x.stopAgent()
	if x.containerd != nil && x.containerd.Process != nil {
		x.containerd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { x.containerd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			x.containerd.Process.Kill()
			<-done
		}
	}
	// Shims outlive containerd by design: end those of this run, by pid.
	for _, pid := range processesMentioning(w) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	time.Sleep(300 * time.Millisecond)
	runcRoot := filepath.Join(w, "runc", "k8s.io")
	if ents, err := os.ReadDir(runcRoot); err == nil {
		for _, e := range ents {
			exec.Command("runc", "--root", runcRoot, "delete", "--force", e.Name()).Run()
		}
	}
	mounts := mountsUnder(w)
	for i := len(mounts) - 1; i >= 0; i-- {
		unix.Unmount(mounts[i], unix.MNT_DETACH)
	}
	if left := processesMentioning(w); len(left) > 0 {
		t.Errorf("processes of this run left behind: %v", left)
	}
	if left := mountsUnder(w); len(left) > 0 {
		t.Errorf("mounts left behind: %v", left)
	}
	if os.Getenv("KVH_E2E_KEEP") == "" {
		if err := os.RemoveAll(w); err != nil {
			t.Errorf("removing %s: %v", w, err)
		}
		if _, err := os.Stat(w); err == nil {
			t.Errorf("%s (and its sockets) left behind", w)
		}
	} else {
		t.Logf("kept %s (KVH_E2E_KEEP)", w)
	}
}

func processesMentioning(s string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(b, []byte(s)) {
			out = append(out, pid)
		}
	}
	return out
}

func mountsUnder(dir string) []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append(out, f[4])
		}
	}
	return out
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
