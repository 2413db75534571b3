// Package supervisor starts, stops and switches agents through systemd so
// that only what fits in VRAM runs. systemd is the source of truth: the
// supervisor keeps no state of its own, and every decision starts from what
// systemd and the GPU say now.
//
// # Sleep mode
//
// A sleep agent (switch_mode = "sleep") is not stopped to make room: its
// engine is put to sleep (POST /sleep, once the gateway has drained it),
// which moves its weights to host RAM (level 1) or drops them (level 2) and
// frees all but a small residual of its GPU memory; its unit keeps running.
// A switch to a sleeping agent wakes it (POST /wake_up, GET /is_sleeping,
// after level 2 the weights reloaded and the prefix cache reset, then a
// 1-token warm-up) in a fraction of a cold start; a wake that fails
// restarts the unit cold. Sleeping agents' weights must fit the host RAM
// budget: past it, the least recently used sleeper is stopped for real.
// A sleep frees the weights and the KV cache only: the CUDA context and
// graphs stay (the residual). Sleepers' residuals count against the GPU as
// measured; a plan that puts an agent to sleep counts the residual its
// last sleep left, measured from the GPU right after it, or before a first
// sleep Options.SleepResidual's estimate. A sleeper is stopped for real
// when its residual is in the way. The level each sleep
// used is noted in the run directory, keyed by the unit's invocation, so
// that the wake knows whether the weights need reloading.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/engine"
	"github.com/vagent-dev/vagent/journal"
)

// GPUMemory is one GPU's memory as the driver reports it. Used may be less
// than Total−Free: NVML's v2 figures leave the driver's reserve out of both.
type GPUMemory struct {
	Total, Used, Free uint64
}

// GPU is what the supervisor needs to know of the GPUs.
type GPU interface {
	// Memory returns each GPU's memory by index.
	Memory(ctx context.Context) (map[int]GPUMemory, error)
	// AgentBytes returns the GPU memory each agent's processes hold, by
	// agent name, summed over GPUs.
	AgentBytes(ctx context.Context) (map[string]uint64, error)
}

// Options are the supervisor's collaborators.
type Options struct {
	Systemd Systemd
	GPU     GPU
	// RootCause returns the line explaining why unit failed since t, from
	// its journal and how its engine ended (zero while it runs); "" when
	// nothing useful is known.
	RootCause func(ctx context.Context, unit string, since time.Time, exit journal.Exit) string
	// LastUsed returns when an agent last served a request; zero when
	// unknown (then the unit's start time stands in).
	LastUsed func(agent string) time.Time
	// BeforeEvict, when set, is called for each agent a switch is about to
	// stop or put to sleep, before doing so: the gateway stops routing to it
	// and waits for its requests in flight (up to its drain bound). An error
	// aborts the switch before anything is stopped for it.
	BeforeEvict func(ctx context.Context, agent string) error
	Log         *slog.Logger
	// EngineKey is the engines' API key, sent with the calls that need it
	// (the warm-up completion after a wake); empty reads it from
	// cfg.EngineKeyFile() when first needed.
	EngineKey string
	// HostWeights estimates the host RAM a level-1 sleep of agent a takes:
	// its model's weights (plan.HostWeights). When nil or when it returns 0,
	// the agent's GPU memory stands in, which over-estimates.
	HostWeights func(ctx context.Context, a *config.Agent) uint64
	// MemAvailable reads the host's available memory for the default host
	// RAM budget; nil reads MemAvailable from /proc/meminfo.
	MemAvailable func() (uint64, error)
	// SleepResidual estimates what agent a keeps on the GPU once asleep,
	// summed over its GPUs: the CUDA context and graphs (plan.SleepResidual).
	// It stands in until a sleep of the engine has been measured; nil
	// counts a sleep as freeing everything, and makeRoom then stops
	// sleepers whose residual turns out to be in the way.
	SleepResidual func(a *config.Agent) uint64
	// NeverFits says why agent a can never start on GPUs of totals bytes
	// (by index), even alone as configured (plan.NeverFits); "" when it can
	// or when that is unknown. A start is refused on it before anything is
	// evicted. Nil checks only the budget against the GPU's size.
	NeverFits func(ctx context.Context, a *config.Agent, totals map[int]uint64) string
	// Now is the clock of the start backoff; nil is time.Now.
	Now func() time.Time
}

// CardReporter is implemented by a GPU view that can tell on which GPU an
// agent's memory is: FromBackend's view, from the driver's (or the
// ledger's) processes. Without it an agent's memory is taken as spread
// evenly over its GPUs, as tensor parallelism spreads it.
type CardReporter interface {
	// AgentBytesByGPU returns the GPU memory each agent's processes hold,
	// by GPU index, then agent name.
	AgentBytesByGPU(ctx context.Context) (map[int]map[string]uint64, error)
}

