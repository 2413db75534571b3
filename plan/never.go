package plan

import (
	"context"
	"os"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/engine"
)

// NeverFits returns the supervisor's check, made before anything is evicted
// for a start, that agent a can start at all on GPUs of totals bytes: the
// reason when this plan says it cannot start even alone as configured, ""
// when it can or when its figures are unknown. It never asks the Hub: a
// switch must not wait on the network, so the figures come from the HF
// cache, a local model directory or the built-in table.
func NeverFits(cfg *config.Config) func(ctx context.Context, a *config.Agent, totals map[int]uint64) string {
	r := ResolverFromEnv(cfg, os.Getenv)
	r.Offline = true
	return func(ctx context.Context, a *config.Agent, totals map[int]uint64) string {
		return neverFits(cfg, a, totals, r.Facts(ctx, a))
	}
}

func neverFits(cfg *config.Config, a *config.Agent, totals map[int]uint64, f *Facts) string {
	e := estimate(cfg, a, totals, f, engine.GraphsInBudget(cfg.Engine.VLLMVersion))
	switch {
	case e.Status == NoFit:
		return e.Why
	case e.Status == Fits && !e.MaxModelLenOK:
		return e.MaxModelLenWhy
	}
	return ""
}
