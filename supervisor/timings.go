package supervisor

import (
	"sync"
	"time"
)

// SwitchTimes are the switch costs this supervisor timed for one agent,
// the latest of each kind since it started (zero: none yet). vagentctl
// plan prefers them to its estimates.
type SwitchTimes struct {
	// ColdStart is a start the supervisor made, from the unit's start job
	// to the engine's first healthy answer (evictions not included).
	ColdStart time.Duration `json:"cold_start_ns,omitempty"`
	// WakeLevel1 and WakeLevel2 are wakes from each sleep level: the wake
	// call, the check, the weights' reload after level 2, and the warm-up.
	WakeLevel1 time.Duration `json:"wake_level1_ns,omitempty"`
	WakeLevel2 time.Duration `json:"wake_level2_ns,omitempty"`
}

// timings keeps the SwitchTimes by agent.
type timings struct {
	mu sync.Mutex
	m  map[string]SwitchTimes
}

func (t *timings) update(agent string, f func(*SwitchTimes)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[string]SwitchTimes{}
	}
	st := t.m[agent]
	f(&st)
	t.m[agent] = st
}

func (t *timings) get(agent string) *SwitchTimes {
	t.mu.Lock()
	defer t.mu.Unlock()
	st, ok := t.m[agent]
	if !ok {
		return nil
	}
	return &st
}

// timedColdStart records a cold start of agent that took d.
func (s *Supervisor) timedColdStart(agent string, d time.Duration) {
	s.timings.update(agent, func(st *SwitchTimes) { st.ColdStart = d })
}

// timedWake records a wake of agent from level (2 for an unknown level,
// which is woken as level 2 is) that took d.
func (s *Supervisor) timedWake(agent string, level int, d time.Duration) {
	s.timings.update(agent, func(st *SwitchTimes) {
		if level == 1 {
			st.WakeLevel1 = d
		} else {
			st.WakeLevel2 = d
		}
	})
}
