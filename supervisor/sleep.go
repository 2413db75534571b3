package supervisor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/engine"
	"github.com/vagent-dev/vagent/internal/enginekey"
)

// wakeError is a wake that failed: the caller restarts the engine cold.
type wakeError struct {
	agent string
	err   error
}

func (e *wakeError) Error() string { return fmt.Sprintf("wake %s: %v", e.agent, e.err) }
func (e *wakeError) Unwrap() error { return e.err }

// settleBound is how long makeRoom waits, after putting engines to sleep,
// for the GPU to show the memory they gave back before it stops sleepers.
const settleBound = 2 * time.Second

// wakeLocked wakes a, whose engine sleeps: it makes room for a's budget
// beside what a still holds (its residual), then wakes the engine, checks
// that it is awake, reloads the weights after a level-2 sleep, and sends
// a 1-token warm-up. Errors of the wake itself are *wakeError.
func (s *Supervisor) wakeLocked(ctx context.Context, a *config.Agent, st UnitState, evict bool, res *Result) error {
	usage, err := s.o.GPU.AgentBytes(ctx)
	if err != nil {
		return err
	}
	own := usage[a.Name] / uint64(len(a.GPUs))
	victims, err := s.plan(ctx, a, evict, own)
	if err != nil {
		return err
	}
	if err := s.evictAll(ctx, a, victims, res); err != nil {
		return err
	}
	if err := s.makeRoom(ctx, a, own, evict, res); err != nil {
		return err
	}
	t0 := time.Now()
	s.o.Log.Info("waking agent", "agent", a.Name, "unit", a.Unit())
	level, err := s.wake(ctx, a, st)
	if err != nil {
		return &wakeError{agent: a.Name, err: err}
	}
	res.Woken, res.WakeDuration = true, time.Since(t0)
	s.timedWake(a.Name, level, res.WakeDuration)
	s.o.Log.Info("agent awake", "agent", a.Name, "after", res.WakeDuration.Round(time.Millisecond))
	return nil
}

// wake runs vLLM's wake sequence on a's engine, and says from which level
// it woke (0: unknown, woken as from level 2).
func (s *Supervisor) wake(ctx context.Context, a *config.Agent, st UnitState) (int, error) {
	level := s.sleepNote(a, st)
	return level, s.wakeFrom(ctx, a, level)
}

func (s *Supervisor) wakeFrom(ctx context.Context, a *config.Agent, level int) error {
	if err := s.engineCall(ctx, func(ctx context.Context) error { return s.client(a).Wake(ctx) }); err != nil {
		return err
	}
	asleep, err := s.isSleeping(ctx, a)
	if err != nil {
		return err
	}
	if asleep {
		return errors.New("the engine still says it sleeps after the wake")
	}
	if level != 1 {
		// Level 2 dropped the weights (or the level is unknown: the engine
		// was put to sleep by someone else): reload them from disk, and
		// drop prefix-cache entries computed with the old ones.
		if err := s.engineCall(ctx, s.client(a).Reload); err != nil {
			return err
		}
	}
	s.clearSleepNote(a)
	// The first request after a wake is slow (lazy allocations, kernels);
	// one token here keeps that off a client's request.
	err = s.engineCall(ctx, func(ctx context.Context) error { return s.client(a).WarmUp(ctx, a.ServedName()) })
	if engine.IsUnauthorized(err) {
		// No engine key here (vagentctl without access to the key file):
		// the engine is awake; only the warm-up is skipped.
		s.o.Log.Warn("warm-up skipped: the engine key is not readable here", "agent", a.Name, "file", s.cfg.EngineKeyFile())
		return nil
	}
	if err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	return nil
}

