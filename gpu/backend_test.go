//go:build cgo

package gpu

import (
	"context"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/vagent-dev/vagent/config"
)

func TestResolveAutoBackend(t *testing.T) {
	driver := func(s *fakeServer) func() (Backend, error) {
		return func() (Backend, error) { return NewNVML(s) }
	}
	noDriver := func() (Backend, error) { return nil, ErrNoDriver }
	broken := newFakeServer(a100(0))
	broken.countRet = nvml.ERROR_UNKNOWN
	for _, tc := range []struct {
		name, kind, backend string
		open                func() (Backend, error)
		want, why           string
	}{
		{"vllm with a driver", config.EngineVLLM, config.GPUBackendAuto, driver(newFakeServer(a100(0), a100(1))), config.GPUBackendNVML, "NVIDIA driver 550.54.15 answered with 2 GPU(s)"},
		{"vllm without a driver", config.EngineVLLM, config.GPUBackendAuto, noDriver, config.GPUBackendSim, "no NVIDIA driver answered (NVIDIA driver library (libnvidia-ml.so.1) not found"},
		{"driver without GPUs", config.EngineVLLM, config.GPUBackendAuto, driver(newFakeServer()), config.GPUBackendSim, "NVIDIA driver 550.54.15 answered with no GPU"},
		{"driver that fails", config.EngineVLLM, config.GPUBackendAuto, driver(broken), config.GPUBackendSim, "could not list its GPUs"},
		{"simulated engines", config.EngineSim, config.GPUBackendAuto, driver(newFakeServer(a100(0))), config.GPUBackendSim, `engine.kind is "sim"`},
		{"named backend kept", config.EngineVLLM, config.GPUBackendSim, driver(newFakeServer(a100(0))), config.GPUBackendSim, ""},
	} {
		cfg := config.Defaults()
		cfg.Engine.Kind, cfg.GPU.Backend = tc.kind, tc.backend
		resolveBackend(context.Background(), &cfg, tc.open)
		if cfg.GPU.Backend != tc.want || !strings.Contains(cfg.GPU.BackendReason, tc.why) || (tc.why == "") != (cfg.GPU.BackendReason == "") {
			t.Errorf("%s: backend %q (%q), want %q (%q)", tc.name, cfg.GPU.Backend, cfg.GPU.BackendReason, tc.want, tc.why)
		}
	}
}
