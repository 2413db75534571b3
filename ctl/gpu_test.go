//go:build cgo

package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/gpu"
)

// goneInGPUTest is a PID no process can have (above Linux's PID_MAX_LIMIT,
// 2^22): a process that has exited by the time its unit is looked up.
const goneInGPUTest = 4999999

// gpuMockNVML is a go-nvml mock of a host with two GPUs, driver 550.54.15
// and CUDA 12.4: GPU 0 an RTX 4090 (24 GB, compute capability 8.9) where
// process agentPID holds 9.5 GiB, GPU 1 a Tesla T4 (16 GB, 7.5, no
// temperature or power sensors) where a process that is gone held memory
// NVML cannot say.
func gpuMockNVML(agentPID int) *mock.Interface {
	const mib = 1 << 20
	rtx := &mock.Device{
		GetNameFunc:                  func() (string, nvml.Return) { return "NVIDIA GeForce RTX 4090", nvml.SUCCESS },
		GetUUIDFunc:                  func() (string, nvml.Return) { return "GPU-4090", nvml.SUCCESS },
		GetCudaComputeCapabilityFunc: func() (int, int, nvml.Return) { return 8, 9, nvml.SUCCESS },
		GetMemoryInfo_v2Func: func() (nvml.Memory_v2, nvml.Return) {
			return nvml.Memory_v2{Total: 24564 * mib, Reserved: 400 * mib, Used: 9728 * mib, Free: (24564 - 400 - 9728) * mib}, nvml.SUCCESS
		},
		GetUtilizationRatesFunc: func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{Gpu: 87}, nvml.SUCCESS },
		GetTemperatureFunc:      func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 64, nvml.SUCCESS },
		GetPowerUsageFunc:       func() (uint32, nvml.Return) { return 312400, nvml.SUCCESS },
		GetComputeRunningProcessesFunc: func() ([]nvml.ProcessInfo, nvml.Return) {
			return []nvml.ProcessInfo{{Pid: uint32(agentPID), UsedGpuMemory: 9728 * mib}}, nvml.SUCCESS
		},
	}
	t4 := &mock.Device{
		GetNameFunc:                  func() (string, nvml.Return) { return "Tesla T4", nvml.SUCCESS },
		GetUUIDFunc:                  func() (string, nvml.Return) { return "GPU-t4", nvml.SUCCESS },
		GetCudaComputeCapabilityFunc: func() (int, int, nvml.Return) { return 7, 5, nvml.SUCCESS },
		GetMemoryInfo_v2Func: func() (nvml.Memory_v2, nvml.Return) {
			return nvml.Memory_v2{Total: 15360 * mib, Reserved: 200 * mib, Used: 0, Free: (15360 - 200) * mib}, nvml.SUCCESS
		},
		GetUtilizationRatesFunc: func() (nvml.Utilization, nvml.Return) { return nvml.Utilization{}, nvml.SUCCESS },
		GetTemperatureFunc:      func(nvml.TemperatureSensors) (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED },
		GetPowerUsageFunc:       func() (uint32, nvml.Return) { return 0, nvml.ERROR_NOT_SUPPORTED },
		GetComputeRunningProcessesFunc: func() ([]nvml.ProcessInfo, nvml.Return) {
			// NVML_VALUE_NOT_AVAILABLE, as in some containers.
			return []nvml.ProcessInfo{{Pid: goneInGPUTest, UsedGpuMemory: ^uint64(0)}}, nvml.SUCCESS
		},
	}
	devs := []nvml.Device{rtx, t4}
	ext := &mock.ExtendedInterface{LookupSymbolFunc: func(string) error { return nil }}
	return &mock.Interface{
		InitFunc:                       func() nvml.Return { return nvml.SUCCESS },
		ShutdownFunc:                   func() nvml.Return { return nvml.SUCCESS },
		ExtensionsFunc:                 func() nvml.ExtendedInterface { return ext },
		SystemGetDriverVersionFunc:     func() (string, nvml.Return) { return "550.54.15", nvml.SUCCESS },
		SystemGetCudaDriverVersionFunc: func() (int, nvml.Return) { return 12040, nvml.SUCCESS },
		DeviceGetCountFunc:             func() (int, nvml.Return) { return len(devs), nvml.SUCCESS },
		DeviceGetHandleByIndexFunc: func(i int) (nvml.Device, nvml.Return) {
			if i < 0 || i >= len(devs) {
				return nil, nvml.ERROR_INVALID_ARGUMENT
			}
			return devs[i], nvml.SUCCESS
		},
	}
}