// sleepLocked puts v to sleep to make room for a (v's requests are
// drained). A level-1 sleep needs v's weights to fit the host RAM budget
// beside the other sleepers: the least recently used sleepers are stopped
// until they do, and when they cannot (v's weights alone exceed the budget,
// or the sleepers in the way cannot be stopped) v sleeps at level 2.
func (s *Supervisor) sleepLocked(ctx context.Context, a, v *config.Agent, res *Result) (*Sleep, error) {
	st, err := s.unitState(ctx, v.Unit())
	if err != nil {
		return nil, err
	}
	level := v.Level()
	if level == 1 {
		ok, err := s.hostRoom(ctx, a, v, st, res)
		if err != nil {
			return nil, err
		}
		if !ok {
			level = 2
		}
	}
	t0 := time.Now()
	s.o.Log.Info("putting agent to sleep", "agent", v.Name, "level", level, "for", a.Name)
	if err := s.engineCall(ctx, func(ctx context.Context) error { return s.client(v).Sleep(ctx, level) }); err != nil {
		return nil, err
	}
	d := time.Since(t0)
	forget(ctx, v.Unit()) // its memory changed
	s.writeSleepNote(v, st, level)
	sl := &Sleep{Agent: v.Name, Level: level, Duration: d}
	// vLLM frees the weights and the KV cache before /sleep answers; what
	// the GPU still shows is the residual (CUDA context and graphs), which
	// the next plans count instead of the estimate.
	if usage, err := s.o.GPU.AgentBytes(ctx); err == nil {
		sl.ResidualBytes = usage[v.Name]
		s.resMu.Lock()
		s.residuals[v.Name] = measured{invocation: st.InvocationID, bytes: sl.ResidualBytes}
		s.resMu.Unlock()
	}
	s.o.Log.Info("agent asleep", "agent", v.Name, "level", level, "after", d.Round(time.Millisecond),
		"residual", GiB(sl.ResidualBytes))
	return sl, nil
}

// sleeper is a sleeping agent and the host memory it holds.
type sleeper struct {
	running
	host uint64 // host memory held: weights in host RAM, or its cgroup's memory
}

// sleepers are the running sleep agents, but except, whose engine sleeps.
func (s *Supervisor) sleepers(ctx context.Context, except *config.Agent) ([]sleeper, error) {
	var hosted map[string]uint64
	if hr, ok := s.o.GPU.(HostReporter); ok {
		h, err := hr.AgentHostBytes(ctx)
		if err != nil {
			return nil, err
		}
		hosted = h
	}
	var out []sleeper
	for _, o := range s.cfg.Agents {
		if o == except || !s.cfg.Sleeps(o) {
			continue
		}
		// An engine that answers is running: ask it first, and systemd
		// only about the sleepers.
		if asleep, err := s.isSleeping(ctx, o); err != nil || !asleep {
			continue
		}
		st, err := s.unitState(ctx, o.Unit())
		if err != nil {
			return nil, err
		}
		if !st.Running() {
			continue
		}
		out = append(out, sleeper{running: running{agent: o, state: st, asleep: true},
			host: max(hosted[o.Name], st.MemoryBytes)})
	}
	return out, nil
}

// hostRoom makes room in the host RAM budget for v's weights (a level-1
// sleep) by stopping the least recently used sleepers, never a (about to
// be woken), a pinned agent, or one on a GPU whose transition lock is not
// held. It reports whether v's weights fit.
func (s *Supervisor) hostRoom(ctx context.Context, a, v *config.Agent, vst UnitState, res *Result) (bool, error) {
	need := s.hostNeed(ctx, v, vst)
	others, err := s.sleepers(ctx, v)
	if err != nil {
		return false, err
	}
	budget, err := s.hostBudget(others, vst)
	if err != nil {
		s.o.Log.Warn("host RAM budget unknown: sleeping at level 2", "agent", v.Name, "err", err)
		return false, nil
	}
	var held uint64
	for _, o := range others {
		held += o.host
	}
	if need > budget {
		s.o.Log.Info("host RAM short: sleeping at level 2", "agent", v.Name,
			"weights", GiB(need), "host_ram_budget", GiB(budget))
		return false, nil
	}
	sort.SliceStable(others, func(i, j int) bool {
		return s.lastUsed(others[i].running).Before(s.lastUsed(others[j].running))
	})
	for _, o := range others {
		if held+need <= budget {
			break
		}
		if o.agent == a || o.agent.Pinned || !within(o.agent.GPUs, a.GPUs) {
			continue
		}
		s.o.Log.Info("stopping sleeping agent: host RAM budget", "agent", o.agent.Name, "for", v.Name,
			"held", GiB(held), "need", GiB(need), "host_ram_budget", GiB(budget))
		if err := s.beforeEvict(ctx, o.agent, a); err != nil {
			return false, err
		}
		if err := s.evictOne(ctx, o.agent, a, res); err != nil {
			return false, err
		}
		held -= min(held, o.host)
	}
	if held+need > budget {
		s.o.Log.Info("host RAM budget full of sleepers that cannot be stopped: sleeping at level 2", "agent", v.Name,
			"held", GiB(held), "need", GiB(need), "host_ram_budget", GiB(budget))
		return false, nil
	}
	return true, nil
}

