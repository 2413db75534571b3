package plan

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/vagent-dev/vagent/config"
)

// The figures of reference/vllm.md's table.
var reference = map[string]struct {
	kvKiB     float64 // KV bytes per token at 16 bits
	weightsGB float64 // AWQ safetensors
}{
	"Qwen/Qwen2.5-7B-Instruct-AWQ":        {56, 5.57},
	"Qwen/Qwen2.5-14B-Instruct-AWQ":       {192, 9.98},
	"Qwen/Qwen2.5-Coder-14B-Instruct-AWQ": {192, 9.98},
	"Qwen/Qwen2.5-32B-Instruct-AWQ":       {256, 19.33},
	"Qwen/Qwen2.5-Coder-32B-Instruct-AWQ": {256, 19.33},
}

func within5(got, want float64) bool { return math.Abs(got-want) <= 0.05*want }

// loadShipped loads a configuration the project ships.
func loadShipped(t *testing.T, dir string) *config.Config {
	t.Helper()
	cfg, err := config.Load(filepath.Join("..", dir, "vagent.toml"))
	if err != nil {
		t.Fatalf("load %s: %v", dir, err)
	}
	return cfg
}

// offline resolves from an empty HF cache without the Hub: the built-in
// table, as on a fresh host without network.
func offline(t *testing.T) *Resolver {
	return &Resolver{HFHome: t.TempDir(), Offline: true}
}

func totalMiB(mibs uint64) map[int]uint64 { return map[int]uint64{0: mibs * mib} }

func checkReference(t *testing.T, p *Plan) {
	t.Helper()
	for _, e := range p.Agents {
		ref, ok := reference[e.Model]
		if !ok {
			continue
		}
		if kv := float64(e.KVPerTokenBytes) / float64(kib); !within5(kv, ref.kvKiB) {
			t.Errorf("%s (%s): KV per token %.1f KiB, reference %.0f KiB", e.Agent, e.Model, kv, ref.kvKiB)
		}
		if w := float64(e.WeightsBytes) / 1e9; !within5(w, ref.weightsGB) {
			t.Errorf("%s (%s): weights %.2f GB, reference %.2f GB", e.Agent, e.Model, w, ref.weightsGB)
		}
	}
}

func TestShippedConfigsMatchReference(t *testing.T) {
	cfg := loadShipped(t, "configs")
	p := Make(context.Background(), cfg, totalMiB(cfg.GPU.SimTotalMiB), "gpu.sim_total_mib", offline(t))
	checkReference(t, p)
	if f := p.Failing(); len(f) != 0 {
		t.Errorf("shipped configs: %d agents do not fit a 16 GB card: %+v", len(f), f)
	}
	// reference/vllm.md: on a 16 GB card 7B-AWQ fits with ~7 GiB of KV (32k
	// easily); 14B-AWQ leaves ~3.3 GiB (≈16k context).
	po, arch := p.Agent("po"), p.Agent("architect")
	if kv := float64(po.KVCacheBytes) / float64(gib); kv < 6.5 || kv > 8 {
		t.Errorf("po: %.2f GiB of KV, reference ~7", kv)
	}
	if po.MaxModelLenFit != 32768 || !po.Capped || !po.MaxModelLenOK {
		t.Errorf("po: max len %d capped %v ok %v, want the full 32768 (model limit)", po.MaxModelLenFit, po.Capped, po.MaxModelLenOK)
	}
	if kv := float64(arch.KVCacheBytes) / float64(gib); !(math.Abs(kv-3.3) <= 0.35) {
		t.Errorf("architect: %.2f GiB of KV, reference ~3.3", kv)
	}
	if n := arch.MaxModelLenFit; n < 16384 || n > 20480 || n%LenMultiple != 0 {
		t.Errorf("architect: max len %d, reference ≈16k (a multiple of %d)", n, LenMultiple)
	}
	if !arch.MaxModelLenOK || arch.MaxModelLen != 12288 {
		t.Errorf("architect: configured %d ok %v", arch.MaxModelLen, arch.MaxModelLenOK)
	}
	for _, e := range p.Agents {
		if e.Facts.ArchSource != SourceBuiltin || e.Facts.WeightsSource != SourceBuiltin {
			t.Errorf("%s: sources %s/%s, want the built-in table offline", e.Agent, e.Facts.ArchSource, e.Facts.WeightsSource)
		}
	}
	g := p.GPUs[0]
	if len(g.Together) != 0 || strings.Join(g.AloneOnly, ",") != "architect,dev,po" {
		t.Errorf("GPU 0 together %v alone %v: at 0.92 each no two share a card", g.Together, g.AloneOnly)
	}
}