// agentProcess starts a process in a cgroup named after unit, as systemd
// runs an agent's engine in vagent@NAME.service, and returns its PID: the
// gpu package ties a GPU process to its agent through /proc/PID/cgroup and
// offers no other way in. It needs root and a writable cgroup hierarchy that
// the gpu package reads (systemd's v1 one, or the unified one); where there
// is none it returns why not.
func agentProcess(t *testing.T, unit string) (int, error) {
	t.Helper()
	if os.Geteuid() != 0 {
		return 0, errors.New("not root")
	}
	var lastErr error = errors.New("no cgroup hierarchy mounted")
	for _, root := range []string{"/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		if _, err := os.Stat(filepath.Join(root, "cgroup.procs")); err != nil {
			continue
		}
		pid, err := startInCgroup(t, root, unit)
		if err == nil {
			return pid, nil
		}
		lastErr = err
	}
	return 0, lastErr
}

func startInCgroup(t *testing.T, root, unit string) (int, error) {
	parent := filepath.Join(root, fmt.Sprintf("vagent-ctl-test-%d", os.Getpid()))
	dir := filepath.Join(parent, unit)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	cmd := exec.Command("sleep", "300")
	if err := cmd.Start(); err != nil {
		os.Remove(dir)
		os.Remove(parent)
		return 0, err
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		// An emptied cgroup can be busy for a moment.
		for i := 0; i < 50; i++ {
			if err := os.Remove(dir); err == nil || os.IsNotExist(err) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		os.Remove(parent)
	})
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		return 0, err
	}
	if u, _ := gpu.UnitOfPID(pid); u != unit {
		return 0, fmt.Errorf("a process in %s reads as unit %q", dir, u)
	}
	return pid, nil
}

// normalize joins each line's fields with one space, so that a table reads
// the same whatever its column widths.
func normalize(s string) []string {
	var out []string
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		out = append(out, strings.Join(strings.Fields(l), " "))
	}
	return out
}

func nvmlHostConfig(t *testing.T) string {
	conf, _ := hostConfig(t, "configs/examples/24gb", func(m string) string {
		m = strings.Replace(m, `backend = "auto"`, `backend = "nvml"`, 1)
		return strings.Replace(m, `kind = "sim"`, `kind = "vllm"`, 1)
	})
	return conf
}

func runGPUCmd(t *testing.T, conf string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	code = Main(context.Background(), append([]string{"vagentctl", "--config", conf, "gpu"}, args...), &o, &e)
	return o.String(), e.String(), code
}

