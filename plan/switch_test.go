package plan

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/config"
)

// meminfo is /proc/meminfo's text with availGiB available of totalGiB.
func meminfo(totalGiB, availGiB uint64) string {
	return fmt.Sprintf("MemTotal:       %d kB\nMemFree:         123456 kB\nMemAvailable:   %d kB\nBuffers:          2048 kB\n",
		totalGiB<<20, availGiB<<20)
}

func mustMeminfo(t *testing.T, totalGiB, availGiB uint64) Meminfo {
	t.Helper()
	m, err := ParseMeminfo(strings.NewReader(meminfo(totalGiB, availGiB)))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestParseMeminfo(t *testing.T) {
	m := mustMeminfo(t, 64, 40)
	if m.TotalBytes != 64*gib || m.AvailableBytes != 40*gib || m.Source != "/proc/meminfo" {
		t.Errorf("parsed %+v", m)
	}
	for _, bad := range []string{
		"MemTotal: 1000 kB\n",                      // no MemAvailable
		"MemTotal: x kB\nMemAvailable: 10 kB\n",    // not a number
		"MemTotal: 1000 MB\nMemAvailable: 10 kB\n", // unknown unit
		"", // empty
	} {
		if _, err := ParseMeminfo(strings.NewReader(bad)); err == nil || !strings.Contains(err.Error(), "/proc/meminfo") {
			t.Errorf("%q: error %v; want one naming /proc/meminfo", bad, err)
		}
	}
}

// shippedSwitch plans the shipped trio on the simulated 16 GB card, with
// the agents changed by edit, on a host with availGiB of 64 GiB available.
func shippedSwitch(t *testing.T, availGiB uint64, edit func(cfg *config.Config), measured map[string]Measured) (*config.Config, *Switching) {
	t.Helper()
	cfg := loadShipped(t, "configs")
	if edit != nil {
		edit(cfg)
	}
	p := Make(context.Background(), cfg, totalMiB(cfg.GPU.SimTotalMiB), "gpu.sim_total_mib", offline(t))
	return cfg, Switch(cfg, p, mustMeminfo(t, 64, availGiB), DefaultRates, measured)
}

func secondsNear(got, want float64) bool { return math.Abs(got-want) < 0.01 }

func TestSwitchCostsFollowTheStatedRates(t *testing.T) {
	_, s := shippedSwitch(t, 40, nil, nil)
	dev := s.Agents[1]
	if dev.Agent != "dev" || !dev.Known {
		t.Fatalf("dev: %+v", dev)
	}
	checkpoint := 9.98e9 // the built-in table's safetensors total
	read := checkpoint / DefaultDiskBytesPerSec
	onGPU := float64(9.29*float64(gib)) / DefaultPCIeBytesPerSec
	// dev: max_num_seqs 16, CUDA graphs and torch.compile on.
	wantCold := EngineStartCost.Seconds() + read + onGPU + CompileCost.Seconds() + GraphsCaptureCost(16).Seconds()
	if math.Abs(dev.ColdStart.Seconds-wantCold) > 0.05 || dev.ColdStart.Measured {
		t.Errorf("dev cold start %.2f s, want %.2f s", dev.ColdStart.Seconds, wantCold)
	}
	if w := onGPU + WakeCost.Seconds(); math.Abs(dev.WakeLevel1.Seconds-w) > 0.05 {
		t.Errorf("dev level-1 wake %.2f s, want %.2f s", dev.WakeLevel1.Seconds, w)
	}
	if w := read + onGPU + WakeCost.Seconds(); math.Abs(dev.WakeLevel2.Seconds-w) > 0.05 {
		t.Errorf("dev level-2 wake %.2f s, want %.2f s", dev.WakeLevel2.Seconds, w)
	}
	if !(dev.WakeLevel1.Seconds < dev.WakeLevel2.Seconds && dev.WakeLevel2.Seconds < dev.ColdStart.Seconds) {
		t.Errorf("dev: want wake L1 < wake L2 < cold start: %+v", dev)
	}
	// The estimate's terms add up to it.
	var sum float64
	for _, p := range dev.ColdStart.Parts {
		sum += p.Seconds
	}
	if !secondsNear(sum, dev.ColdStart.Seconds) {
		t.Errorf("cold start parts add to %.2f, total %.2f", sum, dev.ColdStart.Seconds)
	}
	// Level 1 holds the whole checkpoint in host RAM, plus the engine.
	if want := dev.HostLevel1Bytes - EngineHostBytes; want < 9*gib || want > 10*gib || dev.HostLevel2Bytes != EngineHostBytes {
		t.Errorf("dev host RAM asleep: L1 %s, L2 %s", GiB(dev.HostLevel1Bytes), GiB(dev.HostLevel2Bytes))
	}
}

func TestEnforceEagerSkipsCompileAndGraphs(t *testing.T) {
	_, s := shippedSwitch(t, 40, func(cfg *config.Config) { cfg.Agent("dev").EnforceEager = true }, nil)
	eager, other := s.Agents[1], s.Agents[0] // dev, architect: the same model
	if d := other.ColdStart.Seconds - eager.ColdStart.Seconds; !secondsNear(d, CompileCost.Seconds()+GraphsCaptureCost(16).Seconds()) {
		t.Errorf("enforce_eager saves %.2f s, want torch.compile and the graphs' capture", d)
	}
	for _, p := range eager.ColdStart.Parts {
		if p.What == "torch.compile" || p.What == "CUDA graph capture" {
			t.Errorf("enforce_eager start has %q", p.What)
		}
	}
}

func TestMeasuredReplacesTheEstimate(t *testing.T) {
	_, s := shippedSwitch(t, 40, nil, map[string]Measured{"po": {ColdStart: 42 * time.Second, WakeLevel1: 700 * time.Millisecond}})
	po := s.Agents[2]
	if !po.ColdStart.Measured || po.ColdStart.Seconds != 42 || po.ColdStart.Estimate == 0 || po.ColdStart.Parts != nil {
		t.Errorf("po cold start: %+v; want the measured 42 s with the estimate beside it", po.ColdStart)
	}
	if !po.WakeLevel1.Measured || po.WakeLevel1.Seconds != 0.7 {
		t.Errorf("po wake L1: %+v", po.WakeLevel1)
	}
	if po.WakeLevel2.Measured {
		t.Errorf("po wake L2 measured without a measurement: %+v", po.WakeLevel2)
	}
	var b bytes.Buffer
	s.WriteSwitchText(&b)
	if !strings.Contains(b.String(), "42.0 s measured") {
		t.Errorf("text lacks the measured cold start:\n%s", b.String())
	}
}

func TestSleepAdviceFollowsHostRAM(t *testing.T) {
	// Two agents that take turns on the 16 GB card (po gone): one sleeps
	// while the other runs.
	drop := func(cfg *config.Config) { cfg.Agents = cfg.Agents[:2] }
	// architect asleep at level 1 holds 9.29 GiB + the engine's 3 GiB =
	// 12.29 GiB; the default budget is (avail - 3 GiB) / 2.
	for _, c := range []struct {
		avail     uint64
		mode      string
		level     int
		fitsLevel int // the configured level-1 sleepers: 1 fits, 0 not
	}{
		{64, config.SwitchSleep, 1, 1},  // budget 30.5 GiB
		{20, config.SwitchSleep, 2, 0},  // budget 8.5 GiB: weights no, engines yes
		{5, config.SwitchRestart, 0, 0}, // budget 1 GiB: not even an engine
	} {
		_, s := shippedSwitch(t, c.avail, func(cfg *config.Config) {
			drop(cfg)
			cfg.Supervisor.SwitchMode = config.SwitchSleep
		}, nil)
		a := s.Advice
		if a.Mode != c.mode || a.Level != c.level || strings.Join(a.Agents, ",") != "architect,dev" {
			t.Errorf("%d GiB available: advice %+v; want %s level %d", c.avail, a, c.mode, c.level)
		}
		if want := c.mode == config.SwitchSleep && c.level == 1; a.AlreadySet != want {
			t.Errorf("%d GiB available: already set %v, want %v", c.avail, a.AlreadySet, want)
		}
		cf := s.Configured
		if cf == nil || cf.Level != 1 || (cf.Fits != (c.fitsLevel == 1)) || strings.Join(cf.Asleep, ",") != "architect" {
			t.Errorf("%d GiB available: configured %+v", c.avail, cf)
		}
		if c.mode == config.SwitchSleep && c.level == 2 && !strings.Contains(a.Text, "not level 1: ") {
			t.Errorf("level-2 advice does not say why not level 1: %s", a.Text)
		}
	}
}

func TestSleepAdviceCountsTheGPUResidual(t *testing.T) {
	// Three agents at 0.92 of a 16 GB card: beside one awake budget
	// (14.71 GiB of 15.74 usable) the GPU keeps one sleeper's CUDA context
	// and graphs (0.78 GiB), not two.
	_, s := shippedSwitch(t, 64, nil, nil)
	f := sleepFitOf(t, s)
	if len(f.Asleep) != 1 || len(f.Stopped) != 1 || !strings.Contains(f.GPURoom, "1 sleeper asleep") {
		t.Errorf("shipped trio: %+v; want one sleeper kept, one stopped for GPU room", f)
	}
	// At 0.85 each, two sleepers' residuals fit beside the awake one.
	_, s = shippedSwitch(t, 64, func(cfg *config.Config) {
		for _, a := range cfg.Agents {
			a.GPUMemoryUtilization = 0.85
		}
	}, nil)
	if f := sleepFitOf(t, s); len(f.Asleep) != 2 || len(f.Stopped) != 0 || f.GPURoom != "" {
		t.Errorf("at 0.85: %+v; want both others asleep", f)
	}
	// At 0.97 no sleeper fits beside the awake budget: keep restarting.
	_, s = shippedSwitch(t, 64, func(cfg *config.Config) {
		for _, a := range cfg.Agents {
			a.GPUMemoryUtilization = 0.97
			a.MaxModelLen = 4096
		}
		cfg.GPU.ReserveMiB = 0
	}, nil)
	// 15.99 GiB - 0.78 GiB of residual = 15.21 GiB: 0.95 of the card.
	if a := s.Advice; a.Mode != config.SwitchRestart || !strings.Contains(a.Text, "gpu_memory_utilization 0.95 or less leaves room for one") {
		t.Errorf("at 0.97: advice %+v; want restart, with the fix", a)
	}
}

// sleepFitOf is the level-1 fit of every agent that takes turns.
func sleepFitOf(t *testing.T, s *Switching) *SleepFit {
	t.Helper()
	if s.Advice.Mode != config.SwitchSleep || s.Advice.Level != 1 {
		t.Fatalf("advice %+v; want sleep level 1 on a 64 GiB host", s.Advice)
	}
	return s.Advice.Level1
}

func TestNoAdviceWhereNothingTakesTurns(t *testing.T) {
	_, s := shippedSwitch(t, 64, func(cfg *config.Config) { cfg.Agents = cfg.Agents[2:] }, nil)
	if s.Advice.Mode != "" || len(s.Advice.Agents) != 0 || !strings.Contains(s.Advice.Text, "no agent takes turns") {
		t.Errorf("po alone: advice %+v", s.Advice)
	}
}

func TestHostRAMBudgetSettingIsTheBudget(t *testing.T) {
	_, s := shippedSwitch(t, 64, func(cfg *config.Config) { cfg.Supervisor.HostRAMBudgetMiB = 128 << 10 }, nil)
	if s.Host.BudgetBytes != 128*gib || s.Host.BudgetFrom != "supervisor.host_ram_budget_mib" {
		t.Errorf("host: %+v", s.Host)
	}
	_, s = shippedSwitch(t, 64, nil, map[string]Measured{"po": {HostBytes: 8 * gib}})
	if want := (64*gib + 8*gib - EngineHostBytes) / 2; s.Host.BudgetBytes != want || s.Host.HeldBytes != 8*gib {
		t.Errorf("host with po asleep: budget %s, want %s", GiB(s.Host.BudgetBytes), GiB(want))
	}
}

func TestSleepersAtTheirOwnLevels(t *testing.T) {
	// At 0.85 two sleepers fit beside the awake agent. po sleeps at level
	// 2, so the worst case keeps po awake and the two 14B agents asleep at
	// level 1: 2 × 12.29 GiB.
	edit := func(cfg *config.Config) {
		for _, a := range cfg.Agents {
			a.GPUMemoryUtilization = 0.85
			a.SwitchMode, a.SleepLevel = config.SwitchSleep, 1
		}
		cfg.Agent("po").SleepLevel = 2
	}
	for _, c := range []struct {
		avail uint64
		fits  bool
	}{{64, true}, {48, false}} {
		_, s := shippedSwitch(t, c.avail, edit, nil)
		f := s.Configured
		if f == nil || f.Level != 0 || strings.Join(f.Asleep, ",") != "architect,dev" || f.Fits != c.fits ||
			f.NeedBytes != s.Agents[0].HostLevel1Bytes+s.Agents[1].HostLevel1Bytes || !strings.Contains(f.Why, "at their levels") {
			t.Errorf("%d GiB available: %+v", c.avail, f)
		}
	}
}

func TestMeasuredWithoutAnEstimate(t *testing.T) {
	// A model plan knows nothing of: no estimate, but vagentd's figures.
	_, s := shippedSwitch(t, 64, func(cfg *config.Config) { cfg.Agent("po").Model = "example/unknown-model" },
		map[string]Measured{"po": {ColdStart: 12 * time.Second}})
	po := s.Agents[2]
	if po.Known || po.ColdStart == nil || !po.ColdStart.Measured || po.ColdStart.Seconds != 12 || po.WakeLevel1 != nil {
		t.Errorf("po: %+v", po)
	}
	var b bytes.Buffer
	s.WriteSwitchText(&b)
	if !strings.Contains(b.String(), "po         restart  12.0 s measured  ?") {
		t.Errorf("text:\n%s", b.String())
	}
}
