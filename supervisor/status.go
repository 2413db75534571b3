package supervisor

import (
	"context"
	"time"

	"github.com/vagent-dev/vagent/config"
)

// AgentStatus is one agent as systemd and the GPU see it now.
type AgentStatus struct {
	Agent       string    `json:"agent"`
	Unit        string    `json:"unit"`
	LoadState   string    `json:"load_state"`
	ActiveState string    `json:"active_state"`
	SubState    string    `json:"sub_state"`
	MainPID     int       `json:"main_pid"`
	Since       time.Time `json:"since,omitzero"`
	Restarts    int       `json:"restarts"`
	Result      string    `json:"result"`
	Port        int       `json:"port"`
	GPUs        []int     `json:"gpus"`
	Healthy     bool      `json:"healthy"`
	VRAMBytes   uint64    `json:"vram_bytes"`
	// BudgetBytes is what the agent may take of its first GPU.
	BudgetBytes uint64 `json:"budget_bytes"`
	// Cards are the agent's share of each of its GPUs, in the order of
	// its gpus: VRAMBytes split by card.
	Cards []CardShare `json:"cards"`
	// SwitchMode is "restart" or "sleep" (config.Config.SwitchMode).
	SwitchMode string `json:"switch_mode"`
	// Sleeping is true when the agent's engine runs but sleeps: its
	// VRAMBytes are the residual; it serves nothing until woken. (Its
	// /health stays 200, so Healthy stays true.)
	Sleeping bool `json:"sleeping"`
	// SleepLevel is the level it sleeps at, when known (1 or 2).
	SleepLevel int `json:"sleep_level,omitempty"`
	// HostBytes is the host memory a sleeping agent holds: its weights in
	// host RAM, or its cgroup's memory where that is more.
	HostBytes uint64 `json:"host_bytes,omitempty"`
	// Backoff, while the agent is in its start backoff, says until when
	// and why: its starts failed, and it is not started again before.
	Backoff *Backoff `json:"backoff,omitempty"`
	// Measured are the cold start and wakes this supervisor timed for the
	// agent (vagentd's: vagentctl plan uses them); nil before any.
	Measured *SwitchTimes `json:"measured,omitempty"`
}

// CardShare is an agent's part of one GPU.
type CardShare struct {
	GPU int `json:"gpu"`
	// VRAMBytes is what the agent's processes hold on this GPU now.
	VRAMBytes uint64 `json:"vram_bytes"`
	// BudgetBytes is what the agent may take of this GPU.
	BudgetBytes uint64 `json:"budget_bytes"`
	// TotalBytes is the GPU's memory.
	TotalBytes uint64 `json:"total_bytes"`
}

// Status reports every configured agent, rebuilt from systemd, the GPU and,
// for sleep agents, their engines' /is_sleeping on each call.
func (s *Supervisor) Status(ctx context.Context) ([]AgentStatus, error) {
	mem, err := s.o.GPU.Memory(ctx)
	if err != nil {
		return nil, err
	}
	usage, byCard, err := s.gpuUse(ctx)
	if err != nil {
		return nil, err
	}
	var hosted map[string]uint64
	if hr, ok := s.o.GPU.(HostReporter); ok {
		if hosted, err = hr.AgentHostBytes(ctx); err != nil {
			return nil, err
		}
	}
	out := make([]AgentStatus, 0, len(s.cfg.Agents))
	for _, a := range s.cfg.Agents {
		st, err := s.o.Systemd.State(ctx, a.Unit())
		if err != nil {
			return nil, err
		}
		as := AgentStatus{
			Agent: a.Name, Unit: a.Unit(),
			LoadState: st.LoadState, ActiveState: st.ActiveState, SubState: st.SubState,
			MainPID: st.MainPID, Restarts: st.NRestarts, Result: st.Result,
			Port: a.Port, GPUs: a.GPUs, VRAMBytes: usage[a.Name],
			BudgetBytes: a.Budget(mem[a.GPUs[0]].Total, 0),
			SwitchMode:  s.cfg.SwitchMode(a),
		}
		for _, g := range a.GPUs {
			as.Cards = append(as.Cards, CardShare{GPU: g, VRAMBytes: byCard[g][a.Name],
				BudgetBytes: a.Budget(mem[g].Total, 0), TotalBytes: mem[g].Total})
		}
		if st.ActiveState == "active" {
			as.Since = st.Since
		}
		if b, ok := s.Backoff(a.Name); ok {
			as.Backoff = &b
		}
		as.Measured = s.timings.get(a.Name)
		if st.Running() {
			as.Healthy = s.healthy(ctx, a)
		}
		if as.Healthy && s.cfg.Sleeps(a) {
			as.Sleeping, _ = s.isSleeping(ctx, a)
			if as.Sleeping {
				as.SleepLevel = s.sleepNote(a, st)
				as.HostBytes = max(hosted[a.Name], st.MemoryBytes)
			}
		}
		out = append(out, as)
	}
	return out, nil
}

func (s *Supervisor) gpuUse(ctx context.Context) (usage map[string]uint64, byCard map[int]map[string]uint64, err error) {
	return GPUUse(ctx, s.o.GPU, s.cfg.Agents)
}

// GPUUse is the GPU memory each of agents holds, by agent name summed over
// its GPUs, and by GPU index then agent name, from one reading of the
// GPU's processes: per GPU as view reports it where it can (CardReporter),
// else each agent's total spread evenly over its GPUs, as tensor
// parallelism spreads it.
func GPUUse(ctx context.Context, view GPU, agents []*config.Agent) (usage map[string]uint64, byCard map[int]map[string]uint64, err error) {
	if cr, ok := view.(CardReporter); ok {
		if byCard, err = cr.AgentBytesByGPU(ctx); err != nil {
			return nil, nil, err
		}
		usage = map[string]uint64{}
		for _, m := range byCard {
			for a, b := range m {
				usage[a] += b
			}
		}
		return usage, byCard, nil
	}
	if usage, err = view.AgentBytes(ctx); err != nil {
		return nil, nil, err
	}
	byCard = map[int]map[string]uint64{}
	for _, a := range agents {
		for _, g := range a.GPUs {
			if byCard[g] == nil {
				byCard[g] = map[string]uint64{}
			}
			byCard[g][a.Name] = usage[a.Name] / uint64(len(a.GPUs))
		}
	}
	return usage, byCard, nil
}
