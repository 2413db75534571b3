package supervisor

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/config"
)

// newSleepSup is a supervisor of h that knows each agent's weights as h
// moves them to host RAM, on a host with plenty of memory available.
func newSleepSup(cfg *config.Config, h *fakeHost, o Options) *Supervisor {
	o.Systemd, o.GPU, o.EngineKey = h, h, "test-engine-key"
	o.HostWeights = func(_ context.Context, a *config.Agent) uint64 { return h.weights(a) }
	if o.MemAvailable == nil {
		o.MemAvailable = func() (uint64, error) { return 1 << 40, nil }
	}
	return New(cfg, o)
}

func sleepAgent(name string, util float64, prio int) *config.Agent {
	a := agent(name, util, prio)
	a.SwitchMode = config.SwitchSleep
	a.SleepLevel = 1
	return a
}

// calls are the fake host's log entries that start with one of prefixes.
func (h *fakeHost) calls(prefixes ...string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, l := range h.log {
		for _, p := range prefixes {
			if strings.HasPrefix(l, p) {
				out = append(out, l)
				break
			}
		}
	}
	return out
}

func (h *fakeHost) pid(unit string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.states[unit].MainPID
}

func TestSwitchPutsSleepAgentToSleepAndWakesIt(t *testing.T) {
	cfg := testConfig(t, sleepAgent("po", 0.92, 10), sleepAgent("dev", 0.92, 30))
	h := newFakeHost(t, cfg, 16*gib)
	s := newSleepSup(cfg, h, Options{})
	ctx := context.Background()

	if _, err := s.Switch(ctx, "po"); err != nil {
		t.Fatal(err)
	}
	res, err := s.Switch(ctx, "dev")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Evicted) != 0 || len(res.Slept) != 1 || res.Slept[0].Agent != "po" || res.Slept[0].Level != 1 {
		t.Fatalf("switch to dev: evicted %v, slept %+v; want po asleep at level 1", res.Evicted, res.Slept)
	}
	poPID, devPID := h.pid("vagent@po.service"), h.pid("vagent@dev.service")

	for i, target := range []string{"po", "dev", "po", "dev"} {
		res, err := s.Switch(ctx, target)
		if err != nil {
			t.Fatalf("switch %d to %s: %v", i, target, err)
		}
		if !res.Woken || res.WakeDuration <= 0 || len(res.Slept) != 1 || len(res.Evicted) != 0 {
			t.Errorf("switch %d to %s: %+v; want a wake after one sleep", i, target, res)
		}
	}
	if h.pid("vagent@po.service") != poPID || h.pid("vagent@dev.service") != devPID {
		t.Error("a unit was restarted: switches between sleep agents must sleep and wake")
	}
	if got := h.calls("start ", "stop "); !slices.Equal(got, []string{"start vagent@po.service", "start vagent@dev.service"}) {
		t.Errorf("systemd calls %v; want the two first starts only", got)
	}
	// Level 1: no reload, and a warm-up after every wake.
	if n := len(h.calls("reload ")); n != 0 {
		t.Errorf("%d weight reloads after level-1 sleeps", n)
	}
	if w, n := len(h.calls("wake ")), len(h.calls("warm-up ")); w != 4 || n != 4 {
		t.Errorf("%d wakes, %d warm-ups; want 4 each", w, n)
	}
	if h.peak > h.total {
		t.Errorf("peak use %d above total %d", h.peak, h.total)
	}
	again, err := s.Switch(ctx, "dev")
	if err != nil || !again.AlreadyRunning {
		t.Errorf("switch to the awake agent: %+v, %v; want already running", again, err)
	}

	st, err := s.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range st {
		want := a.Agent == "po"
		if a.Sleeping != want || a.SwitchMode != config.SwitchSleep {
			t.Errorf("status of %s: sleeping %v, mode %q", a.Agent, a.Sleeping, a.SwitchMode)
		}
		if want && (a.SleepLevel != 1 || a.HostBytes == 0 || !a.Healthy) {
			t.Errorf("status of sleeping po: %+v", a)
		}
	}
}