func TestFP8KVAllows32kFor14BOn16GB(t *testing.T) {
	cfg := loadShipped(t, "configs")
	a := cfg.Agent("architect")
	plain := Make(context.Background(), cfg, totalMiB(16376), "test", offline(t)).Agent("architect")
	a.KVCacheDtype = "fp8"
	a.MaxModelLen = 32768
	fp8 := Make(context.Background(), cfg, totalMiB(16376), "test", offline(t)).Agent("architect")
	if fp8.KVPerTokenBytes*2 != plain.KVPerTokenBytes || fp8.KVPerTokenBytes != 96*kib {
		t.Errorf("fp8 KV per token %d, 16-bit %d: want exactly half (96 KiB)", fp8.KVPerTokenBytes, plain.KVPerTokenBytes)
	}
	if !fp8.MaxModelLenOK || fp8.MaxModelLenFit != 32768 {
		t.Errorf("fp8: max len %d ok %v (%s); reference: 32k with fp8 KV", fp8.MaxModelLenFit, fp8.MaxModelLenOK, fp8.MaxModelLenWhy)
	}
	// Uncapped, fp8 doubles what fits (up to the 256 rounding).
	plainTokens := plain.KVCacheBytes / plain.KVPerTokenBytes
	fp8Tokens := fp8.KVCacheBytes / fp8.KVPerTokenBytes
	if fp8Tokens != 2*plainTokens && fp8Tokens != 2*plainTokens+1 {
		t.Errorf("fp8 tokens %d, 16-bit %d: want twice", fp8Tokens, plainTokens)
	}
}

func Test24GBExampleMatchesReference(t *testing.T) {
	cfg := loadShipped(t, "configs/examples/24gb")
	p := Make(context.Background(), cfg, totalMiB(cfg.GPU.SimTotalMiB), "gpu.sim_total_mib", offline(t))
	checkReference(t, p)
	if f := p.Failing(); len(f) != 0 {
		t.Errorf("24gb example: %+v do not fit", f)
	}
	for _, name := range []string{"architect", "dev"} {
		e := p.Agent(name)
		// reference: 32B-AWQ needs 24 GB for ~8k context.
		if e.MaxModelLenFit < 8192 || e.MaxModelLenFit >= 16384 || !e.MaxModelLenOK {
			t.Errorf("%s: max len %d ok %v on 24 GB, reference ~8k", name, e.MaxModelLenFit, e.MaxModelLenOK)
		}
	}
}

func Test32BNeeds32GBFor32k(t *testing.T) {
	cfg := loadShipped(t, "configs/examples/24gb")
	cfg.Agent("architect").MaxModelLen = 32768
	p := Make(context.Background(), cfg, totalMiB(32607), "test", offline(t))
	if e := p.Agent("architect"); !e.OK() || e.MaxModelLenFit != 32768 {
		t.Errorf("32B on 32 GB: %s; max len %d ok %v", e.Why, e.MaxModelLenFit, e.MaxModelLenOK)
	}
	p = Make(context.Background(), cfg, totalMiB(24564), "test", offline(t))
	e := p.Agent("architect")
	if e.Status != Fits || e.MaxModelLenOK {
		t.Fatalf("32B at 32k on 24 GB: status %s, max len ok %v; want fits but 32k too long", e.Status, e.MaxModelLenOK)
	}
	for _, want := range []string{"max_model_len 32768 needs 8.00 GiB of KV cache", "set max_model_len = ", `kv_cache_dtype = "fp8"`, "use a larger GPU"} {
		if !strings.Contains(e.MaxModelLenWhy, want) {
			t.Errorf("why %q lacks %q", e.MaxModelLenWhy, want)
		}
	}
	if len(p.Failing()) != 1 {
		t.Errorf("failing = %v, want architect", p.Failing())
	}
}

