package gateway

import (
	"slices"
	"testing"
	"time"
)

var (
	t0  = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	pol = policy{queueLength: 4, fairness: 10 * time.Second, maxWait: time.Minute}
)

// ago is the time d before t0.
func ago(d time.Duration) time.Time { return t0.Add(-d) }

func running(inflight int) agentView { return agentView{phase: phaseRunning, inflight: inflight} }

// waitingFor is an agent in phase p with n requests waiting, the oldest
// since d before t0.
func waitingFor(p phase, n int, d time.Duration) agentView {
	return agentView{phase: p, waiting: n, oldest: ago(d)}
}

func TestPolicyArrive(t *testing.T) {
	tests := []struct {
		name      string
		ag        agentView
		conflicts []agentView
		queued    int
		want      arrival
	}{
		{"running, alone", running(3), nil, 0, arriveAdmit},
		{"running, conflicting agent idle and stopped", running(0), []agentView{{phase: phaseStopped}}, 0, arriveAdmit},
		{"running, requests wait for it: behind them", waitingFor(phaseRunning, 1, time.Second), nil, 0, arriveQueue},
		{"stopped", agentView{phase: phaseStopped}, nil, 0, arriveQueue},
		{"starting", agentView{phase: phaseStarting}, nil, 3, arriveQueue},
		{"sleeping", agentView{phase: phaseSleeping}, nil, 0, arriveQueue},
		{"draining", agentView{phase: phaseDraining}, nil, 0, arriveQueue},
		{"running but held by a stop", agentView{phase: phaseRunning, held: true}, nil, 0, arriveQueue},
		{"queue full: 429", agentView{phase: phaseStopped}, nil, 4, arriveRefuse},
		{"queue full but admissible: no queueing", running(1), nil, 4, arriveAdmit},
		{"conflicting agent starting: it would evict this one", running(0), []agentView{{phase: phaseStarting}}, 0, arriveQueue},
		{"conflicting agent waited the fairness window: yield", running(2), []agentView{waitingFor(phaseStopped, 1, 10*time.Second)}, 0, arriveQueue},
		{"conflicting agent waited less than the window", running(2), []agentView{waitingFor(phaseStopped, 1, 9*time.Second)}, 0, arriveAdmit},
		{"a running conflicting agent with waiters is no reason to yield", running(2), []agentView{waitingFor(phaseRunning, 1, time.Hour)}, 0, arriveAdmit},
		{"conflicting agent sleeping with waiters past the window", running(0), []agentView{waitingFor(phaseSleeping, 2, time.Minute)}, 0, arriveQueue},
	}
	for _, tt := range tests {
		if got := pol.arrive(tt.ag, tt.conflicts, tt.queued, t0); got != tt.want {
			t.Errorf("%s: arrive = %d, want %d", tt.name, got, tt.want)
		}
	}
}

func TestPolicyNext(t *testing.T) {
	tests := []struct {
		name      string
		ag        agentView
		conflicts []agentView
		want      step
		deadline  time.Time
	}{
		{"running, its turn: admit all", waitingFor(phaseRunning, 3, time.Second), nil, stepAdmitAll, time.Time{}},
		{"running, yields to a conflicting agent past its window", waitingFor(phaseRunning, 1, time.Second),
			[]agentView{waitingFor(phaseStopped, 1, 11*time.Second)}, stepNone, time.Time{}},
		{"running, held by a stop", agentView{phase: phaseRunning, held: true, waiting: 1, oldest: t0}, nil, stepNone, time.Time{}},
		{"stopped, alone: start", waitingFor(phaseStopped, 1, 0), nil, stepStart, time.Time{}},
		{"failed: try again", waitingFor(phaseFailed, 1, 0), nil, stepStart, time.Time{}},
		{"sleeping: wake", waitingFor(phaseSleeping, 1, 0), nil, stepStart, time.Time{}},
		{"stopped, held by a stop", agentView{phase: phaseStopped, held: true, waiting: 1, oldest: t0}, nil, stepNone, time.Time{}},
		{"starting: nothing to do", waitingFor(phaseStarting, 2, 0), nil, stepNone, time.Time{}},
		{"draining: wait for its end", waitingFor(phaseDraining, 2, 0), nil, stepNone, time.Time{}},
		{"stopping: wait for its end", waitingFor(phaseStopping, 2, 0), nil, stepNone, time.Time{}},
		{"conflicting agent runs but idle: evict it now", waitingFor(phaseStopped, 1, 0), []agentView{running(0)}, stepStart, time.Time{}},
		{"conflicting agent busy: wait out the fairness window", waitingFor(phaseStopped, 1, 4*time.Second),
			[]agentView{running(1)}, stepWait, t0.Add(6 * time.Second)},
		{"conflicting agent busy, window over: start (it drains)", waitingFor(phaseStopped, 1, 10*time.Second),
			[]agentView{running(5)}, stepStart, time.Time{}},
		{"conflicting agent busy and pinned: start now, it fails and says why", waitingFor(phaseStopped, 1, 0),
			[]agentView{{phase: phaseRunning, inflight: 1, pinned: true}}, stepStart, time.Time{}},
		{"conflicting agent starting", waitingFor(phaseStopped, 1, time.Hour), []agentView{{phase: phaseStarting}}, stepNone, time.Time{}},
		{"conflicting agent draining", waitingFor(phaseSleeping, 1, time.Hour), []agentView{{phase: phaseDraining}}, stepNone, time.Time{}},
		{"conflicting agent stopping", waitingFor(phaseFailed, 1, time.Hour), []agentView{{phase: phaseStopping}}, stepNone, time.Time{}},
		{"one of two conflicting agents in transition", waitingFor(phaseStopped, 1, time.Hour),
			[]agentView{running(0), {phase: phaseStopping}}, stepNone, time.Time{}},
		{"conflicting agents stopped or sleeping", waitingFor(phaseStopped, 1, 0),
			[]agentView{{phase: phaseStopped}, {phase: phaseSleeping}, {phase: phaseFailed}}, stepStart, time.Time{}},
	}
	for _, tt := range tests {
		got, deadline := pol.next(tt.ag, tt.conflicts, t0)
		if got != tt.want || !deadline.Equal(tt.deadline) {
			t.Errorf("%s: next = %d, %v; want %d, %v", tt.name, got, deadline, tt.want, tt.deadline)
		}
	}
}

