package daemon

import (
	"context"
	"log/slog"
	"time"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/controlapi"
	"github.com/vagent-dev/vagent/gateway"
	"github.com/vagent-dev/vagent/pipeline/runs"
	"github.com/vagent-dev/vagent/work"
)

// openPipelines registers pipeline runs with the executor and mounts their
// routes (controlapi.PathRuns) on the gateway's control API. Follows end
// when ctx does (vagentd stopping), so that they do not hold the control
// socket's shutdown.
func openPipelines(ctx context.Context, cfg *config.Config, store *work.Store, ex *work.Executor, gw *gateway.Gateway, log *slog.Logger) {
	r := runs.New(runs.Options{Config: cfg, Store: store, Exec: ex, Log: log.With("component", "pipeline"), Done: ctx.Done()})
	ex.Register(runs.Kind, r)
	gw.MountControl(controlapi.PathRuns, r)
	// Run directories outlive their runs in the store by nothing: those of
	// runs work.retention deleted go too.
	go r.KeepSwept(ctx, cfg.Work.Retention.Duration, time.Hour)
}
