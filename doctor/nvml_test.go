//go:build cgo

package doctor

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/gpu"
)

// mockCard is one device of a go-nvml mock server.
type mockCard struct {
	name         string
	major, minor int
	totalMiB     uint64
}

// nvmlMock is a go-nvml mock server (driver 550.54.15, CUDA 12.4) with the
// given cards; initRet is what nvmlInit answers.
func nvmlMock(initRet nvml.Return, cards ...mockCard) *mock.Interface {
	const mib = 1 << 20
	devices := make([]nvml.Device, len(cards))
	for i, c := range cards {
		c := c
		devices[i] = &mock.Device{
			GetNameFunc: func() (string, nvml.Return) { return c.name, nvml.SUCCESS },
			GetUUIDFunc: func() (string, nvml.Return) { return "GPU-mock-" + c.name, nvml.SUCCESS },
			GetCudaComputeCapabilityFunc: func() (int, int, nvml.Return) {
				return c.major, c.minor, nvml.SUCCESS
			},
			GetMemoryInfo_v2Func: func() (nvml.Memory_v2, nvml.Return) {
				return nvml.Memory_v2{Total: c.totalMiB * mib, Reserved: 300 * mib, Used: 0, Free: (c.totalMiB - 300) * mib}, nvml.SUCCESS
			},
			GetMemoryInfoFunc: func() (nvml.Memory, nvml.Return) {
				return nvml.Memory{Total: c.totalMiB * mib, Used: 300 * mib, Free: (c.totalMiB - 300) * mib}, nvml.SUCCESS
			},
			GetUtilizationRatesFunc:        func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{}, nvml.ERROR_NOT_SUPPORTED },
			GetTemperatureFunc:             func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED },
			GetPowerUsageFunc:              func() (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED },
			GetComputeRunningProcessesFunc: func() ([]nvml.ProcessInfo, nvml.Return) { return nil, nvml.SUCCESS },
		}
	}
	ext := &mock.ExtendedInterface{LookupSymbolFunc: func(string) error { return nil }}
	return &mock.Interface{
		InitFunc:                       func() nvml.Return { return initRet },
		ShutdownFunc:                   func() nvml.Return { return nvml.SUCCESS },
		ExtensionsFunc:                 func() nvml.ExtendedInterface { return ext },
		SystemGetDriverVersionFunc:     func() (string, nvml.Return) { return "550.54.15", nvml.SUCCESS },
		SystemGetCudaDriverVersionFunc: func() (int, nvml.Return) { return 12040, nvml.SUCCESS },
		DeviceGetCountFunc:             func() (int, nvml.Return) { return len(devices), nvml.SUCCESS },
		DeviceGetHandleByIndexFunc: func(i int) (nvml.Device, nvml.Return) {
			if i < 0 || i >= len(devices) {
				return nil, nvml.ERROR_INVALID_ARGUMENT
			}
			return devices[i], nvml.SUCCESS
		},
	}
}

// mockEnv is the test host with GPU facts from go-nvml's mocks through the
// real NVML backend.
func mockEnv(t *testing.T, h *host, lib nvml.Interface) Env {
	t.Helper()
	env := h.env()
	b, err := gpu.NewNVML(lib)
	env.OpenGPU = func() (gpu.Backend, error) {
		if err != nil {
			return nil, err
		}
		return b, nil
	}
	return env
}

func TestDoctorOnNVMLMocks(t *testing.T) {
	cases := []struct {
		name  string
		cards []mockCard
		want  []check
	}{
		{"RTX 4080 16 GB", []mockCard{{"NVIDIA GeForce RTX 4080", 8, 9, 16376}}, []check{
			{"driver", Pass, "NVML: driver 550.54.15, CUDA 12.4, 1 GPU(s) (0: NVIDIA GeForce RTX 4080 15.99 GiB)", ""},
			{"compute capability", Pass, "GPU 0 8.9", ""},
			{"plan", Pass, "architect up to 18432 tokens, dev up to 18432 tokens, po up to 32768 tokens", ""},
		}},
		{"Tesla T4: AWQ works", []mockCard{{"Tesla T4", 7, 5, 15360}}, []check{
			{"compute capability", Pass, "GPU 0 7.5", ""},
			{"plan", Pass, "every agent fits", ""},
		}},
		{"Tesla V100: too old for AWQ", []mockCard{{"Tesla V100-SXM2-16GB", 7, 0, 16160}}, []check{
			{"compute capability", Fail, "GPU 0 (Tesla V100-SXM2-16GB) has compute capability 7.0: vLLM's AWQ kernels need 7.5 or newer", "non-AWQ model"},
		}},
		{"Tesla P100: too old for vLLM", []mockCard{{"Tesla P100-PCIE-16GB", 6, 0, 16280}}, []check{
			{"compute capability", Fail, "compute capability 6.0: vLLM needs 7.0 or newer", ""},
		}},
		{"a 12 GB card: no room for 14B's KV cache", []mockCard{{"NVIDIA GeForce RTX 4070", 8, 9, 12282}}, []check{
			{"plan", Fail, "cannot start alone: architect does not fit at gpu_memory_utilization 0.92: its budget (11.03 GiB of 11.99 GiB) does not cover 9.29 GiB weights + 1.50 GiB activations + 0.50 GiB CUDA context, so no memory is left for the KV cache", "use a larger GPU"},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := newHost(t, config.EngineVLLM, config.GPUBackendNVML, nil)
			r := New(h.cfg, mockEnv(t, h, nvmlMock(nvml.SUCCESS, c.cards...))).Run(context.Background())
			expect(t, r, c.want...)
		})
	}
}

func TestDoctorWithoutADriverSaysSoInOneLine(t *testing.T) {
	h := newHost(t, config.EngineVLLM, config.GPUBackendNVML, nil)
	r := New(h.cfg, mockEnv(t, h, nvmlMock(nvml.ERROR_LIBRARY_NOT_FOUND))).Run(context.Background())
	expect(t, r,
		check{"driver", Fail, "NVIDIA driver library (libnvidia-ml.so.1) not found: is the NVIDIA driver installed?", `set [gpu] backend = "sim"`},
		check{"compute capability", Skip, "no GPU facts (see driver)", ""},
	)
	var b bytes.Buffer
	r.Write(&b)
	var driverLines []string
	for _, l := range strings.Split(b.String(), "\n") {
		if strings.Contains(l, "libnvidia-ml") {
			driverLines = append(driverLines, l)
		}
	}
	if len(driverLines) != 1 || !strings.HasPrefix(driverLines[0], "FAIL  driver") {
		t.Errorf("the missing driver must be one line:\n%s", b.String())
	}

	// A driver whose kernel module is not loaded: its own words.
	r = New(h.cfg, mockEnv(t, h, nvmlMock(nvml.ERROR_DRIVER_NOT_LOADED))).Run(context.Background())
	expect(t, r, check{"driver", Fail, "the NVIDIA kernel driver is not loaded", "nvidia-smi"})
}
