// Package gpu is kvh's narrow view of the node's NVIDIA GPUs: devices,
// per-process GPU memory, MIG and persistence mode through NVML
// (github.com/NVIDIA/go-nvml), and the driver's scrub-on-free posture from
// /proc and the modprobe registry. Without a driver every NVML call returns
// ErrNotAvailable; the posture still reads what the files say. An Inventory
// is safe for concurrent use (NVML is).
package gpu

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// ErrNotAvailable means no NVIDIA driver (or NVML library) is present.
var ErrNotAvailable = errors.New("no NVIDIA driver: NVML is not available")

// Device is one GPU.
type Device struct {
	Index       int    `json:"index"`
	UUID        string `json:"uuid"`
	Name        string `json:"name"`
	MemoryTotal uint64 `json:"memory_total_bytes"`
	MemoryUsed  uint64 `json:"memory_used_bytes"`
	MIG         bool   `json:"mig"`
	Persistence bool   `json:"persistence"`
}

// Process is a process using GPU memory, by host pid.
type Process struct {
	PID       uint32 `json:"pid"`
	Device    string `json:"device"`
	UsedBytes uint64 `json:"used_bytes"`
}

// Inventory is what the agent needs from NVML.
type Inventory interface {
	Devices() ([]Device, error)
	Processes() ([]Process, error)
	DriverVersion() (string, error)
	Close() error
}

type inventory struct{ lib nvml.Interface }

// Open initialises NVML (lib may be a mock; nil means the real library).
func Open(lib nvml.Interface) (Inventory, error) {
	if lib == nil {
		lib = nvml.New()
	}
	if ret := safeInit(lib); ret != nvml.SUCCESS {
		return nil, fmt.Errorf("%w (%s)", ErrNotAvailable, errString(lib, ret))
	}
	return &inventory{lib: lib}, nil
}

// safeInit calls Init, turning a panic from a missing library into a return code.
func safeInit(lib nvml.Interface) (ret nvml.Return) {
	defer func() {
		if recover() != nil {
			ret = nvml.ERROR_LIBRARY_NOT_FOUND
		}
	}()
	return lib.Init()
}

func errString(lib nvml.Interface, ret nvml.Return) (s string) {
	defer func() {
		if recover() != nil {
			s = fmt.Sprintf("nvml return %d", int32(ret))
		}
	}()
	return lib.ErrorString(ret)
}

func (v *inventory) Close() error {
	if ret := v.lib.Shutdown(); ret != nvml.SUCCESS {
		return fmt.Errorf("nvml shutdown: %s", v.lib.ErrorString(ret))
	}
	return nil
}

func (v *inventory) DriverVersion() (string, error) {
	s, ret := v.lib.SystemGetDriverVersion()
	if ret != nvml.SUCCESS {
		return "", fmt.Errorf("driver version: %s", v.lib.ErrorString(ret))
	}
	return s, nil
}

func (v *inventory) handles() ([]nvml.Device, error) {
	n, ret := v.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("device count: %s", v.lib.ErrorString(ret))
	}
	out := make([]nvml.Device, 0, n)
	for i := 0; i < n; i++ {
		d, ret := v.lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			return nil, fmt.Errorf("device %d: %s", i, v.lib.ErrorString(ret))
		}
		out = append(out, d)
	}
	return out, nil
}

// optional calls f, treating "not supported" and a missing mock method as absent.
func optional[T any](f func() (T, nvml.Return)) (t T, ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	t, ret := f()
	return t, ret == nvml.SUCCESS
}

func (v *inventory) Devices() ([]Device, error) {
	hs, err := v.handles()
	if err != nil {
		return nil, err
	}
	out := make([]Device, 0, len(hs))
	for i, h := range hs {
		d := Device{Index: i}
		d.UUID, _ = optional(h.GetUUID)
		d.Name, _ = optional(h.GetName)
		if m, ok := optional(h.GetMemoryInfo); ok {
			d.MemoryTotal, d.MemoryUsed = m.Total, m.Used
		}
		if cur, ok := optional(func() (int, nvml.Return) { c, _, r := h.GetMigMode(); return c, r }); ok {
			d.MIG = cur == nvml.DEVICE_MIG_ENABLE
		}
		if p, ok := optional(h.GetPersistenceMode); ok {
			d.Persistence = p == nvml.FEATURE_ENABLED
		}
		out = append(out, d)
	}
	return out, nil
}

func (v *inventory) Processes() ([]Process, error) {
	hs, err := v.handles()
	if err != nil {
		return nil, err
	}
	var out []Process
	for _, h := range hs {
		uuid, _ := optional(h.GetUUID)
		ps, ok := optional(h.GetComputeRunningProcesses)
		if !ok {
			continue
		}
		for _, p := range ps {
			out = append(out, Process{PID: p.Pid, Device: uuid, UsedBytes: p.UsedGpuMemory})
		}
	}
	return out, nil
}

// Posture is what the node's driver configuration says about residue.
type Posture struct {
	// ScrubOnFree is 1 when the driver scrubs memory returned to it, 0 when
	// RmDisableScrubOnFree turns that off, -1 when unknown (no driver).
	ScrubOnFree int    `json:"scrub_on_free"`
	Source      string `json:"source"`
}

var scrubKey = regexp.MustCompile(`(?i)RmDisableScrubOnFree\s*=\s*(0x[0-9a-f]+|\d+)`)

// ReadPosture reads the scrub-on-free setting from the driver's live
// parameters (procParams, normally /proc/driver/nvidia/params) or, failing
// that, the modprobe registry (modprobeDir, normally /etc/modprobe.d).
func ReadPosture(procParams, modprobeDir string) Posture {
	if f, err := os.Open(procParams); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "RegistryDwords" {
				return Posture{ScrubOnFree: scrubFrom(v), Source: procParams}
			}
		}
		return Posture{ScrubOnFree: 1, Source: procParams}
	}
	files, _ := filepath.Glob(filepath.Join(modprobeDir, "*.conf"))
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "options nvidia") && scrubKey.MatchString(line) {
				return Posture{ScrubOnFree: scrubFrom(line), Source: p}
			}
		}
	}
	return Posture{ScrubOnFree: -1, Source: "no NVIDIA driver parameters found"}
}

func scrubFrom(s string) int {
	m := scrubKey.FindStringSubmatch(s)
	if m == nil {
		return 1 // not disabled: the driver default scrubs
	}
	v := strings.ToLower(m[1])
	if v == "0" || v == "0x0" || v == "0x00000000" {
		return 1
	}
	return 0
}
