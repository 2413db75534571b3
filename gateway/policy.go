package gateway

import (
	"time"

	"github.com/vagent-dev/vagent/config"
)

// policy is the scheduler's rules. Its decisions are pure functions of a
// snapshot of the agents (agentView) and the time: no locks, no
// goroutines, no I/O. sched.go takes the snapshots under Gateway.mu and
// applies what the policy decides.
type policy struct {
	queueLength int           // gateway.queue_length: requests waiting, all agents together
	fairness    time.Duration // gateway.fairness_window
	maxWait     time.Duration // gateway.max_wait
}

func newPolicy(c *config.Gateway) policy {
	return policy{queueLength: c.QueueLength, fairness: c.FairnessWindow.Duration, maxWait: c.MaxWait.Duration}
}

// agentView is what the policy sees of one agent.
type agentView struct {
	phase    phase
	held     bool // a stop by the control API is in progress
	pinned   bool // by a load request or by configuration
	inflight int  // requests admitted and not yet released
	waiting  int  // requests queued for it
	// interactive of them are clients' (the rest are background work)
	interactive int
	oldest      time.Time // when the oldest of them arrived; zero if none
	// A start in progress that nobody asked to keep: the control API
	// neither asked for it nor waits for it, and it is not cancelled yet.
	startCancellable bool
	idleTimeout      time.Duration // zero or less: never stopped for idleness
	lastUsed, since  time.Time     // last request's end; when the phase began
}

// arrival is what becomes of a request when it arrives.
type arrival uint8

const (
	arriveAdmit  arrival = iota // sent to the agent at once
	arriveQueue                 // waits in the agent's queue, up to max_wait
	arriveRefuse                // the queue is full: 429
)

// arrive decides for a request for ag arriving when queued requests wait
// for all agents together. It goes ahead of nobody: with requests already
// waiting for ag it queues behind them.
func (p policy) arrive(ag agentView, conflicts []agentView, queued int, now time.Time) arrival {
	if ag.waiting == 0 && p.admissible(ag, conflicts, now) {
		return arriveAdmit
	}
	if queued >= p.queueLength {
		return arriveRefuse
	}
	return arriveQueue
}

// admissible reports whether a request for ag may go to it now: it runs,
// no stop by the control API holds it, no conflicting agent is starting
// (which would evict it), and no conflicting agent that is not running has
// had requests waiting for longer than the fairness window (then the
// running agent yields: it is their turn).
func (p policy) admissible(ag agentView, conflicts []agentView, now time.Time) bool {
	if ag.phase != phaseRunning || ag.held {
		return false
	}
	for _, c := range conflicts {
		if c.phase == phaseStarting {
			return false
		}
		if c.phase != phaseRunning && c.waiting > 0 && now.Sub(c.oldest) >= p.fairness {
			return false
		}
	}
	return true
}

// startBlocked reports whether starting ag must wait: a conflicting agent
// is in transition, or runs requests and ag's oldest request has waited
// less than the fairness window (deadline is when that changes). ag has
// requests waiting.
func (p policy) startBlocked(ag agentView, conflicts []agentView, now time.Time) (wait bool, deadline time.Time) {
	busy, pinned := false, false
	for _, c := range conflicts {
		switch c.phase {
		case phaseStarting, phaseDraining, phaseStopping:
			return true, time.Time{}
		case phaseRunning:
			if c.inflight > 0 {
				busy = true
			}
			if c.pinned {
				pinned = true
			}
		}
	}
	if !busy || pinned {
		// Nothing to wait for; with a pinned blocker the start fails at
		// once and says why.
		return false, time.Time{}
	}
	deadline = ag.oldest.Add(p.fairness)
	if !now.Before(deadline) {
		return false, time.Time{}
	}
	return true, deadline
}

// step is what the scheduler does for one agent with requests waiting.
type step uint8

const (
	stepNone     step = iota // nothing yet: not its turn, or in transition
	stepAdmitAll             // admit every request waiting for it
	stepStart                // start it (a Switch)
	stepWait                 // start it at the deadline, unless something changes first
)

// next decides for ag, which has requests waiting. The scheduler asks
// agents oldest waiter first (schedOrder) and applies each decision before
// asking for the next agent, so a start blocks the conflicting agents
// asked after it.
func (p policy) next(ag agentView, conflicts []agentView, now time.Time) (s step, deadline time.Time) {
	switch ag.phase {
	case phaseRunning:
		if p.admissible(ag, conflicts, now) {
			return stepAdmitAll, time.Time{}
		}
	case phaseStopped, phaseFailed, phaseSleeping:
		if ag.held {
			return stepNone, time.Time{}
		}
		wait, deadline := p.startBlocked(ag, conflicts, now)
		if !wait {
			return stepStart, time.Time{}
		}
		if !deadline.IsZero() {
			return stepWait, deadline
		}
	}
	return stepNone, time.Time{}
}

// schedOrder compares two agents with requests waiting: one with
// interactive requests waiting goes before one with background work only
// (batches and pipelines yield to clients), then the one whose oldest
// request arrived first.
func schedOrder(a, b agentView) int {
	if ai, bi := a.interactive > 0, b.interactive > 0; ai != bi {
		if ai {
			return -1
		}
		return 1
	}
	return a.oldest.Compare(b.oldest)
}

// cancelStart reports whether ag's start should be cancelled: nobody waits
// for it any more, it is not pinned, and the control API did not ask for it.
func (p policy) cancelStart(ag agentView) bool {
	return ag.phase == phaseStarting && ag.startCancellable && ag.waiting == 0 && !ag.pinned
}

// idle reports whether ag has had no request for its idle_timeout and
// should be stopped; sleeping agents too (they hold host RAM and a GPU
// residual).
func (p policy) idle(ag agentView, now time.Time) bool {
	if ag.idleTimeout <= 0 || (ag.phase != phaseRunning && ag.phase != phaseSleeping) || ag.pinned || ag.inflight > 0 ||
		ag.waiting > 0 || ag.held {
		return false
	}
	last := ag.lastUsed
	if ag.since.After(last) {
		last = ag.since
	}
	return now.Sub(last) >= ag.idleTimeout
}

// undrain is the phase an agent returns to when a drain by BeforeEvict is
// cancelled (the switch gave up): the one it was drained from, unless that
// was a start whose Switch has ended meanwhile (hasStart false) or a phase
// a drain does not return to.
func undrain(prev phase, hasStart bool) phase {
	switch {
	case prev == phaseRunning:
		return phaseRunning
	case prev == phaseStarting && hasStart:
		return phaseStarting
	case prev == phaseSleeping:
		return phaseSleeping
	default:
		return phaseStopped
	}
}
