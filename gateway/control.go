package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/vagent-dev/vagent/controlapi"
	"github.com/vagent-dev/vagent/supervisor"
)

// serveControl is the control API (its routes and wire types are
// controlapi's).
// Errors are OpenAI-shaped: 404 unknown agent, 409 cannot fit or pinned,
// 500 start failure (with the engine's root cause).
func (g *Gateway) serveControl(w http.ResponseWriter, r *http.Request) {
	op := strings.TrimPrefix(r.URL.Path, controlapi.Prefix)
	for _, m := range g.mounts {
		if r.URL.Path == m.path || strings.HasPrefix(r.URL.Path, m.path+"/") {
			m.h.ServeHTTP(w, r)
			return
		}
	}
	switch op {
	case "status":
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			methodNotAllowed(w, r, http.MethodGet)
			return
		}
		st, err := g.status(r.Context())
		if err != nil {
			writeError(w, apiErr(http.StatusInternalServerError, typeServer, "status: %v", err))
			return
		}
		writeJSON(w, http.StatusOK, st)
	case "switch", "load", "stop":
		if r.Method != http.MethodPost {
			methodNotAllowed(w, r, http.MethodPost)
			return
		}
		var req controlapi.Request
		dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeError(w, apiErr(http.StatusBadRequest, typeInvalidRequest, "bad request body: %v (want {\"agent\":\"NAME\"})", err))
			return
		}
		if req.Agent == "" {
			writeError(w, apiErr(http.StatusBadRequest, typeInvalidRequest, "missing \"agent\""))
			return
		}
		if req.Pin != nil && op != "load" {
			writeError(w, apiErr(http.StatusBadRequest, typeInvalidRequest, "\"pin\" is for load only"))
			return
		}
		t0 := time.Now()
		if op == "stop" {
			err := g.stopAgent(r.Context(), req.Agent)
			g.log.Info("control", "op", op, "agent", req.Agent, "took", time.Since(t0).Round(time.Millisecond), "err", err)
			if err != nil {
				writeError(w, controlError(req.Agent, err))
				return
			}
			writeJSON(w, http.StatusOK, controlapi.Stopped{Agent: g.agentName(req.Agent), Stopped: true})
			return
		}
		reason := reasonSwitch
		if op == "load" {
			reason = reasonLoad
		}
		res, err := g.switchAgent(r.Context(), req.Agent, reason, req.Pin)
		g.log.Info("control", "op", op, "agent", req.Agent, "took", time.Since(t0).Round(time.Millisecond), "err", err)
		if err != nil {
			writeError(w, controlError(req.Agent, err))
			return
		}
		writeJSON(w, http.StatusOK, res)
	default:
		writeError(w, apiErr(http.StatusNotFound, typeNotFound, "no control route %s: status, switch, stop, load", r.URL.Path))
	}
}

// controlMount is a control route served by another package.
type controlMount struct {
	path string
	h    http.Handler
}

// MountControl serves path and the paths below it on the control API with
// h (pipeline runs: controlapi.PathRuns), on the control socket and, for
// admin keys, on the gateway's port. Call it before serving.
func (g *Gateway) MountControl(path string, h http.Handler) {
	g.mounts = append(g.mounts, controlMount{path, h})
}

func controlError(agent string, err error) *APIError {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return apiErr(http.StatusServiceUnavailable, typeUnavailable, "%s: %v", agent, err)
	}
	return switchError(agent, err)
}

func (g *Gateway) agentName(name string) string {
	if ag := g.byName[name]; ag != nil {
		return ag.name
	}
	return name
}

func methodNotAllowed(w http.ResponseWriter, r *http.Request, allow string) {
	w.Header().Set("Allow", allow)
	writeError(w, apiErr(http.StatusMethodNotAllowed, typeInvalidRequest, "%s %s: use %s", r.Method, r.URL.Path, allow))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// status merges the supervisor's status with the gateway's view.
func (g *Gateway) status(ctx context.Context) ([]controlapi.AgentState, error) {
	sts, err := g.o.Switcher.Status(ctx)
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]controlapi.AgentState, 0, len(sts))
	for _, st := range sts {
		as := controlapi.AgentState{AgentStatus: st, State: unitState(st)}
		if ag := g.byAgent[st.Agent]; ag != nil {
			if ag.phase == phaseStarting {
				as.State = StateLoading
			}
			as.InFlight = ag.inflight
			as.Queued = len(ag.waiters)
			as.LastUsed = ag.lastUsed
			as.Pinned = g.pinnedLocked(ag)
			if ag.phase == phaseFailed && ag.lastErr != nil {
				as.Error = ag.lastErr.Error()
				if errors.As(ag.lastErr, new(*supervisor.StartError)) {
					// A failed start whose unit was stopped again:
					// systemd says inactive, the truth is failed. (A
					// start refused for what else runs is not one.)
					as.State = StateFailed
				}
			}
		}
		out = append(out, as)
	}
	return out, nil
}

