package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/engine"
	"github.com/vagent-dev/vagent/journal"
)

const gib = uint64(1) << 30

// fakeHost is a systemd and a GPU in one: starting a unit brings up its
// engine's /health and takes its budget from the GPU; stopping gives it back.
type fakeHost struct {
	mu      sync.Mutex
	t       *testing.T
	cfg     *config.Config
	total   uint64
	foreign uint64 // memory held by processes vagent does not manage
	states  map[string]UnitState
	servers map[string]*http.Server
	// failing units exit at once after their start job.
	failing map[string]bool
	log     []string
	// peak is the most memory ever in use.
	peak uint64
	// asleep holds the sleep level of each sleeping engine, by unit.
	asleep map[string]int
	// failWake makes a unit's /wake_up answer 500.
	failWake map[string]bool
	// pids counts starts, so that a restart shows as a new MainPID.
	pids int
	// upFor makes a unit's /health answer 200 only this many more times,
	// then 503: an engine that dies between two looks.
	upFor map[string]int
	// hostPeak is the most host memory sleepers ever held.
	hostPeak uint64
	// cards, when set, leaves the GPU checks to a view of several GPUs
	// (twoCards): this host's own accounting knows one.
	cards bool
}

// residual is what a sleeping engine keeps on the GPU: 5% of its budget.
func (h *fakeHost) residual(a *config.Agent) uint64 { return a.Budget(h.total, 0) / 20 }

// weights is what a level-1 sleep moves to host RAM: half its budget.
func (h *fakeHost) weights(a *config.Agent) uint64 { return a.Budget(h.total, 0) / 2 }

func (h *fakeHost) held(unit string) uint64 {
	a := h.agentOf(unit)
	if _, ok := h.asleep[unit]; ok {
		return h.residual(a)
	}
	return a.Budget(h.total, 0)
}

func (h *fakeHost) hostHeld() uint64 {
	var n uint64
	for unit, lvl := range h.asleep {
		if lvl == 1 {
			n += h.weights(h.agentOf(unit))
		}
	}
	return n
}

func newFakeHost(t *testing.T, cfg *config.Config, total uint64) *fakeHost {
	h := &fakeHost{t: t, cfg: cfg, total: total, states: map[string]UnitState{},
		servers: map[string]*http.Server{}, failing: map[string]bool{},
		asleep: map[string]int{}, failWake: map[string]bool{}}
	for _, a := range cfg.Agents {
		h.states[a.Unit()] = UnitState{LoadState: "loaded", ActiveState: "inactive", SubState: "dead"}
	}
	t.Cleanup(func() {
		for _, s := range h.servers {
			s.Close()
		}
	})
	return h
}

func (h *fakeHost) agentOf(unit string) *config.Agent {
	for _, a := range h.cfg.Agents {
		if a.Unit() == unit {
			return a
		}
	}
	h.t.Fatalf("unknown unit %s", unit)
	return nil
}

// holds reports whether a unit's engine holds its memory: while it runs,
// and while it is being stopped.
func holds(st UnitState) bool { return st.Running() || st.ActiveState == "deactivating" }

func (h *fakeHost) used() uint64 {
	n := h.foreign
	for unit, st := range h.states {
		if holds(st) {
			n += h.held(unit)
		}
	}
	return n
}

