package daemon

import (
	"context"
	"log/slog"
	"net/http"
	"strings"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/controlapi"
	"github.com/vagent-dev/vagent/pipeline/runs"
	"github.com/vagent-dev/vagent/work"
)

// openPipelines registers pipeline runs with the executor and returns the
// control API with their routes (controlapi.PathRuns) beside the
// gateway's. Follows end when ctx does (vagentd stopping), so that they do
// not hold the control socket's shutdown.
func openPipelines(ctx context.Context, cfg *config.Config, store *work.Store, ex *work.Executor, control http.Handler, log *slog.Logger) http.Handler {
	r := runs.New(runs.Options{Config: cfg, Store: store, Exec: ex, Log: log.With("component", "pipeline"), Done: ctx.Done()})
	ex.Register(runs.Kind, r)
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if p := req.URL.Path; p == controlapi.PathRuns || strings.HasPrefix(p, controlapi.PathRuns+"/") {
			r.ServeHTTP(w, req)
			return
		}
		control.ServeHTTP(w, req)
	})
}
