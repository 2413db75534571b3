package gateway

import (
	"fmt"
	"testing"
)

// phase is an agent's state as the gateway drives it.
type phase uint8

const (
	// phaseStopped: not running as far as the gateway knows (also the
	// state before the first sync); a request starts it.
	phaseStopped phase = iota
	// phaseStarting: a Switch to it is in progress.
	phaseStarting
	// phaseRunning: healthy; requests are admitted while it is its turn.
	phaseRunning
	// phaseDraining: about to be stopped or put to sleep; no new
	// requests, those in flight finish (up to drain_timeout).
	phaseDraining
	// phaseStopping: a stop is in progress.
	phaseStopping
	// phaseFailed: the last start failed; a request tries again.
	phaseFailed
	// phaseSleeping: a sleep agent whose engine sleeps (its unit runs); a
	// request wakes it through a Switch, like a start. Never routed to.
	phaseSleeping
)

var phaseNames = [...]string{
	phaseStopped:  "stopped",
	phaseStarting: "starting",
	phaseRunning:  "running",
	phaseDraining: "draining",
	phaseStopping: "stopping",
	phaseFailed:   "failed",
	phaseSleeping: "sleeping",
}

func (p phase) String() string {
	if int(p) < len(phaseNames) {
		return phaseNames[p]
	}
	return fmt.Sprintf("phase(%d)", uint8(p))
}

// phaseEdges are the transitions the gateway makes, each from where it is
// made. What is absent is a bug: Failed is only ever the end of a start;
// a start never begins from Running (nothing to start), Draining or
// Stopping (an eviction or stop runs); a drain never begins twice, nor
// after the stop it precedes.
var phaseEdges = [...][]phase{
	// Stopped and Failed: a start, a drain or stop by BeforeEvict or the
	// control API, what sync finds, a switch's result (evicted: Stopped
	// again; slept; restored).
	phaseStopped: {phaseStopped, phaseStarting, phaseRunning, phaseDraining, phaseStopping, phaseSleeping},
	phaseFailed:  {phaseStopped, phaseStarting, phaseRunning, phaseDraining, phaseStopping, phaseSleeping},
	// Starting: the Switch's outcome (Running, Failed, Stopped when
	// vagentd stops), a cancelled start begun again (Starting) or stopped
	// (Stopping), a drain by BeforeEvict.
	phaseStarting: {phaseStarting, phaseRunning, phaseFailed, phaseStopped, phaseDraining, phaseStopping},
	// Running: lost or found dead (Stopped), found asleep or put to sleep
	// by a switch, drained, stopped for idleness, restored again.
	phaseRunning: {phaseRunning, phaseStopped, phaseSleeping, phaseDraining, phaseStopping},
	// Draining: a cancelled drain goes back to where it came from; a
	// finished one stops, or the switch's result says what became of it.
	phaseDraining: {phaseRunning, phaseStarting, phaseSleeping, phaseStopped, phaseStopping},
	// Stopping: the stop's end, or a switch's result (slept, evicted,
	// restored after the switch failed).
	phaseStopping: {phaseStopped, phaseSleeping, phaseRunning},
	// Sleeping: woken by a start, drained or stopped, found awake or dead
	// by sync, slept again or restored by a switch.
	phaseSleeping: {phaseSleeping, phaseStarting, phaseRunning, phaseDraining, phaseStopping, phaseStopped},
}

// transition checks the move from p to next against phaseEdges.
func (p phase) transition(next phase) error {
	if int(p) < len(phaseEdges) {
		for _, q := range phaseEdges[p] {
			if q == next {
				return nil
			}
		}
	}
	return fmt.Errorf("agent phase %v -> %v: not a transition the gateway makes", p, next)
}

// to is the phase after moving from p to next. An illegal move panics in
// tests; in vagentd it is made anyway: the table describes the code, and
// an edge it lacks must not leave an agent wedged in a phase nothing
// leaves.
func (p phase) to(next phase) phase {
	if err := p.transition(next); err != nil && testing.Testing() {
		panic(err)
	}
	return next
}
