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

// turnKey marks background work that has given way to clients long enough
// (work.max_yield) and now takes its turn.
type turnKey struct{}

// TakeTurn marks ctx, the context of a request to BackgroundHandler, as
// background work whose turn has come: a client's request does not cancel
// the start it waits for, as it would that of work still giving way. The
// switch back to the client's agent then follows the gateway's fairness
// window like any other.
func TakeTurn(ctx context.Context) context.Context { return context.WithValue(ctx, turnKey{}, true) }

func hasTurn(ctx context.Context) bool {
	t, _ := ctx.Value(turnKey{}).(bool)
	return t && isBackground(ctx)
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

// yieldedHeader marks an answer of BackgroundHandler: the request gave way
// to a client's and was never sent to an engine. Only BackgroundHandler's
// in-process caller sees it.
const yieldedHeader = "X-Vagent-Yielded"

// Yielded reports whether h, the header of an answer of BackgroundHandler,
// says the request gave way to a client's: it was not sent to an engine,
// and should be sent again later without counting as a failed attempt.
func Yielded(h http.Header) bool { return h.Get(yieldedHeader) != "" }

func errYielded(ag *agentRT) *APIError {
	return &APIError{Status: http.StatusServiceUnavailable, Type: typeUnavailable, RetryAfter: retryDrained, yielded: true,
		Message: "background work for agent " + ag.name + " gave way to a client's request for an agent that cannot run beside it"}
}

// yieldStartsLocked makes background work give way to a client's request
// for ag: an agent that cannot run beside ag and is starting for background
// work only has that start cancelled and its requests answered as yielded
// (the executor sends them again later), so that the client waits for one
// switch, ag's, not for a load it does not need first. Work whose turn has
// come (TakeTurn) counts as a client here.
func (g *Gateway) yieldStartsLocked(ag *agentRT) {
	for _, c := range ag.conflicts {
		if c.phase != phaseStarting || len(c.waiters) == 0 {
			continue
		}
		clients := false
		for _, w := range c.waiters {
			if !w.lease.background || w.lease.turn {
				clients = true
				break
			}
		}
		if v := g.viewLocked(c); clients || !v.startCancellable || v.pinned {
			continue
		}
		g.log.Info("background work gives way to a client: cancelling its start", "agent", c.name, "client_waits_for", ag.name)
		g.failWaitersLocked(c, errYielded(c))
		g.maybeCancelStartLocked(c)
	}
}