// hostNeed is the host memory v holds once asleep at level 1: its weights
// (estimated, else its GPU memory, which over-estimates) plus what its
// processes hold already.
func (s *Supervisor) hostNeed(ctx context.Context, v *config.Agent, st UnitState) uint64 {
	var w uint64
	if s.o.HostWeights != nil {
		w = s.o.HostWeights(ctx, v)
	}
	if w == 0 {
		if usage, err := s.o.GPU.AgentBytes(ctx); err == nil {
			w = usage[v.Name]
		}
	}
	return w + st.MemoryBytes
}

// hostBudget is the host RAM sleepers may hold: supervisor.host_ram_budget_mib,
// else half of MemAvailable plus the memory sleepers (and v) already hold,
// which MemAvailable no longer counts.
func (s *Supervisor) hostBudget(sleepers []sleeper, vst UnitState) (uint64, error) {
	if b := s.cfg.Supervisor.HostRAMBudgetMiB; b > 0 {
		return b << 20, nil
	}
	avail, err := s.o.MemAvailable()
	if err != nil {
		return 0, err
	}
	held := vst.MemoryBytes
	for _, o := range sleepers {
		held += o.state.MemoryBytes
	}
	return (avail + held) / 2, nil
}

// makeRoom waits until a fits its GPUs (beside own, what it holds on each),
// giving engines just put to sleep a moment to show their memory back, and
// with evict stops sleepers whose residual is in the way, least recently
// used first. It fails with a *FitError when nothing more can go.
func (s *Supervisor) makeRoom(ctx context.Context, a *config.Agent, own uint64, evict bool, res *Result) error {
	var settle time.Time
	if len(res.Slept) > 0 {
		settle = time.Now().Add(min(settleBound, s.cfg.Supervisor.ReleaseTimeout.Duration))
	}
	var lastFree uint64
	steady := 0
	for {
		err := s.checkFits(ctx, a, own)
		var fe *FitError
		if !errors.As(err, &fe) {
			return err
		}
		// Wait while the free memory still grows, up to the bound.
		if fe.Free > lastFree {
			lastFree, steady = fe.Free, 0
		} else {
			steady++
		}
		if time.Now().Before(settle) && steady < 3 {
			if err := sleep(ctx, s.cfg.Supervisor.HealthInterval.Duration); err != nil {
				return err
			}
			continue
		}
		if !evict {
			return err
		}
		all, serr := s.sleepers(ctx, a)
		if serr != nil {
			return serr
		}
		var cands []sleeper
		for _, o := range all {
			if onGPU(o.agent, fe.GPU) && !o.agent.Pinned && within(o.agent.GPUs, a.GPUs) {
				cands = append(cands, o)
			}
		}
		if len(cands) == 0 {
			return err
		}
		sort.SliceStable(cands, func(i, j int) bool {
			ri, rj := cands[i].agent.Priority, cands[j].agent.Priority
			if ri != rj {
				return ri < rj
			}
			return s.lastUsed(cands[i].running).Before(s.lastUsed(cands[j].running))
		})
		v := cands[0].agent
		s.o.Log.Info("stopping sleeping agent: its residual is in the way", "agent", v.Name, "for", a.Name, "gpu", fe.GPU)
		if err := s.beforeEvict(ctx, v, a); err != nil {
			return err
		}
		if err := s.evictOne(ctx, v, a, res); err != nil {
			return err
		}
	}
}

