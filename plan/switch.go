package plan

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/vagent-dev/vagent/config"
)

// Switch costs. A switch to a stopped agent is a cold start; to a sleeping
// one (switch_mode = "sleep"), a wake. The estimates below stand in until
// vagentd has timed the real thing (Measured), and each constant is stated
// with its source in docs/sizing.md, "Switch costs":
//
//   - cold start = EngineStartCost + the checkpoint read from disk at
//     Rates.DiskBytesPerSec + the weights copied to the GPU at
//     Rates.PCIeBytesPerSec + CompileCost and GraphsCaptureCost (neither
//     with enforce_eager, which turns torch.compile and CUDA graphs off:
//     vllm/config/vllm.py, v0.18.0rc2);
//   - a wake from level 1 copies the weights back from pinned host RAM
//     (CuMemAllocator.wake_up's cudaMemcpy, vllm/device_allocator/cumem.py,
//     v0.12.0 and v0.18.0rc2) at Rates.PCIeBytesPerSec, plus WakeCost;
//   - a wake from level 2 reloads the weights from disk (level 2 offloads
//     nothing: gpu_worker.py's sleep passes no offload tags), as a cold
//     start loads them, plus WakeCost, but starts no engine and captures
//     no graphs (they stay on the GPU while asleep).
//
// A level-1 sleeper holds its whole checkpoint in pinned host RAM
// (CuMemAllocator.sleep allocates a pin_memory CPU tensor per weights
// allocation), plus its engine's processes (EngineHostBytes); a level-2
// sleeper only the processes.
const (
	// DefaultDiskBytesPerSec is a PCIe NVMe SSD's sequential read, for a
	// checkpoint not in the page cache (a SATA SSD reads about 0.5 GB/s).
	DefaultDiskBytesPerSec = 2e9
	// DefaultPCIeBytesPerSec is a pinned host-to-GPU copy over PCIe 4.0 ×8
	// or 3.0 ×16 (16 GB consumer cards such as the RTX 4060 Ti have 8
	// lanes); a 4.0 ×16 link copies about twice as fast.
	DefaultPCIeBytesPerSec = 12e9
	// EngineStartCost is what a vLLM start costs beside the weights and the
	// compilation: the processes and their imports, the tokenizer, the
	// memory profiling run and the KV cache's allocation. With the terms
	// below it puts the shipped models' cold starts at 30-40 s, inside the
	// 20-60 s reported for 7B to 32B models on one GPU.
	EngineStartCost = 15 * time.Second
	// CompileCost is torch.compile's share of a start (vLLM caches what it
	// compiled, so the first start of a model takes longer).
	CompileCost = 10 * time.Second
	// WakeCost is a wake's fixed share: the wake-up call, the check that
	// the engine is awake and the 1-token warm-up (the lower end of the
	// 0.1-0.8 s vLLM reports for level-1 wakes of small models).
	WakeCost = 100 * time.Millisecond
	// EngineHostBytes is the host RAM one engine's processes hold (the API
	// server, the engine core and its GPU workers, with torch and CUDA's
	// libraries), awake or asleep.
	EngineHostBytes = 3 * gib
)

// GraphsCaptureCost is the CUDA graphs' capture for an engine serving at
// most maxNumSeqs sequences (0: vLLM's default): the captured batch sizes
// go up to max_num_seqs, as for their memory (GraphsBytes).
func GraphsCaptureCost(maxNumSeqs int) time.Duration {
	if maxNumSeqs <= 0 {
		maxNumSeqs = DefaultMaxNumSeqs
	}
	maxNumSeqs = min(maxNumSeqs, 512)
	return time.Second + 4*time.Second*time.Duration(maxNumSeqs)/512
}

// Rates are the throughputs the estimates assume.
type Rates struct {
	DiskBytesPerSec float64 `json:"disk_bytes_per_second"`
	PCIeBytesPerSec float64 `json:"pcie_bytes_per_second"`
}

