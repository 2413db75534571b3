package plan

import (
	"fmt"
	"testing"
)

// A tensor-parallel agent over a 48 GiB and a 16 GiB card takes 0.4 of
// each card's own memory: on the big card 19.2 GiB, which with two agents
// at 0.3 (14.4 GiB each) is more than the 47.75 GiB vagent may use, so
// only pairs run together there; its estimate on the small card (6.4 GiB)
// must not stand in for the big one.
func TestTogetherUsesEachCardsBudget(t *testing.T) {
	arch := Arch{Layers: 28, KVHeads: 4, AttnHeads: 28, Hidden: 3584, HeadDim: 128, MaxPosition: 32768, Dtype: "float16", Quant: "awq"}
	x := agent("x", "org/s", 0.4, 4096)
	x.GPUs, x.TensorParallelSize = []int{0, 1}, 2
	cfg := synthCfg("0.18.0", x, agent("y", "org/s", 0.3, 4096), agent("z", "org/s", 0.3, 4096))
	p := Build(cfg, map[int]uint64{0: 48 << 30, 1: 16 << 30}, "test", facts(cfg, arch, 1_000_000_000))
	for _, e := range p.Agents {
		if !e.OK() {
			t.Fatalf("%s: %s %s", e.Agent, e.Why, e.MaxModelLenWhy)
		}
	}
	if got := fmt.Sprint(p.GPUs[0].Together); got != "[[x y] [x z] [y z]]" {
		t.Errorf("together on the 48 GiB card = %s, want the pairs only", got)
	}
}
