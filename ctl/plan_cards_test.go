package ctl

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/vagent-dev/vagent/plan"
)

// TestPlanTwoCardExample: the shipped two-card example fits as its files
// and docs/sizing.md say: po alone on card 0, dev alone on card 1, both at
// once, and architect over both cards at its full 32k context; plan shows
// each card.
func TestPlanTwoCardExample(t *testing.T) {
	conf, _ := hostConfig(t, "configs/examples/2x24gb", nil)
	out, errOut, code := runIssueCmd(t, conf, "plan")
	if code != ExitOK || errOut != "" {
		t.Fatalf("exit %d, stderr %q\n%s", code, errOut, out)
	}
	for _, want := range []string{
		"GPU 0: 23.99 GiB, GPU 1: 23.99 GiB (from gpu.sim_total_mib), 256 MiB kept free",
		"architect: fits alone on each of GPUs 0,1 (tensor_parallel_size 2): budget 22.07 GiB = 0.92 × 23.99 GiB, less 9.00 GiB weights",
		"dev: fits alone on GPU 1: budget 22.79 GiB = 0.95 × 23.99 GiB",
		"po: fits alone on GPU 0: budget 22.07 GiB = 0.92 × 23.99 GiB",
		"together on GPU 0: no two of architect, po fit at once",
		"together on GPU 1: no two of architect, dev fit at once",
		"3 of 3 agents fit their GPU alone",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("plan lacks %q:\n%s", want, out)
		}
	}

	out, _, code = runIssueCmd(t, conf, "plan", "--json")
	var p plan.Plan
	if err := json.Unmarshal([]byte(out), &p); err != nil || code != ExitOK {
		t.Fatalf("json (exit %d): %v\n%s", code, err, out)
	}
	if len(p.GPUs) != 2 || !slices.Equal(p.GPUs[0].Agents, []string{"architect", "po"}) || !slices.Equal(p.GPUs[1].Agents, []string{"architect", "dev"}) {
		t.Errorf("cards: %+v, want architect and po on 0, architect and dev on 1", p.GPUs)
	}
	for name, want := range map[string]struct {
		gpus   []int
		maxLen int
	}{"architect": {[]int{0, 1}, 32768}, "dev": {[]int{1}, 8192}, "po": {[]int{0}, 32768}} {
		e := p.Agent(name)
		if e == nil || !e.OK() || !slices.Equal(e.GPUs, want.gpus) || e.MaxModelLen != want.maxLen {
			t.Errorf("%s: %+v, want it to fit on GPUs %v with max_model_len %d", name, e, want.gpus, want.maxLen)
		}
	}
	// po and dev are on different cards: nothing makes them take turns.
	for _, g := range p.GPUs {
		for _, set := range g.Together {
			if slices.Contains(set, "architect") {
				t.Errorf("GPU %d: architect runs beside %v, want it alone on both cards", g.Index, set)
			}
		}
	}
}

// The two-card example copied to a one-card host: plan says which agents
// name a card the host lacks and exits 1, instead of calling them unknown.
func TestPlanTwoCardExampleOnOneCard(t *testing.T) {
	conf, dir := hostConfig(t, "configs/examples/2x24gb", func(m string) string {
		return strings.Replace(m, "sim_count = 2", "sim_count = 1", 1)
	})
	out, errOut, code := runIssueCmd(t, conf, "plan")
	if code != ExitFailure {
		t.Fatalf("exit %d, want 1\n%s%s", code, out, errOut)
	}
	for _, want := range []string{
		"architect: does not fit: GPU 1 is not on this host, which has GPU 0; change gpus in " + dir + "/agents/architect.toml",
		"dev: does not fit: GPU 1 is not on this host, which has GPU 0; change gpus in " + dir + "/agents/dev.toml",
		"po: fits alone on GPU 0",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("plan lacks %q:\n%s", want, out)
		}
	}
	if errOut != "vagentctl: plan: cannot start on the GPU as configured: architect, dev (see above)\n" {
		t.Errorf("stderr %q", errOut)
	}
}
