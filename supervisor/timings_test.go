package supervisor

import (
	"context"
	"testing"
)

// Status carries the cold starts and the wakes the supervisor timed, by
// level, so that vagentctl plan can show them instead of its estimates.
func TestStatusCarriesTheTimedStartsAndWakes(t *testing.T) {
	cfg := testConfig(t, sleepAgent("po", 0.92, 10), sleepAgent("dev", 0.92, 30))
	cfg.Agent("dev").SleepLevel = 2
	h := newFakeHost(t, cfg, 16*gib)
	s := newSleepSup(cfg, h, Options{})
	ctx := context.Background()

	measured := func() map[string]*SwitchTimes {
		t.Helper()
		st, err := s.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]*SwitchTimes{}
		for _, a := range st {
			out[a.Agent] = a.Measured
		}
		return out
	}
	if m := measured(); m["po"] != nil || m["dev"] != nil {
		t.Fatalf("before any start: %+v %+v; want nothing measured", m["po"], m["dev"])
	}
	// po starts cold, dev starts cold (po sleeps at level 1), po wakes
	// (dev sleeps at level 2), dev wakes.
	for _, n := range []string{"po", "dev", "po", "dev"} {
		if _, err := s.Switch(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	m := measured()
	po, dev := m["po"], m["dev"]
	if po == nil || po.ColdStart <= 0 || po.WakeLevel1 <= 0 || po.WakeLevel2 != 0 {
		t.Errorf("po: %+v; want a cold start and a level-1 wake", po)
	}
	if dev == nil || dev.ColdStart <= 0 || dev.WakeLevel2 <= 0 || dev.WakeLevel1 != 0 {
		t.Errorf("dev: %+v; want a cold start and a level-2 wake", dev)
	}
}