// DefaultRates are the stated defaults.
var DefaultRates = Rates{DiskBytesPerSec: DefaultDiskBytesPerSec, PCIeBytesPerSec: DefaultPCIeBytesPerSec}

// Meminfo is the host's memory as /proc/meminfo reports it.
type Meminfo struct {
	TotalBytes     uint64 `json:"mem_total_bytes"`
	AvailableBytes uint64 `json:"mem_available_bytes"`
	// Source is "/proc/meminfo" or the flag that stood in for it.
	Source string `json:"source"`
}

// ParseMeminfo reads MemTotal and MemAvailable from /proc/meminfo's text.
func ParseMeminfo(r io.Reader) (Meminfo, error) {
	m := Meminfo{Source: "/proc/meminfo"}
	var seen int
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		var dst *uint64
		switch name {
		case "MemTotal":
			dst = &m.TotalBytes
		case "MemAvailable":
			dst = &m.AvailableBytes
		}
		if !ok || dst == nil {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return m, fmt.Errorf("/proc/meminfo: %s: want \"N kB\", not %q", name, strings.TrimSpace(rest))
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return m, fmt.Errorf("/proc/meminfo: %s: %w", name, err)
		}
		*dst = n * kib
		seen++
	}
	if err := sc.Err(); err != nil {
		return m, fmt.Errorf("/proc/meminfo: %w", err)
	}
	if m.TotalBytes == 0 || seen < 2 {
		return m, errors.New("/proc/meminfo: no MemTotal or no MemAvailable line")
	}
	return m, nil
}

// ReadMeminfo reads the host's /proc/meminfo.
func ReadMeminfo() (Meminfo, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return Meminfo{}, err
	}
	defer f.Close()
	return ParseMeminfo(f)
}

// Measured are the switch costs vagentd timed for one agent (the latest of
// each kind; zero: none yet), and the host RAM it holds while it sleeps.
type Measured struct {
	ColdStart  time.Duration
	WakeLevel1 time.Duration
	WakeLevel2 time.Duration
	// HostBytes is what the agent holds in host RAM now, asleep.
	HostBytes uint64
}

// Cost is one switch cost in seconds: an estimate with its terms, or what
// vagentd measured.
type Cost struct {
	Seconds  float64 `json:"seconds"`
	Measured bool    `json:"measured"`
	// Parts are the estimate's terms; a measured cost keeps the estimate's
	// total in Estimate for comparison.
	Parts    []Part  `json:"parts,omitempty"`
	Estimate float64 `json:"estimate_seconds,omitempty"`
}

// Part is one term of an estimate.
type Part struct {
	What    string  `json:"what"`
	Seconds float64 `json:"seconds"`
}

func estimated(parts ...Part) *Cost {
	c := &Cost{}
	for _, p := range parts {
		if p.Seconds > 0 {
			c.Parts = append(c.Parts, p)
			c.Seconds += p.Seconds
		}
	}
	return c
}

// measure replaces c by d when vagentd measured it.
func (c *Cost) measure(d time.Duration) {
	if d <= 0 {
		return
	}
	c.Estimate, c.Seconds, c.Measured, c.Parts = c.Seconds, d.Seconds(), true, nil
}

// AgentSwitch is one agent's switch costs and the host RAM it holds asleep.
type AgentSwitch struct {
	Agent string `json:"agent"`
	// Mode is the agent's switch_mode, Level its sleep_level (sleep agents).
	Mode  string `json:"switch_mode"`
	Level int    `json:"sleep_level,omitempty"`
	// Known is false when the model's figures are unknown (Why says so):
	// then there are no costs.
	Known      bool   `json:"known"`
	Why        string `json:"why,omitempty"`
	ColdStart  *Cost  `json:"cold_start,omitempty"`
	WakeLevel1 *Cost  `json:"wake_level1,omitempty"`
	WakeLevel2 *Cost  `json:"wake_level2,omitempty"`
	// HostLevel1Bytes and HostLevel2Bytes are the host RAM it holds
	// asleep at each level: the whole checkpoint plus its engine, or the
	// engine alone.
	HostLevel1Bytes uint64 `json:"host_bytes_asleep_level1,omitempty"`
	HostLevel2Bytes uint64 `json:"host_bytes_asleep_level2,omitempty"`
	// ResidualBytes is what it keeps on each GPU asleep (SleepResidualBytes).
	ResidualBytes uint64 `json:"gpu_residual_bytes,omitempty"`
}

