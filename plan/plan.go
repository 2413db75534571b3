// Package plan estimates, before anything runs, how each agent's vLLM engine
// uses its GPU: the weights, the KV cache bytes per token, the activation
// reserve and the CUDA context and graphs, against the agent's budget
// (gpu_memory_utilization × the GPU's memory). From that it says whether an
// agent fits its GPU alone and why, how long a context fits, and which
// agents can run together.
//
// The rules, after vLLM's own profiling (reference/vllm.md, "VRAM arithmetic"):
//
//   - Weights: the sum of the checkpoint's *.safetensors, split evenly over
//     tensor_parallel_size GPUs (doubled for dtype = "float32" on a 16-bit
//     unquantized checkpoint).
//   - KV bytes per token and GPU: 2 (K and V) × num_hidden_layers ×
//     ceil(num_key_value_heads / tensor_parallel_size) × head_dim × dtype
//     bytes, where dtype bytes are 1 for kv_cache_dtype fp8*, 4 for dtype
//     float32, else 2.
//   - Activation reserve (vLLM profiles the forward pass's peak with a full
//     batch of dummy tokens; it grows with hidden and intermediate sizes,
//     which grow with the model): 1 GiB when the weights per GPU are under
//     2 GiB, 1.5 GiB up to 16 GiB, 2 GiB above.
//   - CUDA context and non-torch memory: 512 MiB per GPU, plus 256 MiB of
//     NCCL buffers with tensor parallelism.
//   - CUDA graphs (none with enforce_eager): 256 MiB plus 1 GiB ×
//     max_num_seqs / 512 (max_num_seqs defaults to 256: 0.75 GiB), since the
//     captured batch sizes go up to max_num_seqs. Before vLLM 0.21 they are
//     allocated after the KV cache, outside the budget, so they must fit
//     beside it on the card; from 0.21 they are profiled inside the budget
//     and come out of the KV cache.
//   - KV cache = budget − weights − activations − context (− graphs from
//     0.21), or kv_cache_memory_bytes when an agent pins it.
//   - The largest max_model_len that fits is the KV cache divided by the KV
//     bytes per token, rounded down to a multiple of 256 tokens (vLLM itself
//     works in blocks of 16; 256 leaves a margin and gives the round numbers
//     configurations use), and capped at the model's max_position_embeddings.
//     A configured max_model_len fits when its blocks of 16 tokens fit, as
//     vLLM checks at start.
package plan

import (
	"context"
	"fmt"
	"math"
	"math/bits"
	"sort"
	"strconv"
	"strings"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/engine"
)

const (
	kib = uint64(1) << 10
	mib = uint64(1) << 20
	gib = uint64(1) << 30
)

// Rule constants; see the package comment.
const (
	// LenMultiple is what the largest fitting max_model_len is rounded
	// down to.
	LenMultiple = 256
	// BlockTokens is vLLM's KV block size: a request's context is held in
	// whole blocks.
	BlockTokens = 16
	// ContextBytes is the CUDA context and other non-torch memory per GPU.
	ContextBytes = 512 * mib
	// NCCLBytes is added per GPU with tensor parallelism.
	NCCLBytes = 256 * mib
	// DefaultMaxNumSeqs is vLLM's max_num_seqs when an agent sets none.
	DefaultMaxNumSeqs = 256
)

// ActivationBytes is the activation reserve for weightsPerGPU bytes of
// weights on one GPU.
func ActivationBytes(weightsPerGPU uint64) uint64 {
	switch {
	case weightsPerGPU < 2*gib:
		return gib
	case weightsPerGPU <= 16*gib:
		return gib + gib/2
	}
	return 2 * gib
}

// GraphsBytes is the CUDA graphs' memory for an engine serving at most
// maxNumSeqs sequences at once (0: vLLM's default).
func GraphsBytes(maxNumSeqs int) uint64 {
	if maxNumSeqs <= 0 {
		maxNumSeqs = DefaultMaxNumSeqs
	}
	maxNumSeqs = min(maxNumSeqs, 512)
	return 256*mib + gib*uint64(maxNumSeqs)/512
}

