package gateway

// The gateway's side of switches and stops: it starts agents through the
// supervisor, records what a switch stopped or put to sleep, drains agents
// before eviction, stops idle ones, and reads back what systemd says runs.

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"time"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/supervisor"
)

// startLocked begins a Switch to ag.
func (g *Gateway) startLocked(ag *agentRT, reason string, keep bool, now time.Time) *startOp {
	ctx, cancel := context.WithCancel(g.base)
	op := &startOp{reason: reason, keep: keep, cancel: cancel, done: make(chan struct{})}
	ag.op = op
	ag.setPhase(phaseStarting, now)
	g.log.Info("switching to agent", "agent", ag.name, "reason", reason, "waiting", len(ag.waiters))
	go g.runStart(ctx, ag, op)
	return op
}

// maybeCancelStartLocked cancels ag's start when nobody waits for it any
// more, unless it is pinned or was asked for by the control API.
func (g *Gateway) maybeCancelStartLocked(ag *agentRT) {
	if !g.pol().cancelStart(g.viewLocked(ag)) {
		return
	}
	op := ag.op
	g.log.Info("cancelling start: nobody waits for the agent any more", "agent", ag.name)
	op.cancelled = true
	op.cancel()
}

func (g *Gateway) runStart(ctx context.Context, ag *agentRT, op *startOp) {
	res, err := g.o.Switcher.Switch(ctx, ag.name)
	op.cancel()
	now := time.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	op.res, op.err = res, err
	if ag.op == op {
		ag.op = nil
	}
	g.afterSwitchLocked(ag, res, now)
	switch {
	case err == nil:
		if ag.phase == phaseStarting {
			ag.setPhase(phaseRunning, now)
			ag.lastErr = nil
			ag.lastUsed = now
			g.admitAllLocked(ag)
		}
		if !res.AlreadyRunning {
			g.countSwitchLocked(ag, res, op.reason)
			g.log.Info("agent running", "agent", ag.name, "evicted", res.Evicted, "slept", sleptNames(res),
				"woken", res.Woken, "took", res.Duration.Round(time.Millisecond))
		}
		if res.WakeError != "" {
			g.log.Warn("wake failed: the agent was restarted cold", "agent", ag.name, "err", res.WakeError)
		}
	case g.base.Err() != nil:
		// vagentd is stopping; systemd has the truth.
		if ag.phase == phaseStarting {
			ag.setPhase(phaseStopped, now)
		}
		g.failWaitersLocked(ag, &APIError{Status: http.StatusServiceUnavailable, Type: typeUnavailable,
			RetryAfter: retryMaxWait, Message: "vagentd is shutting down"})
	case op.cancelled:
		if ag.phase != phaseStarting {
			break
		}
		if len(ag.waiters) > 0 && ag.hold == 0 {
			// Requests came back while it was being cancelled.
			g.startLocked(ag, op.reason, false, now)
		} else {
			// The unit may still be loading: stop it so it frees the GPU.
			g.stopLocked(ag, reasonCancel, now)
		}
	default:
		if ag.phase == phaseStarting {
			ag.setPhase(phaseFailed, now)
		}
		if errors.As(err, new(*supervisor.BackoffError)) {
			// Refused, not tried: the failure it waits out was counted
			// and stays lastErr.
			g.failWaitersLocked(ag, inferenceError(ag.name, err))
			break
		}
		ag.lastErr = err
		ag.m.startFailures.Inc()
		g.log.Error("switch failed", "agent", ag.name, "err", err)
		g.failWaitersLocked(ag, inferenceError(ag.name, err))
	}
	close(op.done)
	g.scheduleLocked()
}

