package ctl

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v3"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/gpu"
	"github.com/vagent-dev/vagent/plan"
)

func planCmd() *cli.Command {
	return &cli.Command{
		Name:  "plan",
		Usage: "estimate each agent's GPU memory before anything runs: does it fit, how long a context, which agents can run together",
		Description: "From each model's config.json and safetensors sizes (the HF cache under paths.hf_home or a local model " +
			"directory, else the Hub API at $HF_ENDPOINT with $HF_TOKEN, else a built-in table of the shipped models) it " +
			"estimates the weights, the KV cache bytes per token, the activation reserve and the CUDA context and graphs, " +
			"against each agent's budget (gpu_memory_utilization × the GPU's memory). GPU sizes come from NVML, from " +
			"gpu.sim_total_mib with the simulator, or from --gpu-total-mib. Exits 1 when an agent cannot start on its GPU " +
			"as configured. " + planSwitchDescription,
		Flags: append([]cli.Flag{
			&cli.Uint64Flag{Name: "gpu-total-mib", Usage: "plan for GPUs of this many MiB (a 16 GB card reports about 16376, a 24 GB one 24564)"},
			&cli.BoolFlag{Name: "offline", Usage: "never ask the Hub (as with HF_HUB_OFFLINE=1)"},
			jsonFlag,
		}, planSwitchFlags()...),
		OnUsageError: subUsageError,
		Action: func(ctx context.Context, cmd *cli.Command) error {
			cfg, err := configNoArgs(cmd)
			if err != nil {
				return err
			}
			totals, source, err := planTotals(ctx, cfg, cmd.Uint64("gpu-total-mib"))
			if err != nil {
				return err
			}
			r := plan.ResolverFromEnv(cfg, os.Getenv)
			r.Offline = r.Offline || cmd.Bool("offline")
			p := plan.Make(ctx, cfg, totals, source, r)
			if p.Switching, err = planSwitching(ctx, cmd, cfg, p); err != nil {
				return err
			}
			out := cmd.Root().Writer
			if cmd.Bool("json") {
				if err := writeJSON(out, p); err != nil {
					return err
				}
			} else if err := p.WriteText(out); err != nil {
				return err
			}
			if failing := p.Failing(); len(failing) > 0 {
				names := make([]string, len(failing))
				for i, e := range failing {
					names[i] = e.Agent
				}
				return fmt.Errorf("plan: cannot start on the GPU as configured: %s (see above)", strings.Join(names, ", "))
			}
			return nil
		},
	}
}

// planOpenGPU opens the GPU backend for plan; tests replace it.
var planOpenGPU = gpu.Open

// planTotals are the GPU sizes the plan is made against, and where they came
// from: --gpu-total-mib for every GPU an agent uses, else the simulator's
// configured size, else NVML's.
func planTotals(ctx context.Context, cfg *config.Config, flagMiB uint64) (map[int]uint64, string, error) {
	totals := map[int]uint64{}
	if flagMiB > 0 {
		for _, a := range cfg.Agents {
			for _, g := range a.GPUs {
				totals[g] = flagMiB << 20
			}
		}
		return totals, "--gpu-total-mib", nil
	}
	if cfg.GPU.Backend == config.GPUBackendSim {
		for i := 0; i < cfg.GPU.SimCount; i++ {
			totals[i] = cfg.GPU.SimTotalMiB << 20
		}
		return totals, "gpu.sim_total_mib", nil
	}
	b, err := planOpenGPU(cfg)
	if err != nil {
		return nil, "", planGPUError(err)
	}
	defer b.Close()
	info, err := b.Info(ctx)
	if err != nil {
		return nil, "", planGPUError(err)
	}
	for _, d := range info.Devices {
		totals[d.Index] = d.TotalBytes
	}
	return totals, "NVML", nil
}

func planGPUError(err error) error {
	msg := strings.TrimPrefix(err.Error(), "gpu: ")
	if errors.Is(err, gpu.ErrNoDriver) {
		msg = "no NVIDIA driver (libnvidia-ml.so.1 not found)"
	}
	return fmt.Errorf("plan: GPU sizes unknown: %s; pass --gpu-total-mib N to plan for cards of N MiB", msg)
}
