//go:build cgo

package gpu

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"

	"github.com/vagent-dev/vagent/config"
)

// go-nvml's mock/dgxa100 server would do, but it pulls in github.com/google/uuid
// (not in this module's go.sum); fakeServer builds the same kind of server
// from go-nvml's generated mocks alone, with the figures of a DGX A100
// (driver 550.54.15, CUDA 12040) and a 16 GB Turing card beside it.

type fakeGPU struct {
	name       string
	uuid       string
	major      int
	minor      int
	mem        nvml.Memory    // v1 figures: Used includes the reserved memory
	memV2      nvml.Memory_v2 // v2 figures
	util       uint32
	tempC      uint32
	powerMW    uint32
	noSensors  bool // temperature and power answer NOT_SUPPORTED
	procs      []nvml.ProcessInfo
	memRet     nvml.Return // forced return of both memory calls
	procsRet   nvml.Return
	memV2Calls int
}

func a100(i int) *fakeGPU {
	total := uint64(40960) * mib
	return &fakeGPU{
		name: "NVIDIA A100-SXM4-40GB", uuid: "GPU-a100-" + strconv.Itoa(i), major: 8, minor: 0,
		mem:   nvml.Memory{Total: total, Used: 1200*mib + 512*mib, Free: total - 1200*mib - 512*mib},
		memV2: nvml.Memory_v2{Total: total, Reserved: 512 * mib, Used: 1200 * mib, Free: total - 1200*mib - 512*mib},
		util:  37, tempC: 41, powerMW: 61234,
	}
}

func t4() *fakeGPU {
	total := uint64(15360) * mib
	return &fakeGPU{
		name: "Tesla T4", uuid: "GPU-t4", major: 7, minor: 5,
		mem:       nvml.Memory{Total: total, Used: 300 * mib, Free: total - 300*mib},
		memV2:     nvml.Memory_v2{Total: total, Reserved: 200 * mib, Used: 100 * mib, Free: total - 300*mib},
		noSensors: true,
	}
}

type fakeServer struct {
	*mock.Interface
	gpus          []*fakeGPU
	initRet       nvml.Return
	countRet      nvml.Return
	hasMemV2      bool
	shutdownCalls int
}

func newFakeServer(gpus ...*fakeGPU) *fakeServer {
	s := &fakeServer{gpus: gpus, hasMemV2: true}
	ext := &mock.ExtendedInterface{
		LookupSymbolFunc: func(name string) error {
			if name == "nvmlDeviceGetMemoryInfo_v2" && !s.hasMemV2 {
				return errors.New("undefined symbol: " + name)
			}
			return nil
		},
	}
	s.Interface = &mock.Interface{
		InitFunc:                   func() nvml.Return { return s.initRet },
		ShutdownFunc:               func() nvml.Return { s.shutdownCalls++; return nvml.SUCCESS },
		ExtensionsFunc:             func() nvml.ExtendedInterface { return ext },
		SystemGetDriverVersionFunc: func() (string, nvml.Return) { return "550.54.15", nvml.SUCCESS },
		SystemGetCudaDriverVersionFunc: func() (int, nvml.Return) {
			return 12040, nvml.SUCCESS
		},
		DeviceGetCountFunc: func() (int, nvml.Return) {
			if s.countRet != nvml.SUCCESS {
				return 0, s.countRet
			}
			return len(s.gpus), nvml.SUCCESS
		},
		DeviceGetHandleByIndexFunc: func(i int) (nvml.Device, nvml.Return) {
			if i < 0 || i >= len(s.gpus) {
				return nil, nvml.ERROR_INVALID_ARGUMENT
			}
			return s.gpus[i].device(), nvml.SUCCESS
		},
	}
	return s
}

