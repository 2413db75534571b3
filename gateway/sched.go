package gateway

import (
	"context"
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
	// background marks vagentd's own work (batches, pipelines): it yields
	// to interactive requests (see Load and schedOrder).
	background bool
	// turn: background work whose wait is over (work.max_yield): its
	// start is not cancelled for a client (see yieldStartsLocked).
	turn bool
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
	for _, w := range ag.waiters {
		if !w.lease.background {
			v.interactive++
		}
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
	if !l.background {
		g.yieldStartsLocked(ag)
	}
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