func Test32BDoesNotFit16GB(t *testing.T) {
	cfg := loadShipped(t, "configs/examples/24gb")
	p := Make(context.Background(), cfg, totalMiB(16376), "--gpu-total-mib", offline(t))
	checkReference(t, p)
	for _, name := range []string{"architect", "dev"} {
		e := p.Agent(name)
		if e.Status != NoFit {
			t.Errorf("%s: status %s, want does-not-fit", name, e.Status)
		}
		want := "does not fit: its weights alone (18.00 GiB, 19.33 GB) exceed the whole 15.99 GiB card (GPU 0)"
		if !strings.HasPrefix(e.Why, want) {
			t.Errorf("%s: why = %q\nwant prefix %q", name, e.Why, want)
		}
	}
	if e := p.Agent("po"); !e.OK() {
		t.Errorf("po on 16 GB: %s", e.Why)
	}
	var names []string
	for _, e := range p.Failing() {
		names = append(names, e.Agent)
	}
	if strings.Join(names, ",") != "architect,dev" {
		t.Errorf("failing = %v", names)
	}
	var buf bytes.Buffer
	p.WriteText(&buf)
	out := buf.String()
	for _, want := range []string{
		"architect: does not fit: its weights alone (18.00 GiB, 19.33 GB) exceed the whole 15.99 GiB card",
		"together on GPU 0: po runs alone; never: architect, dev",
		"2 agents cannot start on their GPU as configured: architect, dev",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("plan text lacks %q:\n%s", want, out)
		}
	}
	if g := p.GPUs[0]; strings.Join(g.NeverFits, ",") != "architect,dev" {
		t.Errorf("never fits = %v", g.NeverFits)
	}
}

// agent is a synthetic agent with the loader's defaults.
func agent(name, model string, util float64, maxLen int) *config.Agent {
	return &config.Agent{Name: name, Model: model, Revision: "main", GPUs: []int{0}, TensorParallelSize: 1,
		GPUMemoryUtilization: util, MaxModelLen: maxLen, Dtype: "auto", KVCacheDtype: "auto"}
}

func synthCfg(version string, agents ...*config.Agent) *config.Config {
	return &config.Config{Engine: config.Engine{VLLMVersion: version}, GPU: config.GPU{ReserveMiB: 256}, Agents: agents}
}

// facts gives every agent the same made-up model.
func facts(cfg *config.Config, arch Arch, weights uint64) map[string]*Facts {
	m := map[string]*Facts{}
	for _, a := range cfg.Agents {
		ar := arch
		m[a.Name] = &Facts{Model: a.Model, Arch: &ar, ArchSource: SourceLocal, WeightsBytes: weights, WeightFiles: 1, WeightsSource: SourceLocal}
	}
	return m
}

func TestMaxModelLen(t *testing.T) {
	// 32 KiB per token (2 × 16 layers × 4 heads × 128 × 2 bytes); 4 GiB of
	// weights (1.5 GiB activations); a 16 GiB card at 0.5: 8 GiB budget −
	// 4 − 1.5 − 0.5 = 2 GiB of KV = 65536 tokens.
	arch := Arch{Layers: 16, KVHeads: 4, AttnHeads: 16, Hidden: 2048, HeadDim: 128, MaxPosition: 131072, Dtype: "bfloat16"}
	cases := []struct {
		name      string
		util      float64
		maxLen    int
		modelMax  int
		eager     bool
		wantFit   int
		wantCap   bool
		wantOK    bool
		wantInWhy string
	}{
		{"exact", 0.5, 65536, 131072, true, 65536, false, true, ""},
		{"configured too long", 0.5, 65552, 131072, true, 65536, false, false, "set max_model_len = 65536"},
		{"rounded down to 256", 0.5 + float64(300*kib)/float64(16*gib), 1024, 131072, true, 65536, false, true, ""},
		{"capped at the model", 0.5, 0, 32768, true, 32768, true, true, ""},
		{"from the model, too long", 0.45, 0, 131072, true, 39168, false, false, "the model's own max_model_len 131072"},
		{"longer than the model", 0.5, 40000, 32768, true, 32768, true, false, "longer than the model's limit 32768"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := agent("x", "org/x", c.util, c.maxLen)
			a.EnforceEager = c.eager
			cfg := synthCfg("0.18.0", a)
			ar := arch
			ar.MaxPosition = c.modelMax
			e := Build(cfg, map[int]uint64{0: 16 * gib}, "test", facts(cfg, ar, 4*gib)).Agent("x")
			if e.KVPerTokenBytes != 32*kib {
				t.Fatalf("KV per token %d", e.KVPerTokenBytes)
			}
			if e.Status != Fits {
				t.Fatalf("status %s: %s", e.Status, e.Why)
			}
			if e.MaxModelLenFit != c.wantFit || e.Capped != c.wantCap || e.MaxModelLenOK != c.wantOK {
				t.Errorf("fit %d capped %v ok %v (%s); want %d %v %v", e.MaxModelLenFit, e.Capped, e.MaxModelLenOK, e.MaxModelLenWhy, c.wantFit, c.wantCap, c.wantOK)
			}
			if !strings.Contains(e.MaxModelLenWhy, c.wantInWhy) {
				t.Errorf("why %q lacks %q", e.MaxModelLenWhy, c.wantInWhy)
			}
		})
	}
}

