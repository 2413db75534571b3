package units

import (
	"reflect"
	"testing"
)

// The two-card example: each engine sees only its own cards, architect
// runs tensor-parallel over both, and only the agents that share a card
// conflict: po and dev, on cards of their own, start side by side.
func TestShippedTwoCardAgents(t *testing.T) {
	cfg := loadConfig(t, "../configs/examples/2x24gb/vagent.toml")
	files, err := Render(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		visible, tp string
		conflicts   []string
	}{
		"architect": {"0,1", "2", []string{"vagent@dev.service", "vagent@po.service"}},
		"dev":       {"1", "", []string{"vagent@architect.service"}},
		"po":        {"0", "", []string{"vagent@architect.service"}},
	}
	for name, w := range want {
		u := readDropIn(t, files, name)
		if got := u.env["CUDA_VISIBLE_DEVICES"]; got != w.visible {
			t.Errorf("%s: CUDA_VISIBLE_DEVICES=%q, want %q", name, got, w.visible)
		}
		if got := u.env["CUDA_DEVICE_ORDER"]; got != "PCI_BUS_ID" {
			t.Errorf("%s: CUDA_DEVICE_ORDER=%q: the indexes would not be NVML's", name, got)
		}
		if got, _ := flagValue(u.argv, "--tensor-parallel-size"); got != w.tp {
			t.Errorf("%s: --tensor-parallel-size %q, want %q", name, got, w.tp)
		}
		if got := conflictsOf(t, files, name); !reflect.DeepEqual(got, w.conflicts) {
			t.Errorf("%s: Conflicts=%q, want %q", name, got, w.conflicts)
		}
	}
}
