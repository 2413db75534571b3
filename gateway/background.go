package gateway

import (
	"context"
	"net/http"
	"strings"
)

// backgroundKey marks a request's context as vagentd's own background work
// (a batch or pipeline item). Only BackgroundHandler sets it: no header or
// anything else a client sends can.
type backgroundKey struct{}

func isBackground(ctx context.Context) bool {
	bg, _ := ctx.Value(backgroundKey{}).(bool)
	return bg
}

// BackgroundHandler serves the inference routes for vagentd's own
// background work (the work package's executor), in process: without
// client keys or per-key limits, but otherwise exactly as a client's
// request (the agent's system prompt and sampling defaults, queueing,
// switches, metrics, the log line). Its requests are marked background:
// agents with interactive requests waiting are served first, and Load
// reports them apart.
func (g *Gateway) BackgroundHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if aerr := g.refusePath(r); aerr != nil {
			writeError(w, aerr)
			return
		}
		if !strings.HasPrefix(r.URL.Path, "/v1/") {
			writeError(w, apiErr(http.StatusNotFound, typeNotFound, "background work is sent to /v1/* only, not %s", r.URL.Path))
			return
		}
		g.serveInference(w, r.WithContext(context.WithValue(r.Context(), backgroundKey{}, true)))
	})
}

// AgentLoad is one agent's state and queue, as background work sees it.
type AgentLoad struct {
	Agent string
	// State is StateRunning, StateLoading, StateSleeping, StateStopped or
	// StateFailed.
	State string
	// Draining: the agent is being evicted for a switch and takes no new
	// requests.
	Draining bool
	// Interactive and Background are the requests waiting for the agent,
	// clients' and background work's.
	Interactive, Background int
	// InFlight are the requests it serves now, of both kinds.
	InFlight int
	// Conflicts are the agents that cannot run beside it.
	Conflicts []string
}

// Load returns every agent's state and queue, in configuration order.
func (g *Gateway) Load() []AgentLoad {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]AgentLoad, 0, len(g.agents))
	for _, ag := range g.agents {
		l := AgentLoad{Agent: ag.name, State: ag.stateLocked(), Draining: ag.phase == phaseDraining, InFlight: ag.inflight}
		for _, w := range ag.waiters {
			if w.lease.background {
				l.Background++
			} else {
				l.Interactive++
			}
		}
		for _, c := range ag.conflicts {
			l.Conflicts = append(l.Conflicts, c.name)
		}
		out = append(out, l)
	}
	return out
}