func (h *fakeHost) Start(ctx context.Context, unit string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.log = append(h.log, "start "+unit)
	a := h.agentOf(unit)
	// Conflicts= as systemd applies it: the other side is stopped.
	for _, o := range h.cfg.Agents {
		if !h.cards && h.cfg.MayConflict(a, o) && config.CannotShare(a, o, h.total, h.cfg.GPU.ReserveMiB<<20) && h.states[o.Unit()].Running() {
			h.t.Errorf("started %s while conflicting %s runs", a.Name, o.Name)
		}
	}
	if h.failing[unit] {
		h.states[unit] = UnitState{LoadState: "loaded", ActiveState: "failed", SubState: "failed", Result: "exit-code",
			ExecMainCode: journal.ExitedCode, ExecMainStatus: 1}
		return nil
	}
	h.pids++
	h.states[unit] = UnitState{LoadState: "loaded", ActiveState: "active", SubState: "running", MainPID: 100 + h.pids,
		Since: time.Now(), InvocationID: fmt.Sprintf("inv%d", h.pids)}
	if u := h.used(); u > h.peak {
		h.peak = u
	}
	if !h.cards && h.used() > h.total {
		h.t.Errorf("over-commit: %d > %d after starting %s", h.used(), h.total, a.Name)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(a.Port))
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.engine(unit, w, r) })}
	go srv.Serve(ln)
	h.servers[unit] = srv
	return nil
}

func (h *fakeHost) Stop(ctx context.Context, unit string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.log = append(h.log, "stop "+unit)
	if s := h.servers[unit]; s != nil {
		s.Close()
		delete(h.servers, unit)
	}
	st := h.states[unit]
	st.ActiveState, st.SubState, st.MainPID = "inactive", "dead", 0
	h.states[unit] = st
	delete(h.asleep, unit)
	return nil
}

