package doctor

import (
	"strings"
	"testing"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/gpu"
)

// sleepHost is a good sim host whose agents sleep at level, with availGiB
// of host RAM available.
func sleepHost(t *testing.T, level int, availGiB uint64) *host {
	h := newHost(t, config.EngineSim, config.GPUBackendSim, nil)
	for _, a := range h.cfg.Agents {
		a.SwitchMode, a.SleepLevel = config.SwitchSleep, level
	}
	h.availRAM = availGiB * gib
	return h
}

func TestSwitchingCheck(t *testing.T) {
	for _, c := range []struct {
		name   string
		h      *host
		status Status
		in     string
	}{
		{"level 1 fits", sleepHost(t, 1, 48), Pass,
			`switch_mode = "sleep" for architect, dev, po: a switch back is a level-1 wake of about 0.6-0.9 s`},
		// (12 - 3) / 2 = 4.5 GiB for sleepers: an engine, not 9.29 GiB of weights.
		{"level 1 too big", sleepHost(t, 1, 12), Warn,
			`sleep mode as configured does not fit this host: switch_mode = "sleep" with sleep_level = 2 for architect, dev, po: a wake reloads the weights in about 3.3-5.9 s instead of a cold start of about 29.5-31.9 s; not level 1: at most 1 asleep at once (architect) would hold 12.29 GiB at level 1 (weights and engines), more than the 4.50 GiB sleepers may hold`},
		{"level 2 where level 2 is the fit", sleepHost(t, 2, 12), Pass, `sleep_level = 2 for architect, dev, po`},
		// (4 - 3) / 2 = 0.5 GiB: not even an engine's processes.
		{"no room at all", sleepHost(t, 1, 4), Warn, `keep switch_mode = "restart" for architect, dev, po: at most 1 asleep at once (architect) would hold 3.00 GiB at level 2 (engines only), more than the 0.50 GiB sleepers may hold`},
	} {
		r := c.h.run()
		got := find(r, "switching")
		if got == nil || got.Status != c.status || !strings.Contains(got.Finding, c.in) {
			t.Errorf("%s: %+v\nwant %s containing %q", c.name, got, c.status, c.in)
		}
		if c.status == Warn && !strings.Contains(got.Fix, "vagentctl apply") {
			t.Errorf("%s: fix %q", c.name, got.Fix)
		}
	}
}

func TestSwitchingCheckWithoutGPUSizes(t *testing.T) {
	h := newHost(t, config.EngineVLLM, config.GPUBackendNVML, nil)
	h.gpuErr = gpu.ErrNoDriver
	if got := find(h.run(), "switching"); got == nil || got.Status != Skip {
		t.Errorf("no GPU sizes: %+v; want a skip", got)
	}
}

func TestSwitchingCheckWithSomeSleepers(t *testing.T) {
	// Only po sleeps; the host could hold architect and dev asleep too.
	h := newHost(t, config.EngineSim, config.GPUBackendSim, nil)
	h.cfg.Agent("po").SwitchMode = config.SwitchSleep
	got := find(h.run(), "switching")
	if got == nil || got.Status != Pass || !strings.Contains(got.Finding, `the sleep agents fit this host; switches could be cheaper still: switch_mode = "sleep" for architect, dev, po`) {
		t.Errorf("%+v", got)
	}
}
