package gateway

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/engine"
	"github.com/vagent-dev/vagent/supervisor"
)

// Reasons for a transition, as vagent_switches_total reports them.
const (
	reasonRequest = "request"
	reasonSwitch  = "switch"
	reasonLoad    = "load"
	reasonIdle    = "idle"
	reasonStop    = "stop"
	reasonCancel  = "cancelled"
)

// agentRT is one agent's scheduling state; every field after cfg..m is
// guarded by Gateway.mu.
type agentRT struct {
	cfg        *config.Agent
	name       string
	ep         engine.Endpoint // where the engine serves
	m          *agentMetrics
	timeoutErr *APIError

	conflicts []*agentRT // agents that cannot run beside this one
	phase     phase
	changed   chan struct{} // closed and replaced at every phase change
	inflight  int
	active    map[*lease]struct{}
	waiters   []*waiter // oldest first
	lastUsed  time.Time
	since     time.Time // when the phase began
	pinned    bool      // pinned by a load request
	hold      int       // a stop by the control API is in progress: do not start
	evicting  bool      // drained by BeforeEvict: the supervisor stops it next
	op        *startOp
	drained   chan struct{} // closed when inflight drops to 0
	lastErr   error
	stopErr   error
}

// waiter is a request waiting for its agent.
type waiter struct {
	arrived time.Time
	lease   *lease
	ch      chan error // nil: admitted; else why it will not be served
}

// lease is a request admitted to an agent: it counts as in flight until
// released, and cancel cuts it (with an *APIError cause) when a drain runs
// out of time.
type lease struct {
	ag     *agentRT
	cancel context.CancelCauseFunc
	timer  *time.Timer // request_timeout, once admitted
}

func (l *lease) stopTimer() {
	if l.timer != nil {
		l.timer.Stop()
	}
}

// startOp is a Switch in progress, shared by every request waiting for it.
type startOp struct {
	reason    string
	keep      bool // asked for by the control API: completes even if nobody waits
	refs      int  // control API callers waiting for it
	cancelled bool
	cancel    context.CancelFunc
	done      chan struct{}
	res       *supervisor.Result
	err       error
}

// setPhase moves ag to p; see phase.to for what happens to a transition
// the table refuses.
func (ag *agentRT) setPhase(p phase, now time.Time) {
	ag.phase = ag.phase.to(p)
	ag.since = now
	close(ag.changed)
	ag.changed = make(chan struct{})
}

// stateLocked is the agent's state for clients and metrics.
func (ag *agentRT) stateLocked() string {
	switch ag.phase {
	case phaseRunning, phaseDraining:
		return StateRunning
	case phaseStarting:
		return StateLoading
	case phaseFailed:
		return StateFailed
	case phaseSleeping:
		return StateSleeping
	default:
		return StateStopped
	}
}

func (g *Gateway) pinnedLocked(ag *agentRT) bool { return ag.pinned || ag.cfg.Pinned }

// pol is the scheduling policy the configuration sets.
func (g *Gateway) pol() policy { return newPolicy(&g.cfg.Gateway) }

// viewLocked is the policy's snapshot of ag.
func (g *Gateway) viewLocked(ag *agentRT) agentView {
	v := agentView{
		phase: ag.phase, held: ag.hold > 0, pinned: g.pinnedLocked(ag),
		inflight: ag.inflight, waiting: len(ag.waiters),
		idleTimeout: ag.cfg.IdleTimeout.Duration, lastUsed: ag.lastUsed, since: ag.since,
	}
	if len(ag.waiters) > 0 {
		v.oldest = ag.waiters[0].arrived
	}
	if op := ag.op; op != nil {
		v.startCancellable = !op.cancelled && !op.keep && op.refs == 0
	}
	return v
}

// conflictViewsLocked appends the snapshots of the agents that cannot run
// beside ag to buf.
func (g *Gateway) conflictViewsLocked(ag *agentRT, buf []agentView) []agentView {
	for _, c := range ag.conflicts {
		buf = append(buf, g.viewLocked(c))
	}
	return buf
}

// errQueueFull and errMaxWait are the bounded queue's refusals.
func (g *Gateway) errQueueFull() *APIError {
	return &APIError{Status: http.StatusTooManyRequests, Type: typeRateLimit, RetryAfter: retryQueueFull,
		Message: "too many requests waiting for agents (gateway.queue_length " + strconv.Itoa(g.cfg.Gateway.QueueLength) + "): try again shortly"}
}

func (g *Gateway) errMaxWait(ag *agentRT) *APIError {
	return &APIError{Status: http.StatusServiceUnavailable, Type: typeUnavailable, RetryAfter: retryMaxWait,
		Message: "agent " + ag.name + " did not become available within " + g.cfg.Gateway.MaxWait.String() + " (gateway.max_wait)"}
}