// SleepResidualBytes is what agent a's engine keeps on each of its GPUs
// once asleep: vLLM's sleep frees the weights and the KV cache only, so
// the CUDA context (with NCCL's buffers under tensor parallelism) and the
// CUDA graphs (none with enforce_eager) stay.
func SleepResidualBytes(a *config.Agent) uint64 {
	r := ContextBytes
	if a.TensorParallelSize > 1 {
		r += NCCLBytes
	}
	if !a.EnforceEager {
		r += GraphsBytes(a.MaxNumSeqs)
	}
	return r
}

// SleepResidual is the supervisor's estimate of what a sleeping agent
// holds, summed over its GPUs (as the GPU reports agents' memory), until a
// sleep of its engine has been measured.
func SleepResidual(a *config.Agent) uint64 {
	return SleepResidualBytes(a) * uint64(max(len(a.GPUs), 1))
}

// KVDtypeBytes is the bytes of one KV cache element for agent a.
func KVDtypeBytes(a *config.Agent) uint64 {
	switch {
	case strings.HasPrefix(a.KVCacheDtype, "fp8"):
		return 1
	case a.Dtype == "float" || a.Dtype == "float32":
		return 4
	}
	// auto follows the model's dtype, which vLLM runs in 16 bits (it casts
	// float32 checkpoints to float16 under "auto").
	return 2
}

// KVBytesPerToken is the KV cache one token takes on each of tp GPUs.
func KVBytesPerToken(arch *Arch, dtypeBytes uint64, tp int) uint64 {
	if tp < 1 {
		tp = 1
	}
	heads := (arch.KVHeads + tp - 1) / tp
	return 2 * uint64(arch.Layers) * uint64(heads) * uint64(arch.HeadDim) * dtypeBytes
}

// Status is an agent's verdict.
type Status string

// The verdicts.
const (
	Fits    Status = "fits"
	NoFit   Status = "does-not-fit"
	Unknown Status = "unknown"
)

// Estimate is one agent's memory on each of its GPUs. Byte figures are per
// GPU.
type Estimate struct {
	Agent       string  `json:"agent"`
	Model       string  `json:"model"`
	GPUs        []int   `json:"gpus"`
	TP          int     `json:"tensor_parallel_size"`
	TotalBytes  uint64  `json:"gpu_total_bytes"`
	Utilization float64 `json:"gpu_memory_utilization"`
	BudgetBytes uint64  `json:"budget_bytes"`

	WeightsBytes    uint64 `json:"weights_bytes"`
	KVPerTokenBytes uint64 `json:"kv_bytes_per_token"`
	KVDtypeBytes    uint64 `json:"kv_dtype_bytes"`
	ActivationBytes uint64 `json:"activation_bytes"`
	ContextBytes    uint64 `json:"cuda_context_bytes"`
	GraphsBytes     uint64 `json:"cuda_graphs_bytes"`
	// GraphsInBudget: CUDA graphs come out of the budget (vLLM ≥ 0.21)
	// rather than on top of it.
	GraphsInBudget bool   `json:"cuda_graphs_in_budget"`
	KVCacheBytes   uint64 `json:"kv_cache_bytes"`
	// KVPinned: the agent sets kv_cache_memory_bytes.
	KVPinned bool `json:"kv_cache_pinned"`
	// PeakBytes is what the engine holds at most: the budget, plus CUDA
	// graphs when they are outside it.
	PeakBytes uint64 `json:"peak_bytes"`
	// SleepResidualBytes, for a sleep agent, is what it keeps on each GPU
	// while asleep (SleepResidualBytes): an estimate made before anything
	// ran; the supervisor counts the measured figure after a first sleep.
	SleepResidualBytes uint64 `json:"sleep_residual_bytes,omitempty"`

	Status Status `json:"status"`
	// Why explains the verdict in one sentence.
	Why string `json:"why"`

	// MaxModelLenFit is the largest max_model_len that fits (0 when none).
	MaxModelLenFit int `json:"max_model_len_fit"`
	// ModelMaxLen is the model's max_position_embeddings (0 when unknown);
	// MaxModelLenFit is capped at it (Capped).
	ModelMaxLen int  `json:"model_max_len"`
	Capped      bool `json:"max_model_len_capped"`
	// MaxModelLen is the configured max_model_len, or the model's own when
	// the agent sets none (FromModel).
	MaxModelLen    int    `json:"max_model_len"`
	FromModel      bool   `json:"max_model_len_from_model"`
	MaxModelLenOK  bool   `json:"max_model_len_fits"`
	MaxModelLenWhy string `json:"max_model_len_why,omitempty"`

	Facts *Facts `json:"facts"`
}