// HostReporter is implemented by a GPU view that knows the host memory
// engines hold for the GPU: the simulator's ledger, where a sleeping
// engine's weights go. FromBackend's view implements it.
type HostReporter interface {
	// AgentHostBytes returns the host memory each agent holds for the GPU,
	// by agent name.
	AgentHostBytes(ctx context.Context) (map[string]uint64, error)
}

// Supervisor drives agents' units.
type Supervisor struct {
	cfg *config.Config
	o   Options
	// eng is the engine the agents run; clients are their engines'
	// clients by agent name (client).
	eng       engine.Engine
	clientsMu sync.Mutex
	clients   map[string]engine.Client

	keyOnce sync.Once
	key     string

	// residuals are the residuals measured after sleeps, by agent, valid
	// for the unit invocation they were measured in.
	resMu     sync.Mutex
	residuals map[string]measured

	// backoffs are the agents whose last starts failed, by name.
	boMu     sync.Mutex
	backoffs map[string]*backoff

	// timings are the starts and wakes timed, for Status.
	timings timings
}

// measured is a residual measured from the GPU after a sleep.
type measured struct {
	invocation string
	bytes      uint64
}

// New returns a supervisor for cfg.
func New(cfg *config.Config, o Options) *Supervisor {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.RootCause == nil {
		o.RootCause = func(context.Context, string, time.Time, journal.Exit) string { return "" }
	}
	if o.MemAvailable == nil {
		o.MemAvailable = memAvailable
	}
	return &Supervisor{cfg: cfg, o: o, eng: engine.Of(cfg), clients: map[string]engine.Client{}, residuals: map[string]measured{}, backoffs: map[string]*backoff{}}
}

// Config is the configuration the supervisor works on.
func (s *Supervisor) Config() *config.Config { return s.cfg }

// Result says what a transition did.
type Result struct {
	Agent string `json:"agent"`
	// AlreadyRunning is true when the agent was healthy and nothing was done.
	AlreadyRunning bool `json:"already_running"`
	// Woken is true when the agent was asleep and was woken, not started.
	Woken bool `json:"woken,omitempty"`
	// WakeDuration is how long the wake took: wake-up, check, reload after
	// a level-2 sleep, and warm-up.
	WakeDuration time.Duration `json:"wake_duration_ns,omitempty"`
	// WakeError says why a wake failed, when the agent was then restarted
	// cold.
	WakeError string `json:"wake_error,omitempty"`
	// Evicted are the agents stopped to make room, in order.
	Evicted []string `json:"evicted,omitempty"`
	// Slept are the agents put to sleep to make room, in order.
	Slept []Sleep `json:"slept,omitempty"`
	// Restored are the evicted agents brought back after the agent's
	// start failed.
	Restored []string      `json:"restored,omitempty"`
	Duration time.Duration `json:"duration_ns"`
}

// Sleep is an agent a switch put to sleep.
type Sleep struct {
	Agent string `json:"agent"`
	// Level is vLLM's sleep level used: 1 (weights in host RAM) or 2
	// (weights dropped).
	Level    int           `json:"level"`
	Duration time.Duration `json:"duration_ns"`
	// ResidualBytes is what the engine still holds on the GPU after the
	// sleep, as the GPU reports it (CUDA context and graphs), summed over
	// its GPUs.
	ResidualBytes uint64 `json:"residual_bytes"`
}

// StartError is a failed start, with the root cause from the engine's log.
type StartError struct {
	Agent     string
	Reason    string // what the supervisor saw: "exited", "timed out", ...
	RootCause string
}

func (e *StartError) Error() string {
	if e.RootCause != "" {
		return fmt.Sprintf("agent %s failed to start: %s", e.Agent, e.RootCause)
	}
	return fmt.Sprintf("agent %s failed to start: %s", e.Agent, e.Reason)
}

// PortError is an agent whose engine's endpoint something already holds.
// vLLM binds with SO_REUSEPORT, so its engine would start there without an
// error, and the kernel would split the connections between the two.
type PortError struct {
	Agent    string
	Endpoint string // 127.0.0.1:8001
	File     string // the agent's file, where its port is set
	Err      error
}

func (e *PortError) Error() string {
	return fmt.Sprintf("agent %s: %s is already in use by another program; an engine started there would share it without an error: stop that program, or change port in %s (ss -ltnp shows who listens)",
		e.Agent, e.Endpoint, e.File)
}