func seconds(bytes uint64, perSec float64) float64 {
	if perSec <= 0 {
		return 0
	}
	return float64(bytes) / perSec
}

// agentSwitch estimates e's agent's switch costs and puts in what m
// measured.
func agentSwitch(cfg *config.Config, a *config.Agent, e *Estimate, r Rates, m Measured) AgentSwitch {
	s := AgentSwitch{Agent: a.Name, Mode: cfg.SwitchMode(a), ResidualBytes: SleepResidualBytes(a)}
	if cfg.Sleeps(a) {
		s.Level = a.Level()
	}
	if e == nil || e.Facts == nil || !e.Facts.Complete() || e.WeightsBytes == 0 {
		// No estimate; what vagentd measured still counts.
		s.Why = "its model's figures are unknown (vagentctl pull, then plan again)"
		for _, c := range []struct {
			dst **Cost
			d   time.Duration
		}{{&s.ColdStart, m.ColdStart}, {&s.WakeLevel1, m.WakeLevel1}, {&s.WakeLevel2, m.WakeLevel2}} {
			if c.d > 0 {
				*c.dst = &Cost{Seconds: c.d.Seconds(), Measured: true}
			}
		}
		return s
	}
	s.Known = true
	read := Part{"read the checkpoint from disk", seconds(e.Facts.WeightsBytes, r.DiskBytesPerSec)}
	copyIn := Part{"copy the weights to the GPU", seconds(e.WeightsBytes, r.PCIeBytesPerSec)}
	wake := Part{"wake call, check and 1-token warm-up", WakeCost.Seconds()}
	var compile, graphs Part
	if !a.EnforceEager {
		compile = Part{"torch.compile", CompileCost.Seconds()}
		graphs = Part{"CUDA graph capture", GraphsCaptureCost(a.MaxNumSeqs).Seconds()}
	}
	s.ColdStart = estimated(Part{"engine start", EngineStartCost.Seconds()}, read, copyIn, compile, graphs)
	s.WakeLevel1 = estimated(copyIn, wake)
	s.WakeLevel2 = estimated(read, copyIn, wake)
	s.ColdStart.measure(m.ColdStart)
	s.WakeLevel1.measure(m.WakeLevel1)
	s.WakeLevel2.measure(m.WakeLevel2)
	s.HostLevel1Bytes = e.WeightsBytes*uint64(max(e.TP, 1)) + EngineHostBytes
	s.HostLevel2Bytes = EngineHostBytes
	return s
}

// HostRAM is the host RAM sleeping agents may hold.
type HostRAM struct {
	Meminfo
	// HeldBytes is what sleeping agents hold now, as vagentd measured it:
	// MemAvailable no longer counts it.
	HeldBytes uint64 `json:"held_by_sleepers_bytes"`
	// BudgetBytes is what sleepers may hold, by the supervisor's rule:
	// supervisor.host_ram_budget_mib, else half of MemAvailable plus what
	// sleepers hold, less the awake engine's processes (EngineHostBytes).
	BudgetBytes uint64 `json:"sleep_budget_bytes"`
	BudgetFrom  string `json:"sleep_budget_from"`
}

func hostRAM(cfg *config.Config, mem Meminfo, held uint64) HostRAM {
	h := HostRAM{Meminfo: mem, HeldBytes: held}
	if b := cfg.Supervisor.HostRAMBudgetMiB; b > 0 {
		h.BudgetBytes, h.BudgetFrom = b*mib, "supervisor.host_ram_budget_mib"
		return h
	}
	h.BudgetBytes = sub(mem.AvailableBytes+held, EngineHostBytes) / 2
	h.BudgetFrom = fmt.Sprintf("(MemAvailable + what sleepers hold - one awake engine's %s) / 2", GiB(EngineHostBytes))
	return h
}

