package ingest

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/kvhygiene/kvh/internal/proc"
	"github.com/kvhygiene/kvh/trailevent"
)

// Identity is who a connected process is, as the kernel says; its fields
// are the trail's (trailevent.Identity).
type Identity = trailevent.Identity

var (
	containerRe = regexp.MustCompile(`(?:^|[/-])([0-9a-f]{64})(?:\.scope)?$`)
	podRe       = regexp.MustCompile(`pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})`)
)

// Pod is what the orchestrator told the agent about a container (over NRI):
// its pod and the tenant the policy's tenant_key names for it.
type Pod struct {
	UID, Namespace, Name string
	Container            string // the container's name in its pod
	Tenant               string // "" when the pod lacks what tenant_key names
	TenantSource         string // namespace or label
}

// Pods finds the pod of a container by its runtime id or, failing that, by
// its cgroup path. The agent's NRI plugin is one; nil knows none.
type Pods interface {
	PodOf(containerID, cgroup string) (Pod, bool)
}

// Identify reads /proc/<pid> under procRoot. The tenant comes from what
// the process cannot choose, in this order: its pod UID, else its container
// id (both from its cgroup), else — only when trustClaims, for bare-metal
// hosts — KVH_TENANT from its environment as it was at exec, else
// "uid:<uid>". A KVH_TENANT that is not honoured is still recorded, as
// ClaimedTenant.
func Identify(procRoot string, pid int, uid uint32, trustClaims bool) Identity {
	return IdentifyWith(procRoot, pid, uid, trustClaims, nil)
}

// IdentifyWith is Identify, with the orchestrator's word first: a process
// whose container pods knows (by the container id or cgroup the kernel
// gives) has its pod's tenant (namespace or label, by the policy's
// tenant_key), its pod UID, namespace and name. Nothing of it comes from the
// process's environment.
func IdentifyWith(procRoot string, pid int, uid uint32, trustClaims bool, pods Pods) Identity {
	id := Identity{PID: pid, UID: uid}
	dir := filepath.Join(procRoot, strconv.Itoa(pid))
	if b, err := os.ReadFile(filepath.Join(dir, "comm")); err == nil {
		id.Comm = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile(filepath.Join(dir, "cgroup")); err == nil {
		id.Cgroup = cgroupPath(b)
		if m := podRe.FindStringSubmatch(id.Cgroup); m != nil {
			id.PodUID = strings.ReplaceAll(m[1], "_", "-")
		}
		// The outermost container id is the runtime's: the cgroups under
		// it are the container's own to name, and a process that may make
		// them (a delegated cgroupfs) could name one after another
		// container, whose pod the orchestrator's lookup would then give.
		for _, part := range strings.Split(id.Cgroup, "/") {
			if m := containerRe.FindStringSubmatch(part); m != nil {
				id.ContainerID = m[1]
				break
			}
		}
	}
	id.ClaimedTenant = environ(filepath.Join(dir, "environ"), "KVH_TENANT")
	var pod Pod
	known := false
	if pods != nil && (id.ContainerID != "" || id.Cgroup != "") {
		if pod, known = pods.PodOf(id.ContainerID, id.Cgroup); known {
			if pod.UID != "" {
				id.PodUID = pod.UID
			}
			id.PodNamespace, id.PodName, id.ContainerName = pod.Namespace, pod.Name, pod.Container
		}
	}
	switch {
	case known && pod.Tenant != "":
		id.Tenant, id.TenantSource = pod.Tenant, pod.TenantSource
	case id.PodUID != "":
		id.Tenant, id.TenantSource = "pod:"+id.PodUID, "pod"
	case id.ContainerID != "":
		id.Tenant, id.TenantSource = "container:"+id.ContainerID[:12], "container"
	case trustClaims && id.ClaimedTenant != "":
		id.Tenant, id.TenantSource = id.ClaimedTenant, "claim"
	default:
		id.Tenant, id.TenantSource = "uid:"+strconv.FormatUint(uint64(uid), 10), "uid"
		if _, err := os.Stat(dir); err != nil {
			id.TenantSource = "exited" // gone before /proc could be read: only the uid is known
		}
	}
	return id
}

// identifyHandle identifies the process h holds: Identify, then a check
// that the process was still alive after /proc was read, so that what was
// read was its own and not that of a process that took its pid since. One
// that has gone is identified by its uid only.
func identifyHandle(procRoot string, h *proc.Handle, uid uint32, trustClaims bool, pods Pods) Identity {
	if h.IsExited() { // /proc/<pid> is gone, or another process's
		return Identity{PID: h.PID, UID: uid, Tenant: "uid:" + strconv.FormatUint(uint64(uid), 10), TenantSource: "exited"}
	}
	id := IdentifyWith(procRoot, h.PID, uid, trustClaims, pods)
	if !h.Alive() {
		id = Identity{PID: h.PID, UID: uid, Tenant: "uid:" + strconv.FormatUint(uint64(uid), 10), TenantSource: "exited"}
	}
	return id
}

// IdentifyProcess identifies the process h holds, for a detector that saw
// only its pid: its effective uid (what SO_PEERCRED would have said) from
// /proc/<pid>/status, then as identifyHandle (pods may be nil).
func IdentifyProcess(procRoot string, h *proc.Handle, trustClaims bool, pods Pods) Identity {
	uid := ^uint32(0)
	if b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(h.PID), "status")); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "Uid:"); ok {
				if f := strings.Fields(v); len(f) >= 2 {
					if n, err := strconv.ParseUint(f[1], 10, 32); err == nil {
						uid = uint32(n)
					}
				}
			}
		}
	}
	return identifyHandle(procRoot, h, uid, trustClaims, pods)
}

// cgroupPath returns the cgroup v2 path ("0::/…") or, on v1, the memory or
// first controller's path. On a hybrid host (v1 controllers and a v2
// hierarchy no one places containers in) the v2 path is "/" and the v1 path
// is the container's.
func cgroupPath(b []byte) string {
	var first, v2 string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			v2 = parts[2]
			continue
		}
		if first == "" || strings.Contains(parts[1], "memory") {
			first = parts[2]
		}
	}
	if v2 != "" && (v2 != "/" || first == "" || first == "/") {
		return v2
	}
	return first
}

// maxEnviron is how much of a process's environment is read for its
// KVH_TENANT claim. A process chooses the size of its environment (tens of
// megabytes with a large stack limit), and reading it all for every
// connection would let one tenant make the agent read and hold that much
// per connection; a claim past this is not seen (the process is then
// identified by what it cannot choose).
const maxEnviron = 256 << 10

func environ(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxEnviron))
	if err != nil {
		return ""
	}
	for _, kv := range bytes.Split(b, []byte{0}) {
		if k, v, ok := bytes.Cut(kv, []byte("=")); ok && string(k) == key {
			s := strings.Map(func(r rune) rune {
				if r < 0x20 || r == 0x7f {
					return -1
				}
				return r
			}, string(v))
			if len(s) > 128 {
				s = s[:128]
			}
			return s
		}
	}
	return ""
}