func (e *PortError) Unwrap() error { return e.Err }

// checkFree refuses to start a's engine where something already listens.
func (s *Supervisor) checkFree(a *config.Agent) error {
	ep := s.eng.Endpoint(s.cfg, a)
	err := ep.CheckFree()
	if errors.Is(err, engine.ErrInUse) {
		return &PortError{Agent: a.Name, Endpoint: ep.String(), File: a.File, Err: err}
	}
	if err != nil {
		// Not a listener in the way (a privilege, an address): the engine
		// meets the same and its own error says more.
		s.o.Log.Warn("cannot check the engine's port", "agent", a.Name, "err", err)
	}
	return nil
}

// FitError is an agent that cannot fit its GPU even after every allowed eviction.
type FitError struct {
	Agent string
	GPU   int
	Need  uint64
	// Free is what the GPU would have free after the allowed evictions.
	Free uint64
	// Blockers are running agents that were not allowed to be evicted.
	Blockers []string
	Why      string
}

func (e *FitError) Error() string {
	msg := fmt.Sprintf("agent %s does not fit GPU %d: it needs %s, and at most %s can be freed",
		e.Agent, e.GPU, GiB(e.Need), GiB(e.Free))
	if e.Why != "" {
		msg += ": " + e.Why
	}
	return msg
}

// NeverFitError is an agent that cannot start on its GPU even alone, as
// configured: refused before anything is evicted for it.
type NeverFitError struct {
	Agent string
	Why   string
}

func (e *NeverFitError) Error() string {
	return fmt.Sprintf("agent %s can never start on its GPU as configured, so nothing was stopped for it: %s (see `vagentctl plan`)", e.Agent, e.Why)
}

// GiB formats bytes as GiB with two decimals, vLLM's unit in its messages.
func GiB(b uint64) string { return fmt.Sprintf("%.2f GiB", float64(b)/(1<<30)) }

func (s *Supervisor) agent(name string) (*config.Agent, error) {
	if a := s.cfg.Agent(name); a != nil {
		return a, nil
	}
	names := make([]string, len(s.cfg.Agents))
	for i, a := range s.cfg.Agents {
		names[i] = a.Name
	}
	return nil, fmt.Errorf("unknown agent %q (configured: %s)", name, strings.Join(names, ", "))
}

// Switch makes agent name run: it stops whatever cannot share its GPUs or
// leaves too little memory (lowest priority first, then least recently
// used; never a pinned agent or one that is starting), or puts it to sleep
// when it is a sleep agent, waits for the GPU to show that memory back,
// starts the agent (or wakes it when it sleeps) and waits until it is
// healthy.
func (s *Supervisor) Switch(ctx context.Context, name string) (*Result, error) {
	return s.locked(ctx, name, func(ctx context.Context, a *config.Agent) (*Result, error) {
		return s.transitionLocked(ctx, a, true)
	})
}

// Start starts agent name if it fits beside what runs, without evicting.
func (s *Supervisor) Start(ctx context.Context, name string) (*Result, error) {
	return s.locked(ctx, name, func(ctx context.Context, a *config.Agent) (*Result, error) {
		return s.transitionLocked(ctx, a, false)
	})
}

// Stop stops agent name and waits until the GPU shows its memory back.
func (s *Supervisor) Stop(ctx context.Context, name string) error {
	_, err := s.locked(ctx, name, func(ctx context.Context, a *config.Agent) (*Result, error) {
		return nil, s.stopAndRelease(ctx, a)
	})
	return err
}

// Restart stops agent name, waits for its memory, and starts it again.
func (s *Supervisor) Restart(ctx context.Context, name string) (*Result, error) {
	return s.locked(ctx, name, func(ctx context.Context, a *config.Agent) (*Result, error) {
		if err := s.stopAndRelease(ctx, a); err != nil {
			return nil, err
		}
		// A restart is the operator's deliberate retry: it ends a backoff.
		s.startSucceeded(a)
		return s.transitionLocked(ctx, a, false)
	})
}

// locked runs fn on agent name holding the transition locks of its GPUs,
// and times the whole transition, lock wait included. fn's context carries
// the transition's memo of unit states (unitState).
func (s *Supervisor) locked(ctx context.Context, name string, fn func(context.Context, *config.Agent) (*Result, error)) (*Result, error) {
	a, err := s.agent(name)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	unlock, err := s.lock(ctx, a.GPUs)
	if err != nil {
		return nil, err
	}
	defer unlock()
	res, err := fn(context.WithValue(ctx, memoKey{}, &stateMemo{m: map[string]UnitState{}}), a)
	if res != nil {
		res.Duration = time.Since(t0)
	}
	return res, err
}