// OK reports whether the agent can start alone on its GPU as configured:
// it fits and so does its max_model_len.
func (e *Estimate) OK() bool { return e.Status == Fits && e.MaxModelLenOK }

// GPU is one GPU's view: which agents can run on it together.
type GPU struct {
	Index       int    `json:"index"`
	TotalBytes  uint64 `json:"total_bytes"`
	UsableBytes uint64 `json:"usable_bytes"`
	// Agents are every agent that uses this GPU.
	Agents []string `json:"agents"`
	// Together are the largest sets of agents that can run at once
	// (config.CannotShare says no pair in them conflicts), two or more each.
	Together [][]string `json:"together"`
	// AloneOnly are agents that fit alone but beside no other.
	AloneOnly []string `json:"alone_only"`
	// NeverFits are agents that do not fit this GPU even alone.
	NeverFits []string `json:"never_fits"`
	// Unknown are agents whose figures are unknown.
	Unknown []string `json:"unknown"`
}

// Plan is the estimate for a whole configuration.
type Plan struct {
	VLLMVersion    string `json:"vllm_version"`
	GraphsInBudget bool   `json:"cuda_graphs_in_budget"`
	// TotalSource says where the GPU sizes came from ("nvml",
	// "gpu.sim_total_mib", "--gpu-total-mib").
	TotalSource  string     `json:"gpu_total_source"`
	ReserveBytes uint64     `json:"reserve_bytes"`
	GPUs         []GPU      `json:"gpus"`
	Agents       []Estimate `json:"agents"`
	// Switching, when set (Switch), is what switches cost and whether the
	// host RAM holds the agents asleep.
	Switching *Switching `json:"switching,omitempty"`
}

// Failing are the agents that cannot start alone on their GPU as configured.
func (p *Plan) Failing() []Estimate {
	var out []Estimate
	for _, e := range p.Agents {
		if e.Status == NoFit || (e.Status == Fits && !e.MaxModelLenOK) {
			out = append(out, e)
		}
	}
	return out
}

// Agent returns the estimate of agent name, or nil.
func (p *Plan) Agent(name string) *Estimate {
	for i := range p.Agents {
		if p.Agents[i].Agent == name {
			return &p.Agents[i]
		}
	}
	return nil
}

// Make resolves every agent's facts with r and builds the plan.
func Make(ctx context.Context, cfg *config.Config, totals map[int]uint64, totalSource string, r *Resolver) *Plan {
	facts := map[string]*Facts{}
	for _, a := range cfg.Agents {
		facts[a.Name] = r.Facts(ctx, a)
	}
	return Build(cfg, totals, totalSource, facts)
}

// Build estimates every agent of cfg on GPUs of totals bytes (by index) from
// the model facts by agent name.
func Build(cfg *config.Config, totals map[int]uint64, totalSource string, facts map[string]*Facts) *Plan {
	p := &Plan{
		VLLMVersion:    cfg.Engine.VLLMVersion,
		GraphsInBudget: engine.GraphsInBudget(cfg.Engine.VLLMVersion),
		TotalSource:    totalSource,
		ReserveBytes:   cfg.GPU.ReserveMiB * mib,
	}
	for _, a := range cfg.Agents {
		p.Agents = append(p.Agents, estimate(cfg, a, totals, facts[a.Name], p.GraphsInBudget))
	}
	p.GPUs = sharing(cfg, p, totals)
	return p
}

