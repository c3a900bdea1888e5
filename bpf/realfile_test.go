//go:build linux && (amd64 || arm64)

package bpf

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestOverlayLayers(t *testing.T) {
	cases := []struct {
		opts string
		want []string
	}{
		{"rw,lowerdir=/l2:/l1,upperdir=/u,workdir=/w", []string{"/u", "/l2", "/l1"}},
		{"ro,lowerdir=/a\\:b:/c", []string{"/a:b", "/c"}},
		{"rw,lowerdir+=/l2,lowerdir+=/l1,datadir+=/d,upperdir=/u", []string{"/u", "/l2", "/l1", "/d"}},
		{"rw,lowerdir=/l1::/d", []string{"/l1", "/d"}},
		{"rw,lowerdir=/with\\040space,upperdir=/u\\054x", []string{"/u,x", "/with space"}},
	}
	for _, tc := range cases {
		if got := overlayLayers(tc.opts); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.opts, got, tc.want)
		}
	}
}

func TestMountOf(t *testing.T) {
	mi := filepath.Join(t.TempDir(), "mountinfo")
	os.WriteFile(mi, []byte(`26 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 26 0:38 / /run/c rw - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
41 40 0:39 / /run/c/lib rw - tmpfs tmpfs rw
42 26 0:40 /sub /run/c2 rw - overlay overlay rw,lowerdir=/x
43 26 0:41 / /run/c rw - overlay overlay rw,lowerdir=/over,upperdir=/u2,workdir=/w2
`), 0o600)
	cases := []struct {
		path, point, root, fs string
	}{
		{"/run/c/usr/lib/libcuda.so.1", "/run/c", "/", "overlay"}, // the later mount over /run/c
		{"/run/c/lib/x.so", "/run/c/lib", "/", "tmpfs"},
		{"/run/c2/a", "/run/c2", "/sub", "overlay"},
		{"/run/cx/a", "/", "/", "ext4"},
	}
	for _, tc := range cases {
		m, ok := mountOf(mi, tc.path)
		if !ok || m.point != tc.point || m.root != tc.root || m.fstype != tc.fs {
			t.Errorf("%s: %+v %v", tc.path, m, ok)
		}
	}
	if m, _ := mountOf(mi, "/run/c/x"); m.opts != "rw,lowerdir=/over,upperdir=/u2,workdir=/w2" {
		t.Errorf("the mount on top was not chosen: %+v", m)
	}
}