// afterSwitchLocked records what a switch to ag stopped or put to sleep.
// Agents that BeforeEvict drained but the switch neither stopped nor put to
// sleep (it failed in between) are marked stopped: the next request's
// switch, or the next sync, finds out the truth.
func (g *Gateway) afterSwitchLocked(ag *agentRT, res *supervisor.Result, now time.Time) {
	if res != nil {
		for _, sl := range res.Slept {
			if v := g.byAgent[sl.Agent]; v != nil {
				v.evicting = false
				v.m.sleepSeconds.Observe(sl.Duration.Seconds())
				if v.phase != phaseStarting {
					v.setPhase(phaseSleeping, now)
				}
			}
		}
		for _, name := range res.Evicted {
			if v := g.byAgent[name]; v != nil {
				v.evicting = false
				if v.phase != phaseStarting {
					v.setPhase(phaseStopped, now)
				}
			}
		}
		for _, name := range res.Restored {
			// Brought back after the agent's start failed: it serves again.
			if v := g.byAgent[name]; v != nil {
				v.evicting = false
				v.setPhase(phaseRunning, now)
				g.admitAllLocked(v)
			}
		}
		if res.Woken {
			ag.m.wakeSeconds.Observe(res.WakeDuration.Seconds())
		}
	}
	for _, v := range g.agents {
		if v.evicting && v != ag && config.SharesGPU(v.cfg, ag.cfg) {
			v.evicting = false
			if v.phase == phaseStopping || v.phase == phaseDraining {
				v.setPhase(phaseStopped, now)
			}
		}
	}
}

// sleptNames are the agents res put to sleep.
func sleptNames(res *supervisor.Result) []string {
	out := make([]string, len(res.Slept))
	for i, s := range res.Slept {
		out[i] = s.Agent
	}
	return out
}

func (g *Gateway) countSwitchLocked(ag *agentRT, res *supervisor.Result, reason string) {
	from := "none"
	switch {
	case len(res.Slept) > 0:
		from = res.Slept[0].Agent
	case len(res.Evicted) > 0:
		from = res.Evicted[0]
	}
	g.m.switches.WithLabelValues(from, ag.name, reason).Inc()
	g.m.switchSeconds.WithLabelValues(ag.name).Observe(res.Duration.Seconds())
}

// stopLocked stops ag through the supervisor in the background.
func (g *Gateway) stopLocked(ag *agentRT, reason string, now time.Time) {
	ag.setPhase(phaseStopping, now)
	g.log.Info("stopping agent", "agent", ag.name, "reason", reason)
	bound := g.cfg.Units.StopTimeout.Duration + g.cfg.Supervisor.ReleaseTimeout.Duration + 30*time.Second
	go func() {
		// Not cancelled by vagentd's shutdown: systemd finishes the stop job anyway.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(g.base), bound)
		err := g.o.Switcher.Stop(ctx, ag.name)
		cancel()
		g.mu.Lock()
		defer g.mu.Unlock()
		ag.stopErr = err
		if err != nil {
			g.log.Error("stopping agent", "agent", ag.name, "err", err)
		}
		if ag.phase == phaseStopping {
			ag.setPhase(phaseStopped, time.Now())
		}
		g.m.switches.WithLabelValues(ag.name, "none", reason).Inc()
		g.scheduleLocked()
	}()
}

// drain waits for ag's requests in flight to finish, up to drain_timeout;
// then it cuts the rest with cause and waits briefly for them to end. The
// caller has stopped admitting requests to ag.
func (g *Gateway) drain(ctx context.Context, ag *agentRT, cause *APIError) error {
	g.mu.Lock()
	if ag.inflight == 0 {
		g.mu.Unlock()
		return nil
	}
	ch := g.drainedLocked(ag)
	n := ag.inflight
	g.mu.Unlock()
	bound := g.cfg.Gateway.DrainTimeout.Duration
	g.log.Info("draining agent", "agent", ag.name, "in_flight", n, "bound", bound)
	t := time.NewTimer(bound)
	defer t.Stop()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
	}
	g.mu.Lock()
	n = len(ag.active)
	for l := range ag.active {
		l.cancel(cause)
	}
	ch = g.drainedLocked(ag)
	g.mu.Unlock()
	g.log.Warn("drain bound passed: cutting requests", "agent", ag.name, "cut", n, "bound", bound)
	ag.m.cut.Add(float64(n))
	// The cut requests end at once, writing their error; wait for that
	// before the engine goes away, but not forever.
	grace := time.NewTimer(5 * time.Second)
	defer grace.Stop()
	select {
	case <-ch:
	case <-grace.C:
	case <-ctx.Done():
	}
	return nil
}

