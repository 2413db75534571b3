//go:build cgo

package ctl

import (
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/doctor"
	"github.com/vagent-dev/vagent/gpu"
)

// doctorMockNVML is a go-nvml mock of a host with one RTX 4090 (24 GB,
// compute capability 8.9), driver 550.54.15 and CUDA 12.4.
func doctorMockNVML(initRet nvml.Return) *mock.Interface {
	const total = 24564 << 20
	dev := &mock.Device{
		GetNameFunc:                  func() (string, nvml.Return) { return "NVIDIA GeForce RTX 4090", nvml.SUCCESS },
		GetUUIDFunc:                  func() (string, nvml.Return) { return "GPU-4090", nvml.SUCCESS },
		GetCudaComputeCapabilityFunc: func() (int, int, nvml.Return) { return 8, 9, nvml.SUCCESS },
		GetMemoryInfo_v2Func: func() (nvml.Memory_v2, nvml.Return) {
			return nvml.Memory_v2{Total: total, Reserved: 400 << 20, Used: 0, Free: total - 400<<20}, nvml.SUCCESS
		},
		GetUtilizationRatesFunc:        func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{Gpu: 3}, nvml.SUCCESS },
		GetTemperatureFunc:             func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 35, nvml.SUCCESS },
		GetPowerUsageFunc:              func() (uint32, nvml.Return) { return 21000, nvml.SUCCESS },
		GetComputeRunningProcessesFunc: func() ([]nvml.ProcessInfo, nvml.Return) { return nil, nvml.SUCCESS },
	}
	ext := &mock.ExtendedInterface{LookupSymbolFunc: func(string) error { return nil }}
	return &mock.Interface{
		InitFunc:                       func() nvml.Return { return initRet },
		ShutdownFunc:                   func() nvml.Return { return nvml.SUCCESS },
		ExtensionsFunc:                 func() nvml.ExtendedInterface { return ext },
		SystemGetDriverVersionFunc:     func() (string, nvml.Return) { return "550.54.15", nvml.SUCCESS },
		SystemGetCudaDriverVersionFunc: func() (int, nvml.Return) { return 12040, nvml.SUCCESS },
		DeviceGetCountFunc:             func() (int, nvml.Return) { return 1, nvml.SUCCESS },
		DeviceGetHandleByIndexFunc: func(i int) (nvml.Device, nvml.Return) {
			if i != 0 {
				return nil, nvml.ERROR_INVALID_ARGUMENT
			}
			return dev, nvml.SUCCESS
		},
	}
}

func TestDoctorAndPlanCommandsOnNVMLMocks(t *testing.T) {
	conf, _ := hostConfig(t, "configs/examples/24gb", func(m string) string {
		m = strings.Replace(m, `backend = "auto"`, `backend = "nvml"`, 1)
		return strings.Replace(m, `kind = "sim"`, `kind = "vllm"`, 1)
	})
	savedEnv, savedOpen := doctorEnv, planOpenGPU
	defer func() { doctorEnv, planOpenGPU = savedEnv, savedOpen }()
	doctorEnv = func(cfg *config.Config) doctor.Env {
		b, err := gpu.NewNVML(doctorMockNVML(nvml.SUCCESS))
		if err != nil {
			t.Fatal(err)
		}
		return doctor.HostEnvWithGPU(cfg, b)
	}
	planOpenGPU = func(*config.Config) (gpu.Backend, error) { return gpu.NewNVML(doctorMockNVML(nvml.SUCCESS)) }

	out, _, code := runIssueCmd(t, conf, "doctor")
	if code != ExitFailure { // no vLLM engine or models on this host
		t.Errorf("exit %d", code)
	}
	for _, want := range []string{
		"PASS  driver              NVML: driver 550.54.15, CUDA 12.4, 1 GPU(s) (0: NVIDIA GeForce RTX 4090 23.99 GiB)",
		"PASS  compute capability  GPU 0 8.9: vLLM needs 7.0, AWQ 7.5",
		"FAIL  engine              no vLLM engine: ",
		"FAIL  model architect     Qwen/Qwen2.5-32B-Instruct-AWQ@main is not pulled",
		"PASS  plan                every agent fits its GPU alone: architect up to 9216 tokens, dev up to 9216 tokens, po up to 32768 tokens",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("doctor lacks %q:\n%s", want, out)
		}
	}

	out, errOut, code := runIssueCmd(t, conf, "plan")
	if code != ExitOK || !strings.Contains(out, "GPU 0: 23.99 GiB (from NVML)") {
		t.Errorf("plan on the mock 4090: exit %d %s\n%s", code, errOut, out)
	}

	// The same host without a driver: one line.
	doctorEnv = func(cfg *config.Config) doctor.Env {
		_, err := gpu.NewNVML(doctorMockNVML(nvml.ERROR_LIBRARY_NOT_FOUND))
		e := doctor.HostEnv(cfg)
		e.OpenGPU = func() (gpu.Backend, error) { return nil, err }
		return e
	}
	out, _, _ = runIssueCmd(t, conf, "doctor")
	if n := strings.Count(out, "libnvidia-ml.so.1"); n != 1 || !strings.Contains(out, "FAIL  driver              NVIDIA driver library (libnvidia-ml.so.1) not found") {
		t.Errorf("no driver: %d mentions\n%s", n, out)
	}
}