// unitState is an agent's state from its unit and health.
func unitState(st supervisor.AgentStatus) string {
	switch st.ActiveState {
	case "active", "reloading":
		if st.Sleeping {
			return StateSleeping
		}
		if st.Healthy {
			return StateRunning
		}
		return StateLoading
	case "activating":
		return StateLoading
	case "failed":
		return StateFailed
	default:
		return StateStopped
	}
}

// modelEntry is one agent in GET /v1/models: OpenAI's model object with
// vLLM's extra fields and vagent's state and other names.
type modelEntry struct {
	ID          string   `json:"id"`
	Object      string   `json:"object"`
	Created     int64    `json:"created"`
	OwnedBy     string   `json:"owned_by"`
	Root        string   `json:"root"`
	Parent      *string  `json:"parent"`
	MaxModelLen int      `json:"max_model_len,omitempty"`
	State       string   `json:"state"`
	ServedName  string   `json:"served_name"`
	Aliases     []string `json:"aliases,omitempty"`
}

type modelList struct {
	Object string       `json:"object"`
	Data   []modelEntry `json:"data"`
}

// serveModels answers GET /v1/models (every agent the key may use, with
// its state; on an agent's own listener, that agent) and GET /v1/models/NAME.
func (g *Gateway) serveModels(w http.ResponseWriter, r *http.Request, key *keyEntry) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		methodNotAllowed(w, r, http.MethodGet)
		return
	}
	one := strings.TrimPrefix(r.URL.Path, "/v1/models/")
	if r.URL.Path == "/v1/models" {
		one = ""
	}
	// An agent's own listener serves that agent only, so it lists only
	// that agent: a client that picks the first model it is offered must
	// not pick another agent's name there.
	own, _ := r.Context().Value(listenerAgent{}).(string)
	g.mu.Lock()
	list := modelList{Object: "list", Data: []modelEntry{}}
	for _, ag := range g.agents {
		if key != nil && !key.allows(ag.cfg) {
			continue
		}
		if own != "" && ag.name != own {
			continue
		}
		if one != "" && g.byName[one] != ag {
			continue
		}
		e := modelEntry{ID: ag.name, Object: "model", Created: g.created, OwnedBy: "vagent",
			Root: ag.cfg.Model, MaxModelLen: ag.cfg.MaxModelLen, State: ag.stateLocked(), ServedName: ag.cfg.ServedName()}
		for _, n := range ag.cfg.Names() {
			if n != ag.name {
				e.Aliases = append(e.Aliases, n)
			}
		}
		list.Data = append(list.Data, e)
	}
	g.mu.Unlock()
	if one != "" {
		if len(list.Data) == 0 {
			writeError(w, g.noSuchModel(one, key))
			return
		}
		writeJSON(w, http.StatusOK, list.Data[0])
		return
	}
	writeJSON(w, http.StatusOK, list)
}

// errUnknownAgent is the control API's 404.
func (g *Gateway) errUnknownAgent(name string) *APIError {
	names := make([]string, len(g.agents))
	for i, ag := range g.agents {
		names[i] = ag.name
	}
	return apiErr(http.StatusNotFound, typeNotFound, "unknown agent %q (configured: %s)", name, joinStrings(names))
}

// switchAgent starts agent now for the control API, evicting what must go
// and ignoring queue order, and waits for the result; a start it asked for
// is not cancelled when waiting requests leave. pin, when set, pins or
// unpins the agent first; a failed load leaves no new pin behind.
func (g *Gateway) switchAgent(ctx context.Context, name, reason string, pin *bool) (*supervisor.Result, error) {
	ag := g.byName[name]
	if ag == nil {
		return nil, g.errUnknownAgent(name)
	}
	if pin != nil {
		g.mu.Lock()
		was := ag.pinned
		ag.pinned = *pin
		g.mu.Unlock()
		res, err := g.switchLoop(ctx, ag, reason)
		if err != nil && *pin && !was {
			// A failed load leaves no pin behind.
			g.mu.Lock()
			ag.pinned = false
			g.mu.Unlock()
		}
		return res, err
	}
	return g.switchLoop(ctx, ag, reason)
}