// SleepFit is whether the host can hold a set of sleep agents asleep: the
// most of them asleep at once on their GPUs (all but one per GPU where
// only sleep agents take turns, all where a restart agent takes turns with
// them, at most as many as the GPU has room for beside the largest budget:
// each keeps its residual there) and the host RAM they hold.
type SleepFit struct {
	// Agents are the sleep agents considered.
	Agents []string `json:"agents"`
	// Level is the sleep level they are judged at (0: their own levels,
	// which differ).
	Level int `json:"level"`
	// Asleep are the most that sleep at once; Stopped are agents the
	// GPU has no room to keep asleep beside the others (a switch stops the
	// least recently used sleeper instead: its next start is cold).
	Asleep  []string `json:"asleep_at_once"`
	Stopped []string `json:"stopped_for_gpu_room"`
	// NeedBytes is the host RAM Asleep hold at Level.
	NeedBytes uint64 `json:"need_bytes"`
	// Fits: NeedBytes is within the host RAM budget.
	Fits bool `json:"fits"`
	// GPURoom says, where a GPU cannot keep every sleeper, how many it can.
	GPURoom string `json:"gpu_room,omitempty"`
	Why     string `json:"why"`
}

// sleepFit judges sleepers, the sleep agents by name with the level each
// sleeps at.
func sleepFit(cfg *config.Config, p *Plan, costs map[string]*AgentSwitch, sleepers map[string]int, host HostRAM) *SleepFit {
	f := &SleepFit{Agents: []string{}, Asleep: []string{}, Stopped: []string{}}
	for _, a := range cfg.Agents {
		if l, ok := sleepers[a.Name]; ok {
			f.Agents = append(f.Agents, a.Name)
			switch {
			case f.Level == 0:
				f.Level = l
			case f.Level != l:
				f.Level = -1
			}
		}
	}
	f.Level = max(f.Level, 0) // mixed levels: 0
	need := func(name string) uint64 {
		if sleepers[name] == 1 {
			return costs[name].HostLevel1Bytes
		}
		return costs[name].HostLevel2Bytes
	}
	asleep := map[string]bool{}
	stopped := map[string]bool{}
	var rooms []string
	for _, g := range p.GPUs {
		var cands []*config.Agent
		allSleep := true
		var maxBudget uint64
		for _, name := range g.Agents {
			e := p.Agent(name)
			if e == nil || e.Status != Fits {
				continue // never runs here: takes no turn
			}
			_, sleeps := sleepers[name]
			if sleeps && costs[name].Known {
				cands = append(cands, cfg.Agent(name))
			} else if !sleeps {
				allSleep = false
			}
			maxBudget = max(maxBudget, e.BudgetBytes)
		}
		if len(cands) == 0 {
			continue
		}
		// Largest host need first: the worst case keeps the smallest awake.
		sort.SliceStable(cands, func(i, j int) bool { return need(cands[i].Name) > need(cands[j].Name) })
		if allSleep {
			cands = cands[:len(cands)-1]
		}
		room := sub(g.UsableBytes, maxBudget)
		var used uint64
		n := 0
		for _, a := range cands {
			r := SleepResidualBytes(a)
			if asleep[a.Name] {
				// Asleep on another of its GPUs (tensor parallelism): its
				// residual is here too.
				used += r
				n++
				continue
			}
			if used+r > room {
				stopped[a.Name] = true
				continue
			}
			used += r
			asleep[a.Name] = true
			n++
		}
		if n < len(cands) {
			msg := fmt.Sprintf("GPU %d keeps the CUDA context and graphs of %s asleep beside a %s budget (%s left of %s usable)",
				g.Index, plural(n, "sleeper"), GiB(maxBudget), GiB(room), GiB(g.UsableBytes))
			if n == 0 && g.TotalBytes > 0 {
				// The budget that leaves room for the smallest residual.
				r := SleepResidualBytes(cands[len(cands)-1])
				for _, a := range cands {
					r = min(r, SleepResidualBytes(a))
				}
				msg += fmt.Sprintf("; gpu_memory_utilization %s or less leaves room for one", floorUtil(sub(g.UsableBytes, r), g.TotalBytes))
			}
			rooms = append(rooms, msg)
		}
	}
	for _, a := range cfg.Agents {
		switch {
		case asleep[a.Name]:
			f.Asleep = append(f.Asleep, a.Name)
			f.NeedBytes += need(a.Name)
		case stopped[a.Name]:
			f.Stopped = append(f.Stopped, a.Name)
		}
	}
	f.Fits = f.NeedBytes <= host.BudgetBytes
	what := "weights and engines"
	switch f.Level {
	case 0:
		what = "weights at level 1, engines"
	case 2:
		what = "engines only"
	}
	at := fmt.Sprintf("at most %d asleep at once (%s)", len(f.Asleep), strings.Join(f.Asleep, ", "))
	lvl := fmt.Sprintf("at level %d", f.Level)
	if f.Level == 0 {
		lvl = "at their levels"
	}
	switch {
	case len(f.Asleep) == 0:
		f.Fits = false
		f.Why = "no agent can stay asleep"
	case f.Fits:
		f.Why = fmt.Sprintf("%s hold %s %s (%s), within the %s sleepers may hold",
			at, GiB(f.NeedBytes), lvl, what, GiB(host.BudgetBytes))
	default:
		f.Why = fmt.Sprintf("%s would hold %s %s (%s), more than the %s sleepers may hold",
			at, GiB(f.NeedBytes), lvl, what, GiB(host.BudgetBytes))
	}
	if len(rooms) > 0 {
		f.GPURoom = strings.Join(rooms, "; ")
		f.Why += "; " + f.GPURoom + ": past that a switch stops the least recently used sleeper, which then starts cold"
	}
	if host.BudgetBytes > host.TotalBytes && host.TotalBytes > 0 {
		f.Why += fmt.Sprintf("; supervisor.host_ram_budget_mib exceeds the host's %s (MemTotal)", GiB(host.TotalBytes))
	}
	return f
}

