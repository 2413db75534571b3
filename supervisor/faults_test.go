package supervisor

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/journal"
)

// A switch whose new agent fails to start brings back what it evicted
// (DESIGN.md invariant 11), and says both.
func TestFailedStartRestoresEvictedAgents(t *testing.T) {
	cfg := testConfig(t, agent("po", 0.92, 10), agent("dev", 0.92, 30))
	h := newFakeHost(t, cfg, 16*gib)
	h.failing["vagent@dev.service"] = true
	cause := "torch.OutOfMemoryError: CUDA out of memory."
	s := newSup(cfg, h, cause)
	ctx := context.Background()
	if _, err := s.Switch(ctx, "po"); err != nil {
		t.Fatal(err)
	}
	res, err := s.Switch(ctx, "dev")
	var se *StartError
	var re *RestoreError
	if !errors.As(err, &se) || !errors.As(err, &re) {
		t.Fatalf("got %v, want a StartError restored from", err)
	}
	want := "agent dev failed to start: " + cause + "; restored what was evicted for it: po"
	if err.Error() != want {
		t.Errorf("error\n got %q\nwant %q", err, want)
	}
	if strings.Join(res.Evicted, ",") != "po" || strings.Join(res.Restored, ",") != "po" {
		t.Errorf("evicted %v restored %v, want po both", res.Evicted, res.Restored)
	}
	if !h.states["vagent@po.service"].Running() {
		t.Error("po left stopped: the GPU is empty")
	}
}

