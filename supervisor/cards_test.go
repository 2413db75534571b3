//go:build cgo

package supervisor

import (
	"context"
	"errors"
	"math"
	"slices"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/gpu"
)

// twoCards is a host with two GPUs of different sizes behind go-nvml's
// mocks: what each card has free is what the agents running on it hold,
// each on every one of its GPUs its budget of that GPU, as vLLM's ranks
// do, plus what other programs hold there. Units are fakeHost's.
type twoCards struct {
	*fakeHost
	totals  [2]uint64
	foreign [2]uint64
	peak    [2]uint64
}

func newTwoCards(t *testing.T, cfg *config.Config, total0, total1 uint64) (*twoCards, GPU) {
	// The cards below are what the supervisor sees; fakeHost's own
	// single-GPU accounting stands aside.
	c := &twoCards{fakeHost: newFakeHost(t, cfg, total0), totals: [2]uint64{total0, total1}}
	c.fakeHost.cards = true
	dev := func(i int) nvml.Device {
		return &mock.Device{
			GetNameFunc: func() (string, nvml.Return) {
				return []string{"NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 4080"}[i], nvml.SUCCESS
			},
			GetUUIDFunc:                  func() (string, nvml.Return) { return "GPU-card" + string(rune('0'+i)), nvml.SUCCESS },
			GetCudaComputeCapabilityFunc: func() (int, int, nvml.Return) { return 8, 9, nvml.SUCCESS },
			GetMemoryInfo_v2Func: func() (nvml.Memory_v2, nvml.Return) {
				used := c.used(i)
				return nvml.Memory_v2{Total: c.totals[i], Used: used, Free: c.totals[i] - used}, nvml.SUCCESS
			},
			GetUtilizationRatesFunc: func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{}, nvml.SUCCESS },
			GetTemperatureFunc:      func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED },
			GetPowerUsageFunc:       func() (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED },
			GetComputeRunningProcessesFunc: func() ([]nvml.ProcessInfo, nvml.Return) {
				return nil, nvml.SUCCESS
			},
		}
	}
	lib := &mock.Interface{
		InitFunc:     func() nvml.Return { return nvml.SUCCESS },
		ShutdownFunc: func() nvml.Return { return nvml.SUCCESS },
		ExtensionsFunc: func() nvml.ExtendedInterface {
			return &mock.ExtendedInterface{LookupSymbolFunc: func(string) error { return nil }}
		},
		SystemGetDriverVersionFunc:     func() (string, nvml.Return) { return "550.54.15", nvml.SUCCESS },
		SystemGetCudaDriverVersionFunc: func() (int, nvml.Return) { return 12040, nvml.SUCCESS },
		DeviceGetCountFunc:             func() (int, nvml.Return) { return 2, nvml.SUCCESS },
		DeviceGetHandleByIndexFunc: func(i int) (nvml.Device, nvml.Return) {
			if i < 0 || i > 1 {
				return nil, nvml.ERROR_INVALID_ARGUMENT
			}
			return dev(i), nvml.SUCCESS
		},
	}
	b, err := gpu.NewNVML(lib)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return c, FromBackend(b)
}

// used is what card i holds now; it records the card's peak.
func (c *twoCards) used(i int) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.foreign[i]
	for _, a := range c.cfg.Agents {
		if c.states[a.Unit()].Running() && slices.Contains(a.GPUs, i) {
			n += a.Budget(c.totals[i], 0)
		}
	}
	c.peak[i] = max(c.peak[i], n)
	if n > c.totals[i] {
		c.t.Errorf("GPU %d over-committed: %d of %d", i, n, c.totals[i])
		n = c.totals[i]
	}
	return n
}

