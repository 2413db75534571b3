//go:build cgo

package gpu

import (
	"context"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// rtx is a 24 GB or 16 GB card with used bytes held by procs.
func rtx(name, uuid string, totalMiB uint64, procs ...nvml.ProcessInfo) *fakeGPU {
	total := totalMiB * mib
	var used uint64
	for _, p := range procs {
		used += p.UsedGpuMemory
	}
	return &fakeGPU{
		name: name, uuid: uuid, major: 8, minor: 9,
		mem:   nvml.Memory{Total: total, Used: used + 300*mib, Free: total - used - 300*mib},
		memV2: nvml.Memory_v2{Total: total, Reserved: 300 * mib, Used: used, Free: total - used - 300*mib},
		procs: procs,
	}
}

// A host with a 24 GB and a 16 GB card, a tensor-parallel engine holding
// both through a worker process on each, and po beside it on the first:
// NVML reports both cards with their own figures, each card's processes
// are tied to their agents, and the fit is judged on each card's own free
// memory.
func TestNVMLTwoCards(t *testing.T) {
	g0 := rtx("NVIDIA GeForce RTX 4090", "GPU-4090", 24564,
		nvml.ProcessInfo{Pid: 7001, UsedGpuMemory: 9 * gib},  // architect's VllmWorker-0
		nvml.ProcessInfo{Pid: 7100, UsedGpuMemory: 10 * gib}, // po's EngineCore
	)
	g1 := rtx("NVIDIA GeForce RTX 4080", "GPU-4080", 16376,
		nvml.ProcessInfo{Pid: 7002, UsedGpuMemory: 9 * gib}, // architect's VllmWorker-1
	)
	n := mustNVML(t, newFakeServer(g0, g1))
	n.procRoot = fakeProcRoot(t, map[int]string{
		7001: "0::/system.slice/system-vagent.slice/vagent@architect.service\n",
		7002: "0::/system.slice/system-vagent.slice/vagent@architect.service\n",
		7100: "0::/system.slice/system-vagent.slice/vagent@po.service\n",
	})
	ctx := context.Background()
	info, err := n.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Devices) != 2 {
		t.Fatalf("%d devices, want 2", len(info.Devices))
	}
	d0, d1 := info.Devices[0], info.Devices[1]
	if d0.Index != 0 || d0.UUID != "GPU-4090" || d0.TotalBytes != 24564*mib || d0.UsedBytes != 19*gib || d0.FreeBytes != 24564*mib-19*gib-300*mib {
		t.Errorf("GPU 0 = %+v", d0)
	}
	if d1.Index != 1 || d1.UUID != "GPU-4080" || d1.TotalBytes != 16376*mib || d1.UsedBytes != 9*gib || d1.FreeBytes != 16376*mib-9*gib-300*mib {
		t.Errorf("GPU 1 = %+v", d1)
	}

	ps, err := n.Processes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h0, h1 := HeldByAgent(ps, 0), HeldByAgent(ps, 1)
	if h0["architect"] != 9*gib || h0["po"] != 10*gib || h1["architect"] != 9*gib || h1["po"] != 0 {
		t.Errorf("held on GPU 0 %v, on GPU 1 %v", h0, h1)
	}

	// 6 GiB more fits the 4080 (6.70 GiB free, less 256 MiB kept free),
	// not the 4090 (4.70 GiB free).
	need, reserve := uint64(6*gib), uint64(256*mib)
	if err := Fits(info, []int{1}, need, reserve); err != nil {
		t.Errorf("6 GiB on GPU 1: %v", err)
	}
	err = Fits(info, []int{0}, need, reserve)
	if err == nil || !strings.Contains(err.Error(), "GPU 0 (NVIDIA GeForce RTX 4090) has 4.70 GiB free, needs 6.00 GiB plus 256 MiB reserve") {
		t.Errorf("6 GiB on GPU 0: %v", err)
	}
	// Spanning both, the fullest card decides, and the error names it.
	err = Fits(info, []int{1, 0}, need, reserve)
	if err == nil || !strings.Contains(err.Error(), "GPU 0 ") {
		t.Errorf("6 GiB on each of GPUs 1 and 0: %v", err)
	}
	if err := Fits(info, []int{0, 1}, 4*gib, reserve); err != nil {
		t.Errorf("4 GiB on each: %v", err)
	}
	if got := Free(info, 1); got != d1.FreeBytes {
		t.Errorf("Free(info, 1) = %d, want GPU 1's %d", got, d1.FreeBytes)
	}
}