// Restoring goes by priority and stops at what fits: two agents evicted for
// a third that fails come back highest priority first.
func TestRestoreGoesByPriority(t *testing.T) {
	cfg := testConfig(t, agent("a", 0.45, 10), agent("b", 0.45, 20), agent("big", 0.92, 30))
	h := newFakeHost(t, cfg, 16*gib)
	h.failing["vagent@big.service"] = true
	s := newSup(cfg, h, "boom")
	ctx := context.Background()
	for _, n := range []string{"a", "b"} {
		if _, err := s.Switch(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	res, err := s.Switch(ctx, "big")
	if err == nil {
		t.Fatal("switch to a failing agent succeeded")
	}
	if strings.Join(res.Restored, ",") != "b,a" {
		t.Errorf("restored %v, want [b a]", res.Restored)
	}
	var starts []string
	for _, l := range h.log {
		if strings.HasPrefix(l, "start ") {
			starts = append(starts, l)
		}
	}
	if got := strings.Join(starts[len(starts)-2:], ","); got != "start vagent@b.service,start vagent@a.service" {
		t.Errorf("restarts %s, want b then a", got)
	}
}

// An agent the plan says can never start is refused before anything is
// evicted for it, naming why.
func TestSwitchRefusesNeverFitBeforeEvicting(t *testing.T) {
	cfg := testConfig(t, agent("po", 0.92, 10), agent("dev", 0.92, 30))
	h := newFakeHost(t, cfg, 16*gib)
	why := "does not fit: its weights alone (18.00 GiB) exceed the whole 15.99 GiB card"
	s := New(cfg, Options{Systemd: h, GPU: h, NeverFits: func(_ context.Context, a *config.Agent, totals map[int]uint64) string {
		if a.Name == "dev" && totals[0] == 16*gib {
			return why
		}
		return ""
	}})
	ctx := context.Background()
	if _, err := s.Switch(ctx, "po"); err != nil {
		t.Fatal(err)
	}
	_, err := s.Switch(ctx, "dev")
	var ne *NeverFitError
	if !errors.As(err, &ne) || !strings.Contains(err.Error(), why) || !strings.Contains(err.Error(), "nothing was stopped") {
		t.Fatalf("got %v, want a NeverFitError naming why", err)
	}
	if got := strings.Join(h.log, ","); got != "start vagent@po.service" {
		t.Errorf("systemd calls %s: nothing may be stopped for an agent that can never fit", got)
	}
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// Failed starts back off exponentially up to the bound; a success or a
// restart clears it.
func TestStartBackoff(t *testing.T) {
	cfg := testConfig(t, agent("dev", 0.5, 30))
	cfg.Supervisor.StartBackoff.Duration = 2 * time.Second
	cfg.Supervisor.StartBackoffMax.Duration = 5 * time.Second
	h := newFakeHost(t, cfg, 16*gib)
	h.failing["vagent@dev.service"] = true
	c := &clock{t: time.Unix(1e9, 0)}
	s := New(cfg, Options{Systemd: h, GPU: h, Now: c.now,
		RootCause: func(context.Context, string, time.Time, journal.Exit) string { return "ValueError: boom" }})
	ctx := context.Background()
	starts := func() int {
		n := 0
		for _, l := range h.log {
			if l == "start vagent@dev.service" {
				n++
			}
		}
		return n
	}
	for i, wait := range []time.Duration{2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second} {
		if _, err := s.Switch(ctx, "dev"); !errors.As(err, new(*StartError)) {
			t.Fatalf("try %d: %v, want a StartError", i, err)
		}
		_, err := s.Switch(ctx, "dev")
		var be *BackoffError
		if !errors.As(err, &be) || be.RetryAfter != wait || be.Failures != i+1 || !strings.Contains(err.Error(), "ValueError: boom") {
			t.Fatalf("after failure %d: %v (retry after %v), want a backoff of %s naming the cause", i+1, err, be, wait)
		}
		if starts() != i+1 {
			t.Fatalf("%d starts after %d failures: a start in backoff reached systemd", starts(), i+1)
		}
		if b, ok := s.Backoff("dev"); !ok || b.Failures != i+1 {
			t.Errorf("Backoff() = %+v, %v", b, ok)
		}
		if st, err := s.Status(ctx); err != nil || st[0].Backoff == nil || st[0].Backoff.Cause != be.Cause {
			t.Errorf("status during backoff: %+v, %v; want its backoff", st, err)
		}
		c.add(wait)
	}
	_, _ = s.Switch(ctx, "dev") // fails again: back off
	delete(h.failing, "vagent@dev.service")
	if _, err := s.Restart(ctx, "dev"); err != nil {
		t.Fatalf("restart during backoff: %v, want it to try at once", err)
	}
	if _, ok := s.Backoff("dev"); ok {
		t.Error("backoff left after a successful start")
	}
	for _, l := range h.log {
		if strings.HasPrefix(l, "reset-failed") {
			t.Errorf("systemd's start limit was reset: %v", h.log)
		}
	}
}

// limitHost is a systemd whose start limit is spent for some units: it
// refuses their starts as systemd does.
type limitHost struct {
	*fakeHost
	hit map[string]bool
}

func (h *limitHost) Start(ctx context.Context, unit string) error {
	if !h.hit[unit] {
		return h.fakeHost.Start(ctx, unit)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.log = append(h.log, "start "+unit)
	h.states[unit] = UnitState{LoadState: "loaded", ActiveState: "failed", SubState: "failed", Result: "start-limit-hit"}
	return &JobError{Op: "start", Unit: unit, Result: "failed"}
}

// A failed unit is started as it is, never reset behind the operator's
// back; systemd's refusal is named with its cause.
func TestStartLimitIsNamedNotReset(t *testing.T) {
	cfg := testConfig(t, agent("dev", 0.5, 30))
	fh := newFakeHost(t, cfg, 16*gib)
	fh.states["vagent@dev.service"] = UnitState{LoadState: "loaded", ActiveState: "failed", SubState: "failed", Result: "exit-code"}
	h := &limitHost{fakeHost: fh, hit: map[string]bool{"vagent@dev.service": true}}
	s := New(cfg, Options{Systemd: h, GPU: fh,
		RootCause: func(context.Context, string, time.Time, journal.Exit) string {
			return "RuntimeError: Engine core initialization failed."
		}})
	_, err := s.Switch(context.Background(), "dev")
	var se *StartError
	if !errors.As(err, &se) {
		t.Fatalf("got %v, want a StartError", err)
	}
	for _, want := range []string{"Start request repeated too quickly", "systemctl reset-failed vagent@dev.service", "RuntimeError: Engine core initialization failed."} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	for _, l := range fh.log {
		if strings.HasPrefix(l, "reset-failed") {
			t.Errorf("the start limit was reset: %v", fh.log)
		}
	}
}