// acquire admits l to ag, waiting in ag's queue when it is not running or
// not its turn. It returns an *APIError when the request will not be
// served, or the context's error when the client went away.
func (g *Gateway) acquire(ctx context.Context, ag *agentRT, l *lease) (waited time.Duration, err error) {
	g.mu.Lock()
	now := time.Now()
	var buf [8]agentView
	switch g.pol().arrive(g.viewLocked(ag), g.conflictViewsLocked(ag, buf[:0]), g.queued, now) {
	case arriveAdmit:
		g.admitLocked(ag, l)
		g.mu.Unlock()
		return 0, nil
	case arriveRefuse:
		g.mu.Unlock()
		return 0, g.errQueueFull()
	}
	w := &waiter{arrived: now, lease: l, ch: make(chan error, 1)}
	ag.waiters = append(ag.waiters, w)
	g.queued++
	g.scheduleLocked()
	g.mu.Unlock()

	timer := time.NewTimer(g.pol().maxWait)
	defer timer.Stop()
	select {
	case err = <-w.ch:
	case <-ctx.Done():
		err = g.leave(ag, w, context.Cause(ctx))
	case <-timer.C:
		err = g.leave(ag, w, g.errMaxWait(ag))
	}
	waited = time.Since(now)
	ag.m.queueWait.Observe(waited.Seconds())
	return waited, err
}

// leave takes w out of the queue, with why as the reason. If the scheduler
// answered w meanwhile, an admission is undone.
func (g *Gateway) leave(ag *agentRT, w *waiter, why error) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if i := slices.Index(ag.waiters, w); i >= 0 {
		ag.waiters = slices.Delete(ag.waiters, i, i+1)
		g.queued--
		g.maybeCancelStartLocked(ag)
		g.scheduleLocked()
		return why
	}
	if err := <-w.ch; err != nil {
		return err
	}
	g.releaseLocked(w.lease, time.Now())
	return why
}

func (g *Gateway) admitLocked(ag *agentRT, l *lease) {
	l.ag = ag
	ag.inflight++
	ag.active[l] = struct{}{}
}

// admitAllLocked admits every request waiting for ag.
func (g *Gateway) admitAllLocked(ag *agentRT) {
	for i, w := range ag.waiters {
		g.admitLocked(ag, w.lease)
		w.ch <- nil
		ag.waiters[i] = nil
	}
	g.queued -= len(ag.waiters)
	ag.waiters = ag.waiters[:0]
}

// failWaitersLocked answers every request waiting for ag with err.
func (g *Gateway) failWaitersLocked(ag *agentRT, err error) {
	for i, w := range ag.waiters {
		w.ch <- err
		ag.waiters[i] = nil
	}
	g.queued -= len(ag.waiters)
	ag.waiters = ag.waiters[:0]
}

// release ends l's time in flight.
func (g *Gateway) release(l *lease) {
	g.mu.Lock()
	g.releaseLocked(l, time.Now())
	g.mu.Unlock()
}

func (g *Gateway) releaseLocked(l *lease, now time.Time) {
	ag := l.ag
	if ag == nil {
		return
	}
	l.ag = nil
	delete(ag.active, l)
	ag.inflight--
	ag.lastUsed = now
	if ag.inflight == 0 && ag.drained != nil {
		close(ag.drained)
		ag.drained = nil
	}
	g.scheduleLocked()
}

// lost is called when ag's engine refused a connection: it is not running
// (it died, or was stopped behind the gateway's back), so the next request
// starts it again.
func (g *Gateway) lost(ag *agentRT) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if ag.phase == phaseRunning {
		g.log.Warn("agent's engine refused a connection: starting it again", "agent", ag.name)
		ag.setPhase(phaseStopped, time.Now())
		g.scheduleLocked()
	}
}

// scheduleLocked applies every decision the policy makes on the current
// state: it admits requests waiting for running agents whose turn it is,
// and starts agents that have requests waiting and whose conflicting
// agents are idle, or have had their fairness window. Agents are
// considered oldest waiter first, each on the state the decisions before
// it left.
func (g *Gateway) scheduleLocked() {
	now := time.Now()
	p := g.pol()
	order := g.order[:0]
	for _, ag := range g.agents {
		if len(ag.waiters) > 0 {
			order = append(order, ag)
		}
	}
	slices.SortFunc(order, func(a, b *agentRT) int { return schedOrder(g.viewLocked(a), g.viewLocked(b)) })
	var next time.Time
	var buf [8]agentView
	for _, ag := range order {
		switch s, deadline := p.next(g.viewLocked(ag), g.conflictViewsLocked(ag, buf[:0]), now); s {
		case stepAdmitAll:
			g.admitAllLocked(ag)
		case stepStart:
			g.startLocked(ag, reasonRequest, false, now)
		case stepWait:
			if next.IsZero() || deadline.Before(next) {
				next = deadline
			}
		}
	}
	clear(order)
	g.order = order[:0]
	g.armTimerLocked(next, now)
}

// armTimerLocked makes sure scheduleLocked runs again at next.
func (g *Gateway) armTimerLocked(next, now time.Time) {
	if next.IsZero() {
		return
	}
	if g.timer != nil && !g.timerAt.IsZero() && !g.timerAt.After(next) {
		return // an earlier run is due; it re-arms
	}
	g.timerAt = next
	d := next.Sub(now)
	if g.timer == nil {
		g.timer = time.AfterFunc(d, g.onTimer)
	} else {
		g.timer.Reset(d)
	}
}

func (g *Gateway) onTimer() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.timerAt = time.Time{}
	g.scheduleLocked()
}

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
