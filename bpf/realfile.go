//go:build linux && (amd64 || arm64)

package bpf

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// realFile returns the (device, inode) of the file underneath path, the
// file a uprobe on path lands on (the kernel resolves an overlay's file to
// its layer's, d_real_inode). stat through an overlay gives the overlay's
// device, a new one for every container, so one image file would look like
// as many files as there are containers; and a process's maps show the same
// (on kernels since 6.8 they show the overlay's device too).
//
// path is inner as seen from root (a process's /proc/<pid>/root, or "" for
// the agent's own view) whose mounts mountinfo lists. When the mount holding
// it is an overlay, the file is looked up in its layers, upper first, as
// the mounter (the container runtime, in the host's mount namespace) named
// them, through <procRoot>/1/root (or directly, when the agent shares the
// host's mount namespace); a layer that is itself on an overlay is
// resolved again, a few levels at most. Anything else is its own file.
func realFile(procRoot, mountinfo, root, inner string) ([2]uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(root+inner, &st); err != nil {
		return [2]uint64{}, err
	}
	key := [2]uint64{st.Dev, st.Ino}
	if root == "" {
		if p, err := filepath.EvalSymlinks(inner); err == nil {
			inner, _ = filepath.Abs(p)
		}
	}
	host := filepath.Join(procRoot, "1")
	// The runtime named the layers in the host's mount namespace: reach
	// them through the host init's root, or directly where the agent
	// shares that namespace or cannot see init's root (then the paths
	// are tried as the agent sees them).
	hostRoots := []string{filepath.Join(host, "root"), ""}
	if sameMountNS(procRoot) {
		hostRoots = []string{""}
	}
	for depth := 0; depth < 4; depth++ {
		m, ok := mountOf(mountinfo, inner)
		if !ok || m.fstype != "overlay" {
			return key, nil
		}
		rel, _ := filepath.Rel(m.point, inner)
		rel = filepath.Join(m.root, rel)
		next, found := layerFile(hostRoots, overlayLayers(m.opts), rel)
		if !found {
			return key, nil
		}
		key = [2]uint64{next.st.Dev, next.st.Ino}
		// The layer may itself be on an overlay: look again, in the host's
		// mount namespace.
		mountinfo, root, inner = filepath.Join(host, "mountinfo"), next.root, next.path
		if root == "" {
			mountinfo = "/proc/self/mountinfo"
		}
	}
	return key, nil
}

type layerHit struct {
	root, path string
	st         unix.Stat_t
}

// layerFile finds rel in the first layer that has it (a whiteout ends the
// search: the file is not there).
func layerFile(hostRoots, layers []string, rel string) (layerHit, bool) {
	for _, layer := range layers {
		cand := filepath.Join(layer, rel)
		for _, hr := range hostRoots {
			var lst unix.Stat_t
			if err := unix.Lstat(hr+cand, &lst); err != nil {
				continue
			}
			if lst.Mode&unix.S_IFMT == unix.S_IFCHR && lst.Rdev == 0 {
				return layerHit{}, false
			}
			h := layerHit{root: hr, path: cand}
			if err := unix.Stat(hr+cand, &h.st); err != nil {
				continue
			}
			return h, true
		}
	}
	return layerHit{}, false
}

// sameMountNS: the agent is in the mount namespace of the host's init.
func sameMountNS(procRoot string) bool {
	a, err1 := os.Readlink(filepath.Join(procRoot, "1", "ns", "mnt"))
	b, err2 := os.Readlink("/proc/self/ns/mnt")
	return err1 == nil && err2 == nil && a == b
}

type mountEntry struct {
	point, root, fstype, opts string
}

// mountOf finds the mount that holds path in a mountinfo: the one with the
// longest mount point that is a prefix of path, the last listed when one
// mount point was mounted over another.
func mountOf(mountinfo, path string) (mountEntry, bool) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return mountEntry{}, false
	}
	defer f.Close()
	var best mountEntry
	found := false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20) // overlay options list every layer
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		a, b := strings.Fields(pre), strings.Fields(post)
		if len(a) < 5 || len(b) < 3 {
			continue
		}
		point := unescapeMount(a[4])
		if !under(path, point) {
			continue
		}
		if !found || len(point) >= len(best.point) {
			best, found = mountEntry{point: point, root: unescapeMount(a[3]), fstype: b[0], opts: b[2]}, true
		}
	}
	return best, found
}

func under(path, dir string) bool {
	return dir == "/" || path == dir || strings.HasPrefix(path, dir+"/")
}

// overlayLayers lists an overlay's layers, upper first, from its mount
// options: upperdir, then lowerdir (":"-separated, "\:" for a colon in a
// name) or the lowerdir+ and datadir+ of the new mount API, in order.
func overlayLayers(opts string) []string {
	var upper string
	var lower []string
	for _, o := range splitOpts(opts) {
		k, v, _ := strings.Cut(o, "=")
		v = unescapeMount(v)
		switch k {
		case "upperdir":
			upper = v
		case "lowerdir":
			lower = append(lower, splitLower(v)...)
		case "lowerdir+", "datadir+":
			lower = append(lower, v)
		}
	}
	if upper != "" {
		return append([]string{upper}, lower...)
	}
	return lower
}

// splitOpts splits mount options at the commas that are not escaped.
func splitOpts(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case ',':
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

func splitLower(v string) []string {
	var out []string
	var cur strings.Builder
	for i := 0; i < len(v); i++ {
		switch {
		case v[i] == '\\' && i+1 < len(v):
			i++
			cur.WriteByte(v[i])
		case v[i] == ':':
			if cur.Len() > 0 { // "::" marks the data-only layers that follow
				out = append(out, cur.String())
			}
			cur.Reset()
		default:
			cur.WriteByte(v[i])
		}
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space, …).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
