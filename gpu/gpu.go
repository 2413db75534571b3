// Package gpu reports what the GPUs hold: per device the memory total, used
// and free, and per process the memory it holds and the vagent unit it
// belongs to. The supervisor asks it whether an agent's budget fits before a
// start and whether a stopped engine's memory is back before the next one.
//
// There are two backends behind one interface, so that everything above this
// package is tested without a GPU: "nvml" asks the NVIDIA driver through
// go-nvml, "sim" reads the ledger the vllm-sim processes keep (see
// internal/ledger).
package gpu

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/vagent-dev/vagent/config"
)

// Device is one GPU as the backend sees it now.
type Device struct {
	// Index is the driver's (NVML's) index, which is PCI bus order. CUDA
	// numbers devices the same way only with CUDA_DEVICE_ORDER=PCI_BUS_ID,
	// which units must set so that an agent's gpus mean these indexes.
	Index int    `json:"index"`
	UUID  string `json:"uuid"`
	Name  string `json:"name"`

	TotalBytes uint64 `json:"total_bytes"`
	UsedBytes  uint64 `json:"used_bytes"`
	// FreeBytes is what a new process can still allocate; with NVML's v2
	// memory info it excludes the driver's reserved memory, so Total may be
	// more than Used+Free.
	FreeBytes uint64 `json:"free_bytes"`

	ComputeMajor int `json:"compute_major"`
	ComputeMinor int `json:"compute_minor"`

	// UtilizationPercent, TemperatureC and PowerWatts are informational and
	// 0 where the device does not report them.
	UtilizationPercent int     `json:"utilization_percent"`
	TemperatureC       int     `json:"temperature_c"`
	PowerWatts         float64 `json:"power_watts"`
}

// ComputeCapability is the device's CUDA compute capability as "8.9".
func (d Device) ComputeCapability() string {
	return fmt.Sprintf("%d.%d", d.ComputeMajor, d.ComputeMinor)
}

// Process is one process holding GPU memory on one device. A process using
// several GPUs appears once per GPU.
type Process struct {
	PID int `json:"pid"`
	GPU int `json:"gpu"`
	// UsedBytes is the memory it holds on GPU; 0 where the driver does not
	// say (NVML reports "not available" in some containers).
	UsedBytes uint64 `json:"used_bytes"`
	// HostBytes is host memory the process holds for this GPU: the weights
	// a level-1 sleep moved to host RAM. Only the simulator's ledger
	// reports it; NVML knows nothing of host memory (0).
	HostBytes uint64 `json:"host_bytes,omitempty"`
	// Unit is the vagent unit the process runs in (vagent@NAME.service), ""
	// for a process that is not an agent's.
	Unit string `json:"unit"`
	// Agent is NAME of Unit, "" when Unit is "".
	Agent string `json:"agent"`
}

// Info is the driver and its devices at one moment.
type Info struct {
	// Backend is "nvml" or "sim".
	Backend string `json:"backend"`
	// Driver is the driver version ("550.54.15"); "sim" for the simulator.
	Driver string `json:"driver"`
	// CUDA is the newest CUDA version the driver supports ("12.4").
	CUDA string `json:"cuda"`
	// Devices are sorted by Index.
	Devices []Device `json:"devices"`
}

// Device returns the device with index i.
func (in Info) Device(i int) (Device, bool) {
	for _, d := range in.Devices {
		if d.Index == i {
			return d, true
		}
	}
	return Device{}, false
}

// Backend is a source of GPU facts. Implementations are safe for concurrent
// use. NVML calls cannot be interrupted: ctx is checked between devices, so a
// call returns late by at most one device's queries.
type Backend interface {
	// Info returns the driver version and every device's memory and state.
	Info(ctx context.Context) (Info, error)
	// Processes returns the processes holding GPU memory, sorted by GPU then
	// PID.
	Processes(ctx context.Context) ([]Process, error)
	// Close releases the backend (NVML's Shutdown).
	Close() error
}

// ErrNoDriver is matched (errors.Is) by the error Open returns when the
// NVIDIA driver library is not installed, so that callers can suggest the
// simulator or skip GPU checks.
var ErrNoDriver = errors.New("gpu: NVIDIA driver library (libnvidia-ml.so.1) not found: is the NVIDIA driver installed? (set [gpu] backend = \"sim\" to use the simulator)")

