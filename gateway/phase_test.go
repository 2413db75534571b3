package gateway

import "testing"

func TestPhaseTransitions(t *testing.T) {
	const (
		stopped  = phaseStopped
		starting = phaseStarting
		running  = phaseRunning
		draining = phaseDraining
		stopping = phaseStopping
		failed   = phaseFailed
		sleeping = phaseSleeping
	)
	tests := []struct {
		from, to phase
		ok       bool
		why      string
	}{
		{stopped, starting, true, "a request starts it"},
		{failed, starting, true, "a request tries again"},
		{sleeping, starting, true, "a request wakes it through a Switch"},
		{starting, running, true, "the Switch succeeded"},
		{starting, failed, true, "the Switch failed"},
		{starting, stopped, true, "vagentd stops during the Switch"},
		{starting, starting, true, "a cancelled start is begun again for requests that came back"},
		{starting, stopping, true, "a cancelled start is stopped to free the GPU"},
		{starting, draining, true, "BeforeEvict during a start"},
		{running, draining, true, "BeforeEvict or the control API's stop"},
		{running, stopping, true, "idle_timeout"},
		{running, stopped, true, "the engine refused a connection, or sync found it dead"},
		{running, sleeping, true, "sync found its engine asleep"},
		{running, running, true, "restored by a failed switch"},
		{draining, running, true, "a cancelled drain of a running agent"},
		{draining, starting, true, "a cancelled drain of a starting agent"},
		{draining, sleeping, true, "a cancelled drain of a sleeping agent, or slept by the switch"},
		{draining, stopped, true, "evicted by the switch"},
		{draining, stopping, true, "the drain finished"},
		{stopping, stopped, true, "the stop finished"},
		{stopping, sleeping, true, "the switch put it to sleep"},
		{stopping, running, true, "restored by a failed switch"},
		{stopped, running, true, "sync found it running"},
		{stopped, sleeping, true, "sync found it sleeping"},
		{stopped, stopped, true, "evicted by a switch while stopped"},
		{stopped, draining, true, "BeforeEvict of a unit the gateway thought stopped"},
		{stopped, stopping, true, "the control API stops it anyway"},
		{failed, running, true, "sync found it running"},
		{failed, stopping, true, "the control API stops it anyway"},
		{sleeping, running, true, "sync found it awake"},
		{sleeping, stopped, true, "sync found it dead, or a switch evicted it"},
		{sleeping, stopping, true, "idle_timeout"},
		{sleeping, sleeping, true, "slept again by a switch"},
		{sleeping, draining, true, "BeforeEvict of a sleeping agent"},
		{failed, stopped, true, "evicted by a switch"},
		{failed, draining, true, "BeforeEvict of a unit whose start failed"},
		{failed, sleeping, true, "sync found it sleeping"},

		{running, starting, false, "nothing to start"},
		{starting, sleeping, false, "a switch's result leaves a starting agent alone"},
		{running, failed, false, "only a start fails"},
		{stopped, failed, false, "only a start fails"},
		{sleeping, failed, false, "only a start fails"},
		{failed, failed, false, "only a start fails"},
		{draining, failed, false, "only a start fails"},
		{stopping, failed, false, "only a start fails"},
		{draining, draining, false, "a drain never begins twice"},
		{stopping, draining, false, "a drain never follows its stop"},
		{stopping, starting, false, "a start waits for the stop"},
		{stopping, stopping, false, "one stop at a time"},
		{phase(99), stopped, false, "not a phase"},
		{stopped, phase(99), false, "not a phase"},
	}
	seen := map[[2]phase]bool{}
	for _, tt := range tests {
		seen[[2]phase{tt.from, tt.to}] = true
		err := tt.from.transition(tt.to)
		if (err == nil) != tt.ok {
			t.Errorf("%v -> %v (%s): err %v, want ok=%v", tt.from, tt.to, tt.why, err, tt.ok)
		}
		func() {
			defer func() {
				if r := recover(); (r == nil) != tt.ok {
					t.Errorf("%v -> %v (%s): to panicked %v, want ok=%v", tt.from, tt.to, tt.why, r, tt.ok)
				}
			}()
			tt.from.to(tt.to)
		}()
	}
	// Every pair of phases is decided by a row above, so a new edge in
	// phaseEdges needs a reason here.
	for from := range phase(len(phaseNames)) {
		for to := range phase(len(phaseNames)) {
			if !seen[[2]phase{from, to}] {
				t.Errorf("%v -> %v: no row", from, to)
			}
		}
	}
}