func estimate(cfg *config.Config, a *config.Agent, totals map[int]uint64, f *Facts, graphsIn bool) Estimate {
	tp := max(a.TensorParallelSize, 1)
	e := Estimate{
		Agent: a.Name, Model: a.Model, GPUs: a.GPUs, TP: tp, Utilization: a.GPUMemoryUtilization,
		GraphsInBudget: graphsIn, Facts: f, MaxModelLen: a.MaxModelLen, KVPinned: a.KVCacheMemoryBytes > 0,
	}
	if cfg.Sleeps(a) {
		e.SleepResidualBytes = SleepResidualBytes(a)
	}
	for i, g := range a.GPUs {
		t, ok := totals[g]
		if !ok && len(totals) > 0 {
			// The sizes list every GPU of the host (NVML's devices, the
			// simulator's cards, or --gpu-total-mib for every GPU an agent
			// names): this one is not there, and the agent can never start.
			e.Status, e.Why = NoFit, fmt.Sprintf("does not fit: GPU %d is not on this host, which has GPU %s; change gpus in %s",
				g, joinInts(sortedKeys(totals)), a.File)
			return e
		}
		if t == 0 {
			e.Status, e.Why = Unknown, fmt.Sprintf("GPU %d's size is unknown (no driver: pass --gpu-total-mib)", g)
			return e
		}
		if i == 0 || t < e.TotalBytes {
			e.TotalBytes = t
		}
	}
	if f == nil || !f.Complete() {
		what := "its model's figures"
		switch {
		case f != nil && f.Arch != nil:
			what = "its weights' size"
		case f != nil && f.WeightsBytes > 0:
			what = "its config.json"
		}
		e.Status, e.Why = Unknown, fmt.Sprintf("%s are unknown: not in the HF cache, not from the Hub (offline or unreachable), and %s is not in the built-in table (vagentctl pull %s, then plan again)", what, a.Model, a.Name)
		return e
	}
	arch := f.Arch
	e.ModelMaxLen = arch.MaxPosition
	if e.MaxModelLen == 0 {
		e.MaxModelLen, e.FromModel = arch.MaxPosition, true
	}

	e.WeightsBytes = (f.WeightsBytes + uint64(tp) - 1) / uint64(tp)
	if (a.Dtype == "float" || a.Dtype == "float32") && arch.Quant == "" && arch.Dtype != "float32" {
		e.WeightsBytes *= 2
	}
	e.KVDtypeBytes = KVDtypeBytes(a)
	e.KVPerTokenBytes = KVBytesPerToken(arch, e.KVDtypeBytes, tp)
	e.ActivationBytes = ActivationBytes(e.WeightsBytes)
	e.ContextBytes = ContextBytes
	if tp > 1 {
		e.ContextBytes += NCCLBytes
	}
	if !a.EnforceEager {
		e.GraphsBytes = GraphsBytes(a.MaxNumSeqs)
	}
	overhead := e.WeightsBytes + e.ActivationBytes + e.ContextBytes
	if graphsIn {
		overhead += e.GraphsBytes
	}
	e.BudgetBytes = a.Budget(e.TotalBytes, overhead)
	if e.KVPinned {
		e.KVCacheBytes = a.KVCacheMemoryBytes
	} else if e.BudgetBytes > overhead {
		e.KVCacheBytes = e.BudgetBytes - overhead
	}
	e.PeakBytes = e.BudgetBytes
	if !graphsIn {
		e.PeakBytes += e.GraphsBytes
	}
	usable := sub(e.TotalBytes, cfg.GPU.ReserveMiB*mib)
	onGPU := fmt.Sprintf("GPU %d", a.GPUs[0])
	if tp > 1 {
		onGPU = fmt.Sprintf("each of GPUs %s (tensor_parallel_size %d)", joinInts(a.GPUs), tp)
	}
	minKV := e.KVPerTokenBytes * BlockTokens

	switch {
	case e.WeightsBytes+e.ContextBytes > e.TotalBytes:
		e.Status = NoFit
		e.Why = fmt.Sprintf("does not fit: its weights alone (%s, %s) exceed the whole %s card (%s); it needs a larger GPU or more of them (tensor_parallel_size)",
			GiB(e.WeightsBytes), GB(e.WeightsBytes), GiB(e.TotalBytes), onGPU)
		if e.WeightsBytes <= e.TotalBytes {
			e.Why = fmt.Sprintf("does not fit: its weights (%s) and the CUDA context (%s) exceed the whole %s card (%s); it needs a larger GPU",
				GiB(e.WeightsBytes), GiB(e.ContextBytes), GiB(e.TotalBytes), onGPU)
		}
	case !e.KVPinned && e.KVCacheBytes < minKV:
		need := overhead + uint64(max(e.MaxModelLen, BlockTokens))*e.KVPerTokenBytes
		e.Status = NoFit
		e.Why = fmt.Sprintf("does not fit at gpu_memory_utilization %s: its budget (%s of %s) does not cover %s, so no memory is left for the KV cache (vLLM: \"No available memory for the cache blocks\"); %s",
			fmtFloat(a.GPUMemoryUtilization), GiB(e.BudgetBytes), GiB(e.TotalBytes), e.overheadText(), raiseUtil(need, e.TotalBytes, usable))
	case e.BudgetBytes > usable:
		e.Status = NoFit
		e.Why = fmt.Sprintf("does not fit: its budget (%s) is more than the %s vagent may use of %s (%s minus gpu.reserve_mib %d); lower gpu_memory_utilization to %s or less",
			GiB(e.BudgetBytes), GiB(usable), onGPU, GiB(e.TotalBytes), cfg.GPU.ReserveMiB, floorUtil(usable, e.TotalBytes))
	case e.PeakBytes > e.TotalBytes:
		e.Status = NoFit
		e.Why = fmt.Sprintf("does not fit: its budget (%s) plus CUDA graphs (%s, allocated outside the budget before vLLM 0.21) exceed the %s card; lower gpu_memory_utilization to %s or set enforce_eager = true",
			GiB(e.BudgetBytes), GiB(e.GraphsBytes), GiB(e.TotalBytes), floorUtil(e.TotalBytes-e.GraphsBytes, e.TotalBytes))
	default:
		e.Status = Fits
		if e.KVPinned {
			e.Why = fmt.Sprintf("fits alone on %s: %s = %s + %s of KV cache (kv_cache_memory_bytes)", onGPU, GiB(e.BudgetBytes), e.overheadText(), GiB(e.KVCacheBytes))
		} else {
			e.Why = fmt.Sprintf("fits alone on %s: budget %s = %s × %s, less %s, leaves %s of KV cache",
				onGPU, GiB(e.BudgetBytes), fmtFloat(a.GPUMemoryUtilization), GiB(e.TotalBytes), e.overheadText(), GiB(e.KVCacheBytes))
		}
		if !graphsIn && e.GraphsBytes > 0 {
			e.Why += fmt.Sprintf("; CUDA graphs add %s outside the budget (peak %s)", GiB(e.GraphsBytes), GiB(e.PeakBytes))
		}
	}
	e.maxLen(a, overhead, usable)
	return e
}

