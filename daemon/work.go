package daemon

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/gateway"
	"github.com/vagent-dev/vagent/work"
)

// openWork opens the work store (config.WorkDir) and builds the executor
// that runs its items through gw as background work. The executor runs
// once Run starts it, after the kinds (batch, pipeline) are registered.
func openWork(ctx context.Context, cfg *config.Config, gw *gateway.Gateway, reg prometheus.Registerer, log *slog.Logger) (*work.Store, *work.Executor, error) {
	st, err := work.Open(ctx, cfg.WorkDir(), work.Options{Retention: cfg.Work.Retention.Duration})
	if err != nil {
		return nil, nil, fmt.Errorf("work store (paths.state_dir %s): %w", cfg.Paths.StateDir, err)
	}
	ex := work.NewExecutor(st, workTarget(gw), work.ExecOptions{
		Concurrency: cfg.Work.Concurrency,
		MaxAttempts: cfg.Work.MaxAttempts,
		MaxYield:    cfg.Work.MaxYield.Duration,
		Log:         log.With("component", "work"),
		Registry:    reg,
	})
	return st, ex, nil
}

// workTarget is the gateway as the executor sees it.
func workTarget(gw *gateway.Gateway) work.Target {
	return work.Target{
		Handler:  gw.BackgroundHandler(),
		Yielded:  gateway.Yielded,
		TakeTurn: gateway.TakeTurn,
		Load: func() []work.AgentLoad {
			loads := gw.Load()
			out := make([]work.AgentLoad, len(loads))
			for i, l := range loads {
				out[i] = work.AgentLoad{
					Agent:       l.Agent,
					Running:     l.State == gateway.StateRunning,
					Starting:    l.State == gateway.StateLoading,
					Draining:    l.Draining,
					Interactive: l.Interactive,
					Conflicts:   l.Conflicts,
				}
			}
			return out
		},
	}
}
