//go:build cgo

package gpu

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// NVML is the backend that asks the NVIDIA driver. Every call goes through
// an nvml.Interface so that tests can hand it go-nvml's mocks.
type NVML struct {
	lib      nvml.Interface
	procRoot string

	mu     sync.Mutex
	closed bool
	// memV2 is whether nvmlDeviceGetMemoryInfo_v2 may be called: the symbol
	// is missing from drivers older than 510, and calling a missing symbol
	// through go-nvml crashes the process instead of returning an error.
	memV2 bool
}

func openNVML() (Backend, error) { return NewNVML(nvml.New()) }

// NewNVML initialises NVML through lib (nvml.New() for the real driver, a
// go-nvml mock in tests) and returns the backend. Close shuts NVML down.
func NewNVML(lib nvml.Interface) (*NVML, error) {
	if ret := lib.Init(); ret != nvml.SUCCESS {
		return nil, nvmlError("initialise NVML", ret)
	}
	n := &NVML{lib: lib, procRoot: defaultProcRoot}
	if ext := lib.Extensions(); ext != nil && ext.LookupSymbol("nvmlDeviceGetMemoryInfo_v2") == nil {
		n.memV2 = true
	}
	return n, nil
}

// Info implements Backend.
func (n *NVML) Info(ctx context.Context) (Info, error) {
	if err := n.check(); err != nil {
		return Info{}, err
	}
	info := Info{Backend: "nvml"}
	drv, ret := n.lib.SystemGetDriverVersion()
	if ret != nvml.SUCCESS {
		return Info{}, nvmlError("read the driver version", ret)
	}
	info.Driver = drv
	if v, ret := n.lib.SystemGetCudaDriverVersion(); ret == nvml.SUCCESS {
		info.CUDA = cudaVersion(v)
	}
	count, ret := n.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return Info{}, nvmlError("count devices", ret)
	}
	for i := 0; i < count; i++ {
		if err := ctx.Err(); err != nil {
			return Info{}, err
		}
		d, err := n.device(i)
		if err != nil {
			return Info{}, err
		}
		info.Devices = append(info.Devices, d)
	}
	return info, nil
}

func (n *NVML) device(i int) (Device, error) {
	h, ret := n.lib.DeviceGetHandleByIndex(i)
	if ret != nvml.SUCCESS {
		return Device{}, nvmlError(fmt.Sprintf("open GPU %d", i), ret)
	}
	d := Device{Index: i}
	if d.Name, ret = h.GetName(); ret != nvml.SUCCESS {
		return Device{}, nvmlError(fmt.Sprintf("read GPU %d's name", i), ret)
	}
	if d.UUID, ret = h.GetUUID(); ret != nvml.SUCCESS {
		return Device{}, nvmlError(fmt.Sprintf("read GPU %d's UUID", i), ret)
	}
	if err := n.memory(h, &d); err != nil {
		return Device{}, err
	}
	if d.ComputeMajor, d.ComputeMinor, ret = h.GetCudaComputeCapability(); ret != nvml.SUCCESS {
		return Device{}, nvmlError(fmt.Sprintf("read GPU %d's compute capability", i), ret)
	}
	// The rest is informational: consumer cards and vGPUs often answer
	// NOT_SUPPORTED, which must not hide the memory figures.
	if u, ret := h.GetUtilizationRates(); ret == nvml.SUCCESS {
		d.UtilizationPercent = int(u.Gpu)
	}
	if t, ret := h.GetTemperature(nvml.TEMPERATURE_GPU); ret == nvml.SUCCESS {
		d.TemperatureC = int(t)
	}
	if mw, ret := h.GetPowerUsage(); ret == nvml.SUCCESS {
		d.PowerWatts = float64(mw) / 1000
	}
	return d, nil
}

// memory fills the memory figures, from the v2 call where the driver has it:
// v1 counts the driver's reserved memory as used, so v1's Used overstates
// what processes hold by a few hundred MiB.
func (n *NVML) memory(h nvml.Device, d *Device) error {
	if n.memV2 {
		m, ret := h.GetMemoryInfo_v2()
		if ret == nvml.SUCCESS {
			d.TotalBytes, d.UsedBytes, d.FreeBytes = m.Total, m.Used, m.Free
			return nil
		}
		if ret != nvml.ERROR_NOT_SUPPORTED && ret != nvml.ERROR_FUNCTION_NOT_FOUND && ret != nvml.ERROR_ARGUMENT_VERSION_MISMATCH {
			return nvmlError(fmt.Sprintf("read GPU %d's memory", d.Index), ret)
		}
	}
	m, ret := h.GetMemoryInfo()
	if ret != nvml.SUCCESS {
		return nvmlError(fmt.Sprintf("read GPU %d's memory", d.Index), ret)
	}
	d.TotalBytes, d.UsedBytes, d.FreeBytes = m.Total, m.Used, m.Free
	return nil
}