func TestHostRAMBudgetStopsLeastRecentlyUsedSleeper(t *testing.T) {
	// Three sleep agents that cannot share the card; the host RAM budget
	// holds two sleepers' weights (half a budget each), not three.
	cfg := testConfig(t, sleepAgent("a", 0.85, 10), sleepAgent("b", 0.85, 10), sleepAgent("c", 0.85, 10))
	h := newFakeHost(t, cfg, 16*gib)
	perSleeper := h.weights(cfg.Agents[0])
	cfg.Supervisor.HostRAMBudgetMiB = (2*perSleeper + perSleeper/2) >> 20
	used := map[string]time.Time{}
	s := newSleepSup(cfg, h, Options{LastUsed: func(n string) time.Time { return used[n] }})
	ctx := context.Background()
	t0 := time.Now()
	for i, n := range []string{"a", "b", "c"} {
		if _, err := s.Switch(ctx, n); err != nil {
			t.Fatal(err)
		}
		used[n] = t0.Add(time.Duration(i) * time.Second)
	}
	// a and b sleep (two sleepers: within the budget); waking a needs c
	// asleep first, which would make three: b, the least recently used
	// sleeper other than a, is stopped for real.
	res, err := s.Switch(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if !res.Woken || !slices.Equal(res.Evicted, []string{"b"}) || len(res.Slept) != 1 || res.Slept[0].Agent != "c" || res.Slept[0].Level != 1 {
		t.Fatalf("switch to a: %+v; want c asleep, b stopped, a woken", res)
	}
	if limit := cfg.Supervisor.HostRAMBudgetMiB << 20; h.hostPeak > limit {
		t.Errorf("sleepers held %d bytes of host RAM, above the budget %d", h.hostPeak, limit)
	}
	if h.states["vagent@b.service"].Running() {
		t.Error("b still runs")
	}
}

func TestSleepFallsBackToLevel2WhenWeightsExceedHostBudget(t *testing.T) {
	cfg := testConfig(t, sleepAgent("po", 0.92, 10), sleepAgent("dev", 0.92, 30))
	cfg.Supervisor.HostRAMBudgetMiB = 1024 // less than either's weights
	h := newFakeHost(t, cfg, 16*gib)
	s := newSleepSup(cfg, h, Options{})
	ctx := context.Background()
	for _, n := range []string{"po", "dev"} {
		if _, err := s.Switch(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	res, err := s.Switch(ctx, "po")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Slept) != 1 || res.Slept[0].Level != 2 || !res.Woken {
		t.Fatalf("switch to po: %+v; want dev asleep at level 2 and po woken", res)
	}
	// po slept at level 2 too: its wake reloaded the weights and reset the
	// prefix cache before the warm-up.
	want := []string{"wake vagent@po.service", "reload vagent@po.service", "reset-prefix-cache vagent@po.service", "warm-up vagent@po.service"}
	if got := h.calls("wake ", "reload ", "reset-prefix-cache ", "warm-up "); !slices.Equal(got, want) {
		t.Errorf("wake sequence %v, want %v", got, want)
	}
	if h.hostPeak != 0 {
		t.Errorf("level-2 sleepers held %d bytes of host RAM", h.hostPeak)
	}
}

func TestDefaultHostBudgetIsHalfOfMemAvailable(t *testing.T) {
	cfg := testConfig(t, sleepAgent("po", 0.92, 10), sleepAgent("dev", 0.92, 30))
	h := newFakeHost(t, cfg, 16*gib)
	weights := h.weights(cfg.Agents[0])
	avail := 2*weights - 1 // half of it is below one sleeper's weights
	s := newSleepSup(cfg, h, Options{MemAvailable: func() (uint64, error) { return avail, nil }})
	ctx := context.Background()
	for _, n := range []string{"po", "dev"} {
		if _, err := s.Switch(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	if got := h.calls("sleep "); !slices.Equal(got, []string{"sleep vagent@po.service 2"}) {
		t.Errorf("sleeps %v; want level 2 with half of MemAvailable too small", got)
	}
	avail = 2*weights + 1
	if _, err := s.Switch(ctx, "po"); err != nil {
		t.Fatal(err)
	}
	if got := h.calls("sleep "); len(got) != 2 || got[1] != "sleep vagent@dev.service 1" {
		t.Errorf("sleeps %v; want dev at level 1 once half of MemAvailable holds its weights", got)
	}
}

func TestFailedWakeRestartsTheAgentCold(t *testing.T) {
	cfg := testConfig(t, sleepAgent("po", 0.92, 10), sleepAgent("dev", 0.92, 30))
	h := newFakeHost(t, cfg, 16*gib)
	s := newSleepSup(cfg, h, Options{})
	ctx := context.Background()
	for _, n := range []string{"po", "dev"} {
		if _, err := s.Switch(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	before := h.pid("vagent@po.service")
	h.mu.Lock()
	h.failWake["vagent@po.service"] = true
	h.mu.Unlock()
	res, err := s.Switch(ctx, "po")
	if err != nil {
		t.Fatal(err)
	}
	if res.Woken || !strings.Contains(res.WakeError, "/wake_up: 500") {
		t.Errorf("result %+v; want a cold start after the failed wake", res)
	}
	if after := h.pid("vagent@po.service"); after == before || after == 0 {
		t.Errorf("po's PID %d -> %d: want a new engine", before, after)
	}
	if got := h.calls("stop vagent@po", "start vagent@po"); !slices.Equal(got, []string{"start vagent@po.service", "stop vagent@po.service", "start vagent@po.service"}) {
		t.Errorf("po's systemd calls %v", got)
	}
}

func TestSleeperStoppedWhenItsResidualIsInTheWay(t *testing.T) {
	big := agent("big", 0.97, 20) // a restart agent that needs nearly all the card
	cfg := testConfig(t, sleepAgent("po", 0.92, 10), sleepAgent("dev", 0.92, 30), big)
	h := newFakeHost(t, cfg, 16*gib)
	s := newSleepSup(cfg, h, Options{})
	ctx := context.Background()
	for _, n := range []string{"po", "dev"} {
		if _, err := s.Switch(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	res, err := s.Switch(ctx, "big")
	if err != nil {
		t.Fatal(err)
	}
	// dev is put to sleep; then both residuals are in the way: po (lower
	// priority) goes first, then dev.
	if len(res.Slept) != 1 || res.Slept[0].Agent != "dev" || !slices.Equal(res.Evicted, []string{"po", "dev"}) {
		t.Errorf("switch to big: %+v; want dev asleep, then po and dev stopped", res)
	}
	if h.peak > h.total {
		t.Errorf("peak %d above total %d", h.peak, h.total)
	}
}

func TestStartDoesNotStopSleepers(t *testing.T) {
	big := agent("big", 0.97, 20)
	cfg := testConfig(t, sleepAgent("po", 0.92, 10), sleepAgent("dev", 0.92, 30), big)
	h := newFakeHost(t, cfg, 16*gib)
	s := newSleepSup(cfg, h, Options{})
	ctx := context.Background()
	for _, n := range []string{"po", "dev"} {
		if _, err := s.Switch(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Stop(ctx, "dev"); err != nil {
		t.Fatal(err)
	}
	_, err := s.Start(ctx, "big")
	var fe *FitError
	if !errors.As(err, &fe) {
		t.Fatalf("start beside a sleeper whose residual is in the way: %v; want a FitError", err)
	}
	if !h.states["vagent@po.service"].Running() {
		t.Error("a plain start stopped the sleeper")
	}
}

func TestParseMemAvailable(t *testing.T) {
	got, err := parseMemAvailable(strings.NewReader("MemTotal:       65536000 kB\nMemFree:         1000 kB\nMemAvailable:   32768000 kB\n"))
	if err != nil || got != 32768000<<10 {
		t.Errorf("got %d, %v", got, err)
	}
	if _, err := parseMemAvailable(strings.NewReader("MemTotal: 1 kB\n")); err == nil {
		t.Error("no MemAvailable line: no error")
	}
}

// TestSleepSwitchDrainsBeforeTheSleep: the gateway's drain hook runs for an
// agent a switch puts to sleep, and before its engine is told to sleep (a
// 0.18 engine would abort what still runs; a 0.12 one would run it on freed
// memory).
func TestSleepSwitchDrainsBeforeTheSleep(t *testing.T) {
	cfg := testConfig(t, sleepAgent("po", 0.92, 10), sleepAgent("dev", 0.92, 30))
	h := newFakeHost(t, cfg, 16*gib)
	s := newSleepSup(cfg, h, Options{BeforeEvict: func(_ context.Context, agent string) error {
		h.mu.Lock()
		h.log = append(h.log, "drain "+agent)
		h.mu.Unlock()
		return nil
	}})
	ctx := context.Background()
	for _, n := range []string{"po", "dev", "po"} {
		if _, err := s.Switch(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"drain po", "sleep vagent@po.service 1", "drain dev", "sleep vagent@dev.service 1"}
	if got := h.calls("drain ", "sleep "); !slices.Equal(got, want) {
		t.Errorf("calls %v; want %v", got, want)
	}
}

// TestPlanCountsTheSleepResidual: putting an agent to sleep frees all but
// its residual (CUDA context and graphs). The plan counts that residual,
// estimated before the first sleep, so it puts a second agent to sleep
// rather than finding out after the sleep that the first one's residual is
// in the way and stopping it.
func TestPlanCountsTheSleepResidual(t *testing.T) {
	// 16 GiB, 256 MiB reserved: a and b (7.2 GB each) run together; c
	// (8.4 GB) fits beside either awake one alone, but not beside b and a's
	// residual.
	cfg := testConfig(t, sleepAgent("a", 0.45, 10), sleepAgent("b", 0.45, 20), sleepAgent("c", 0.525, 30))
	h := newFakeHost(t, cfg, 16*gib)
	s := newSleepSup(cfg, h, Options{SleepResidual: h.residual})
	ctx := context.Background()
	for _, n := range []string{"a", "b"} {
		if _, err := s.Switch(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	res, err := s.Switch(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Evicted) != 0 || len(res.Slept) != 2 || res.Slept[0].Agent != "a" || res.Slept[1].Agent != "b" {
		t.Fatalf("switch to c: slept %+v, evicted %v; want a and b asleep, nothing stopped", res.Slept, res.Evicted)
	}
	for _, sl := range res.Slept {
		if want := h.residual(cfg.Agent(sl.Agent)); sl.ResidualBytes != want {
			t.Errorf("%s's residual %d, want %d as the GPU shows it", sl.Agent, sl.ResidualBytes, want)
		}
	}
	if h.peak > h.total {
		t.Errorf("peak %d above total %d", h.peak, h.total)
	}
}

// TestPlanUsesTheMeasuredResidual: once a sleep was measured, the plan
// counts what the GPU showed, not the estimate.
func TestPlanUsesTheMeasuredResidual(t *testing.T) {
	// d cannot run beside a or b; c (7.84 GB) fits beside b once a sleeps
	// only if a's residual is left out.
	cfg := testConfig(t, sleepAgent("a", 0.45, 10), sleepAgent("b", 0.45, 20), sleepAgent("c", 0.49, 30), sleepAgent("d", 0.6, 40))
	h := newFakeHost(t, cfg, 16*gib)
	// An estimate that says a sleep frees everything.
	s := newSleepSup(cfg, h, Options{SleepResidual: func(*config.Agent) uint64 { return 0 }})
	ctx := context.Background()
	// a sleeps once for d (measured) and wakes again; b runs beside it.
	for _, n := range []string{"a", "d", "a", "b"} {
		if _, err := s.Switch(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	res, err := s.Switch(ctx, "c")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Evicted) != 0 || len(res.Slept) != 2 || res.Slept[0].Agent != "a" || res.Slept[1].Agent != "b" {
		t.Fatalf("switch to c: slept %+v, evicted %v; want a and b asleep, nothing stopped: a's measured residual is counted", res.Slept, res.Evicted)
	}
	if h.peak > h.total {
		t.Errorf("peak %d above total %d", h.peak, h.total)
	}
}
