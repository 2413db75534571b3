package docs

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/vagent-dev/vagent/plan"
)

// gibFigureRE is a memory figure in GiB, as comments would quote plan.
var gibFigureRE = regexp.MustCompile(`\d+(\.\d+)? GiB`)

// TestShippedCommentsArePlans: each shipped agent file states what
// `vagentctl plan` computes for it on the file's own simulated card in one
// "# plan:" line, equal to plan's figures, and quotes no other GiB figure
// that could drift from them.
func TestShippedCommentsArePlans(t *testing.T) {
	for _, src := range shippedConfigs {
		cfg := loadShipped(t, src)
		for _, a := range cfg.Agents {
			e := estimateAlone(t, cfg, a, cfg.GPU.SimTotalMiB)
			want := fmt.Sprintf("# plan: budget %s = %g x %s; weights %s; activations and CUDA context %s; KV cache %s at %d KiB per token: up to %d tokens",
				plan.GiB(e.BudgetBytes), e.Utilization, plan.GiB(e.TotalBytes), plan.GiB(e.WeightsBytes),
				plan.GiB(e.ActivationBytes+e.ContextBytes), plan.GiB(e.KVCacheBytes), e.KVPerTokenBytes>>10, e.MaxModelLenFit)
			if e.Capped {
				want += " (the model's own limit)"
			}
			data, err := os.ReadFile(a.File)
			if err != nil {
				t.Fatal(err)
			}
			var planLines int
			for i, line := range strings.Split(string(data), "\n") {
				if !strings.HasPrefix(line, "#") {
					continue
				}
				if strings.HasPrefix(line, "# plan:") {
					planLines++
					if line != want {
						t.Errorf("%s:%d: %q\nplan computes %q", a.File, i+1, line, want)
					}
					continue
				}
				if f := gibFigureRE.FindString(line); f != "" {
					t.Errorf("%s:%d: %q quotes %s outside the plan line", a.File, i+1, line, f)
				}
			}
			if planLines != 1 {
				t.Errorf("%s: %d \"# plan:\" lines, want 1", a.File, planLines)
			}
		}
	}
}
