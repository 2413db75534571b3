package doctor

import (
	"context"
	"fmt"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/plan"
)

// checkSwitching says what a switch between agents that take turns on a
// GPU costs, and whether sleep mode fits this host (vagentctl plan shows
// the figures): sleep agents the host cannot hold asleep warn, with the
// setting that fits; restart agents that could sleep pass with the advice.
func (d *Doctor) checkSwitching(ctx context.Context) {
	const check = "switching"
	totals := d.totals()
	if totals == nil {
		d.add(check, Skip, "", "GPU sizes unknown: vagentctl plan --gpu-total-mib N estimates the switch costs")
		return
	}
	if d.env.Meminfo == nil {
		d.add(check, Skip, "", "host RAM unknown")
		return
	}
	mem, err := d.env.Meminfo()
	if err != nil {
		d.add(check, Warn, "vagentctl plan --host-ram-mib N estimates it for N MiB", "host RAM unknown: %v", err)
		return
	}
	p := plan.Build(d.cfg, totals, "", d.facts)
	s := plan.Switch(d.cfg, p, mem, plan.DefaultRates, nil)
	adv := s.Advice
	sleeps := false
	for _, a := range d.cfg.Agents {
		sleeps = sleeps || d.cfg.Sleeps(a)
	}
	switch {
	case adv.Mode == "" || adv.AlreadySet:
		d.add(check, Pass, "", "%s", adv.Text)
	case !sleeps:
		// Advice, not a fault: restarts work, only slower.
		d.add(check, Pass, "", "switches are cold starts; sleep mode fits this host: %s (set it in %s or per agent, then vagentctl apply)", adv.Text, d.cfg.Path)
	case adv.Mode == config.SwitchRestart || s.Configured == nil || !s.Configured.Fits:
		d.add(check, Warn, fmt.Sprintf("set it in %s or in the agents' files, then vagentctl apply (vagentctl plan shows the figures)", d.cfg.Path),
			"sleep mode as configured does not fit this host: %s", adv.Text)
	default:
		// The configured sleepers fit; more agents could sleep.
		d.add(check, Pass, "", "the sleep agents fit this host; switches could be cheaper still: %s (set it in %s or per agent, then vagentctl apply)", adv.Text, d.cfg.Path)
	}
}
