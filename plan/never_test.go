package plan

import (
	"context"
	"strings"
	"testing"
)

// The supervisor's pre-eviction check says why an agent can never start,
// and lets through one that fits.
func TestNeverFitsNamesWhy(t *testing.T) {
	cfg := loadShipped(t, "configs/examples/24gb")
	r := offline(t)
	totals := totalMiB(16376)
	for _, name := range []string{"architect", "dev"} {
		a := cfg.Agent(name)
		why := neverFits(cfg, a, totals, r.Facts(context.Background(), a))
		if !strings.Contains(why, "weights alone") {
			t.Errorf("%s on 16 GB: %q, want the weights named", name, why)
		}
	}
	a := cfg.Agent("po")
	if why := neverFits(cfg, a, totals, r.Facts(context.Background(), a)); why != "" {
		t.Errorf("po on 16 GB: %q, want it to fit", why)
	}
	if why := neverFits(cfg, a, totals, nil); why != "" {
		t.Errorf("unknown figures: %q, want no refusal", why)
	}
}
