//go:build cgo

package ctl

import (
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/gpu"
)

// twoRTX4090 is a go-nvml mock of a host with two idle RTX 4090s.
func twoRTX4090() *mock.Interface {
	const mib = 1 << 20
	dev := func(uuid string) nvml.Device {
		return &mock.Device{
			GetNameFunc:                  func() (string, nvml.Return) { return "NVIDIA GeForce RTX 4090", nvml.SUCCESS },
			GetUUIDFunc:                  func() (string, nvml.Return) { return uuid, nvml.SUCCESS },
			GetCudaComputeCapabilityFunc: func() (int, int, nvml.Return) { return 8, 9, nvml.SUCCESS },
			GetMemoryInfo_v2Func: func() (nvml.Memory_v2, nvml.Return) {
				return nvml.Memory_v2{Total: 24564 * mib, Reserved: 400 * mib, Free: (24564 - 400) * mib}, nvml.SUCCESS
			},
			GetUtilizationRatesFunc: func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{}, nvml.SUCCESS },
			GetTemperatureFunc:      func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 30, nvml.SUCCESS },
			GetPowerUsageFunc:       func() (uint32, nvml.Return) { return 20000, nvml.SUCCESS },
			GetComputeRunningProcessesFunc: func() ([]nvml.ProcessInfo, nvml.Return) {
				return nil, nvml.SUCCESS
			},
		}
	}
	devs := []nvml.Device{dev("GPU-a"), dev("GPU-b")}
	return &mock.Interface{
		InitFunc:     func() nvml.Return { return nvml.SUCCESS },
		ShutdownFunc: func() nvml.Return { return nvml.SUCCESS },
		ExtensionsFunc: func() nvml.ExtendedInterface {
			return &mock.ExtendedInterface{LookupSymbolFunc: func(string) error { return nil }}
		},
		SystemGetDriverVersionFunc:     func() (string, nvml.Return) { return "550.54.15", nvml.SUCCESS },
		SystemGetCudaDriverVersionFunc: func() (int, nvml.Return) { return 12040, nvml.SUCCESS },
		DeviceGetCountFunc:             func() (int, nvml.Return) { return len(devs), nvml.SUCCESS },
		DeviceGetHandleByIndexFunc: func(i int) (nvml.Device, nvml.Return) {
			if i < 0 || i >= len(devs) {
				return nil, nvml.ERROR_INVALID_ARGUMENT
			}
			return devs[i], nvml.SUCCESS
		},
	}
}

// The two-card example on two RTX 4090s: vagentctl gpu lists each card's
// agents with their budget of that card, architect on both.
func TestGPUCommandTwoCardExample(t *testing.T) {
	conf, _ := hostConfig(t, "configs/examples/2x24gb", func(m string) string {
		m = strings.Replace(m, `backend = "auto"`, `backend = "nvml"`, 1)
		return strings.Replace(m, `kind = "sim"`, `kind = "vllm"`, 1)
	})
	saved := gpuOpen
	defer func() { gpuOpen = saved }()
	gpuOpen = func(*config.Config) (gpu.Backend, error) { return gpu.NewNVML(twoRTX4090()) }
	out, errOut, code := runGPUCmd(t, conf)
	if code != ExitOK || errOut != "" {
		t.Fatalf("vagentctl gpu: exit %d, stderr %q\n%s", code, errOut, out)
	}
	lines := normalize(out)
	want := []string{
		"GPU USABLE AGENTS",
		"0 23.74 GiB architect (budget 22.07 GiB), po (budget 22.07 GiB)",
		"1 23.74 GiB architect (budget 22.07 GiB), dev (budget 22.79 GiB)",
	}
	if got := strings.Join(lines[len(lines)-3:], "\n"); got != strings.Join(want, "\n") {
		t.Errorf("vagentctl gpu ends with\n%s\nwant\n%s\n(all:\n%s)", got, strings.Join(want, "\n"), out)
	}
}