// maxLen fills the max_model_len figures.
func (e *Estimate) maxLen(a *config.Agent, overhead, usable uint64) {
	if e.Status != Fits {
		e.MaxModelLenOK = false
		e.MaxModelLenWhy = "the agent does not fit at all"
		return
	}
	tokens := int(e.KVCacheBytes / e.KVPerTokenBytes)
	e.MaxModelLenFit = tokens / LenMultiple * LenMultiple
	if e.ModelMaxLen > 0 && e.MaxModelLenFit > e.ModelMaxLen {
		e.MaxModelLenFit, e.Capped = e.ModelMaxLen, true
	}
	n := e.MaxModelLen
	if n == 0 {
		e.MaxModelLenOK = true
		e.MaxModelLenWhy = "the model's limit is unknown: set max_model_len"
		return
	}
	if e.ModelMaxLen > 0 && n > e.ModelMaxLen {
		e.MaxModelLenWhy = fmt.Sprintf("max_model_len %d is longer than the model's limit %d (max_position_embeddings); vLLM refuses it", n, e.ModelMaxLen)
		return
	}
	need := uint64((n+BlockTokens-1)/BlockTokens*BlockTokens) * e.KVPerTokenBytes
	if need > e.KVCacheBytes {
		fix := fmt.Sprintf("set max_model_len = %d", e.MaxModelLenFit)
		if e.KVDtypeBytes > 1 {
			fix += ", or kv_cache_dtype = \"fp8\" (halves the KV cache; Ada or Hopper)"
		}
		if !e.KVPinned {
			fix += ", or " + raiseUtil(overhead+need, e.TotalBytes, usable)
		}
		what := "max_model_len"
		if e.FromModel {
			what = "the model's own max_model_len"
		}
		e.MaxModelLenWhy = fmt.Sprintf("%s %d needs %s of KV cache but only %s is left (vLLM refuses to start); %s",
			what, n, GiB(need), GiB(e.KVCacheBytes), fix)
		return
	}
	e.MaxModelLenOK = true
}