// engine answers the sleep-mode routes as vLLM does in dev mode; /health
// and the rest answer 200.
func (h *fakeHost) engine(unit string, w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	defer h.mu.Unlock()
	a := h.agentOf(unit)
	switch r.URL.Path {
	case "/health":
		if n, ok := h.upFor[unit]; ok {
			if n == 0 {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			h.upFor[unit] = n - 1
		}
	case "/is_sleeping":
		_, asleep := h.asleep[unit]
		fmt.Fprintf(w, `{"is_sleeping":%t}`, asleep)
		return
	case "/sleep":
		lvl, _ := strconv.Atoi(r.URL.Query().Get("level"))
		h.log = append(h.log, fmt.Sprintf("sleep %s %d", unit, lvl))
		h.asleep[unit] = lvl
		if u := h.hostHeld(); u > h.hostPeak {
			h.hostPeak = u
		}
	case "/wake_up":
		h.log = append(h.log, "wake "+unit)
		if h.failWake[unit] {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		if h.used()-h.residual(a)+a.Budget(h.total, 0) > h.total {
			h.t.Errorf("woke %s without room: %d in use", a.Name, h.used())
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		delete(h.asleep, unit)
		if u := h.used(); u > h.peak {
			h.peak = u
		}
	case "/collective_rpc":
		h.log = append(h.log, "reload "+unit)
	case "/reset_prefix_cache":
		h.log = append(h.log, "reset-prefix-cache "+unit)
	case "/v1/completions":
		h.log = append(h.log, "warm-up "+unit)
		if r.Header.Get("Authorization") != "Bearer test-engine-key" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if _, asleep := h.asleep[unit]; asleep {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
	}
}

func (h *fakeHost) Reload(context.Context) error { return nil }
func (h *fakeHost) ResetFailed(_ context.Context, unit string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.log = append(h.log, "reset-failed "+unit)
	return nil
}
func (h *fakeHost) State(_ context.Context, unit string) (UnitState, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.states[unit], nil
}
func (h *fakeHost) Close() {}

func (h *fakeHost) Memory(context.Context) (map[int]GPUMemory, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return map[int]GPUMemory{0: {Total: h.total, Free: h.total - h.used()}}, nil
}

func (h *fakeHost) AgentBytes(context.Context) (map[string]uint64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]uint64{}
	for unit, st := range h.states {
		if holds(st) {
			out[h.agentOf(unit).Name] = h.held(unit)
		}
	}
	return out, nil
}

func (h *fakeHost) AgentHostBytes(context.Context) (map[string]uint64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string]uint64{}
	for unit, lvl := range h.asleep {
		if lvl == 1 {
			a := h.agentOf(unit)
			out[a.Name] = h.weights(a)
		}
	}
	return out, nil
}

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func testConfig(t *testing.T, agents ...*config.Agent) *config.Config {
	c := config.Defaults()
	c.Paths.RunDir = t.TempDir()
	c.Supervisor.HealthInterval.Duration = 5 * time.Millisecond
	c.Supervisor.HealthTimeout.Duration = 5 * time.Second
	c.Supervisor.ReleaseTimeout.Duration = 5 * time.Second
	for _, a := range agents {
		a.Port = freePort(t)
		if a.GPUs == nil {
			a.GPUs = []int{0}
		}
	}
	c.Agents = agents
	return &c
}

func agent(name string, util float64, prio int) *config.Agent {
	return &config.Agent{Name: name, GPUMemoryUtilization: util, Priority: prio}
}

func newSup(cfg *config.Config, h *fakeHost, cause string) *Supervisor {
	return New(cfg, Options{Systemd: h, GPU: h, EngineKey: "test-engine-key",
		RootCause: func(context.Context, string, time.Time, journal.Exit) string { return cause }})
}

func TestSwitchEvictsConflictingAgentBeforeStarting(t *testing.T) {
	cfg := testConfig(t, agent("po", 0.92, 10), agent("dev", 0.92, 30))
	h := newFakeHost(t, cfg, 16*gib)
	s := newSup(cfg, h, "")
	ctx := context.Background()

	if _, err := s.Switch(ctx, "po"); err != nil {
		t.Fatal(err)
	}
	res, err := s.Switch(ctx, "dev")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(res.Evicted, ",") != "po" {
		t.Errorf("evicted %v, want [po]", res.Evicted)
	}
	want := "start vagent@po.service,stop vagent@po.service,start vagent@dev.service"
	if got := strings.Join(h.log, ","); got != want {
		t.Errorf("systemd calls:\n got %s\nwant %s", got, want)
	}
	if h.peak > h.total {
		t.Errorf("peak use %d above total %d", h.peak, h.total)
	}
	again, err := s.Switch(ctx, "dev")
	if err != nil || !again.AlreadyRunning {
		t.Errorf("second switch to a healthy agent: %+v, %v; want already running", again, err)
	}
}

// loadBehindTheBack makes unit run as systemd's own restart (or a start
// by hand) leaves it: active, its engine still loading; after load its
// engine answers, or with fail the unit fails instead.
func (h *fakeHost) loadBehindTheBack(unit string, load time.Duration, fail bool) {
	h.mu.Lock()
	h.pids++
	h.states[unit] = UnitState{LoadState: "loaded", ActiveState: "active", SubState: "running", MainPID: 100 + h.pids, Since: time.Now()}
	h.mu.Unlock()
	time.AfterFunc(load, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if fail {
			h.states[unit] = UnitState{LoadState: "loaded", ActiveState: "failed", SubState: "failed", Result: "signal"}
			return
		}
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(h.agentOf(unit).Port))
		if err != nil {
			h.t.Error(err)
			return
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.engine(unit, w, r) })}
		go srv.Serve(ln)
		h.servers[unit] = srv
	})
}

// TestSwitchWaitsForAnAgentInTheWayThatIsLoading: an agent in the way whose
// engine systemd restarted after a crash (or a vagentd killed mid-switch
// started) and that is still loading is waited for, then evicted, or
// passed over once its start failed; the switch is not refused ("which is
// starting"), which failed every request a restarted vagentd had queued.
func TestSwitchWaitsForAnAgentInTheWayThatIsLoading(t *testing.T) {
	for _, fail := range []bool{false, true} {
		t.Run(fmt.Sprintf("its start fails: %t", fail), func(t *testing.T) {
			cfg := testConfig(t, agent("po", 0.92, 10), agent("dev", 0.92, 30))
			h := newFakeHost(t, cfg, 16*gib)
			s := newSup(cfg, h, "")
			h.loadBehindTheBack("vagent@po.service", 200*time.Millisecond, fail)
			res, err := s.Switch(context.Background(), "dev")
			if err != nil {
				t.Fatalf("switch to dev while po loads: %v", err)
			}
			if !h.states["vagent@dev.service"].Running() || h.states["vagent@po.service"].Running() {
				t.Errorf("after the switch: %+v", h.states)
			}
			want := "po"
			if fail {
				want = ""
			}
			if got := strings.Join(res.Evicted, ","); got != want {
				t.Errorf("evicted %q, want %q", got, want)
			}
		})
	}
}