func TestRules(t *testing.T) {
	for _, c := range []struct {
		weights, want uint64
	}{{gib, gib}, {2 * gib, gib + gib/2}, {16 * gib, gib + gib/2}, {16*gib + 1, 2 * gib}} {
		if got := ActivationBytes(c.weights); got != c.want {
			t.Errorf("ActivationBytes(%d) = %d, want %d", c.weights, got, c.want)
		}
	}
	for _, c := range []struct {
		seqs int
		want uint64
	}{{0, 256*mib + 512*mib}, {256, 768 * mib}, {16, 288 * mib}, {512, 1280 * mib}, {4096, 1280 * mib}} {
		if got := GraphsBytes(c.seqs); got != c.want {
			t.Errorf("GraphsBytes(%d) = %d MiB, want %d MiB", c.seqs, got/mib, c.want/mib)
		}
	}
	a := agent("x", "org/x", 0.9, 0)
	arch := &Arch{Layers: 28, KVHeads: 4, HeadDim: 128}
	for _, c := range []struct {
		dtype, kv string
		tp        int
		want      uint64
	}{
		{"auto", "auto", 1, 56 * kib},
		{"auto", "fp8", 1, 28 * kib},
		{"auto", "fp8_e5m2", 1, 28 * kib},
		{"float32", "auto", 1, 112 * kib},
		{"bfloat16", "auto", 2, 28 * kib},
		{"auto", "auto", 8, 14 * kib}, // 4 KV heads over 8 GPUs: replicated, one per GPU
	} {
		a.Dtype, a.KVCacheDtype = c.dtype, c.kv
		if got := KVBytesPerToken(arch, KVDtypeBytes(a), c.tp); got != c.want {
			t.Errorf("dtype %s kv %s tp %d: %d bytes per token, want %d", c.dtype, c.kv, c.tp, got, c.want)
		}
	}
}

func TestCUDAGraphsInsideTheBudgetFrom021(t *testing.T) {
	cfg := loadShipped(t, "configs")
	old := Make(context.Background(), cfg, totalMiB(16376), "test", offline(t)).Agent("architect")
	cfg.Engine.VLLMVersion = "0.21.0"
	p := Make(context.Background(), cfg, totalMiB(16376), "test", offline(t))
	nw := p.Agent("architect")
	if old.GraphsInBudget || !nw.GraphsInBudget || !p.GraphsInBudget {
		t.Fatal("graphs placement by version is wrong")
	}
	if nw.KVCacheBytes+nw.GraphsBytes != old.KVCacheBytes {
		t.Errorf("0.21: KV %d + graphs %d, want 0.18's KV %d", nw.KVCacheBytes, nw.GraphsBytes, old.KVCacheBytes)
	}
	if old.PeakBytes != old.BudgetBytes+old.GraphsBytes || nw.PeakBytes != nw.BudgetBytes {
		t.Errorf("peaks %d (budget %d) and %d (budget %d)", old.PeakBytes, old.BudgetBytes, nw.PeakBytes, nw.BudgetBytes)
	}
	if !strings.Contains(nw.Why, "CUDA graphs, leaves") || strings.Contains(nw.Why, "outside the budget") {
		t.Errorf("0.21 why: %s", nw.Why)
	}
	cfg.Agent("architect").EnforceEager = true
	eager := Make(context.Background(), cfg, totalMiB(16376), "test", offline(t)).Agent("architect")
	if eager.GraphsBytes != 0 || eager.KVCacheBytes != old.KVCacheBytes {
		t.Errorf("enforce_eager: graphs %d KV %d", eager.GraphsBytes, eager.KVCacheBytes)
	}
}

