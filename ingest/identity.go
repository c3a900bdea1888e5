package ingest

import (
	"bufio"
	"bytes"
	"github.com/kvhygiene/kvh/trailevent"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Identity is who a connected process is, as the kernel says; its fields
// are the trail's (trailevent.Identity).
type Identity = trailevent.Identity

var (
	containerRe = regexp.MustCompile(`(?:^|[/-])([0-9a-f]{64})(?:\.scope)?$`)
	podRe       = regexp.MustCompile(`pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})`)
)

// Identify reads /proc/<pid> under procRoot. The tenant comes from what
// the process cannot choose, in this order: its pod UID, else its container
// id (both from its cgroup), else — only when trustClaims, for bare-metal
// hosts — KVH_TENANT from its environment as it was at exec, else
// "uid:<uid>". A KVH_TENANT that is not honoured is still recorded, as
// ClaimedTenant.
func Identify(procRoot string, pid int, uid uint32, trustClaims bool) Identity {
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
		for _, part := range strings.Split(id.Cgroup, "/") {
			if m := containerRe.FindStringSubmatch(part); m != nil {
				id.ContainerID = m[1]
			}
		}
	}
	id.ClaimedTenant = environ(filepath.Join(dir, "environ"), "KVH_TENANT")
	switch {
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

// cgroupPath returns the cgroup v2 path ("0::/…") or, on v1, the memory or
// first controller's path.
func cgroupPath(b []byte) string {
	var first string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			return parts[2]
		}
		if first == "" || strings.Contains(parts[1], "memory") {
			first = parts[2]
		}
	}
	return first
}

func environ(path, key string) string {
	b, err := os.ReadFile(path)
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