// Processes implements Backend. Only compute processes are listed: vLLM's
// engines are compute processes, and a desktop's graphics processes are not
// vagent's to manage (their memory still shows in Info's free figure).
func (n *NVML) Processes(ctx context.Context) ([]Process, error) {
	if err := n.check(); err != nil {
		return nil, err
	}
	count, ret := n.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, nvmlError("count devices", ret)
	}
	var out []Process
	for i := 0; i < count; i++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		h, ret := n.lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			return nil, nvmlError(fmt.Sprintf("open GPU %d", i), ret)
		}
		ps, ret := h.GetComputeRunningProcesses()
		if ret != nvml.SUCCESS {
			return nil, nvmlError(fmt.Sprintf("list GPU %d's processes", i), ret)
		}
		for _, p := range ps {
			used := p.UsedGpuMemory
			if used == ^uint64(0) { // NVML_VALUE_NOT_AVAILABLE
				used = 0
			}
			unit, agent := unitOfPID(n.procRoot, int(p.Pid))
			out = append(out, Process{PID: int(p.Pid), GPU: i, UsedBytes: used, Unit: unit, Agent: agent})
		}
	}
	sortProcesses(out)
	return out, nil
}

// Close implements Backend: it shuts NVML down once.
func (n *NVML) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	if ret := n.lib.Shutdown(); ret != nvml.SUCCESS {
		return nvmlError("shut NVML down", ret)
	}
	return nil
}

func (n *NVML) check() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return errors.New("gpu: NVML backend used after Close")
	}
	return nil
}

// cudaVersion writes NVML's CUDA driver version (12040) as users know it
// (12.4).
func cudaVersion(v int) string {
	return fmt.Sprintf("%d.%d", v/1000, v%1000/10)
}

// nvmlErr is an NVML failure worded for a user. It matches nvml.Return values
// with errors.Is, and ErrNoDriver when the library is missing.
type nvmlErr struct {
	ret nvml.Return
	msg string
}

func (e *nvmlErr) Error() string { return e.msg }
func (e *nvmlErr) Unwrap() error { return e.ret }
func (e *nvmlErr) Is(target error) bool {
	return target == ErrNoDriver && e.ret == nvml.ERROR_LIBRARY_NOT_FOUND
}

// nvmlError maps an NVML return code to one line that says what to do. The
// common failures of a GPU host get their own words; the rest name the
// operation and NVML's code.
func nvmlError(op string, ret nvml.Return) error {
	var msg string
	switch ret {
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		msg = ErrNoDriver.Error()
	case nvml.ERROR_DRIVER_NOT_LOADED:
		msg = "gpu: the NVIDIA kernel driver is not loaded: is a GPU present and the driver's kernel module installed? (try nvidia-smi)"
	case nvml.ERROR_LIB_RM_VERSION_MISMATCH:
		msg = "gpu: NVIDIA driver/library version mismatch: the driver was upgraded but the old kernel module is still loaded; reboot (or reload the nvidia modules)"
	case nvml.ERROR_NO_PERMISSION:
		msg = fmt.Sprintf("gpu: %s: no permission to use the NVIDIA devices (/dev/nvidia*): run as root or as a user allowed to open them", op)
	case nvml.ERROR_GPU_IS_LOST:
		msg = fmt.Sprintf("gpu: %s: the GPU has fallen off the bus or stopped responding; check dmesg for Xid errors and reboot", op)
	case nvml.ERROR_RESET_REQUIRED:
		msg = fmt.Sprintf("gpu: %s: the GPU needs a reset (nvidia-smi -r) or a reboot", op)
	case nvml.ERROR_INSUFFICIENT_POWER:
		msg = fmt.Sprintf("gpu: %s: the GPU's power cables are not connected properly", op)
	default:
		msg = fmt.Sprintf("gpu: %s: NVML error %s", op, ret.Error())
	}
	return &nvmlErr{ret: ret, msg: msg}
}
