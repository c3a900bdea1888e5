package nriplugin

import (
	"testing"

	"github.com/containerd/nri/pkg/api"
)

// Attack (evasion by spelling): the NVIDIA device plugin's cdi-cri strategy
// names its CDI devices under its own vendor, k8s.device-plugin.nvidia.com,
// and the NVIDIA DRA driver under k8s.gpu.nvidia.com; only "nvidia.com/"
// was matched, so a GPU container allocated either way, whose spec the
// runtime had not yet given the device nodes, was not injected. A vendor
// that merely ends in "nvidia.com" without the dot is not NVIDIA's.
func TestAttackCDIVendorSpellings(t *testing.T) {
	cases := []struct {
		dev  string
		want bool
	}{
		{"nvidia.com/gpu=all", true},
		{"k8s.device-plugin.nvidia.com/gpu=GPU-8a4b6c1e-0000-0000-0000-000000000000", true},
		{"k8s.gpu.nvidia.com/claim=dab5ab50-d59a-42a6-af16-cfd4628c0f7a-gpu-0", true},
		{"management.nvidia.com/gpu=all", true},
		{"notnvidia.com/gpu=0", false},
		{"nvidia.com.evil.example/gpu=0", false},
		{"vendor.com/fpga=0", false},
	}
	for _, tc := range cases {
		got, why := Wants(pod("a", "n", nil), &api.Container{CDIDevices: []*api.CDIDevice{{Name: tc.dev}}})
		if got != tc.want {
			t.Errorf("CDI device %s: Wants = %v (%s), want %v", tc.dev, got, why, tc.want)
		}
	}
}