func (g *Gateway) drainedLocked(ag *agentRT) chan struct{} {
	if ag.inflight == 0 {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	if ag.drained == nil {
		ag.drained = make(chan struct{})
	}
	return ag.drained
}

// BeforeEvict is the supervisor's hook before it stops agent, or puts it to
// sleep, for a switch: the gateway stops routing new requests to it (they
// queue for its next turn), waits for its requests in flight up to
// drain_timeout, then cuts the rest, which end with an explicit 503 error
// (an SSE error event for streams). It refuses, with a *PinnedError, an agent pinned by a load
// request; it returns ctx's error if the switch is cancelled meanwhile.
func (g *Gateway) BeforeEvict(ctx context.Context, agent string) error {
	g.mu.Lock()
	ag := g.byAgent[agent]
	if ag == nil {
		g.mu.Unlock()
		return nil
	}
	if ag.pinned {
		g.mu.Unlock()
		return &PinnedError{Agent: agent}
	}
	prev := ag.phase
	if prev != phaseDraining && prev != phaseStopping {
		ag.setPhase(phaseDraining, time.Now())
	}
	ag.evicting = true
	g.mu.Unlock()

	cause := &APIError{Status: http.StatusServiceUnavailable, Type: typeUnavailable, RetryAfter: retryDrained,
		Message: "agent " + agent + " was stopped to make room for another agent before this request finished (gateway.drain_timeout " +
			g.cfg.Gateway.DrainTimeout.String() + ")"}
	err := g.drain(ctx, ag, cause)

	g.mu.Lock()
	defer g.mu.Unlock()
	if err != nil {
		ag.evicting = false
		if ag.phase == phaseDraining {
			ag.setPhase(undrain(prev, ag.op != nil), time.Now())
		}
		g.scheduleLocked()
		return err
	}
	if ag.phase == phaseDraining {
		// No stop goroutine: the supervisor stops it, and the switch's
		// result marks it stopped.
		ag.setPhase(phaseStopping, time.Now())
	}
	return nil
}

// stopIdle stops agents that have had no request for their idle_timeout,
// sleeping ones too (they hold host RAM and a GPU residual).
func (g *Gateway) stopIdle(now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	p := g.pol()
	for _, ag := range g.agents {
		if p.idle(g.viewLocked(ag), now) {
			g.log.Info("agent idle", "agent", ag.name, "idle_timeout", ag.cfg.IdleTimeout.Duration)
			g.stopLocked(ag, reasonIdle, now)
		}
	}
}

// sync rebuilds stopped/running from the supervisor's status: engines that
// died, and agents started or stopped behind the gateway's back (by hand,
// or before vagentd started). Agents in transition are left alone.
func (g *Gateway) sync(ctx context.Context) {
	g.mu.Lock()
	before := make([]chan struct{}, len(g.agents))
	for i, ag := range g.agents {
		before[i] = ag.changed
	}
	g.mu.Unlock()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	sts, err := g.o.Switcher.Status(sctx)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			g.log.Warn("reading agents' status", "err", err)
		}
		return
	}
	now := time.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, st := range sts {
		ag := g.byAgent[st.Agent]
		if ag == nil {
			continue
		}
		if i := slices.Index(g.agents, ag); before[i] != ag.changed {
			continue // changed meanwhile: what we read may be stale
		}
		up := st.Healthy && (st.ActiveState == "active" || st.ActiveState == "reloading")
		down := st.ActiveState == "inactive" || st.ActiveState == "failed"
		// A sleeping engine answers /health: never take it for running.
		asleep := up && st.Sleeping
		up = up && !st.Sleeping
		switch ag.phase {
		case phaseStopped, phaseFailed:
			if asleep {
				g.log.Info("agent found sleeping", "agent", ag.name)
				ag.setPhase(phaseSleeping, now)
			} else if up {
				g.log.Info("agent found running", "agent", ag.name)
				ag.setPhase(phaseRunning, now)
			}
		case phaseRunning:
			if down {
				g.log.Warn("agent no longer runs", "agent", ag.name, "state", st.ActiveState, "result", st.Result)
				ag.setPhase(phaseStopped, now)
			} else if asleep {
				g.log.Warn("agent's engine sleeps: no longer routing to it", "agent", ag.name)
				ag.setPhase(phaseSleeping, now)
			}
		case phaseSleeping:
			if down {
				g.log.Warn("sleeping agent no longer runs", "agent", ag.name, "state", st.ActiveState, "result", st.Result)
				ag.setPhase(phaseStopped, now)
			} else if up {
				g.log.Info("agent found awake", "agent", ag.name)
				ag.setPhase(phaseRunning, now)
			}
		case phaseStopping:
			// Evicted by a switch whose result never came back through
			// the gateway (the supervisor driven directly).
			if ag.evicting && down {
				ag.evicting = false
				ag.setPhase(phaseStopped, now)
			}
		}
	}
	g.scheduleLocked()
}