// Advice is the recommendation on sleep mode for the agents that take
// turns on a GPU.
type Advice struct {
	// Mode is what to set: "sleep" (Level 1 or 2), or "restart" where
	// sleep mode cannot help; "" when no agent takes turns.
	Mode  string `json:"switch_mode,omitempty"`
	Level int    `json:"sleep_level,omitempty"`
	// Agents are the agents that take turns (each fits its GPU but not
	// beside the others): only their switches cost a start.
	Agents []string `json:"agents"`
	// AlreadySet: the configuration does what Mode says.
	AlreadySet bool   `json:"already_set"`
	Text       string `json:"text"`
	// Level1 is how the agents that take turns would sleep at level 1.
	Level1 *SleepFit `json:"level1,omitempty"`
}

// Switching is the plan's view of switch costs: per agent the cold start
// and the wakes, whether the host RAM holds the configured sleepers, and
// whether sleep mode is worth setting.
type Switching struct {
	Rates     Rates         `json:"rates"`
	Constants Constants     `json:"constants"`
	Host      HostRAM       `json:"host_ram"`
	Agents    []AgentSwitch `json:"agents"`
	// Configured is the configured sleep agents' fit; nil when none sleeps.
	Configured *SleepFit `json:"configured,omitempty"`
	Advice     Advice    `json:"advice"`
}

// Constants are the estimates' fixed terms, as the JSON states them.
type Constants struct {
	EngineStartSeconds float64 `json:"engine_start_seconds"`
	CompileSeconds     float64 `json:"torch_compile_seconds"`
	WakeSeconds        float64 `json:"wake_seconds"`
	EngineHostBytes    uint64  `json:"engine_host_bytes"`
}