func (g *fakeGPU) device() nvml.Device {
	return &mock.Device{
		GetNameFunc: func() (string, nvml.Return) { return g.name, nvml.SUCCESS },
		GetUUIDFunc: func() (string, nvml.Return) { return g.uuid, nvml.SUCCESS },
		GetCudaComputeCapabilityFunc: func() (int, int, nvml.Return) {
			return g.major, g.minor, nvml.SUCCESS
		},
		GetMemoryInfoFunc: func() (nvml.Memory, nvml.Return) {
			if g.memRet != nvml.SUCCESS {
				return nvml.Memory{}, g.memRet
			}
			return g.mem, nvml.SUCCESS
		},
		GetMemoryInfo_v2Func: func() (nvml.Memory_v2, nvml.Return) {
			g.memV2Calls++
			if g.memRet != nvml.SUCCESS {
				return nvml.Memory_v2{}, g.memRet
			}
			return g.memV2, nvml.SUCCESS
		},
		GetUtilizationRatesFunc: func() (nvml.Utilization, nvml.Return) {
			return nvml.Utilization{Gpu: g.util}, nvml.SUCCESS
		},
		GetTemperatureFunc: func(nvml.TemperatureSensors) (uint32, nvml.Return) {
			if g.noSensors {
				return 0, nvml.ERROR_NOT_SUPPORTED
			}
			return g.tempC, nvml.SUCCESS
		},
		GetPowerUsageFunc: func() (uint32, nvml.Return) {
			if g.noSensors {
				return 0, nvml.ERROR_NOT_SUPPORTED
			}
			return g.powerMW, nvml.SUCCESS
		},
		GetComputeRunningProcessesFunc: func() ([]nvml.ProcessInfo, nvml.Return) {
			if g.procsRet != nvml.SUCCESS {
				return nil, g.procsRet
			}
			return g.procs, nvml.SUCCESS
		},
	}
}

