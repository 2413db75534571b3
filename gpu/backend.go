package gpu

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/vagent-dev/vagent/config"
)

// probeTimeout bounds asking the driver which GPUs it has while resolving
// "auto".
const probeTimeout = 5 * time.Second

// ResolveBackend replaces gpu.backend "auto" in cfg with the backend it
// stands for and says why in cfg.GPU.BackendReason: the simulator when
// engines are the simulator (their memory is in its ledger, which NVML
// cannot see), NVML when an NVIDIA driver answers with at least one GPU,
// else the simulator. A named backend is left as it is.
func ResolveBackend(ctx context.Context, cfg *config.Config) {
	resolveBackend(ctx, cfg, openNVML)
}

func resolveBackend(ctx context.Context, cfg *config.Config, openNVML func() (Backend, error)) {
	if cfg.GPU.Backend != config.GPUBackendAuto {
		return
	}
	sim := func(why string) {
		cfg.GPU.Backend, cfg.GPU.BackendReason = config.GPUBackendSim, why
	}
	if cfg.Engine.Kind == config.EngineSim {
		sim(`engine.kind is "sim": the simulator's engines hold memory in its ledger, which NVML cannot see`)
		return
	}
	b, err := openNVML()
	if err != nil {
		sim("no NVIDIA driver answered (" + strings.TrimPrefix(err.Error(), "gpu: ") + ")")
		return
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	info, err := b.Info(ctx)
	switch {
	case err != nil:
		sim("the NVIDIA driver answered but could not list its GPUs (" + strings.TrimPrefix(err.Error(), "gpu: ") + ")")
	case len(info.Devices) == 0:
		sim(fmt.Sprintf("NVIDIA driver %s answered with no GPU", info.Driver))
	default:
		cfg.GPU.Backend = config.GPUBackendNVML
		cfg.GPU.BackendReason = fmt.Sprintf("NVIDIA driver %s answered with %d GPU(s)", info.Driver, len(info.Devices))
	}
}