type running struct {
	agent *config.Agent
	state UnitState
	// cards is what it holds on each of its GPUs, by index: measured, or
	// its budget of that GPU while unmeasured. A tensor-parallel engine's
	// ranks each take gpu_memory_utilization of their own GPU, so on cards
	// of different sizes its shares differ.
	cards  map[int]uint64
	asleep bool // a sleep agent whose engine sleeps: cards hold its residual
}

// eviction is one agent a switch makes room by.
type eviction struct {
	agent *config.Agent
	sleep bool // put to sleep rather than stopped
}

// stateMemo remembers units' states within one transition, so that the
// plan, the host RAM budget and the sleeps read each unit from systemd once:
// a D-Bus read takes milliseconds (more for an inactive unit, which systemd
// loads for the occasion), and a wake switch is meant to take a fraction of
// a second. A unit the transition starts or stops is read again.
type stateMemo struct {
	mu sync.Mutex
	m  map[string]UnitState
}

type memoKey struct{}

// unitState is unit's state, from the transition's memo when ctx has one.
// Waits that poll a unit read systemd directly.
func (s *Supervisor) unitState(ctx context.Context, unit string) (UnitState, error) {
	memo, _ := ctx.Value(memoKey{}).(*stateMemo)
	if memo != nil {
		memo.mu.Lock()
		st, ok := memo.m[unit]
		memo.mu.Unlock()
		if ok {
			return st, nil
		}
	}
	st, err := s.o.Systemd.State(ctx, unit)
	if err == nil && memo != nil {
		memo.mu.Lock()
		memo.m[unit] = st
		memo.mu.Unlock()
	}
	return st, err
}

// forget drops unit from the transition's memo: it is being changed.
func forget(ctx context.Context, unit string) {
	if memo, _ := ctx.Value(memoKey{}).(*stateMemo); memo != nil {
		memo.mu.Lock()
		delete(memo.m, unit)
		memo.mu.Unlock()
	}
}

func (s *Supervisor) transitionLocked(ctx context.Context, a *config.Agent, evict bool) (*Result, error) {
	res := &Result{Agent: a.Name}
	st, err := s.unitState(ctx, a.Unit())
	if err != nil {
		return nil, err
	}
	if st.LoadState != "loaded" {
		return nil, fmt.Errorf("agent %s: unit %s is %s: run `vagentctl apply` first", a.Name, a.Unit(), st.LoadState)
	}
	if st.Running() && s.cfg.Sleeps(a) {
		if asleep, err := s.isSleeping(ctx, a); err == nil && asleep {
			err := s.wakeLocked(ctx, a, st, evict, res)
			var we *wakeError
			if !errors.As(err, &we) {
				return res, err
			}
			// A failed wake is a failed start: restart the engine cold.
			res.WakeError = we.Error()
			s.o.Log.Warn("wake failed: restarting the agent cold", "agent", a.Name, "err", we.err)
			if err := s.stopAndRelease(ctx, a); err != nil {
				return res, err
			}
			if st, err = s.o.Systemd.State(ctx, a.Unit()); err != nil {
				return res, err
			}
		}
	}
	if st.Running() {
		if s.healthy(ctx, a) {
			res.AlreadyRunning = true
			return res, nil
		}
		// Started by someone else (by hand, or systemd's own restart):
		// wait for it rather than starting it twice.
		return res, s.waitReady(ctx, a, time.Now())
	}
	if err := s.checkBackoff(a); err != nil {
		return res, err
	}
	if err := s.checkNeverFits(ctx, a); err != nil {
		return res, err
	}
	if st.ActiveState != "deactivating" {
		// Checked before anything is evicted for the start. (A unit still
		// stopping may hold its own port: systemd queues the start after
		// the stop.)
		if err := s.checkFree(a); err != nil {
			return res, err
		}
	}

	if evict {
		if err := s.awaitOthers(ctx, a); err != nil {
			return res, err
		}
	}
	victims, err := s.plan(ctx, a, evict, 0)
	if err != nil {
		return res, err
	}
	if err := s.evictAll(ctx, a, victims, res); err != nil {
		return res, s.restore(ctx, a, res, err)
	}
	if err := s.makeRoom(ctx, a, 0, evict, res); err != nil {
		return res, s.restore(ctx, a, res, err)
	}
	if err := s.startLocked(ctx, a); err != nil {
		if ctx.Err() != nil {
			// Abandoned by the caller, not failed: the engine may still
			// come up, and nothing is restored over it.
			return res, err
		}
		var se *StartError
		if errors.As(err, &se) {
			s.startFailed(a, err)
		}
		return res, s.restore(ctx, a, res, err)
	}
	s.startSucceeded(a)
	return res, nil
}

