package gateway

import (
	"slices"
	"testing"

	"github.com/vagent-dev/vagent/supervisor"
)

// Agents that share two cards of different sizes take turns when either
// card cannot hold both, not only the first they share.
func TestConflictsOnEverySharedCard(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.cfg.GPU.ReserveMiB = 1024
	for _, name := range []string{"a", "b"} {
		ag := e.cfg.Agent(name)
		ag.GPUs, ag.TensorParallelSize, ag.GPUMemoryUtilization = []int{0, 1}, 2, 0.48
	}
	g, err := New(Options{Config: e.cfg, Switcher: e.sw})
	if err != nil {
		t.Fatal(err)
	}
	conflicts := func(name string) []string {
		for _, ag := range g.agents {
			if ag.name == name {
				var out []string
				for _, c := range ag.conflicts {
					out = append(out, c.name)
				}
				return out
			}
		}
		t.Fatalf("no agent %s", name)
		return nil
	}
	// 0.96 of a 48 GiB card fits beside 1 GiB kept free; of a 16 GiB one not.
	g.computeConflicts(map[int]supervisor.GPUMemory{0: {Total: 48 << 30}, 1: {Total: 16 << 30}})
	if !slices.Equal(conflicts("a"), []string{"b"}) || !slices.Equal(conflicts("b"), []string{"a"}) {
		t.Errorf("conflicts a %v, b %v: want each other (the 16 GiB card cannot hold both)", conflicts("a"), conflicts("b"))
	}
	g.computeConflicts(map[int]supervisor.GPUMemory{0: {Total: 48 << 30}, 1: {Total: 48 << 30}})
	if len(conflicts("a")) != 0 {
		t.Errorf("two 48 GiB cards hold both, yet a conflicts with %v", conflicts("a"))
	}
}