// TestSwitchWaitsForAnAgentOnTheGPUThatIsStopping: an agent whose stop
// another hand began (a vagentd killed mid-switch) still holds its memory;
// the switch waits for the stop and the memory, rather than failing with
// "memory is held by processes vagent does not manage".
func TestSwitchWaitsForAnAgentOnTheGPUThatIsStopping(t *testing.T) {
	// The agent switched to may be the one stopping.
	for _, to := range []string{"dev", "po"} {
		t.Run("to "+to, func(t *testing.T) {
			cfg := testConfig(t, agent("po", 0.92, 10), agent("dev", 0.92, 30))
			h := newFakeHost(t, cfg, 16*gib)
			s := newSup(cfg, h, "")
			h.states["vagent@po.service"] = UnitState{LoadState: "loaded", ActiveState: "deactivating", SubState: "stop-sigterm", MainPID: 99}
			if _, err := s.Switch(context.Background(), to); err != nil {
				t.Fatalf("switch to %s while po stops: %v", to, err)
			}
			for _, a := range []string{"dev", "po"} {
				if st := h.states["vagent@"+a+".service"]; st.Running() != (a == to) || st.ActiveState == "deactivating" {
					t.Errorf("after the switch, %s is %s", a, st.ActiveState)
				}
			}
		})
	}
}

// TestSwitchEvictsAnAgentInTheWayThatDiedSinceItLooked: an agent in the way
// that was up when the switch first looked and is not by the time its plan
// is made (its engine was killed; systemd restarts it) is evicted: the
// switch is not refused ("which is starting"), which failed every request
// waiting for it.
func TestSwitchEvictsAnAgentInTheWayThatDiedSinceItLooked(t *testing.T) {
	cfg := testConfig(t, agent("po", 0.92, 10), agent("dev", 0.92, 30))
	h := newFakeHost(t, cfg, 16*gib)
	s := newSup(cfg, h, "")
	ctx := context.Background()
	if _, err := s.Switch(ctx, "po"); err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	h.upFor = map[string]int{"vagent@po.service": 1}
	h.mu.Unlock()
	res, err := s.Switch(ctx, "dev")
	if err != nil {
		t.Fatalf("switch to dev after po's engine died: %v", err)
	}
	if got := strings.Join(res.Evicted, ","); got != "po" || !h.states["vagent@dev.service"].Running() {
		t.Errorf("evicted %q, dev %+v; want po evicted and dev running", got, h.states["vagent@dev.service"])
	}
}