// Switch works out p's switch costs on a host with mem, at rates, with
// what vagentd measured by agent name (nil: nothing).
func Switch(cfg *config.Config, p *Plan, mem Meminfo, r Rates, measured map[string]Measured) *Switching {
	s := &Switching{Rates: r, Constants: Constants{EngineStartCost.Seconds(), CompileCost.Seconds(), WakeCost.Seconds(), EngineHostBytes}}
	var held uint64
	for _, m := range measured {
		held += m.HostBytes
	}
	s.Host = hostRAM(cfg, mem, held)
	costs := map[string]*AgentSwitch{}
	for _, a := range cfg.Agents {
		s.Agents = append(s.Agents, agentSwitch(cfg, a, p.Agent(a.Name), r, measured[a.Name]))
	}
	for i := range s.Agents {
		costs[s.Agents[i].Agent] = &s.Agents[i]
	}
	configured := map[string]int{}
	for _, a := range cfg.Agents {
		if cfg.Sleeps(a) {
			configured[a.Name] = a.Level()
		}
	}
	if len(configured) > 0 {
		s.Configured = sleepFit(cfg, p, costs, configured, s.Host)
	}
	s.Advice = advise(cfg, p, costs, s.Host)
	return s
}

// advise recommends sleep mode for the agents that take turns: level 1
// where the host RAM holds them, level 2 where it holds only their
// engines, else restart; and says why not.
func advise(cfg *config.Config, p *Plan, costs map[string]*AgentSwitch, host HostRAM) Advice {
	adv := Advice{Agents: []string{}}
	turns := map[string]bool{}
	at := func(level int) map[string]int {
		m := map[string]int{}
		for n := range turns {
			m[n] = level
		}
		return m
	}
	for _, g := range p.GPUs {
		// The agents that fit take turns unless they all run together.
		fitting := append([]string{}, g.AloneOnly...)
		for _, set := range g.Together {
			fitting = append(fitting, set...)
		}
		if len(g.Together) == 1 && len(g.AloneOnly) == 0 || len(fitting) < 2 {
			continue
		}
		for _, n := range fitting {
			if costs[n].Known {
				turns[n] = true
			}
		}
	}
	for _, a := range cfg.Agents {
		if turns[a.Name] {
			adv.Agents = append(adv.Agents, a.Name)
		}
	}
	if len(adv.Agents) == 0 {
		adv.Text = "no agent takes turns with another on its GPU: there are no switches to make cheaper"
		return adv
	}
	set := func(mode string, level int) bool {
		for _, n := range adv.Agents {
			a := cfg.Agent(n)
			if cfg.SwitchMode(a) != mode || (mode == config.SwitchSleep && a.Level() != level) {
				return false
			}
		}
		return true
	}
	names := strings.Join(adv.Agents, ", ")
	cold, w1, w2 := costRange(adv.Agents, costs)
	f1 := sleepFit(cfg, p, costs, at(1), host)
	adv.Level1 = f1
	if len(f1.Asleep) == 0 {
		adv.Mode, adv.AlreadySet = config.SwitchRestart, set(config.SwitchRestart, 0)
		adv.Text = fmt.Sprintf("keep switch_mode = \"restart\" for %s: %s", names, f1.GPURoom)
		return adv
	}
	if f1.Fits {
		adv.Mode, adv.Level, adv.AlreadySet = config.SwitchSleep, 1, set(config.SwitchSleep, 1)
		adv.Text = fmt.Sprintf("switch_mode = \"sleep\" for %s: a switch back is a level-1 wake of about %s instead of a cold start of about %s; %s",
			names, w1, cold, f1.Why)
		return adv
	}
	f2 := sleepFit(cfg, p, costs, at(2), host)
	if f2.Fits {
		adv.Mode, adv.Level, adv.AlreadySet = config.SwitchSleep, 2, set(config.SwitchSleep, 2)
		adv.Text = fmt.Sprintf("switch_mode = \"sleep\" with sleep_level = 2 for %s: a wake reloads the weights in about %s instead of a cold start of about %s; "+
			"not level 1: %s", names, w2, cold, f1.Why)
		return adv
	}
	adv.Mode, adv.AlreadySet = config.SwitchRestart, set(config.SwitchRestart, 0)
	adv.Text = fmt.Sprintf("keep switch_mode = \"restart\" for %s: %s", names, f2.Why)
	return adv
}

