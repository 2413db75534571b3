package ctl

import (
	"context"
	"fmt"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/controlapi"
	"github.com/vagent-dev/vagent/plan"
)

// planSwitchDescription is plan's help on the switch costs.
const planSwitchDescription = "It then estimates what a switch to each agent costs: a cold start (the checkpoint read " +
	"from disk at --disk-gbps, the weights copied to the GPU at --pcie-gbps, the engine's start, torch.compile and " +
	"the CUDA graphs' capture) or a wake from sleep level 1 (the weights copied back from pinned host RAM) or " +
	"level 2 (reloaded from disk); while vagentd runs, the starts and wakes it timed replace the estimates. From " +
	"/proc/meminfo (or --host-ram-mib) it says whether the host RAM holds the agents asleep, and advises " +
	"switch_mode and sleep_level (docs/sizing.md, \"Switch costs\")."

// planSwitchFlags are plan's flags for the switch costs.
func planSwitchFlags() []cli.Flag {
	return []cli.Flag{
		&cli.Uint64Flag{Name: "host-ram-mib", Usage: "plan for a host with this many MiB of RAM available, instead of /proc/meminfo's MemAvailable"},
		&cli.Float64Flag{Name: "disk-gbps", Value: plan.DefaultDiskBytesPerSec / 1e9, Usage: "read checkpoints from disk at this many GB/s (an NVMe SSD 2, a SATA SSD 0.5)"},
		&cli.Float64Flag{Name: "pcie-gbps", Value: plan.DefaultPCIeBytesPerSec / 1e9, Usage: "copy weights between host RAM and the GPU at this many GB/s (PCIe 4.0 x16 about 24, x8 or 3.0 x16 about 12)"},
	}
}

// planMeminfo reads the host's memory; tests replace it.
var planMeminfo = plan.ReadMeminfo

// planMeasured asks vagentd, when it runs, for the starts and wakes it
// timed and the host RAM sleepers hold; nil when it does not answer.
var planMeasured = func(ctx context.Context, cfg *config.Config) map[string]plan.Measured {
	dc, err := controlapi.Reach(ctx, cfg)
	if err != nil || dc == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	sts, _, err := dc.Status(ctx)
	if err != nil {
		return nil
	}
	out := map[string]plan.Measured{}
	for _, st := range sts {
		var m plan.Measured
		if t := st.Measured; t != nil {
			m.ColdStart, m.WakeLevel1, m.WakeLevel2 = t.ColdStart, t.WakeLevel1, t.WakeLevel2
		}
		if st.Sleeping {
			m.HostBytes = st.HostBytes
		}
		out[st.Agent] = m
	}
	return out
}

// planSwitching works out p's switch costs from the flags, the host's
// memory and what vagentd measured.
func planSwitching(ctx context.Context, cmd *cli.Command, cfg *config.Config, p *plan.Plan) (*plan.Switching, error) {
	rates := plan.Rates{DiskBytesPerSec: cmd.Float64("disk-gbps") * 1e9, PCIeBytesPerSec: cmd.Float64("pcie-gbps") * 1e9}
	for _, f := range []string{"disk-gbps", "pcie-gbps"} {
		if v := cmd.Float64(f); !(v > 0) {
			return nil, usagef("--%s must be more than 0, not %v", f, v)
		}
	}
	var mem plan.Meminfo
	if n := cmd.Uint64("host-ram-mib"); n > 0 {
		mem = plan.Meminfo{TotalBytes: n << 20, AvailableBytes: n << 20, Source: "--host-ram-mib"}
	} else {
		var err error
		if mem, err = planMeminfo(); err != nil {
			return nil, fmt.Errorf("plan: host RAM unknown: %v; pass --host-ram-mib N to plan for a host with N MiB available", err)
		}
	}
	return plan.Switch(cfg, p, mem, rates, planMeasured(ctx, cfg)), nil
}