func (g *Gateway) switchLoop(ctx context.Context, ag *agentRT, reason string) (*supervisor.Result, error) {
	for {
		g.mu.Lock()
		switch ag.phase {
		case phaseRunning:
			g.mu.Unlock()
			res, err := g.o.Switcher.Switch(ctx, ag.name)
			g.mu.Lock()
			g.afterSwitchLocked(ag, res, time.Now())
			if err == nil && !res.AlreadyRunning {
				g.countSwitchLocked(ag, res, reason)
			}
			g.scheduleLocked()
			g.mu.Unlock()
			return res, err
		case phaseStarting:
			op := ag.op
			op.refs++
			op.keep = true
			g.mu.Unlock()
			return g.waitOp(ctx, op)
		case phaseStopped, phaseFailed, phaseSleeping:
			if ag.hold > 0 {
				g.mu.Unlock()
				return nil, apiErr(http.StatusConflict, typeConflict, "agent %s is being stopped", ag.name)
			}
			op := g.startLocked(ag, reason, true, time.Now())
			op.refs++
			g.mu.Unlock()
			return g.waitOp(ctx, op)
		default: // draining or stopping: wait for that to end
			ch := ag.changed
			g.mu.Unlock()
			select {
			case <-ch:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
}

func (g *Gateway) waitOp(ctx context.Context, op *startOp) (*supervisor.Result, error) {
	select {
	case <-op.done:
		if op.err != nil && op.cancelled {
			return op.res, apiErr(http.StatusConflict, typeConflict, "the start was cancelled: the agent was stopped meanwhile")
		}
		return op.res, op.err
	case <-ctx.Done():
		g.mu.Lock()
		op.refs--
		g.mu.Unlock()
		return nil, ctx.Err()
	}
}

// stopAgent stops agent for the control API: requests waiting for it get a
// 503, a start in progress is cancelled, requests in flight drain (up to
// drain_timeout), and a pin by load is dropped.
func (g *Gateway) stopAgent(ctx context.Context, name string) error {
	g.mu.Lock()
	ag := g.byName[name]
	if ag == nil {
		g.mu.Unlock()
		return g.errUnknownAgent(name)
	}
	ag.pinned = false
	ag.hold++
	g.failWaitersLocked(ag, &APIError{Status: http.StatusServiceUnavailable, Type: typeUnavailable, RetryAfter: retryMaxWait,
		Message: "agent " + ag.name + " was stopped by an administrator"})
	if ag.phase == phaseStarting && ag.op != nil && !ag.op.cancelled {
		ag.op.cancelled = true
		ag.op.cancel()
	}
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		ag.hold--
		g.scheduleLocked()
		g.mu.Unlock()
	}()

	stopping := false
	for {
		g.mu.Lock()
		switch ag.phase {
		case phaseRunning:
			ag.setPhase(phaseDraining, time.Now())
			g.mu.Unlock()
			cause := &APIError{Status: http.StatusServiceUnavailable, Type: typeUnavailable, RetryAfter: retryMaxWait,
				Message: "agent " + ag.name + " was stopped by an administrator before this request finished"}
			if err := g.drain(ctx, ag, cause); err != nil {
				g.mu.Lock()
				if ag.phase == phaseDraining {
					ag.setPhase(phaseRunning, time.Now())
				}
				g.mu.Unlock()
				return err
			}
			g.mu.Lock()
			if ag.phase == phaseDraining {
				g.stopLocked(ag, reasonStop, time.Now())
				stopping = true
			}
			g.mu.Unlock()
			continue
		case phaseStopped, phaseFailed, phaseSleeping:
			if stopping {
				err := ag.stopErr
				g.mu.Unlock()
				return err
			}
			// Stop anyway: the unit may run without the gateway knowing.
			g.stopLocked(ag, reasonStop, time.Now())
			stopping = true
			g.mu.Unlock()
			continue
		}
		// starting, draining (by a switch), stopping: wait for it to end.
		ch := ag.changed
		g.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