func TestDoesNotFitReasons(t *testing.T) {
	arch := Arch{Layers: 48, KVHeads: 8, AttnHeads: 40, Hidden: 5120, HeadDim: 128, MaxPosition: 32768, Dtype: "float16", Quant: "awq"}
	w14 := uint64(9_980_000_000)
	cases := []struct {
		name    string
		util    float64
		pinned  uint64
		seqs    int
		version string
		want    string
	}{
		{"no room for KV", 0.7, 0, 16, "0.18.0", "does not fit at gpu_memory_utilization 0.7: its budget (11.19 GiB of 15.99 GiB) does not cover 9.29 GiB weights + 1.50 GiB activations + 0.50 GiB CUDA context, so no memory is left for the KV cache"},
		{"no room for KV: fix", 0.7, 0, 16, "0.18.0", "raise gpu_memory_utilization to 0.85 or more"},
		{"budget over the reserve", 1, 0, 16, "0.18.0", "is more than the 15.74 GiB vagent may use of GPU 0 (15.99 GiB minus gpu.reserve_mib 256); lower gpu_memory_utilization to 0.98 or less"},
		{"graphs on top", 0.98, 0, 512, "0.18.0", "plus CUDA graphs (1.25 GiB, allocated outside the budget before vLLM 0.21) exceed the 15.99 GiB card; lower gpu_memory_utilization to 0.92 or set enforce_eager = true"},
		{"pinned KV too big", 0.5, 8 * gib, 16, "0.21.0", "is more than the 15.74 GiB"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := agent("a", "org/a", c.util, 12288)
			a.MaxNumSeqs = c.seqs
			a.KVCacheMemoryBytes = c.pinned
			cfg := synthCfg(c.version, a)
			e := Build(cfg, totalMiB(16376), "test", facts(cfg, arch, w14)).Agent("a")
			if e.Status != NoFit || e.OK() {
				t.Fatalf("status %s: %s", e.Status, e.Why)
			}
			if !strings.Contains(e.Why, c.want) {
				t.Errorf("why = %q\nwant it to contain %q", e.Why, c.want)
			}
			if e.MaxModelLenOK || e.MaxModelLenFit != 0 {
				t.Errorf("a non-fitting agent reports max len %d ok %v", e.MaxModelLenFit, e.MaxModelLenOK)
			}
		})
	}
}

func TestPinnedKVAndTensorParallel(t *testing.T) {
	arch := Arch{Layers: 64, KVHeads: 8, AttnHeads: 40, Hidden: 5120, HeadDim: 128, MaxPosition: 32768, Dtype: "float16", Quant: "awq"}
	a := agent("big", "org/big", 0.9, 16384)
	a.GPUs, a.TensorParallelSize = []int{0, 1}, 2
	b := agent("pin", "org/pin", 0.9, 8192)
	b.GPUs = []int{1}
	b.KVCacheMemoryBytes = 2 * gib
	cfg := synthCfg("0.18.0", a, b)
	p := Build(cfg, map[int]uint64{0: 16376 * mib, 1: 16000 * mib}, "test", facts(cfg, arch, 19_330_000_000))
	e := p.Agent("big")
	if e.WeightsBytes != 9_665_000_000 || e.KVPerTokenBytes != 128*kib || e.TotalBytes != 16000*mib {
		t.Errorf("tp 2: weights %d KV/token %d total %d: want half of each, on the smaller GPU", e.WeightsBytes, e.KVPerTokenBytes, e.TotalBytes)
	}
	if e.ContextBytes != ContextBytes+NCCLBytes || !strings.Contains(e.Why, "each of GPUs 0,1 (tensor_parallel_size 2)") {
		t.Errorf("tp 2: context %d why %s", e.ContextBytes, e.Why)
	}
	if !e.OK() {
		t.Errorf("32B over two 16 GB cards at 16k: %s / %s", e.Why, e.MaxModelLenWhy)
	}
	pin := p.Agent("pin")
	if !pin.KVPinned || pin.KVCacheBytes != 2*gib || pin.BudgetBytes != pin.WeightsBytes+pin.ActivationBytes+pin.ContextBytes+2*gib {
		t.Errorf("pinned: KV %d budget %d", pin.KVCacheBytes, pin.BudgetBytes)
	}
	if pin.Status != NoFit || !strings.Contains(pin.Why, "weights alone") {
		t.Errorf("pinned 32B on one 16 GB card: %s", pin.Why)
	}
}

