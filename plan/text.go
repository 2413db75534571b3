package plan

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
)

// WriteText prints the plan for people: the GPUs, a table of agents, one
// line per agent saying why it fits or not and where its figures came from,
// which agents can run together, and a closing verdict.
func (p *Plan) WriteText(w io.Writer) error {
	graphs := "outside the budget (before 0.21)"
	if p.GraphsInBudget {
		graphs = "inside the budget (0.21 and later)"
	}
	var gpus []string
	for _, g := range p.GPUs {
		if g.TotalBytes == 0 {
			gpus = append(gpus, fmt.Sprintf("GPU %d: size unknown", g.Index))
			continue
		}
		gpus = append(gpus, fmt.Sprintf("GPU %d: %s", g.Index, GiB(g.TotalBytes)))
	}
	fmt.Fprintf(w, "%s (from %s), %d MiB kept free; vLLM %s counts CUDA graphs %s\n\n",
		strings.Join(gpus, ", "), p.TotalSource, p.ReserveBytes/mib, p.VLLMVersion, graphs)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "AGENT\tMODEL\tWEIGHTS\tKV/TOKEN\tBUDGET\tKV CACHE\tMAX LEN\tCONFIGURED\tFITS ALONE")
	capped := false
	for _, e := range p.Agents {
		if e.Status == Unknown && (e.Facts == nil || !e.Facts.Complete()) {
			fmt.Fprintf(tw, "%s\t%s\t?\t?\t?\t?\t?\t%s\t?\n", e.Agent, e.Model, lenText(e.MaxModelLen))
			continue
		}
		if e.Status == Unknown {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t?\t?\t?\t%s\t?\n", e.Agent, e.Model, GiB(e.WeightsBytesOrFacts()), kvText(e), lenText(e.MaxModelLen))
			continue
		}
		maxLen, kv := "-", "-"
		if e.Status == Fits {
			kv = GiB(e.KVCacheBytes)
			maxLen = strconv.Itoa(e.MaxModelLenFit)
			if e.Capped {
				maxLen += "*"
				capped = true
			}
		}
		conf := lenText(e.MaxModelLen)
		switch {
		case e.Status != Fits:
		case e.MaxModelLenOK:
			conf += " ok"
		default:
			conf += " TOO LONG"
		}
		fits := "yes"
		if e.Status != Fits {
			fits = "NO"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Agent, e.Model, GiB(e.WeightsBytes), kvText(e),
			GiB(e.BudgetBytes), kv, maxLen, conf, fits)
	}
	tw.Flush()
	if capped {
		fmt.Fprintln(w, "* the model's own limit (max_position_embeddings); more would fit")
	}
	fmt.Fprintln(w)
	for _, e := range p.Agents {
		fmt.Fprintf(w, "%s: %s\n", e.Agent, e.Why)
		if e.Status == Fits && !e.MaxModelLenOK {
			fmt.Fprintf(w, "  max_model_len: %s\n", e.MaxModelLenWhy)
		}
		if e.Facts != nil {
			fmt.Fprintf(w, "  figures: %s\n", sourcesText(e.Facts))
		}
		if e.SleepResidualBytes > 0 {
			fmt.Fprintf(w, "  asleep: %s\n", residualText(e))
		}
	}
	fmt.Fprintln(w)
	for _, g := range p.GPUs {
		fmt.Fprintf(w, "together on GPU %d: %s\n", g.Index, togetherText(g))
	}
	fmt.Fprintln(w)
	if p.Switching != nil {
		p.Switching.WriteSwitchText(w)
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, p.Verdict())
	return nil
}

// WeightsBytesOrFacts is the per-GPU weights, or the model's weights when
// the estimate stopped before splitting them.
func (e *Estimate) WeightsBytesOrFacts() uint64 {
	if e.WeightsBytes > 0 || e.Facts == nil {
		return e.WeightsBytes
	}
	return e.Facts.WeightsBytes / uint64(max(e.TP, 1))
}

func kvText(e Estimate) string {
	if e.KVPerTokenBytes == 0 {
		return "?"
	}
	s := KiB(e.KVPerTokenBytes)
	if e.KVDtypeBytes == 1 {
		s += " (fp8)"
	}
	return s
}