func (e *Estimate) overheadText() string {
	s := fmt.Sprintf("%s weights + %s activations + %s CUDA context", GiB(e.WeightsBytes), GiB(e.ActivationBytes), GiB(e.ContextBytes))
	if e.GraphsInBudget && e.GraphsBytes > 0 {
		s += fmt.Sprintf(" + %s CUDA graphs", GiB(e.GraphsBytes))
	}
	return s
}

// raiseUtil is the fix for a budget short of need bytes on a GPU of total.
func raiseUtil(need, total, usable uint64) string {
	if need > usable {
		return "use a larger GPU (this one cannot hold it)"
	}
	u := math.Ceil(float64(need)/float64(total)*100) / 100
	return fmt.Sprintf("raise gpu_memory_utilization to %s or more", fmtFloat(u))
}

// floorUtil is the largest utilization, in hundredths, whose budget stays
// within limit bytes of total.
func floorUtil(limit, total uint64) string {
	return fmtFloat(math.Floor(float64(limit)/float64(total)*100) / 100)
}

func sub(a, b uint64) uint64 {
	if a > b {
		return a - b
	}
	return 0
}

// sharing works out, per GPU, the sets of agents that can run together.
func sharing(cfg *config.Config, p *Plan, totals map[int]uint64) []GPU {
	byGPU := map[int][]*config.Agent{}
	for _, a := range cfg.Agents {
		for _, g := range a.GPUs {
			byGPU[g] = append(byGPU[g], a)
		}
	}
	idx := make([]int, 0, len(byGPU))
	for g := range byGPU {
		idx = append(idx, g)
	}
	sort.Ints(idx)
	reserve := cfg.GPU.ReserveMiB * mib
	var out []GPU
	for _, g := range idx {
		v := GPU{Index: g, TotalBytes: totals[g], UsableBytes: sub(totals[g], reserve),
			Together: [][]string{}, AloneOnly: []string{}, NeverFits: []string{}, Unknown: []string{}}
		var fit []*config.Agent
		for _, a := range byGPU[g] {
			v.Agents = append(v.Agents, a.Name)
			switch p.Agent(a.Name).Status {
			case Fits:
				fit = append(fit, a)
			case NoFit:
				v.NeverFits = append(v.NeverFits, a.Name)
			default:
				v.Unknown = append(v.Unknown, a.Name)
			}
		}
		compatible := func(a, b *config.Agent) bool { return !config.CannotShare(a, b, totals[g], reserve) }
		// Each agent's budget of this card: a tensor-parallel agent's
		// estimate is made on its smallest card, but it takes its fraction
		// of each card's own memory.
		budget := func(a *config.Agent) uint64 {
			if e := p.Agent(a.Name); e.KVPinned {
				return e.BudgetBytes
			}
			return a.Budget(totals[g], 0)
		}
		inSet := map[string]bool{}
		for _, set := range maximalSets(fit, compatible, budget, v.UsableBytes) {
			if len(set) < 2 {
				continue
			}
			names := make([]string, len(set))
			for i, a := range set {
				names[i] = a.Name
				inSet[a.Name] = true
			}
			v.Together = append(v.Together, names)
		}
		for _, a := range fit {
			if !inSet[a.Name] {
				v.AloneOnly = append(v.AloneOnly, a.Name)
			}
		}
		out = append(out, v)
	}
	return out
}