func TestSwitchEvictsLowestPriorityThenLeastRecentlyUsed(t *testing.T) {
	// Three agents at 0.4 of the card: any two share it, three do not.
	cfg := testConfig(t, agent("a", 0.4, 20), agent("b", 0.4, 10), agent("c", 0.4, 10), agent("d", 0.4, 30))
	h := newFakeHost(t, cfg, 16*gib)
	used := map[string]time.Time{"b": time.Now(), "c": time.Now().Add(-time.Hour)}
	s := New(cfg, Options{Systemd: h, GPU: h, LastUsed: func(n string) time.Time { return used[n] }})
	ctx := context.Background()
	for _, n := range []string{"b", "c"} {
		if _, err := s.Switch(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	res, err := s.Switch(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	// b and c have the same priority; c was used longest ago.
	if strings.Join(res.Evicted, ",") != "c" {
		t.Errorf("evicted %v, want [c]", res.Evicted)
	}
	res, err = s.Switch(ctx, "d")
	if err != nil {
		t.Fatal(err)
	}
	// a (20) outranks b (10): b goes.
	if strings.Join(res.Evicted, ",") != "b" {
		t.Errorf("evicted %v, want [b]", res.Evicted)
	}
}

func TestStartRefusesToEvict(t *testing.T) {
	cfg := testConfig(t, agent("po", 0.92, 10), agent("dev", 0.92, 30))
	h := newFakeHost(t, cfg, 16*gib)
	s := newSup(cfg, h, "")
	ctx := context.Background()
	if _, err := s.Start(ctx, "po"); err != nil {
		t.Fatal(err)
	}
	_, err := s.Start(ctx, "dev")
	if err == nil || !strings.Contains(err.Error(), "vagentctl switch dev") {
		t.Fatalf("start beside a conflicting agent: %v; want a hint to switch", err)
	}
	if !h.states["vagent@po.service"].Running() {
		t.Error("po was stopped by a plain start")
	}
}

func TestSwitchNeverEvictsPinnedAgent(t *testing.T) {
	po := agent("po", 0.92, 10)
	po.Pinned = true
	po.File = "po.toml"
	cfg := testConfig(t, po, agent("dev", 0.92, 30))
	h := newFakeHost(t, cfg, 16*gib)
	s := newSup(cfg, h, "")
	ctx := context.Background()
	if _, err := s.Switch(ctx, "po"); err != nil {
		t.Fatal(err)
	}
	_, err := s.Switch(ctx, "dev")
	if err == nil || !strings.Contains(err.Error(), "pinned") {
		t.Fatalf("switch over a pinned agent: %v; want refusal naming pinned", err)
	}
}

func TestSwitchReportsWhyAnAgentCanNeverFit(t *testing.T) {
	cfg := testConfig(t, agent("big", 1.0, 10))
	cfg.GPU.ReserveMiB = 512
	h := newFakeHost(t, cfg, 16*gib)
	s := newSup(cfg, h, "")
	_, err := s.Switch(context.Background(), "big")
	var fe *FitError
	if !errors.As(err, &fe) || !strings.Contains(err.Error(), "only 16.00 GiB in all") {
		t.Fatalf("got %v, want a FitError saying the GPU is too small", err)
	}
	if len(h.log) != 0 {
		t.Errorf("systemd was called: %v", h.log)
	}
}

func TestSwitchAccountsForForeignMemory(t *testing.T) {
	cfg := testConfig(t, agent("po", 0.5, 10))
	h := newFakeHost(t, cfg, 16*gib)
	h.foreign = 10 * gib
	_, err := newSup(cfg, h, "").Switch(context.Background(), "po")
	if err == nil || !strings.Contains(err.Error(), "does not manage") {
		t.Fatalf("got %v, want a refusal naming unmanaged memory", err)
	}
}

func TestFailedStartReportsRootCauseAndStopsUnit(t *testing.T) {
	cfg := testConfig(t, agent("po", 0.5, 10))
	h := newFakeHost(t, cfg, 16*gib)
	h.failing["vagent@po.service"] = true
	cause := "ValueError: No available memory for the cache blocks. Try increasing gpu_memory_utilization when initializing the engine."
	_, err := newSup(cfg, h, cause).Switch(context.Background(), "po")
	var se *StartError
	if !errors.As(err, &se) || se.RootCause != cause {
		t.Fatalf("got %v, want StartError with the root cause", err)
	}
	if !strings.Contains(err.Error(), "No available memory for the cache blocks") {
		t.Errorf("message %q lacks the root cause", err)
	}
	if last := h.log[len(h.log)-1]; last != "stop vagent@po.service" {
		t.Errorf("last call %q, want the failed unit stopped", last)
	}
}

func TestUnknownAgentListsConfigured(t *testing.T) {
	cfg := testConfig(t, agent("po", 0.5, 10), agent("dev", 0.5, 10))
	h := newFakeHost(t, cfg, 16*gib)
	_, err := newSup(cfg, h, "").Switch(context.Background(), "qa")
	if err == nil || !strings.Contains(err.Error(), `unknown agent "qa" (configured: po, dev)`) {
		t.Fatalf("got %v", err)
	}
}

func TestTransitionsOnOneGPUAreSerialised(t *testing.T) {
	cfg := testConfig(t, agent("po", 0.3, 10))
	s := New(cfg, Options{})
	ctx := context.Background()
	unlock, err := s.lock(ctx, []int{0})
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := s.lock(short, []int{0}); err == nil {
		t.Fatal("second lock on GPU 0 succeeded while the first is held")
	}
	if u2, err := s.lock(ctx, []int{1}); err != nil {
		t.Fatalf("lock on another GPU: %v", err)
	} else {
		u2()
	}
	unlock()
	u3, err := s.lock(short, []int{0})
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	u3()
}

// TestStartRefusesPortInUse holds an agent's port with a real listener
// that set SO_REUSEPORT, as another vLLM would: vLLM would start beside it
// without an error. The switch is refused before anything is evicted.
func TestStartRefusesPortInUse(t *testing.T) {
	cfg := testConfig(t, agent("po", 0.92, 10), agent("dev", 0.92, 30))
	cfg.Agent("dev").File = "/etc/vagent/agents/dev.toml"
	h := newFakeHost(t, cfg, 16*gib)
	s := newSup(cfg, h, "")
	ctx := context.Background()
	if _, err := s.Switch(ctx, "po"); err != nil {
		t.Fatal(err)
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		return errors.Join(err, serr)
	}}
	port := cfg.Agent("dev").Port
	l, err := lc.Listen(ctx, "tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Switch(ctx, "dev")
	var pe *PortError
	if !errors.As(err, &pe) {
		t.Fatalf("switch with the port held: %v, want a *PortError", err)
	}
	want := fmt.Sprintf("agent dev: 127.0.0.1:%d is already in use by another program", port)
	if !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), "change port in /etc/vagent/agents/dev.toml") {
		t.Errorf("error %q, want it to start %q and name the agent's file", err, want)
	}
	if got := strings.Join(h.log, ","); got != "start vagent@po.service" {
		t.Errorf("systemd calls after the refused switch: %s (nothing may be stopped or started)", got)
	}
	l.Close()
	if _, err := s.Switch(ctx, "dev"); err != nil {
		t.Fatalf("switch once the port is free: %v", err)
	}
}

// The root cause learns how systemd recorded the engine's end, read before
// the failed unit is stopped (the stop resets it).
func TestFailedStartPassesHowTheEngineEnded(t *testing.T) {
	cfg := testConfig(t, agent("po", 0.5, 10))
	h := newFakeHost(t, cfg, 16*gib)
	h.failing["vagent@po.service"] = true
	var got journal.Exit
	s := New(cfg, Options{Systemd: h, GPU: h, EngineKey: "test-engine-key",
		RootCause: func(_ context.Context, _ string, _ time.Time, exit journal.Exit) string {
			got = exit
			return journal.RootCause(nil, engine.VLLM{}.Log(), exit)
		}})
	_, err := s.Switch(context.Background(), "po")
	if want := (journal.Exit{Code: journal.ExitedCode, Status: 1, Result: "exit-code"}); got != want {
		t.Errorf("exit %+v, want %+v", got, want)
	}
	if err == nil || !strings.Contains(err.Error(), "agent po failed to start: the engine exited with status 1 during load") {
		t.Errorf("error %v", err)
	}
}