func lenText(n int) string {
	if n == 0 {
		return "model's"
	}
	return strconv.Itoa(n)
}

// sourcesText says where the architecture and the weights came from.
func sourcesText(f *Facts) string {
	var parts []string
	if f.Arch != nil {
		a := f.Arch
		q := a.Dtype
		if a.Quant != "" {
			q = fmt.Sprintf("%s %s", a.Dtype, a.Quant)
			if a.QuantBits > 0 {
				q += fmt.Sprintf(" %d-bit", a.QuantBits)
			}
		}
		parts = append(parts, fmt.Sprintf("%d layers × %d KV heads × %d head_dim, %s (config.json: %s)",
			a.Layers, a.KVHeads, a.HeadDim, q, f.ArchSource))
	} else {
		parts = append(parts, "config.json: unknown")
	}
	if f.WeightsBytes > 0 {
		parts = append(parts, fmt.Sprintf("weights %s in %d files (%s)", GB(f.WeightsBytes), f.WeightFiles, f.WeightsSource))
	} else {
		parts = append(parts, "weights: unknown")
	}
	s := strings.Join(parts, "; ")
	if (f.ArchSource != SourceCache && f.ArchSource != SourceLocal) || (f.WeightsSource != SourceCache && f.WeightsSource != SourceLocal) {
		if len(f.Notes) > 0 {
			s += "; passed over: " + strings.Join(f.Notes, "; ")
		}
	}
	return s
}

func togetherText(g GPU) string {
	var parts []string
	for _, set := range g.Together {
		parts = append(parts, strings.Join(set, " + "))
	}
	var out []string
	switch {
	case len(parts) > 0:
		out = append(out, strings.Join(parts, "; ")+" can run at once")
		if len(g.AloneOnly) > 0 {
			out = append(out, fmt.Sprintf("%s only alone", strings.Join(g.AloneOnly, ", ")))
		}
	case len(g.AloneOnly) == 1:
		out = append(out, g.AloneOnly[0]+" runs alone")
	case len(g.AloneOnly) > 1:
		out = append(out, fmt.Sprintf("no two of %s fit at once (their budgets together exceed the %s vagent may use): one runs at a time and vagentd switches between them",
			strings.Join(g.AloneOnly, ", "), GiB(g.UsableBytes)))
	}
	if len(g.NeverFits) > 0 {
		out = append(out, fmt.Sprintf("never: %s", strings.Join(g.NeverFits, ", ")))
	}
	if len(g.Unknown) > 0 {
		out = append(out, fmt.Sprintf("unknown: %s", strings.Join(g.Unknown, ", ")))
	}
	if len(out) == 0 {
		return "no agent runs here"
	}
	return strings.Join(out, "; ")
}

// Verdict is the plan's closing line.
func (p *Plan) Verdict() string {
	var bad, unknown []string
	for _, e := range p.Failing() {
		bad = append(bad, e.Agent)
	}
	for _, e := range p.Agents {
		if e.Status == Unknown {
			unknown = append(unknown, e.Agent)
		}
	}
	var s string
	switch n := len(bad); {
	case n == 0:
		s = fmt.Sprintf("%d of %d agents fit their GPU alone", len(p.Agents)-len(unknown), len(p.Agents))
	case n == 1:
		s = fmt.Sprintf("1 agent cannot start on its GPU as configured: %s", bad[0])
	default:
		s = fmt.Sprintf("%d agents cannot start on their GPU as configured: %s", n, strings.Join(bad, ", "))
	}
	if len(unknown) > 0 {
		s += fmt.Sprintf("; unknown: %s (pull the models or go online, then plan again)", strings.Join(unknown, ", "))
	}
	return s
}

// residualText says what a sleep agent keeps on the GPU while asleep.
func residualText(e Estimate) string {
	what := "CUDA context + CUDA graphs"
	if e.SleepResidualBytes <= ContextBytes+NCCLBytes { // graphs take more than NCCL
		what = "CUDA context; no graphs with enforce_eager"
	}
	gpu := "on the GPU"
	if len(e.GPUs) > 1 {
		gpu = "on each GPU"
	}
	return fmt.Sprintf("keeps %s %s (%s), estimated before it ran; the supervisor counts what the GPU shows after its first sleep",
		GiB(e.SleepResidualBytes), gpu, what)
}