// maxSetAgents bounds the agents on one GPU whose subsets are enumerated;
// beyond it only pairs are considered.
const maxSetAgents = 16

// maximalSets lists the maximal sets of agents that can run at once: every
// pair compatible (config.CannotShare, the rule units render as Conflicts=)
// and, when usable is known, all their budgets together within it. Sets
// keep the input order and are sorted by their names.
func maximalSets(agents []*config.Agent, ok func(a, b *config.Agent) bool, budget func(*config.Agent) uint64, usable uint64) [][]*config.Agent {
	n := len(agents)
	fits := func(set []*config.Agent) bool {
		var sum uint64
		for i, a := range set {
			for _, b := range set[i+1:] {
				if !ok(a, b) {
					return false
				}
			}
			sum += budget(a)
		}
		return usable == 0 || sum <= usable
	}
	var sets [][]*config.Agent
	if n > maxSetAgents {
		for i := range agents {
			for j := i + 1; j < n; j++ {
				if pair := []*config.Agent{agents[i], agents[j]}; fits(pair) {
					sets = append(sets, pair)
				}
			}
		}
	} else {
		// Largest subsets first, so a subset of a set already taken is
		// recognised as not maximal.
		var masks []uint32
		for m := uint32(1); m < 1<<n; m++ {
			masks = append(masks, m)
		}
		sort.SliceStable(masks, func(i, j int) bool { return bits.OnesCount32(masks[i]) > bits.OnesCount32(masks[j]) })
		var taken []uint32
		for _, m := range masks {
			maximal := true
			for _, t := range taken {
				if m&t == m {
					maximal = false
					break
				}
			}
			if !maximal {
				continue
			}
			var set []*config.Agent
			for i := 0; i < n; i++ {
				if m&(1<<i) != 0 {
					set = append(set, agents[i])
				}
			}
			if fits(set) {
				taken = append(taken, m)
				sets = append(sets, set)
			}
		}
	}
	sort.Slice(sets, func(i, j int) bool { return setKey(sets[i]) < setKey(sets[j]) })
	return sets
}

func setKey(s []*config.Agent) string {
	names := make([]string, len(s))
	for i, a := range s {
		names[i] = a.Name
	}
	return strings.Join(names, ",")
}

func joinInts(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}

// GiB writes bytes as GiB with two decimals, as vLLM's logs do.
func GiB(b uint64) string { return fmt.Sprintf("%.2f GiB", float64(b)/float64(gib)) }

// GB writes bytes in decimal GB, as the Hub lists checkpoint sizes.
func GB(b uint64) string { return fmt.Sprintf("%.2f GB", float64(b)/1e9) }

// KiB writes a per-token size.
func KiB(b uint64) string {
	if b%kib == 0 {
		return fmt.Sprintf("%d KiB", b/kib)
	}
	return fmt.Sprintf("%.1f KiB", float64(b)/float64(kib))
}

func fmtFloat(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

func sortedKeys(m map[int]uint64) []int {
	out := make([]int, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Ints(out)
	return out
}
