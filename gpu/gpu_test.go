package gpu

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

func TestDGXH100(t *testing.T) {
	srv := dgxh100.New()
	for i, d := range srv.Devices {
		md := d.(*server.Device)
		md.GetPersistenceModeFunc = func() (nvml.EnableState, nvml.Return) { return nvml.FEATURE_ENABLED, nvml.SUCCESS }
		if i == 0 {
			md.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) {
				return []nvml.ProcessInfo{{Pid: 4242, UsedGpuMemory: 1 << 30}}, nvml.SUCCESS
			}
		}
	}
	inv, err := Open(srv)
	if err != nil {
		t.Fatal(err)
	}
	defer inv.Close()
	devs, err := inv.Devices()
	if err != nil || len(devs) != 8 {
		t.Fatalf("%v %d devices", err, len(devs))
	}
	if devs[0].UUID == "" || devs[0].MemoryTotal == 0 || !devs[0].Persistence {
		t.Fatalf("%+v", devs[0])
	}
	ps, err := inv.Processes()
	if err != nil || len(ps) != 1 || ps[0].PID != 4242 || ps[0].Device != devs[0].UUID {
		t.Fatalf("%v %+v", err, ps)
	}
}

func TestNoDriver(t *testing.T) {
	lib := &mock.Interface{
		InitFunc:        func() nvml.Return { return nvml.ERROR_LIBRARY_NOT_FOUND },
		ErrorStringFunc: func(nvml.Return) string { return "library not found" },
	}
	if _, err := Open(lib); !errors.Is(err, ErrNotAvailable) {
		t.Fatalf("%v", err)
	}
	// The real library, on a machine without a driver, says the same.
	if _, err := os.Stat("/proc/driver/nvidia"); err != nil {
		if _, err := Open(nil); !errors.Is(err, ErrNotAvailable) {
			t.Fatalf("real NVML without a driver: %v", err)
		}
	}
}

func TestPosture(t *testing.T) {
	dir := t.TempDir()
	params := filepath.Join(dir, "params")
	os.WriteFile(params, []byte("ResmanDebugLevel: 4294967295\nRegistryDwords: \"RmDisableScrubOnFree=1;RMFoo=2\"\n"), 0o644)
	if p := ReadPosture(params, dir); p.ScrubOnFree != 0 {
		t.Fatalf("%+v", p)
	}
	os.WriteFile(params, []byte("RegistryDwords: \"\"\n"), 0o644)
	if p := ReadPosture(params, dir); p.ScrubOnFree != 1 {
		t.Fatalf("%+v", p)
	}
	mp := filepath.Join(dir, "modprobe")
	os.MkdirAll(mp, 0o755)
	os.WriteFile(filepath.Join(mp, "nvidia.conf"), []byte("options nvidia NVreg_RegistryDwords=\"RmDisableScrubOnFree=0x1\"\n"), 0o644)
	if p := ReadPosture(filepath.Join(dir, "missing"), mp); p.ScrubOnFree != 0 || p.Source == "" {
		t.Fatalf("%+v", p)
	}
	if p := ReadPosture(filepath.Join(dir, "missing"), filepath.Join(dir, "none")); p.ScrubOnFree != -1 {
		t.Fatalf("%+v", p)
	}
}