// awaitOthers waits for every agent on a's GPUs that is between states:
// its unit runs but its engine is not up yet, or its unit is stopping.
// Under the GPU's lock such a transition was begun by another hand:
// systemd's own restart of a crashed engine, a start or stop by hand, or a
// vagentd killed mid-switch. a must not initialise beside a loading engine
// (two engines loading on one GPU break each other's memory profiling), and
// plan counts a stopping engine's memory as held by processes vagent does
// not manage. Refusing the switch for either ("which is starting", "does
// not fit") failed every request that came meanwhile, since the gateway had
// nothing to wait for. A start ends soon, up (then plan evicts it like any
// running agent, if it is in the way) or failed (then it is stopped and its
// memory released), as a's own wait in transitionLocked does for a; a stop
// ends when the GPU shows its memory back.
func (s *Supervisor) awaitOthers(ctx context.Context, a *config.Agent) error {
	usage, err := s.o.GPU.AgentBytes(ctx)
	if err != nil {
		return err
	}
	for _, o := range s.cfg.Agents {
		if o != a && !config.SharesGPU(a, o) {
			continue
		}
		forget(ctx, o.Unit()) // read afresh: plan must see what this wait leaves
		st, err := s.unitState(ctx, o.Unit())
		if err != nil {
			return err
		}
		switch {
		case st.ActiveState == "deactivating" || !st.Running() && usage[o.Name] > 0:
			// a itself too: evicted by a vagentd killed mid-switch, its
			// memory is not back yet.
			// Stopping, or stopped with its memory not back yet.
			s.o.Log.Info("waiting for an agent on the GPU to finish stopping", "agent", o.Name, "for", a.Name)
			err = s.stopAndRelease(ctx, o)
		case o != a && st.Running() && !s.healthy(ctx, o):
			s.o.Log.Info("waiting for an agent on the GPU to finish starting", "agent", o.Name, "for", a.Name)
			err = s.waitReady(ctx, o, time.Now())
			if errors.As(err, new(*StartError)) {
				s.o.Log.Warn("an agent on the GPU failed to start", "agent", o.Name, "for", a.Name, "err", err)
				err = s.stopAndRelease(ctx, o)
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// startLocked starts a's unit and waits until its engine is healthy. A
// failed unit is started as it is: its start limit (systemd's
// StartLimitBurst=) is the operator's, and resetting it here would let a
// crash-looping engine restart forever.
func (s *Supervisor) startLocked(ctx context.Context, a *config.Agent) error {
	started := time.Now()
	s.o.Log.Info("starting agent", "agent", a.Name, "unit", a.Unit())
	forget(ctx, a.Unit())
	if err := s.o.Systemd.Start(ctx, a.Unit()); err != nil {
		var je *JobError
		if errors.As(err, &je) {
			return s.failStart(ctx, a, started, "start job "+je.Result)
		}
		return err
	}
	if err := s.waitReady(ctx, a, started); err != nil {
		return err
	}
	s.timedColdStart(a.Name, time.Since(started))
	return nil
}

// checkNeverFits refuses, before anything is evicted, an agent that cannot
// start on its GPU even alone: its budget beyond the GPU's memory, or the
// plan's estimate (Options.NeverFits).
func (s *Supervisor) checkNeverFits(ctx context.Context, a *config.Agent) error {
	mem, err := s.o.GPU.Memory(ctx)
	if err != nil {
		return err
	}
	reserve := s.cfg.GPU.ReserveMiB << 20
	totals := map[int]uint64{}
	for _, g := range a.GPUs {
		m, ok := mem[g]
		if !ok {
			return fmt.Errorf("agent %s: GPU %d not found", a.Name, g)
		}
		totals[g] = m.Total
		if need := a.Budget(m.Total, 0) + reserve; need > m.Total {
			return &FitError{Agent: a.Name, GPU: g, Need: need, Free: m.Total,
				Why: fmt.Sprintf("the GPU has only %s in all", GiB(m.Total))}
		}
	}
	if s.o.NeverFits == nil {
		return nil
	}
	if why := s.o.NeverFits(ctx, a, totals); why != "" {
		return &NeverFitError{Agent: a.Name, Why: why}
	}
	return nil
}

// evictAll makes room for a by victims, in order: each is drained through
// BeforeEvict, then put to sleep (a sleep agent; stopped when the sleep
// fails) or stopped.
func (s *Supervisor) evictAll(ctx context.Context, a *config.Agent, victims []eviction, res *Result) error {
	for _, v := range victims {
		if err := s.beforeEvict(ctx, v.agent, a); err != nil {
			return err
		}
		if v.sleep {
			sl, err := s.sleepLocked(ctx, a, v.agent, res)
			if err == nil {
				res.Slept = append(res.Slept, *sl)
				continue
			}
			if ctx.Err() != nil {
				return fmt.Errorf("put %s to sleep for %s: %w", v.agent.Name, a.Name, err)
			}
			s.o.Log.Warn("sleep failed: stopping the agent instead", "agent", v.agent.Name, "for", a.Name, "err", err)
		}
		if err := s.evictOne(ctx, v.agent, a, res); err != nil {
			return err
		}
	}
	return nil
}

func (s *Supervisor) beforeEvict(ctx context.Context, v, a *config.Agent) error {
	if s.o.BeforeEvict == nil {
		return nil
	}
	if err := s.o.BeforeEvict(ctx, v.Name); err != nil {
		return fmt.Errorf("evict %s for %s: %w", v.Name, a.Name, err)
	}
	return nil
}

// evictOne stops v for a (its requests already drained) and records it.
func (s *Supervisor) evictOne(ctx context.Context, v, a *config.Agent, res *Result) error {
	s.o.Log.Info("evicting agent", "agent", v.Name, "for", a.Name)
	if err := s.stopAndRelease(ctx, v); err != nil {
		return fmt.Errorf("evict %s for %s: %w", v.Name, a.Name, err)
	}
	res.Evicted = append(res.Evicted, v.Name)
	return nil
}

// plan decides which running agents to stop or put to sleep so that a
// fits, in order. own is what a already holds on each of its GPUs (the
// residual of a sleeping a about to be woken), 0 for a start.
//
// A sleeping agent shares the GPU with whatever runs: only its measured
// residual is in the way, and it is stopped for real only when that
// memory is needed. An awake sleep agent is put to sleep instead of being
// stopped; the plan counts all its memory as freed, and makeRoom stops
// sleepers once the GPU shows what the sleeps really gave back.
func (s *Supervisor) plan(ctx context.Context, a *config.Agent, evict bool, own uint64) ([]eviction, error) {
	mem, err := s.o.GPU.Memory(ctx)
	if err != nil {
		return nil, err
	}
	usage, byCard, err := s.gpuUse(ctx)
	if err != nil {
		return nil, err
	}
	reserve := s.cfg.GPU.ReserveMiB << 20

	var others []running
	for _, o := range s.cfg.Agents {
		if o == a || !config.SharesGPU(a, o) {
			continue
		}
		st, err := s.unitState(ctx, o.Unit())
		if err != nil {
			return nil, err
		}
		if !st.Running() {
			continue
		}
		cards := map[int]uint64{}
		for _, g := range o.GPUs {
			cards[g] = byCard[g][o.Name]
			if usage[o.Name] == 0 {
				// Not measured yet (still loading): its budget there.
				cards[g] = o.Budget(mem[g].Total, 0)
			}
		}
		asleep := false
		if s.cfg.Sleeps(o) {
			asleep, _ = s.isSleeping(ctx, o)
		}
		others = append(others, running{agent: o, state: st, cards: cards, asleep: asleep})
	}

	// Least valuable first: lowest priority, then least recently used.
	sort.SliceStable(others, func(i, j int) bool {
		if others[i].agent.Priority != others[j].agent.Priority {
			return others[i].agent.Priority < others[j].agent.Priority
		}
		return s.lastUsed(others[i]).Before(s.lastUsed(others[j]))
	})

	chosen := map[string]bool{}
	var victims []eviction
	take := func(r running) error {
		if chosen[r.agent.Name] {
			return nil
		}
		switch {
		case !evict:
			return fmt.Errorf("agent %s cannot run beside %s on GPU %v: use `vagentctl switch %s` to stop it first",
				a.Name, r.agent.Name, r.agent.GPUs, a.Name)
		case r.agent.Pinned:
			return fmt.Errorf("agent %s cannot run beside %s, which is pinned (pinned = true in %s)",
				a.Name, r.agent.Name, r.agent.File)
		}
		// An agent that is not up here died, or began loading (systemd
		// restarting it), in the moment since awaitOthers saw it up: it
		// serves nothing, and stopping it is what its Conflicts= would do.
		chosen[r.agent.Name] = true
		victims = append(victims, eviction{agent: r.agent, sleep: s.cfg.Sleeps(r.agent) && !r.asleep})
		return nil
	}

	totals := make(map[int]uint64, len(mem))
	for g, m := range mem {
		totals[g] = m.Total
	}
	// Awake agents that cannot share a GPU with a go first, whatever their
	// rank: their units conflict, so systemd would stop them anyway (for
	// sleep agents, whose units carry no Conflicts=, vLLM's own free-memory
	// check would fail).
	for _, r := range others {
		if r.asleep {
			continue
		}
		if config.CannotShareOn(a, r.agent, totals, reserve) {
			if err := take(r); err != nil {
				return nil, err
			}
		}
	}
	// Then more, in rank order, until a's budget fits every one of its GPUs.
	// A sleep frees all but the engine's residual (free); stopping the
	// sleepers, which makeRoom does when the residuals are in the way,
	// frees the rest (most).
	for _, g := range a.GPUs {
		m := mem[g]
		need := a.Budget(m.Total, 0) + reserve
		if own >= need {
			need = 0
		} else {
			need -= own
		}
		free, most := m.Free, m.Free
		for _, r := range others {
			if chosen[r.agent.Name] && onGPU(r.agent, g) {
				free += s.freedBySleep(r, g)
				most += r.cards[g]
			}
		}
		for _, r := range others {
			if free >= need {
				break
			}
			if chosen[r.agent.Name] || !onGPU(r.agent, g) {
				continue
			}
			if !evict || r.agent.Pinned || !s.healthy(ctx, r.agent) {
				continue
			}
			if err := take(r); err != nil {
				return nil, err
			}
			free += s.freedBySleep(r, g)
			most += r.cards[g]
		}
		if most < need {
			free = most
			fe := &FitError{Agent: a.Name, GPU: g, Need: need, Free: free}
			for _, r := range others {
				if !chosen[r.agent.Name] && onGPU(r.agent, g) {
					fe.Blockers = append(fe.Blockers, r.agent.Name)
				}
			}
			switch {
			case need > m.Total:
				fe.Why = fmt.Sprintf("the GPU has only %s in all", GiB(m.Total))
			case len(fe.Blockers) > 0 && !evict:
				fe.Why = fmt.Sprintf("%s must stop first: use `vagentctl switch %s`", strings.Join(fe.Blockers, ", "), a.Name)
			case len(fe.Blockers) > 0:
				fe.Why = fmt.Sprintf("%s cannot be evicted (pinned or starting)", strings.Join(fe.Blockers, ", "))
			default:
				fe.Why = "memory is held by processes vagent does not manage"
			}
			return nil, fe
		}
	}
	return victims, nil
}

func (s *Supervisor) lastUsed(r running) time.Time {
	if s.o.LastUsed != nil {
		if t := s.o.LastUsed(r.agent.Name); !t.IsZero() {
			return t
		}
	}
	return r.state.Since
}

func onGPU(a *config.Agent, g int) bool {
	for _, x := range a.GPUs {
		if x == g {
			return true
		}
	}
	return false
}

// freedBySleep is what evicting r frees on GPU g: all it holds there when
// it is stopped, all but its residual when an awake sleep agent is put to
// sleep.
func (s *Supervisor) freedBySleep(r running, g int) uint64 {
	held := r.cards[g]
	if r.asleep || !s.cfg.Sleeps(r.agent) {
		return held
	}
	res := s.residual(r.agent, r.state) / uint64(len(r.agent.GPUs))
	return held - min(res, held)
}

// residual is what a keeps on the GPU once asleep, summed over its GPUs:
// as measured after its last sleep in this invocation of its unit, else
// Options.SleepResidual's estimate, else 0.
func (s *Supervisor) residual(a *config.Agent, st UnitState) uint64 {
	s.resMu.Lock()
	m, ok := s.residuals[a.Name]
	s.resMu.Unlock()
	if ok && m.invocation == st.InvocationID {
		return m.bytes
	}
	if s.o.SleepResidual != nil {
		return s.o.SleepResidual(a)
	}
	return 0
}

// checkFits re-reads the GPU after evictions: memory can be taken by
// processes vagent does not manage while it works, and a sleeping engine
// keeps a residual. own is what a already holds on each GPU.
func (s *Supervisor) checkFits(ctx context.Context, a *config.Agent, own uint64) error {
	mem, err := s.o.GPU.Memory(ctx)
	if err != nil {
		return err
	}
	reserve := s.cfg.GPU.ReserveMiB << 20
	for _, g := range a.GPUs {
		m, ok := mem[g]
		if !ok {
			return fmt.Errorf("agent %s: GPU %d not found", a.Name, g)
		}
		need := a.Budget(m.Total, 0) + reserve
		if own >= need {
			need = 0
		} else {
			need -= own
		}
		if m.Free < need {
			return &FitError{Agent: a.Name, GPU: g, Need: need, Free: m.Free,
				Why: "memory is held by processes vagent does not manage"}
		}
	}
	return nil
}

// stopAndRelease stops a's unit and waits until the GPU no longer shows
// memory held by it: starting the next engine before that would fail vLLM's
// free-memory check.
func (s *Supervisor) stopAndRelease(ctx context.Context, a *config.Agent) error {
	forget(ctx, a.Unit())
	if err := s.o.Systemd.Stop(ctx, a.Unit()); err != nil {
		return err
	}
	s.clearSleepNote(a)
	deadline := time.Now().Add(s.cfg.Supervisor.ReleaseTimeout.Duration)
	for {
		usage, err := s.o.GPU.AgentBytes(ctx)
		if err != nil {
			return err
		}
		if usage[a.Name] == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent %s stopped, but the GPU still shows %s held by it after %s",
				a.Name, GiB(usage[a.Name]), s.cfg.Supervisor.ReleaseTimeout.Duration)
		}
		if err := sleep(ctx, s.cfg.Supervisor.HealthInterval.Duration); err != nil {
			return err
		}
	}
}

// waitReady polls a's /health until it answers 200, the unit stops
// running, or the health timeout passes.
func (s *Supervisor) waitReady(ctx context.Context, a *config.Agent, started time.Time) error {
	timeout := s.cfg.Supervisor.HealthTimeout.Duration
	deadline := time.Now().Add(timeout)
	// /health is polled often, since every poll of the interval is latency
	// added to the switch (a refused connect on loopback costs microseconds);
	// systemd is asked less often whether the engine died meanwhile.
	var lastState time.Time
	for {
		if s.healthy(ctx, a) {
			s.o.Log.Info("agent healthy", "agent", a.Name, "after", time.Since(started).Round(time.Millisecond))
			return nil
		}
		if time.Since(lastState) >= stateCheckInterval {
			lastState = time.Now()
			st, err := s.o.Systemd.State(ctx, a.Unit())
			if err != nil {
				return err
			}
			if !st.Running() {
				return s.failStart(ctx, a, started, fmt.Sprintf("unit is %s (%s), result %s", st.ActiveState, st.SubState, st.Result))
			}
		}
		if time.Now().After(deadline) {
			return s.failStart(ctx, a, started, fmt.Sprintf("not healthy after %s", timeout))
		}
		if err := sleep(ctx, s.cfg.Supervisor.HealthInterval.Duration); err != nil {
			return err
		}
	}
}

// stateCheckInterval is how often a start's wait asks systemd whether the
// engine still runs.
const stateCheckInterval = 100 * time.Millisecond

// failStart stops a unit whose start failed, so that systemd's restarts do
// not keep retrying a start that cannot succeed, and reports why from its log.
func (s *Supervisor) failStart(ctx context.Context, a *config.Agent, started time.Time, reason string) error {
	// Read the state and log first: stopping adds lines of its own, and
	// resets how the engine ended.
	st, stErr := s.o.Systemd.State(ctx, a.Unit())
	var exit journal.Exit
	if stErr == nil && !st.Running() {
		exit = journal.Exit{Code: st.ExecMainCode, Status: st.ExecMainStatus, Result: st.Result}
	}
	cause := s.o.RootCause(ctx, a.Unit(), started, exit)
	if stErr == nil && st.Result == "start-limit-hit" {
		// systemd refused the start itself: its own message is only in
		// the journal. The limit stays: the operator lifts it.
		limit := fmt.Sprintf("Start request repeated too quickly: systemd's start limit (units.start_limit_burst = %d starts within units.start_limit_interval = %s) was hit; `systemctl reset-failed %s` allows starts again",
			s.cfg.Units.StartLimitBurst, s.cfg.Units.StartLimitInterval, a.Unit())
		if cause != "" {
			limit += "; the last failure: " + cause
		}
		cause = limit
	}
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.Units.StopTimeout.Duration+5*time.Second)
	defer cancel()
	if err := s.o.Systemd.Stop(stopCtx, a.Unit()); err != nil {
		s.o.Log.Warn("stopping failed agent", "agent", a.Name, "err", err)
	}
	return &StartError{Agent: a.Name, Reason: reason, RootCause: cause}
}

func (s *Supervisor) healthy(ctx context.Context, a *config.Agent) bool {
	return s.client(a).Healthy(ctx)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