func TestTogether(t *testing.T) {
	arch := Arch{Layers: 28, KVHeads: 4, AttnHeads: 28, Hidden: 3584, HeadDim: 128, MaxPosition: 32768, Dtype: "float16", Quant: "awq"}
	cases := []struct {
		name      string
		utils     []float64 // agents a0, a1, ... on GPU 0
		together  string
		aloneOnly string
	}{
		{"shipped: each alone", []float64{0.92, 0.92, 0.92}, "[]", "a0,a1,a2"},
		{"three small", []float64{0.92, 0.35, 0.3, 0.3}, "[[a1 a2 a3]]", "a0"},
		// Every pair fits but not all three: pairs, never the triple.
		{"pairwise only", []float64{0.45, 0.45, 0.45}, "[[a0 a1] [a0 a2] [a1 a2]]", ""},
		{"one pair", []float64{0.6, 0.35, 0.7}, "[[a0 a1]]", "a2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var agents []*config.Agent
			for i, u := range c.utils {
				agents = append(agents, agent("a"+strconv.Itoa(i), "org/s", u, 4096))
			}
			other := agent("z", "org/s", 0.45, 4096)
			other.GPUs = []int{1}
			cfg := synthCfg("0.18.0", append(agents, other)...)
			p := Build(cfg, map[int]uint64{0: 24564 * mib, 1: 24564 * mib}, "test", facts(cfg, arch, 1_000_000_000))
			for _, e := range p.Agents {
				if !e.OK() {
					t.Fatalf("%s: %s %s", e.Agent, e.Why, e.MaxModelLenWhy)
				}
			}
			g0 := p.GPUs[0]
			if got := fmt.Sprint(g0.Together); got != c.together {
				t.Errorf("together on GPU 0 = %s, want %s", got, c.together)
			}
			if got := strings.Join(g0.AloneOnly, ","); got != c.aloneOnly {
				t.Errorf("alone only = %s, want %s", got, c.aloneOnly)
			}
			if g1 := p.GPUs[1]; strings.Join(g1.AloneOnly, ",") != "z" || len(g1.Together) != 0 || g1.Index != 1 {
				t.Errorf("GPU 1 = %+v", g1)
			}
		})
	}
	cfg := synthCfg("0.18.0", agent("b", "org/s", 0.92, 8192), agent("m", "org/s", 0.35, 8192), agent("s", "org/s", 0.3, 8192), agent("t", "org/s", 0.3, 8192))
	var buf bytes.Buffer
	Build(cfg, totalMiB(24564), "test", facts(cfg, arch, 1_000_000_000)).WriteText(&buf)
	if !strings.Contains(buf.String(), "together on GPU 0: m + s + t can run at once; b only alone") {
		t.Errorf("text:\n%s", buf.String())
	}
}

