package ctl

import (
	"context"
	"io"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/plan"
)

// setupSwitching is setup's advice on sleep mode for the agents that take
// turns on a GPU (plan.Switch), from the models' figures known without the
// Hub, or a line saying why there is none.
func setupSwitching(ctx context.Context, cfg *config.Config) (*plan.Advice, string) {
	totals := gpuTotals(ctx, cfg, io.Discard)
	if totals == nil {
		return nil, "GPU sizes unknown: vagentctl plan --gpu-total-mib N says what switches cost and whether sleep mode fits"
	}
	mem, err := planMeminfo()
	if err != nil {
		return nil, "host RAM unknown (" + err.Error() + "): vagentctl plan --host-ram-mib N says whether sleep mode fits"
	}
	r := &plan.Resolver{HFHome: cfg.Paths.HFHome, Offline: true}
	p := plan.Make(ctx, cfg, totals, "", r)
	s := plan.Switch(cfg, p, mem, plan.DefaultRates, planMeasured(ctx, cfg))
	text := s.Advice.Text
	if s.Advice.AlreadySet {
		text = "as configured: " + text
	} else if s.Advice.Mode != "" {
		text = "set " + text + " (in " + cfg.Path + " or the agents' files, then vagentctl apply)"
	}
	return &s.Advice, text
}