// costRange writes the range of the agents' cold starts and wakes.
func costRange(agents []string, costs map[string]*AgentSwitch) (cold, wake1, wake2 string) {
	rng := func(get func(*AgentSwitch) *Cost) string {
		lo, hi := -1.0, 0.0
		for _, n := range agents {
			c := get(costs[n])
			if c == nil {
				continue
			}
			if lo < 0 || c.Seconds < lo {
				lo = c.Seconds
			}
			hi = max(hi, c.Seconds)
		}
		l, h := fmtSeconds(lo), fmtSeconds(hi)
		if l == h {
			return h
		}
		return strings.TrimSuffix(l, " s") + "-" + h
	}
	return rng(func(a *AgentSwitch) *Cost { return a.ColdStart }),
		rng(func(a *AgentSwitch) *Cost { return a.WakeLevel1 }),
		rng(func(a *AgentSwitch) *Cost { return a.WakeLevel2 })
}

// fmtSeconds writes a duration in seconds: one decimal under a minute.
func fmtSeconds(s float64) string {
	if s >= 60 {
		return fmt.Sprintf("%.0f s", s)
	}
	return fmt.Sprintf("%.1f s", s)
}

// WriteSwitchText prints the switch costs for people: a table of each
// agent's cold start and wakes, the host RAM, whether the configured
// sleepers fit it, and the advice on sleep mode.
func (s *Switching) WriteSwitchText(w io.Writer) {
	fmt.Fprintf(w, "switch costs, estimated from the checkpoint read at %s/s, the weights copied over PCIe at %s/s, an engine start of %s and torch.compile %s (\"measured\": timed by vagentd):\n",
		gbText(s.Rates.DiskBytesPerSec), gbText(s.Rates.PCIeBytesPerSec), fmtSeconds(EngineStartCost.Seconds()), fmtSeconds(CompileCost.Seconds()))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "AGENT\tSWITCH\tCOLD START\tWAKE L1\tWAKE L2\tHOST RAM ASLEEP L1\tL2")
	for _, a := range s.Agents {
		mode := a.Mode
		if a.Level > 0 {
			mode += " L" + strconv.Itoa(a.Level)
		}
		if !a.Known {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t?\t?\n", a.Agent, mode, costText(a.ColdStart), costText(a.WakeLevel1), costText(a.WakeLevel2))
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.Agent, mode, costText(a.ColdStart), costText(a.WakeLevel1),
			costText(a.WakeLevel2), GiB(a.HostLevel1Bytes), GiB(a.HostLevel2Bytes))
	}
	tw.Flush()
	h := s.Host
	fmt.Fprintf(w, "host RAM: %s, %s available (%s); sleepers may hold %s (%s)\n",
		GiB(h.TotalBytes), GiB(h.AvailableBytes), h.Source, GiB(h.BudgetBytes), h.BudgetFrom)
	if c := s.Configured; c != nil {
		verdict := "fit"
		if !c.Fits {
			verdict = "DO NOT FIT"
			if c.Level == 1 {
				verdict += " (the supervisor sleeps at level 2 what the budget cannot hold, and stops the least recently used sleeper)"
			}
		}
		fmt.Fprintf(w, "sleep agents %s: %s\n", verdict, c.Why)
	}
	fmt.Fprintf(w, "advice: %s\n", s.Advice.Text)
}

func costText(c *Cost) string {
	if c == nil {
		return "?"
	}
	s := fmtSeconds(c.Seconds)
	if c.Measured {
		s += " measured"
	}
	return s
}

// gbText writes a throughput in decimal GB.
func gbText(perSec float64) string {
	return strconv.FormatFloat(perSec/1e9, 'f', -1, 64) + " GB"
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