func TestUnknownGPUAndModel(t *testing.T) {
	a := agent("a", "org/unknown-model", 0.9, 4096)
	b := agent("b", "Qwen/Qwen2.5-7B-Instruct-AWQ", 0.9, 4096)
	b.GPUs, b.File = []int{3}, "/etc/vagent/agents/b.toml"
	cfg := synthCfg("0.18.0", a, b)
	p := Make(context.Background(), cfg, totalMiB(16376), "test", offline(t))
	ea, eb := p.Agent("a"), p.Agent("b")
	if ea.Status != Unknown || !strings.Contains(ea.Why, "not in the built-in table") {
		t.Errorf("unknown model: %s %s", ea.Status, ea.Why)
	}
	// The sizes list the host's GPUs: one the host lacks is no unknown,
	// the agent can never start there.
	if eb.Status != NoFit || eb.Why != "does not fit: GPU 3 is not on this host, which has GPU 0; change gpus in /etc/vagent/agents/b.toml" {
		t.Errorf("GPU not on the host: %s %s", eb.Status, eb.Why)
	}
	if f := p.Failing(); len(f) != 1 || f[0].Agent != "b" {
		t.Errorf("failing %v, want b only (a is unknown)", f)
	}
	if v := p.Verdict(); !strings.Contains(v, "cannot start on its GPU as configured: b; unknown: a") {
		t.Errorf("verdict %q", v)
	}
	var buf bytes.Buffer
	p.WriteText(&buf)
	if !regexp.MustCompile(`(?m)^a +org/unknown-model +\? +\? +\? +\? +\? +4096 +\?$`).MatchString(buf.String()) ||
		!strings.Contains(buf.String(), "together on GPU 3: never: b") {
		t.Errorf("text:\n%s", buf.String())
	}

	// A GPU whose size nobody knows (no driver) leaves the agent unknown.
	p = Make(context.Background(), cfg, map[int]uint64{0: 16376 * mib, 3: 0}, "test", offline(t))
	if eb := p.Agent("b"); eb.Status != Unknown || !strings.Contains(eb.Why, "GPU 3's size is unknown") {
		t.Errorf("unknown GPU size: %s %s", eb.Status, eb.Why)
	}
}

// TestSleepResidualEstimate: a sleep agent's estimate says what it keeps on
// the GPU while asleep: the CUDA context and graphs, only the context with
// enforce_eager; a restart agent's says nothing of it.
func TestSleepResidualEstimate(t *testing.T) {
	cfg := loadShipped(t, "configs")
	cfg.Supervisor.SwitchMode = config.SwitchSleep
	cfg.Agent("po").EnforceEager = true
	cfg.Agent("architect").SwitchMode = config.SwitchRestart
	p := Make(context.Background(), cfg, totalMiB(16376), "test", offline(t))
	dev, po, arch := p.Agent("dev"), p.Agent("po"), p.Agent("architect")
	if want := ContextBytes + GraphsBytes(cfg.Agent("dev").MaxNumSeqs); dev.SleepResidualBytes != want || dev.SleepResidualBytes != SleepResidual(cfg.Agent("dev")) {
		t.Errorf("dev's residual %d, want %d (context + graphs)", dev.SleepResidualBytes, want)
	}
	if po.SleepResidualBytes != ContextBytes {
		t.Errorf("po (enforce_eager) residual %d, want the context alone, %d", po.SleepResidualBytes, ContextBytes)
	}
	if arch.SleepResidualBytes != 0 {
		t.Errorf("architect (restart) residual %d", arch.SleepResidualBytes)
	}
	var b bytes.Buffer
	p.WriteText(&b)
	out := b.String()
	for _, want := range []string{
		"  asleep: keeps " + GiB(dev.SleepResidualBytes) + " on the GPU (CUDA context + CUDA graphs), estimated before it ran",
		"  asleep: keeps " + GiB(ContextBytes) + " on the GPU (CUDA context; no graphs with enforce_eager)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("plan text lacks %q:\n%s", want, out)
		}
	}
	if strings.Count(out, "  asleep: ") != 2 {
		t.Errorf("plan text: want two asleep lines:\n%s", out)
	}
	// Two GPUs: the supervisor's figure is summed over them.
	a := cfg.Agent("dev")
	a.GPUs, a.TensorParallelSize = []int{0, 1}, 2
	if got, want := SleepResidual(a), 2*(ContextBytes+NCCLBytes+GraphsBytes(a.MaxNumSeqs)); got != want {
		t.Errorf("SleepResidual with tp 2: %d, want %d", got, want)
	}
}
