package gateway

import (
	"context"
	"math"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vagent-dev/vagent/supervisor"
)

// twoCardGPU is a host with a 24 GiB and a 16 GiB card that says on which
// card each agent's memory is.
type twoCardGPU struct{ byCard map[int]map[string]uint64 }

func (f twoCardGPU) Memory(context.Context) (map[int]supervisor.GPUMemory, error) {
	return map[int]supervisor.GPUMemory{
		0: {Total: 24 << 30, Used: 10 << 30, Free: 14 << 30},
		1: {Total: 16 << 30, Used: 6 << 30, Free: 10 << 30},
	}, nil
}

func (f twoCardGPU) AgentBytes(context.Context) (map[string]uint64, error) {
	out := map[string]uint64{}
	for _, m := range f.byCard {
		for a, b := range m {
			out[a] += b
		}
	}
	return out, nil
}

func (f twoCardGPU) AgentBytesByGPU(context.Context) (map[int]map[string]uint64, error) {
	return f.byCard, nil
}

// Each card's memory and each agent's part of each of its cards, with its
// budget of that card: a tensor-parallel agent's differs on cards of
// different sizes.
func TestGPUMetricsPerCard(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.cfg.Agent("a").GPUs = []int{0}
	b := e.cfg.Agent("b")
	b.GPUs, b.TensorParallelSize = []int{0, 1}, 2
	reg := prometheus.NewRegistry()
	gpu := twoCardGPU{byCard: map[int]map[string]uint64{0: {"b": 5 << 30}, 1: {"b": 6 << 30}}}
	if _, err := New(Options{Config: e.cfg, Switcher: e.sw, Registry: reg, GPU: gpu}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"vagent_gpu_total_bytes", map[string]string{"gpu": "0"}, 24 << 30},
		{"vagent_gpu_total_bytes", map[string]string{"gpu": "1"}, 16 << 30},
		{"vagent_gpu_used_bytes", map[string]string{"gpu": "1"}, 6 << 30},
		{"vagent_gpu_vram_bytes", map[string]string{"gpu": "0", "agent": "b"}, 5 << 30},
		{"vagent_gpu_vram_bytes", map[string]string{"gpu": "1", "agent": "b"}, 6 << 30},
		{"vagent_gpu_vram_bytes", map[string]string{"gpu": "0", "agent": "a"}, 0},
		{"vagent_gpu_budget_bytes", map[string]string{"gpu": "0", "agent": "b"}, math.Ceil(b.GPUMemoryUtilization * (24 << 30))},
		{"vagent_gpu_budget_bytes", map[string]string{"gpu": "1", "agent": "b"}, math.Ceil(b.GPUMemoryUtilization * (16 << 30))},
		{"vagent_vram_bytes", map[string]string{"agent": "b"}, 11 << 30},
	} {
		if v := gaugeValue(t, reg, c.name, c.labels); v != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, v, c.want)
		}
	}
	// a is on card 0 only: no series of it for card 1.
	if m := find(t, reg, "vagent_gpu_budget_bytes", map[string]string{"gpu": "1", "agent": "a"}); m != nil {
		t.Errorf("a has a budget on GPU 1, where it does not run: %v", m)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint %v %v", problems, err)
	}
}