func TestPolicyOrderOldestWaiterFirst(t *testing.T) {
	views := []agentView{waitingFor(phaseStopped, 1, time.Second), waitingFor(phaseRunning, 5, time.Minute), waitingFor(phaseSleeping, 1, time.Hour)}
	slices.SortFunc(views, schedOrder)
	if views[0].phase != phaseSleeping || views[1].phase != phaseRunning || views[2].phase != phaseStopped {
		t.Errorf("order %v %v %v, want sleeping running stopped", views[0].phase, views[1].phase, views[2].phase)
	}
}

func TestPolicyCancelStart(t *testing.T) {
	tests := []struct {
		name string
		ag   agentView
		want bool
	}{
		{"nobody waits", agentView{phase: phaseStarting, startCancellable: true}, true},
		{"requests wait", agentView{phase: phaseStarting, startCancellable: true, waiting: 1}, false},
		{"pinned", agentView{phase: phaseStarting, startCancellable: true, pinned: true}, false},
		{"asked for by the control API, or cancelled already", agentView{phase: phaseStarting}, false},
		{"not starting", agentView{phase: phaseRunning, startCancellable: true}, false},
	}
	for _, tt := range tests {
		if got := pol.cancelStart(tt.ag); got != tt.want {
			t.Errorf("%s: cancelStart = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestPolicyIdle(t *testing.T) {
	idle := func(p phase, last, since time.Duration) agentView {
		return agentView{phase: p, idleTimeout: time.Minute, lastUsed: ago(last), since: ago(since)}
	}
	mod := func(v agentView, f func(*agentView)) agentView { f(&v); return v }
	tests := []struct {
		name string
		ag   agentView
		want bool
	}{
		{"running, unused for idle_timeout", idle(phaseRunning, time.Minute, time.Hour), true},
		{"sleeping, unused for idle_timeout", idle(phaseSleeping, time.Hour, time.Minute), true},
		{"used recently", idle(phaseRunning, 59*time.Second, time.Hour), false},
		{"phase began recently (found running by sync)", idle(phaseRunning, time.Hour, time.Second), false},
		{"no idle_timeout", mod(idle(phaseRunning, time.Hour, time.Hour), func(v *agentView) { v.idleTimeout = 0 }), false},
		{"pinned", mod(idle(phaseRunning, time.Hour, time.Hour), func(v *agentView) { v.pinned = true }), false},
		{"requests in flight", mod(idle(phaseRunning, time.Hour, time.Hour), func(v *agentView) { v.inflight = 1 }), false},
		{"requests waiting", mod(idle(phaseSleeping, time.Hour, time.Hour), func(v *agentView) { v.waiting = 1 }), false},
		{"held by a stop", mod(idle(phaseRunning, time.Hour, time.Hour), func(v *agentView) { v.held = true }), false},
		{"stopped already", idle(phaseStopped, time.Hour, time.Hour), false},
		{"starting", idle(phaseStarting, time.Hour, time.Hour), false},
		{"draining", idle(phaseDraining, time.Hour, time.Hour), false},
	}
	for _, tt := range tests {
		if got := pol.idle(tt.ag, t0); got != tt.want {
			t.Errorf("%s: idle = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestUndrain(t *testing.T) {
	tests := []struct {
		prev     phase
		hasStart bool
		want     phase
	}{
		{phaseRunning, false, phaseRunning},
		{phaseStarting, true, phaseStarting},
		{phaseStarting, false, phaseStopped}, // the Switch ended meanwhile
		{phaseSleeping, false, phaseSleeping},
		{phaseStopped, false, phaseStopped},
		{phaseFailed, false, phaseStopped},
	}
	for _, tt := range tests {
		got := undrain(tt.prev, tt.hasStart)
		if got != tt.want {
			t.Errorf("undrain(%v, %v) = %v, want %v", tt.prev, tt.hasStart, got, tt.want)
		}
		if err := phaseDraining.transition(got); err != nil {
			t.Errorf("undrain(%v, %v): %v", tt.prev, tt.hasStart, err)
		}
	}
}