func TestGPUCommandOnNVMLMocks(t *testing.T) {
	conf := nvmlHostConfig(t)
	// Agent po's engine holds GPU 0; without the means to put a process in
	// its unit, a process that is no agent's takes its place.
	agentPID, agent, unit := goneInGPUTest-1, "", ""
	if pid, err := agentProcess(t, "vagent@po.service"); err != nil {
		t.Logf("no process in vagent@po.service's cgroup (%v): GPU 0's process is checked as no agent's", err)
	} else {
		agentPID, agent, unit = pid, "po", "vagent@po.service"
	}
	saved := gpuOpen
	defer func() { gpuOpen = saved }()
	opened := 0
	gpuOpen = func(cfg *config.Config) (gpu.Backend, error) {
		opened++
		if cfg.GPU.Backend != config.GPUBackendNVML {
			t.Errorf("backend %q, want nvml", cfg.GPU.Backend)
		}
		return gpu.NewNVML(gpuMockNVML(agentPID))
	}

	out, errOut, code := runGPUCmd(t, conf)
	if code != ExitOK || errOut != "" {
		t.Fatalf("vagentctl gpu: exit %d, stderr %q\n%s", code, errOut, out)
	}
	t.Logf("vagentctl gpu:\n%s", out)
	agentCol, holds := agent, ", holds 9.50 GiB"
	if agentCol == "" {
		agentCol, holds = "(not vagent)", ""
	}
	want := []string{
		"backend nvml, driver 550.54.15, CUDA 12.4",
		"GPU NAME CC TOTAL USED FREE UTIL TEMP POWER",
		"0 NVIDIA GeForce RTX 4090 8.9 23.99 GiB 9.50 GiB 14.10 GiB 87% 64C 312W",
		"1 Tesla T4 7.5 15.00 GiB 0 B 14.80 GiB 0% 0C 0W",
		"",
		"GPU PID AGENT USED",
		fmt.Sprintf("0 %d %s 9.50 GiB", agentPID, agentCol),
		fmt.Sprintf("1 %d (not vagent) 0 B", goneInGPUTest),
		"",
		// The configured agents on each card: all three on card 0, each
		// with its budget of that card (usable: the card less 256 MiB).
		"GPU USABLE AGENTS",
		"0 23.74 GiB architect (budget 22.79 GiB), dev (budget 22.79 GiB), po (budget 22.07 GiB" + holds + ")",
		"1 14.75 GiB -",
	}
	if got := normalize(out); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("vagentctl gpu printed\n%s\nwant (columns aside)\n%s", out, strings.Join(want, "\n"))
	}
	// The columns line up: each GPU's name starts where NAME does.
	lines := strings.Split(out, "\n")
	if col := strings.Index(lines[1], "NAME"); col < 0 || strings.Index(lines[2], "NVIDIA") != col || strings.Index(lines[3], "Tesla") != col {
		t.Errorf("columns do not line up:\n%s", out)
	}

	out, errOut, code = runGPUCmd(t, conf, "--json")
	if code != ExitOK || errOut != "" {
		t.Fatalf("vagentctl gpu --json: exit %d, stderr %q\n%s", code, errOut, out)
	}
	type device struct {
		Index int     `json:"index"`
		UUID  string  `json:"uuid"`
		Name  string  `json:"name"`
		Total uint64  `json:"total_bytes"`
		Used  uint64  `json:"used_bytes"`
		Free  uint64  `json:"free_bytes"`
		Major int     `json:"compute_major"`
		Minor int     `json:"compute_minor"`
		Util  int     `json:"utilization_percent"`
		Temp  int     `json:"temperature_c"`
		Power float64 `json:"power_watts"`
	}
	type process struct {
		PID   int    `json:"pid"`
		GPU   int    `json:"gpu"`
		Used  uint64 `json:"used_bytes"`
		Unit  string `json:"unit"`
		Agent string `json:"agent"`
	}
	type cardAgent struct {
		Agent  string `json:"agent"`
		Budget uint64 `json:"budget_bytes"`
		Used   uint64 `json:"used_bytes"`
	}
	type card struct {
		Index  int         `json:"index"`
		Total  uint64      `json:"total_bytes"`
		Used   uint64      `json:"used_bytes"`
		Usable uint64      `json:"usable_bytes"`
		Agents []cardAgent `json:"agents"`
	}
	var got struct {
		Backend   string    `json:"backend"`
		Driver    string    `json:"driver"`
		CUDA      string    `json:"cuda"`
		Devices   []device  `json:"devices"`
		Processes []process `json:"processes"`
		Cards     []card    `json:"cards"`
	}
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	const mib = 1 << 20
	wantJSON := got
	wantJSON.Backend, wantJSON.Driver, wantJSON.CUDA = "nvml", "550.54.15", "12.4"
	wantJSON.Devices = []device{
		{Index: 0, UUID: "GPU-4090", Name: "NVIDIA GeForce RTX 4090", Total: 24564 * mib, Used: 9728 * mib, Free: 14436 * mib,
			Major: 8, Minor: 9, Util: 87, Temp: 64, Power: 312.4},
		{Index: 1, UUID: "GPU-t4", Name: "Tesla T4", Total: 15360 * mib, Used: 0, Free: 15160 * mib, Major: 7, Minor: 5},
	}
	wantJSON.Processes = []process{
		{PID: agentPID, GPU: 0, Used: 9728 * mib, Unit: unit, Agent: agent},
		{PID: goneInGPUTest, GPU: 1, Used: 0},
	}
	poHolds := uint64(0)
	if agent == "po" {
		poHolds = 9728 * mib
	}
	// Budgets are vLLM's ceil(total × utilization) of the 24564 MiB card.
	wantJSON.Cards = []card{
		{Index: 0, Total: 24564 * mib, Used: 9728 * mib, Usable: (24564 - 256) * mib, Agents: []cardAgent{
			{Agent: "architect", Budget: 24469359821}, {Agent: "dev", Budget: 24469359821},
			{Agent: "po", Budget: 23696643195, Used: poHolds}}},
		{Index: 1, Total: 15360 * mib, Usable: (15360 - 256) * mib, Agents: []cardAgent{}},
	}
	if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", wantJSON) {
		t.Errorf("--json decoded to\n%+v\nwant\n%+v\n%s", got, wantJSON, out)
	}
	if opened != 2 {
		t.Errorf("the backend was opened %d times, want once per command", opened)
	}
}

// Without the driver library, vagentctl gpu says so in one line and exits 1.
func TestGPUCommandWithoutDriver(t *testing.T) {
	conf := nvmlHostConfig(t)
	cfg, err := config.Load(conf)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := gpu.Open(cfg); err == nil {
		b.Close()
		t.Skip("this host has an NVIDIA driver")
	} else if !errors.Is(err, gpu.ErrNoDriver) {
		t.Skipf("NVML fails here for another reason than a missing library: %v", err)
	}
	for _, args := range [][]string{nil, {"--json"}} {
		out, errOut, code := runGPUCmd(t, conf, args...)
		want := "vagentctl: " + gpu.ErrNoDriver.Error() + "\n"
		if code != ExitFailure || out != "" || errOut != want {
			t.Errorf("gpu %v without a driver: exit %d, stdout %q, stderr %q; want exit %d and only %q",
				args, code, out, errOut, ExitFailure, want)
		}
		if !strings.Contains(errOut, "libnvidia-ml.so.1") || strings.Count(errOut, "\n") != 1 {
			t.Errorf("gpu %v without a driver: want one line naming libnvidia-ml.so.1, got %q", args, errOut)
		}
	}
}