func mustNVML(t *testing.T, s *fakeServer) *NVML {
	t.Helper()
	n, err := NewNVML(s)
	if err != nil {
		t.Fatalf("NewNVML: %v", err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func TestNVMLInfo(t *testing.T) {
	s := newFakeServer(a100(0), a100(1), t4())
	info, err := mustNVML(t, s).Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.Backend != "nvml" || info.Driver != "550.54.15" || info.CUDA != "12.4" {
		t.Errorf("backend/driver/CUDA = %q/%q/%q, want nvml/550.54.15/12.4", info.Backend, info.Driver, info.CUDA)
	}
	if len(info.Devices) != 3 {
		t.Fatalf("got %d devices, want 3", len(info.Devices))
	}
	d := info.Devices[1]
	want := Device{
		Index: 1, UUID: "GPU-a100-1", Name: "NVIDIA A100-SXM4-40GB",
		TotalBytes: 40960 * mib, UsedBytes: 1200 * mib, FreeBytes: (40960 - 1712) * mib,
		ComputeMajor: 8, ComputeMinor: 0,
		UtilizationPercent: 37, TemperatureC: 41, PowerWatts: 61.234,
	}
	if d != want {
		t.Errorf("device 1 =\n%+v\nwant\n%+v", d, want)
	}
	// A card without sensors still reports its memory.
	tt := info.Devices[2]
	if tt.Name != "Tesla T4" || tt.ComputeCapability() != "7.5" || tt.FreeBytes != 15060*mib || tt.UsedBytes != 100*mib {
		t.Errorf("T4 = %+v", tt)
	}
	if tt.TemperatureC != 0 || tt.PowerWatts != 0 {
		t.Errorf("T4 sensors = %d C, %v W; want 0 where NOT_SUPPORTED", tt.TemperatureC, tt.PowerWatts)
	}
	if got := Free(info, 2); got != 15060*mib {
		t.Errorf("Free(info, 2) = %d", got)
	}
}

func TestNVMLMemoryV1WhenV2Missing(t *testing.T) {
	g := a100(0)
	s := newFakeServer(g)
	s.hasMemV2 = false
	info, err := mustNVML(t, s).Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if g.memV2Calls != 0 {
		t.Errorf("v2 memory info called %d times on a driver without the symbol", g.memV2Calls)
	}
	if d := info.Devices[0]; d.UsedBytes != 1712*mib || d.FreeBytes != (40960-1712)*mib {
		t.Errorf("v1 memory: used %d MiB free %d MiB", d.UsedBytes/mib, d.FreeBytes/mib)
	}
}

func TestNVMLMemoryV2VersionMismatchFallsBack(t *testing.T) {
	g := a100(0)
	s := newFakeServer(g)
	n := mustNVML(t, s)
	dev := g.device().(*mock.Device)
	dev.GetMemoryInfo_v2Func = func() (nvml.Memory_v2, nvml.Return) {
		return nvml.Memory_v2{}, nvml.ERROR_ARGUMENT_VERSION_MISMATCH
	}
	s.DeviceGetHandleByIndexFunc = func(int) (nvml.Device, nvml.Return) { return dev, nvml.SUCCESS }
	info, err := n.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if d := info.Devices[0]; d.UsedBytes != 1712*mib {
		t.Errorf("used = %d MiB, want v1's 1712", d.UsedBytes/mib)
	}
}

func TestNVMLProcesses(t *testing.T) {
	g0, g1 := a100(0), a100(1)
	g0.procs = []nvml.ProcessInfo{
		{Pid: 5001, UsedGpuMemory: 14 * gib}, // vLLM EngineCore of dev
		{Pid: 4711, UsedGpuMemory: 300 * mib},
	}
	g1.procs = []nvml.ProcessInfo{
		{Pid: 6001, UsedGpuMemory: ^uint64(0)}, // NVML_VALUE_NOT_AVAILABLE
		{Pid: 777, UsedGpuMemory: 2 * gib},     // gone from /proc by now
	}
	s := newFakeServer(g0, g1)
	n := mustNVML(t, s)
	n.procRoot = fakeProcRoot(t, map[int]string{
		5001: "0::/system.slice/system-vagent.slice/vagent@dev.service\n",
		4711: "0::/user.slice/user-1000.slice/session-2.scope\n",
		6001: "0::/system.slice/system-vagent.slice/vagent@architect.service\n",
	})
	ps, err := n.Processes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []Process{
		{PID: 4711, GPU: 0, UsedBytes: 300 * mib},
		{PID: 5001, GPU: 0, UsedBytes: 14 * gib, Unit: "vagent@dev.service", Agent: "dev"},
		{PID: 777, GPU: 1, UsedBytes: 2 * gib},
		{PID: 6001, GPU: 1, UsedBytes: 0, Unit: "vagent@architect.service", Agent: "architect"},
	}
	if len(ps) != len(want) {
		t.Fatalf("got %d processes %+v, want %d", len(ps), ps, len(want))
	}
	for i := range want {
		if ps[i] != want[i] {
			t.Errorf("process %d = %+v, want %+v", i, ps[i], want[i])
		}
	}
	held := HeldByAgent(ps, 0)
	if held["dev"] != 14*gib || held[""] != 300*mib {
		t.Errorf("HeldByAgent(gpu 0) = %v", held)
	}
}

func TestNVMLErrorsAreClear(t *testing.T) {
	cases := []struct {
		name   string
		setup  func(*fakeServer)
		call   func(*NVML) error
		ret    nvml.Return
		substr []string
	}{
		{
			name:   "lost GPU while reading memory",
			setup:  func(s *fakeServer) { s.gpus[1].memRet = nvml.ERROR_GPU_IS_LOST },
			call:   func(n *NVML) error { _, err := n.Info(context.Background()); return err },
			ret:    nvml.ERROR_GPU_IS_LOST,
			substr: []string{"read GPU 1's memory", "fallen off the bus", "Xid"},
		},
		{
			name:   "no permission to count devices",
			setup:  func(s *fakeServer) { s.countRet = nvml.ERROR_NO_PERMISSION },
			call:   func(n *NVML) error { _, err := n.Processes(context.Background()); return err },
			ret:    nvml.ERROR_NO_PERMISSION,
			substr: []string{"count devices", "no permission", "/dev/nvidia"},
		},
		{
			name:   "other error names the operation and NVML's code",
			setup:  func(s *fakeServer) { s.gpus[0].procsRet = nvml.ERROR_UNKNOWN },
			call:   func(n *NVML) error { _, err := n.Processes(context.Background()); return err },
			ret:    nvml.ERROR_UNKNOWN,
			substr: []string{"gpu: list GPU 0's processes: NVML error ERROR_UNKNOWN"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newFakeServer(a100(0), a100(1))
			c.setup(s)
			err := c.call(mustNVML(t, s))
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, c.ret) {
				t.Errorf("errors.Is(err, %v) = false", c.ret)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
			for _, s := range c.substr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q lacks %q", err, s)
				}
			}
		})
	}
}

func TestNVMLInitFailures(t *testing.T) {
	s := newFakeServer()
	s.initRet = nvml.ERROR_LIBRARY_NOT_FOUND
	_, err := NewNVML(s)
	const line = `gpu: NVIDIA driver library (libnvidia-ml.so.1) not found: is the NVIDIA driver installed? (set [gpu] backend = "sim" to use the simulator)`
	if err == nil || err.Error() != line {
		t.Fatalf("library missing: err = %v, want %q", err, line)
	}
	if !errors.Is(err, ErrNoDriver) || !errors.Is(err, nvml.ERROR_LIBRARY_NOT_FOUND) {
		t.Errorf("library missing: error matches neither ErrNoDriver nor ERROR_LIBRARY_NOT_FOUND")
	}

	s.initRet = nvml.ERROR_LIB_RM_VERSION_MISMATCH
	_, err = NewNVML(s)
	if err == nil || !strings.Contains(err.Error(), "version mismatch") || !strings.Contains(err.Error(), "reboot") {
		t.Errorf("version mismatch: err = %v", err)
	}
	if errors.Is(err, ErrNoDriver) {
		t.Errorf("version mismatch matches ErrNoDriver")
	}
}

func TestNVMLClose(t *testing.T) {
	s := newFakeServer(a100(0))
	n, err := NewNVML(s)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if s.shutdownCalls != 1 {
		t.Errorf("Shutdown called %d times, want 1", s.shutdownCalls)
	}
	if _, err := n.Info(context.Background()); err == nil {
		t.Error("Info after Close succeeded")
	}
}

func TestNVMLInfoHonoursContext(t *testing.T) {
	n := mustNVML(t, newFakeServer(a100(0)))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := n.Info(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Info on a cancelled context: %v", err)
	}
}

func TestCUDAVersion(t *testing.T) {
	for in, want := range map[int]string{12040: "12.4", 11020: "11.2", 13000: "13.0", 12080: "12.8", 12090: "12.9"} {
		if got := cudaVersion(in); got != want {
			t.Errorf("cudaVersion(%d) = %q, want %q", in, got, want)
		}
	}
}

// TestOpenNVMLOnThisHost uses the real driver library where there is one and
// checks the one-line failure where there is none.
func TestOpenNVMLOnThisHost(t *testing.T) {
	b, err := Open(&config.Config{GPU: config.GPU{Backend: config.GPUBackendNVML}})
	if err != nil {
		if strings.Contains(err.Error(), "\n") || !strings.HasPrefix(err.Error(), "gpu: ") {
			t.Fatalf("error is not one gpu: line: %q", err)
		}
		if errors.Is(err, ErrNoDriver) && err.Error() != ErrNoDriver.Error() {
			t.Fatalf("library missing, but the message is %q", err)
		}
		t.Logf("no NVML here: %v", err)
		return
	}
	defer b.Close()
	info, err := b.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.Driver == "" || !strings.Contains(info.CUDA, ".") {
		t.Errorf("driver %q CUDA %q", info.Driver, info.CUDA)
	}
	for _, d := range info.Devices {
		if d.TotalBytes == 0 || d.FreeBytes > d.TotalBytes || d.ComputeMajor < 3 || !strings.HasPrefix(d.UUID, "GPU-") {
			t.Errorf("implausible device %+v", d)
		}
		t.Logf("%+v", d)
	}
	ps, err := b.Processes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d processes: %+v", len(ps), ps)
}