// Open returns the backend cfg.GPU.Backend names: "nvml" loads the NVIDIA
// driver library and fails with one line saying what to do when it cannot;
// "sim" reads the simulator's ledger and cannot fail until it is read;
// "auto" is resolved first (ResolveBackend, on a copy of cfg).
func Open(cfg *config.Config) (Backend, error) {
	if cfg.GPU.Backend == config.GPUBackendAuto {
		c := *cfg
		ResolveBackend(context.Background(), &c)
		cfg = &c
	}
	switch cfg.GPU.Backend {
	case config.GPUBackendNVML:
		return openNVML()
	case config.GPUBackendSim:
		return NewSim(cfg.GPU), nil
	default:
		return nil, fmt.Errorf("gpu: unknown backend %q (want %q or %q)", cfg.GPU.Backend, config.GPUBackendNVML, config.GPUBackendSim)
	}
}

// Free is the memory free on GPU gpu, 0 if there is no such device.
func Free(info Info, gpu int) uint64 {
	d, ok := info.Device(gpu)
	if !ok {
		return 0
	}
	return d.FreeBytes
}

// HeldByAgent sums, per agent, the memory its processes hold on GPU gpu, so
// that a supervisor can tell how much stopping an agent would give back.
// Memory of processes that belong to no agent is under "".
func HeldByAgent(procs []Process, gpu int) map[string]uint64 {
	held := map[string]uint64{}
	for _, p := range procs {
		if p.GPU == gpu {
			held[p.Agent] += p.UsedBytes
		}
	}
	return held
}

// Fits reports whether an engine that needs need bytes on each GPU in gpus
// can start now, keeping reserve bytes free on each. The error names the
// first GPU that is missing or too full and by how much, in words a user can
// act on.
func Fits(info Info, gpus []int, need, reserve uint64) error {
	for _, g := range gpus {
		d, ok := info.Device(g)
		if !ok {
			return fmt.Errorf("gpu: GPU %d does not exist (this host has %d)", g, len(info.Devices))
		}
		if d.FreeBytes < reserve || d.FreeBytes-reserve < need {
			msg := fmt.Sprintf("gpu: GPU %d (%s) has %s free, needs %s", g, d.Name, FormatBytes(d.FreeBytes), FormatBytes(need))
			if reserve > 0 {
				msg += fmt.Sprintf(" plus %s reserve", FormatBytes(reserve))
			}
			return errors.New(msg)
		}
	}
	return nil
}

// CheckComputeCapability refuses a device vLLM cannot run on, with the reason:
// vLLM needs CUDA compute capability 7.0 (Volta) or newer, and its AWQ
// kernels need 7.5 (Turing) or newer. awq is whether the agent's model is
// AWQ-quantized.
func CheckComputeCapability(d Device, awq bool) error {
	cc := d.ComputeMajor*10 + d.ComputeMinor
	switch {
	case cc < 70:
		return fmt.Errorf("gpu: GPU %d (%s) has compute capability %s: vLLM needs 7.0 or newer", d.Index, d.Name, d.ComputeCapability())
	case awq && cc < 75:
		return fmt.Errorf("gpu: GPU %d (%s) has compute capability %s: vLLM's AWQ kernels need 7.5 or newer (use a non-AWQ model on this GPU)", d.Index, d.Name, d.ComputeCapability())
	}
	return nil
}

// FormatBytes writes n in binary units as vLLM and nvidia-smi users read them
// ("14.38 GiB", "896 MiB").
func FormatBytes(n uint64) string {
	const (
		kib = 1 << 10
		mib = 1 << 20
		gib = 1 << 30
	)
	switch {
	case n >= gib:
		return fmt.Sprintf("%.2f GiB", float64(n)/gib)
	case n >= mib:
		return fmt.Sprintf("%.0f MiB", float64(n)/mib)
	case n >= kib:
		return fmt.Sprintf("%.0f KiB", float64(n)/kib)
	}
	return fmt.Sprintf("%d B", n)
}

func sortProcesses(ps []Process) {
	sort.Slice(ps, func(i, j int) bool {
		if ps[i].GPU != ps[j].GPU {
			return ps[i].GPU < ps[j].GPU
		}
		return ps[i].PID < ps[j].PID
	})
}
