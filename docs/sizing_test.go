package docs

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/plan"
)

// The tables of sizing.md are plan's numbers: TestSizingTablesArePlans
// regenerates each from the plan package and fails when the document
// differs. VAGENT_UPDATE_DOCS=1 rewrites them:
//
//	VAGENT_UPDATE_DOCS=1 go test ./docs -run TestSizingTablesArePlans
const sizingFile = "sizing.md"

// Cards: what nvidia-smi reports as the total of common cards, in MiB.
var cards = []struct {
	name string
	mib  uint64
}{
	{"16 GB", 16376}, {"24 GB", 24564}, {"32 GB", 32607}, {"48 GB", 49140},
}

// cardUtilization is the gpu_memory_utilization of the cards table: what
// the shipped 16 GB agents use.
const cardUtilization = 0.92

// shippedConfigs are the configurations whose agents the tables show.
var shippedConfigs = []string{"configs", "configs/examples/24gb", "configs/examples/2x24gb"}

func loadShipped(t *testing.T, src string) *config.Config {
	t.Helper()
	// Paths do not matter to plan; the shipped file is loaded as it is.
	cfg, err := config.Load(filepath.Join(root, src, "vagent.toml"))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// offlineFacts resolves model figures from the built-in table only (an
// empty HF cache, no Hub), as `vagentctl plan --offline` does before a pull.
func offlineFacts(t *testing.T, cfg *config.Config) map[string]*plan.Facts {
	t.Helper()
	r := &plan.Resolver{HFHome: t.TempDir(), Offline: true}
	facts := map[string]*plan.Facts{}
	for _, a := range cfg.Agents {
		facts[a.Name] = r.Facts(t.Context(), a)
	}
	return facts
}

// estimateAlone is plan's estimate of agent a alone on GPUs of mib MiB
// each, with cfg's engine and reserve.
func estimateAlone(t *testing.T, cfg *config.Config, a *config.Agent, mib uint64) plan.Estimate {
	t.Helper()
	c := *cfg
	c.Agents = []*config.Agent{a}
	totals := map[int]uint64{}
	for _, g := range a.GPUs {
		totals[g] = mib << 20
	}
	p := plan.Build(&c, totals, "--gpu-total-mib", offlineFacts(t, &c))
	return p.Agents[0]
}

// models are the distinct models of the shipped configurations, each as
// the first agent that uses it.
func shippedModels(t *testing.T) (*config.Config, []*config.Agent) {
	t.Helper()
	var base *config.Config
	var out []*config.Agent
	seen := map[string]bool{}
	for _, src := range shippedConfigs {
		cfg := loadShipped(t, src)
		if base == nil {
			base = cfg
		}
		for _, a := range cfg.Agents {
			if !seen[a.Model] {
				seen[a.Model] = true
				out = append(out, a)
			}
		}
	}
	return base, out
}

func gib(b uint64) string { return fmt.Sprintf("%.2f GiB", float64(b)/(1<<30)) }

func modelsTable(t *testing.T) string {
	cfg, agents := shippedModels(t)
	var b strings.Builder
	b.WriteString("| model | layers × KV heads × head_dim | KV per token, 16-bit | KV per token, fp8 | checkpoint | weights on the GPU | activations | CUDA context | CUDA graphs |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, a := range agents {
		e := estimateAlone(t, cfg, a, 16376)
		fp8 := *a
		fp8.KVCacheDtype = "fp8"
		e8 := estimateAlone(t, cfg, &fp8, 16376)
		ar := e.Facts.Arch
		fmt.Fprintf(&b, "| `%s` | %d × %d × %d | %s | %s | %s | %s | %s | %s | %s |\n",
			a.Model, ar.Layers, ar.KVHeads, ar.HeadDim, plan.KiB(e.KVPerTokenBytes), plan.KiB(e8.KVPerTokenBytes),
			plan.GB(e.Facts.WeightsBytes), gib(e.WeightsBytes), gib(e.ActivationBytes), gib(e.ContextBytes), gib(e.GraphsBytes))
	}
	return b.String()
}

func shippedTable(t *testing.T) string {
	var b strings.Builder
	b.WriteString("| configuration | agent | model | GPUs | card | gpu_memory_utilization | budget per GPU | KV cache per GPU | largest max_model_len | max_model_len set |\n")
	b.WriteString("|---|---|---|---|---|---:|---:|---:|---:|---:|\n")
	for _, src := range shippedConfigs {
		cfg := loadShipped(t, src)
		totals := map[int]uint64{}
		for i := 0; i < cfg.GPU.SimCount; i++ {
			totals[i] = cfg.GPU.SimTotalMiB << 20
		}
		p := plan.Build(cfg, totals, "gpu.sim_total_mib", offlineFacts(t, cfg))
		for _, e := range p.Agents {
			fit := fmt.Sprint(e.MaxModelLenFit)
			if e.Capped {
				fit += " (the model's limit)"
			}
			set := fmt.Sprint(e.MaxModelLen)
			if !e.OK() {
				set += " (does not fit)"
			}
			gpus := make([]string, len(e.GPUs))
			for i, g := range e.GPUs {
				gpus[i] = fmt.Sprint(g)
			}
			fmt.Fprintf(&b, "| `%s/` | %s | `%s` | %s | %s | %v | %s | %s | %s | %s |\n",
				src, e.Agent, e.Model, strings.Join(gpus, ", "), gib(e.TotalBytes), e.Utilization, gib(e.BudgetBytes), gib(e.KVCacheBytes), fit, set)
		}
	}
	return b.String()
}

// sizeClass is the shipped models with the same figures (a Coder model
// and its base model), as one row.
type sizeClass struct {
	label string
	agent *config.Agent
}

func sizeClasses(t *testing.T) (*config.Config, []sizeClass) {
	t.Helper()
	cfg, agents := shippedModels(t)
	facts := map[string]*plan.Facts{}
	r := &plan.Resolver{HFHome: t.TempDir(), Offline: true}
	var out []sizeClass
	names := map[int][]string{}
	for _, a := range agents {
		f := r.Facts(t.Context(), a)
		facts[a.Model] = f
		found := -1
		for i, c := range out {
			g := facts[c.agent.Model]
			if *g.Arch == *f.Arch && g.WeightsBytes == f.WeightsBytes {
				found = i
			}
		}
		if found < 0 {
			out = append(out, sizeClass{agent: a})
			found = len(out) - 1
		}
		names[found] = append(names[found], "`"+a.Model+"`")
	}
	for i := range out {
		out[i].label = strings.Join(names[i], ", ")
	}
	return cfg, out
}

// tokens is how many tokens the KV cache of e holds, in plan's multiples
// of 256: the longest context one request may have, before the model's own
// limit, and what all requests running at once share.
func tokens(e plan.Estimate) string {
	n := int(e.KVCacheBytes/e.KVPerTokenBytes) / plan.LenMultiple * plan.LenMultiple
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// cell is the KV cache of agent a alone on GPUs of mib MiB, in tokens,
// with 16-bit and with fp8 KV.
func cell(t *testing.T, cfg *config.Config, a *config.Agent, mib uint64) string {
	e := estimateAlone(t, cfg, a, mib)
	if e.Status != plan.Fits {
		return "does not fit"
	}
	fp8 := *a
	fp8.KVCacheDtype = "fp8"
	e8 := estimateAlone(t, cfg, &fp8, mib)
	return tokens(e) + " / " + tokens(e8)
}

func cardsTable(t *testing.T) string {
	cfg, classes := sizeClasses(t)
	var b strings.Builder
	b.WriteString("| model |")
	for _, c := range cards {
		fmt.Fprintf(&b, " %s (%d MiB) |", c.name, c.mib)
	}
	b.WriteString("\n|---|")
	for range cards {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	for _, c := range classes {
		one := *c.agent
		one.GPUMemoryUtilization = cardUtilization
		one.MaxModelLen = 0
		fmt.Fprintf(&b, "| %s |", c.label)
		for _, card := range cards {
			fmt.Fprintf(&b, " %s |", cell(t, cfg, &one, card.mib))
		}
		b.WriteString("\n")
	}
	return b.String()
}

func tpTable(t *testing.T) string {
	cfg, classes := sizeClasses(t)
	var b strings.Builder
	b.WriteString("| model | GPUs | weights per GPU | KV per token per GPU | KV cache in tokens, 16-bit / fp8 |\n")
	b.WriteString("|---|---|---:|---:|---:|\n")
	for _, c := range classes {
		if strings.Contains(c.agent.Model, "7B") {
			continue
		}
		for _, card := range cards[:2] {
			tp := *c.agent
			tp.GPUMemoryUtilization = cardUtilization
			tp.MaxModelLen = 0
			tp.GPUs = []int{0, 1}
			tp.TensorParallelSize = 2
			e := estimateAlone(t, cfg, &tp, card.mib)
			fmt.Fprintf(&b, "| %s | 2 × %s | %s | %s | %s |\n", c.label, card.name, gib(e.WeightsBytes),
				plan.KiB(e.KVPerTokenBytes), cell(t, cfg, &tp, card.mib))
		}
	}
	return b.String()
}

var generatedRE = regexp.MustCompile(`(?s)(<!-- generated: ([a-z-]+) -->\n)(.*?)(<!-- end generated -->)`)

func TestSizingTablesArePlans(t *testing.T) {
	tables := map[string]func(*testing.T) string{
		"models": modelsTable, "shipped": shippedTable, "cards": cardsTable, "tensor-parallel": tpTable,
		"switch": switchTable,
	}
	data, err := os.ReadFile(sizingFile)
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	var failed []string
	out := generatedRE.ReplaceAllFunc(data, func(m []byte) []byte {
		sm := generatedRE.FindSubmatch(m)
		name := string(sm[2])
		gen, ok := tables[name]
		if !ok {
			failed = append(failed, fmt.Sprintf("unknown generated table %q", name))
			return m
		}
		found[name] = true
		want := gen(t)
		if string(sm[3]) != want {
			failed = append(failed, fmt.Sprintf("table %q differs from plan's numbers; want:\n%s", name, want))
		}
		return []byte(string(sm[1]) + want + string(sm[4]))
	})
	for name := range tables {
		if !found[name] {
			failed = append(failed, fmt.Sprintf("no <!-- generated: %s --> table in %s", name, sizingFile))
		}
	}
	if os.Getenv("VAGENT_UPDATE_DOCS") != "" && !bytes.Equal(out, data) {
		if err := os.WriteFile(sizingFile, out, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	for _, f := range failed {
		t.Errorf("%s: %s (VAGENT_UPDATE_DOCS=1 go test ./docs -run TestSizingTablesArePlans rewrites it)", sizingFile, f)
	}
}

// switchTable is plan's switch costs of each shipped model, as the first
// shipped agent that uses it runs it, at the default rates.
func switchTable(t *testing.T) string {
	cfg, agents := shippedModels(t)
	var b strings.Builder
	b.WriteString("| model | checkpoint | cold start | wake from level 1 | wake from level 2 | host RAM asleep at level 1 |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|\n")
	for _, a := range agents {
		c := *cfg
		c.Agents = []*config.Agent{a}
		totals := map[int]uint64{}
		for _, g := range a.GPUs {
			totals[g] = 49140 << 20 // every shipped model fits: the costs do not depend on the card
		}
		p := plan.Build(&c, totals, "--gpu-total-mib", offlineFacts(t, &c))
		s := plan.Switch(&c, p, plan.Meminfo{TotalBytes: 64 << 30, AvailableBytes: 64 << 30}, plan.DefaultRates, nil).Agents[0]
		fmt.Fprintf(&b, "| `%s` | %s | %.1f s | %.1f s | %.1f s | %s |\n", a.Model, plan.GB(p.Agents[0].Facts.WeightsBytes),
			s.ColdStart.Seconds, s.WakeLevel1.Seconds, s.WakeLevel2.Seconds, gib(s.HostLevel1Bytes))
	}
	return b.String()
}