// within reports whether every GPU of gpus is in set.
func within(gpus, set []int) bool {
	for _, g := range gpus {
		found := false
		for _, x := range set {
			found = found || x == g
		}
		if !found {
			return false
		}
	}
	return true
}

// isSleeping asks a's engine whether it sleeps (served in vLLM's dev
// mode, which sleep agents run in).
func (s *Supervisor) isSleeping(ctx context.Context, a *config.Agent) (bool, error) {
	return s.client(a).IsSleeping(ctx)
}

// engineCall makes one control call to an engine, bounded by the health
// timeout (a real engine's wake or reload takes seconds).
func (s *Supervisor) engineCall(ctx context.Context, call func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Supervisor.HealthTimeout.Duration)
	defer cancel()
	return call(ctx)
}

// client is the client of a's engine, made on first use with the engine
// key, and kept: each holds its engine's idle connections.
func (s *Supervisor) client(a *config.Agent) engine.Client {
	key := s.engineKey()
	s.clientsMu.Lock()
	defer s.clientsMu.Unlock()
	c, ok := s.clients[a.Name]
	if !ok {
		c = s.eng.Client(s.eng.Endpoint(s.cfg, a), key)
		s.clients[a.Name] = c
	}
	return c
}

// engineKey is Options.EngineKey, else the key in cfg.EngineKeyFile(), else
// "" (the file is not readable here).
func (s *Supervisor) engineKey() string {
	s.keyOnce.Do(func() {
		s.key = s.o.EngineKey
		if s.key != "" {
			return
		}
		if k, err := enginekey.Read(s.cfg.EngineKeyFile()); err == nil {
			s.key = k
		}
	})
	return s.key
}

// Sleep notes: the level each sleep used, in RUN_DIR/sleep/NAME, as
// "LEVEL INVOCATION_ID". vLLM does not say which level an engine sleeps
// at, and a wake from level 2 must reload the weights. The note is trusted
// only while the unit's invocation is the one it names, so it cannot go
// stale: a restarted unit has another.

func (s *Supervisor) sleepNotePath(a *config.Agent) string {
	return filepath.Join(s.cfg.Paths.RunDir, "sleep", a.Name)
}

func (s *Supervisor) writeSleepNote(a *config.Agent, st UnitState, level int) {
	p := s.sleepNotePath(a)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
		tmp := p + ".tmp"
		if err = os.WriteFile(tmp, fmt.Appendf(nil, "%d %s\n", level, st.InvocationID), 0o644); err == nil {
			err = os.Rename(tmp, p)
		}
		if err == nil {
			return
		}
	}
	// Without the note the wake reloads the weights: slower, still right.
	s.o.Log.Warn("cannot note the sleep level: the wake will reload the weights", "agent", a.Name, "file", p)
}

// sleepNote is the level a's engine was put to sleep at, 0 when unknown.
func (s *Supervisor) sleepNote(a *config.Agent, st UnitState) int {
	data, err := os.ReadFile(s.sleepNotePath(a))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data))
	inv := ""
	if len(f) > 1 {
		inv = f[1]
	}
	if len(f) == 0 || inv != st.InvocationID {
		return 0
	}
	n, err := strconv.Atoi(f[0])
	if err != nil || (n != 1 && n != 2) {
		return 0
	}
	return n
}

func (s *Supervisor) clearSleepNote(a *config.Agent) {
	os.Remove(s.sleepNotePath(a))
}

// memAvailable reads MemAvailable from /proc/meminfo.
func memAvailable() (uint64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return parseMemAvailable(f)
}

func parseMemAvailable(r io.Reader) (uint64, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "MemAvailable:"); ok {
			f := strings.Fields(v)
			if len(f) == 0 {
				break
			}
			kb, err := strconv.ParseUint(f[0], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/meminfo: MemAvailable: %w", err)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("/proc/meminfo: no MemAvailable line")
}