func TestTwoCardsEachAgentFitsItsOwnCard(t *testing.T) {
	po, dev := agent("po", 0.9, 10), agent("dev", 0.9, 30)
	po.GPUs, dev.GPUs = []int{0}, []int{1}
	big := agent("big", 0.9, 20)
	big.GPUs, big.TensorParallelSize = []int{0, 1}, 2
	cfg := testConfig(t, po, dev, big)
	c, view := newTwoCards(t, cfg, 24*gib, 16*gib)
	s := New(cfg, Options{Systemd: c, GPU: view})
	ctx := context.Background()

	// 0.9 of one card each: po and dev run side by side, neither evicts.
	for _, n := range []string{"po", "dev"} {
		res, err := s.Switch(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Evicted) != 0 {
			t.Errorf("switch %s evicted %v, want nothing: it is alone on its card", n, res.Evicted)
		}
	}
	mem, err := view.Memory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := budget90(24 * gib); mem[0].Used != want {
		t.Errorf("GPU 0 used %d, want po's budget of the 24 GiB card %d", mem[0].Used, want)
	}
	if want := budget90(16 * gib); mem[1].Used != want {
		t.Errorf("GPU 1 used %d, want dev's budget of the 16 GiB card %d", mem[1].Used, want)
	}

	st, err := s.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range st {
		if a.Agent != "big" {
			continue
		}
		want := []CardShare{{GPU: 0, BudgetBytes: budget90(24 * gib), TotalBytes: 24 * gib},
			{GPU: 1, BudgetBytes: budget90(16 * gib), TotalBytes: 16 * gib}}
		if !slices.Equal(a.Cards, want) {
			t.Errorf("big's cards %+v, want each card's own budget %+v", a.Cards, want)
		}
	}

	// The tensor-parallel agent needs 0.9 of both cards: both go.
	res, err := s.Switch(ctx, "big")
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(res.Evicted)
	if !slices.Equal(res.Evicted, []string{"dev", "po"}) {
		t.Errorf("big evicted %v, want dev and po", res.Evicted)
	}
	// Back to po: only card 0 is needed, but big spans it, so big goes
	// and dev may start beside po again without evicting anything.
	if res, err = s.Switch(ctx, "po"); err != nil || !slices.Equal(res.Evicted, []string{"big"}) {
		t.Fatalf("switch po: %+v, %v; want big evicted", res, err)
	}
	if res, err = s.Switch(ctx, "dev"); err != nil || len(res.Evicted) != 0 {
		t.Fatalf("switch dev: %+v, %v; want nothing evicted", res, err)
	}
	if c.peak[0] > c.totals[0] || c.peak[1] > c.totals[1] {
		t.Errorf("peaks %v over the cards %v", c.peak, c.totals)
	}
}

// The fit is judged by the agent's own card's size and free memory, not by
// the first card's or the sum of both.
func TestTwoCardsFitUsesEachCardsNumbers(t *testing.T) {
	dev := agent("dev", 0.9, 30)
	dev.GPUs = []int{1}
	cfg := testConfig(t, dev)
	cfg.GPU.ReserveMiB = 0
	c, view := newTwoCards(t, cfg, 24*gib, 16*gib)
	// Other programs hold 2 GiB of the 16 GiB card: 14 GiB free, less than
	// 0.9 × 16 GiB = 14.4 GiB, though the 24 GiB card is empty.
	c.foreign[1] = 2 * gib
	s := New(cfg, Options{Systemd: c, GPU: view})
	_, err := s.Switch(context.Background(), "dev")
	var fe *FitError
	if !errors.As(err, &fe) {
		t.Fatalf("switch dev: %v, want a FitError", err)
	}
	if fe.GPU != 1 || fe.Need != budget90(16*gib) || fe.Free != 14*gib {
		t.Errorf("FitError GPU %d need %d free %d; want GPU 1, 0.9 of 16 GiB, 14 GiB", fe.GPU, fe.Need, fe.Free)
	}
	if len(c.log) != 0 {
		t.Errorf("systemd calls %v for an agent that does not fit", c.log)
	}

	// With the other program gone it fits card 1.
	c.foreign[1] = 0
	if _, err := s.Switch(context.Background(), "dev"); err != nil {
		t.Fatal(err)
	}
}

// budget90 is the budget of an agent at gpu_memory_utilization 0.9 on a
// card of total bytes, rounded up as vLLM rounds it.
func budget90(total uint64) uint64 {
	util := 0.9
	return uint64(math.Ceil(util * float64(total)))
}
