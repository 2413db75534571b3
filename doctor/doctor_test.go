package doctor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/gpu"
	"github.com/vagent-dev/vagent/models"
	"github.com/vagent-dev/vagent/plan"
	"github.com/vagent-dev/vagent/supervisor"
	"github.com/vagent-dev/vagent/units"
)

const gib = uint64(1) << 30

// host is a test host: a configuration in a temp dir plus the fakes that
// make every check pass, which each case then breaks in one way.
type host struct {
	t   *testing.T
	dir string
	cfg *config.Config

	gpuInfo   gpu.Info
	gpuErr    error
	busy      map[string]bool // addresses whose bind fails with EADDRINUSE
	runs      map[string]runResult
	free      uint64
	sdErr     error
	states    map[string]supervisor.UnitState
	modules   string
	ran       []string
	closedGPU bool
	availRAM  uint64 // MemAvailable of a 64 GiB host
	// vendor holds files the package installed, by absolute path.
	vendor map[string][]byte
}

type runResult struct {
	out string
	err error
}

// mainTOML is a main file whose paths all live under DIR.
const mainTOML = `
[engine]
kind = "%s"
vllm_version = "0.18.0"
venv = "DIR/engines/current"
sim_binary = "DIR/bin/vllm-sim"

[paths]
unit_dir = "DIR/units"
state_dir = "DIR/state"
run_dir = "DIR/run"
hf_home = "DIR/hf"
cache_dir = "DIR/cache"
agents_dir = "agents"

[gpu]
backend = "%s"
reserve_mib = 256
sim_ledger = "DIR/run/sim-ledger.json"
sim_count = 1
sim_total_mib = 16376
`

// newHost writes a configuration with the shipped agents (or the agent
// files given) and engine/backend kinds, and fakes under which every check
// passes.
// shippedWithPorts are the shipped agents with the ports 9000-9002 (their
// listeners have 8000-8002), on
// which their engines then listen instead of their unix sockets.
func shippedWithPorts(t *testing.T) map[string]string {
	agents := map[string]string{}
	for i, n := range []string{"architect", "dev", "po"} {
		b, err := os.ReadFile(filepath.Join("..", "configs", "agents", n+".toml"))
		if err != nil {
			t.Fatal(err)
		}
		agents[n] = fmt.Sprintf("port = %d\n%s", 9000+i, b)
	}
	return agents
}

func newHost(t *testing.T, engine, backend string, agents map[string]string) *host {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "agents"), 0o755); err != nil {
		t.Fatal(err)
	}
	main := strings.ReplaceAll(fmt.Sprintf(mainTOML, engine, backend), "DIR", dir)
	if err := os.WriteFile(filepath.Join(dir, "vagent.toml"), []byte(main), 0o644); err != nil {
		t.Fatal(err)
	}
	if agents == nil {
		agents = map[string]string{}
		for _, n := range []string{"architect", "dev", "po"} {
			b, err := os.ReadFile(filepath.Join("..", "configs", "agents", n+".toml"))
			if err != nil {
				t.Fatal(err)
			}
			agents[n] = string(b)
		}
	}
	for n, body := range agents {
		if err := os.WriteFile(filepath.Join(dir, "agents", n+".toml"), []byte(strings.ReplaceAll(body, "DIR", dir)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := config.Load(filepath.Join(dir, "vagent.toml"))
	if err != nil {
		t.Fatal(err)
	}
	h := &host{t: t, dir: dir, cfg: cfg, busy: map[string]bool{}, runs: map[string]runResult{}, free: 100 * gib, availRAM: 48 * gib,
		states:  map[string]supervisor.UnitState{"vagentd.service": {LoadState: "loaded", ActiveState: "active", SubState: "running"}},
		modules: "nvidia_uvm 1904640 0 - Live 0x0000000000000000\nnvidia 56799232 2 nvidia_uvm, Live 0x0000000000000000\n"}
	h.gpuInfo = gpu.Info{Backend: backend, Driver: "sim", CUDA: "12.8", Devices: []gpu.Device{
		{Index: 0, Name: gpu.SimDeviceName, TotalBytes: 16376 << 20, FreeBytes: 16376 << 20, ComputeMajor: 8, ComputeMinor: 9},
	}}
	if backend == config.GPUBackendNVML {
		h.gpuInfo.Driver, h.gpuInfo.CUDA = "550.54.15", "12.4"
		h.gpuInfo.Devices[0].Name = "NVIDIA GeForce RTX 4080"
	}
	// The engine works.
	if engine == config.EngineSim {
		h.writeFile("bin/vllm-sim", "#!/bin/sh\necho 0.18.0\n", 0o755)
		h.runs[cfg.Engine.SimBinary] = runResult{out: "0.18.0\n"}
	} else {
		h.writeFile("engines/current/bin/python", "", 0o755)
		h.runs[filepath.Join(cfg.Engine.Venv, "bin", "python")] = runResult{out: "INFO 01-01 torch found\n0.18.0\n"}
	}
	// Models pulled.
	for _, a := range cfg.Agents {
		if !plan.IsLocal(a.Model) {
			h.pull(a.Model, 3)
		}
	}
	// Units applied.
	files, err := units.Render(cfg, map[int]uint64{0: 16376 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(cfg.Paths.UnitDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := units.Write(cfg.Paths.UnitDir, files); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{cfg.Paths.StateDir, cfg.Paths.HFHome} {
		os.MkdirAll(p, 0o755)
	}
	return h
}

func (h *host) writeFile(rel, body string, mode os.FileMode) string {
	p := filepath.Join(h.dir, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		h.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(body), mode); err != nil {
		h.t.Fatal(err)
	}
	os.Chmod(p, mode)
	return p
}

const commit = "0123456789abcdef0123456789abcdef01234567"

// checkpoints are the real figures of the shipped models: plan's testdata
// config.json and the safetensors total.
var checkpoints = map[string]struct {
	config string
	bytes  int64
}{
	"7b":  {"qwen2.5-7b-instruct-awq.config.json", 5_570_000_000},
	"14b": {"qwen2.5-14b-instruct-awq.config.json", 9_980_000_000},
	"32b": {"qwen2.5-32b-instruct-awq.config.json", 19_330_000_000},
}

// pull lays out repo's snapshot in the HF cache with n sparse shards named
// by an index, as huggingface_hub leaves it, with the real checkpoint's
// config.json and total size.
func (h *host) pull(repo string, n int) string {
	var cp struct {
		config string
		bytes  int64
	}
	for size, c := range checkpoints {
		if strings.Contains(strings.ToLower(repo), "-"+size+"-") {
			cp = c
		}
	}
	if cp.config == "" {
		return "" // a model the tests know no figures for: never pulled
	}
	cfgJSON, err := os.ReadFile(filepath.Join("..", "plan", "testdata", cp.config))
	if err != nil {
		h.t.Fatal(err)
	}
	dir := models.RepoFolder(filepath.Join(h.cfg.Paths.HFHome, "hub"), repo)
	snap := filepath.Join(dir, "snapshots", commit)
	os.MkdirAll(filepath.Join(dir, "refs"), 0o755)
	os.MkdirAll(snap, 0o755)
	os.WriteFile(filepath.Join(dir, "refs", "main"), []byte(commit), 0o644)
	os.WriteFile(filepath.Join(snap, "config.json"), cfgJSON, 0o644)
	wm := map[string]string{}
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("model-%05d-of-%05d.safetensors", i, n)
		wm[fmt.Sprintf("t%d", i)] = name
		f, err := os.Create(filepath.Join(snap, name))
		if err != nil {
			h.t.Fatal(err)
		}
		size := cp.bytes / int64(n)
		if i == n {
			size = cp.bytes - size*int64(n-1)
		}
		f.Truncate(size)
		f.Close()
	}
	idx, _ := json.Marshal(map[string]any{"weight_map": wm})
	os.WriteFile(filepath.Join(snap, "model.safetensors.index.json"), idx, 0o644)
	return snap
}

type fakeBackend struct {
	h *host
}

func (b fakeBackend) Info(context.Context) (gpu.Info, error)           { return b.h.gpuInfo, nil }
func (b fakeBackend) Processes(context.Context) ([]gpu.Process, error) { return nil, nil }
func (b fakeBackend) Close() error                                     { b.h.closedGPU = true; return nil }

type fakeSystemd struct{ h *host }

func (f fakeSystemd) Start(context.Context, string) error       { return errors.New("not in doctor") }
func (f fakeSystemd) Stop(context.Context, string) error        { return errors.New("not in doctor") }
func (f fakeSystemd) Reload(context.Context) error              { return errors.New("not in doctor") }
func (f fakeSystemd) ResetFailed(context.Context, string) error { return errors.New("not in doctor") }
func (f fakeSystemd) Close()                                    {}
func (f fakeSystemd) State(_ context.Context, unit string) (supervisor.UnitState, error) {
	if st, ok := f.h.states[unit]; ok {
		return st, nil
	}
	return supervisor.UnitState{LoadState: "loaded", ActiveState: "inactive", SubState: "dead"}, nil
}

func (h *host) env() Env {
	r := &plan.Resolver{HFHome: h.cfg.Paths.HFHome, Offline: true}
	return Env{
		Stat: os.Stat, ReadDir: os.ReadDir,
		ReadFile: func(name string) ([]byte, error) {
			if b, ok := h.vendor[name]; ok {
				return b, nil
			}
			return os.ReadFile(name)
		},
		Listen: func(network, addr string) (net.Listener, error) {
			if h.busy[addr] {
				return nil, &net.OpError{Op: "listen", Net: network, Err: os.NewSyscallError("bind", syscall.EADDRINUSE)}
			}
			return net.Listen("tcp", "127.0.0.1:0")
		},
		Run: func(_ context.Context, name string, args ...string) ([]byte, error) {
			h.ran = append(h.ran, name+" "+strings.Join(args, " "))
			r, ok := h.runs[name]
			if !ok {
				return nil, fmt.Errorf("exec: %q: executable file not found", name)
			}
			return []byte(r.out), r.err
		},
		FreeBytes: func(string) (uint64, error) { return h.free, nil },
		Systemd: func(context.Context) (supervisor.Systemd, error) {
			if h.sdErr != nil {
				return nil, h.sdErr
			}
			return fakeSystemd{h}, nil
		},
		OpenGPU: func() (gpu.Backend, error) {
			if h.gpuErr != nil {
				return nil, h.gpuErr
			}
			return fakeBackend{h}, nil
		},
		Facts:       r.Facts,
		ProcModules: h.writeFile("proc-modules", h.modules, 0o644),
		Meminfo: func() (plan.Meminfo, error) {
			return plan.Meminfo{TotalBytes: 64 * gib, AvailableBytes: h.availRAM, Source: "/proc/meminfo"}, nil
		},
	}
}

func (h *host) run() *Report {
	return New(h.cfg, h.env()).Run(context.Background())
}

func find(r *Report, check string) *Result {
	for i := range r.Results {
		if r.Results[i].Check == check {
			return &r.Results[i]
		}
	}
	return nil
}

func TestEverythingPassesOnAGoodSimHost(t *testing.T) {
	h := newHost(t, config.EngineSim, config.GPUBackendSim, nil)
	r := h.run()
	want := []struct {
		check string
		st    Status
		in    string
	}{
		{"driver", Pass, "simulator backend, no NVIDIA driver needed: 1 simulated GPU(s) of 15.99 GiB"},
		{"compute capability", Pass, "GPU 0 8.9: vLLM needs 7.0, AWQ 7.5"},
		{"nvidia_uvm", Skip, "not needed with the simulator"},
		{"engine", Pass, "vLLM 0.18.0 flags"},
		{"model architect", Pass, "Qwen/Qwen2.5-14B-Instruct-AWQ@main snapshot 0123456789ab: config.json and 3 weight files (9.98 GB)"},
		{"model dev", Pass, "snapshot"},
		{"model po", Pass, "snapshot"},
		{"units", Pass, "5 unit files in " + h.cfg.Paths.UnitDir + " match the configuration"},
		{"sampling architect", Pass, "temperature 0.1, top_p 0.9: default for requests that set none (--override-generation-config); a request's own value wins"},
		{"sampling dev", Pass, "temperature 0.3, top_p 0.95: default for requests that set none"},
		{"sampling po", Pass, "temperature 0.5, top_p 0.9: default for requests that set none"},
		{"systemd", Pass, "reachable over D-Bus"},
		{"vagentd", Pass, "vagentd.service is active (running)"},
		{"socket architect", Pass, "/run/engines/architect.sock, in a directory only the engine's user and group may enter, and opens no TCP port"},
		{"socket dev", Pass, "/run/engines/dev.sock"},
		{"socket po", Pass, "/run/engines/po.sock"},
		{"port gateway", Pass, "127.0.0.1:8080 is free"},
		{"disk state_dir", Pass, "100.00 GiB free for " + h.cfg.Paths.StateDir},
		{"disk hf_home", Pass, "100.00 GiB free"},
		{"plan", Pass, "every agent fits its GPU alone: architect up to 18432 tokens, dev up to 18432 tokens, po up to 32768 tokens"},
		{"switching", Pass, `switches are cold starts; sleep mode fits this host: switch_mode = "sleep" for architect, dev, po: a switch back is a level-1 wake of about 0.6-0.9 s instead of a cold start of about 29.5-31.9 s`},
	}
	if len(r.Results) != len(want) {
		var b bytes.Buffer
		r.Write(&b)
		t.Fatalf("%d results, want %d:\n%s", len(r.Results), len(want), b.String())
	}
	for i, w := range want {
		got := r.Results[i]
		if got.Check != w.check || got.Status != w.st || !strings.Contains(got.Finding, w.in) {
			t.Errorf("result %d = %+v\nwant %s %s containing %q", i, got, w.st, w.check, w.in)
		}
	}
	if !r.OK() || r.Failed != 0 || r.Warned != 0 || r.Skipped != 1 || r.Passed != len(want)-1 {
		t.Errorf("counts: %+v", r)
	}
	if !h.closedGPU {
		t.Error("the GPU backend was not closed")
	}
	if len(h.ran) != 1 || h.ran[0] != h.cfg.Engine.SimBinary+" --version" {
		t.Errorf("ran %q", h.ran)
	}

	var b bytes.Buffer
	if err := r.Write(&b); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != len(want)+2 || !strings.HasPrefix(lines[0], "PASS  driver") || lines[len(lines)-1] != "20 passed, 0 warned, 0 failed, 1 skipped" {
		t.Errorf("text:\n%s", b.String())
	}
	b.Reset()
	r.WriteJSON(&b)
	var js struct {
		Checks []Result `json:"checks"`
		OK     bool     `json:"ok"`
		Failed int      `json:"failed"`
	}
	if err := json.Unmarshal(b.Bytes(), &js); err != nil || !js.OK || len(js.Checks) != len(want) || js.Checks[3].Check != "engine" {
		t.Errorf("json (%v):\n%s", err, b.String())
	}
}

// check is one expectation on one check's line.
type check struct {
	name    string
	st      Status
	finding string
	fix     string
}

func expect(t *testing.T, r *Report, cs ...check) {
	t.Helper()
	for _, c := range cs {
		got := find(r, c.name)
		if got == nil {
			t.Errorf("no %q check in %+v", c.name, r.Results)
			continue
		}
		if got.Status != c.st || !strings.Contains(got.Finding, c.finding) || !strings.Contains(got.Fix, c.fix) {
			t.Errorf("%s = %s %q (fix %q)\nwant %s containing %q (fix containing %q)", c.name, got.Status, got.Finding, got.Fix, c.st, c.finding, c.fix)
		}
	}
	wantOK := true
	for _, res := range r.Results {
		if res.Status == Fail {
			wantOK = false
		}
	}
	if r.OK() != wantOK {
		t.Errorf("OK() = %v with results %+v", r.OK(), r.Results)
	}
}

func TestChecks(t *testing.T) {
	sim, vllm := config.EngineSim, config.EngineVLLM
	simGPU, nvml := config.GPUBackendSim, config.GPUBackendNVML
	cases := []struct {
		name           string
		engine, gpuKnd string
		agents         map[string]string
		breakIt        func(h *host)
		want           []check
	}{
		{name: "no NVIDIA driver", engine: vllm, gpuKnd: nvml,
			breakIt: func(h *host) { h.gpuErr = gpu.ErrNoDriver },
			want: []check{
				{"driver", Fail, "NVIDIA driver library (libnvidia-ml.so.1) not found", "install the NVIDIA driver so that nvidia-smi works"},
				{"compute capability", Skip, "no GPU facts", ""},
				{"plan", Warn, "GPU 0's size is unknown", "--gpu-total-mib"},
			}},
		{name: "NVML works", engine: vllm, gpuKnd: nvml,
			want: []check{
				{"driver", Pass, "NVML: driver 550.54.15, CUDA 12.4, 1 GPU(s) (0: NVIDIA GeForce RTX 4080 15.99 GiB)", ""},
				{"nvidia_uvm", Pass, "nvidia_uvm is loaded", ""},
				{"engine", Pass, "vLLM 0.18.0 imports from", ""},
				{"plan", Pass, "every agent fits", ""},
			}},
		{name: "old driver", engine: vllm, gpuKnd: nvml,
			breakIt: func(h *host) { h.gpuInfo.CUDA = "11.8" },
			want:    []check{{"driver", Warn, "vLLM's wheels need CUDA 12 or newer", "upgrade the NVIDIA driver"}}},
		{name: "driver sees no GPU", engine: vllm, gpuKnd: nvml,
			breakIt: func(h *host) { h.gpuInfo.Devices = nil },
			want:    []check{{"driver", Fail, "reports no GPU", "nvidia-smi"}, {"compute capability", Fail, "uses GPU 0, which does not exist (0 GPUs)", "change gpus in"}}},
		{name: "vllm engine on simulated GPUs", engine: vllm, gpuKnd: simGPU,
			want: []check{{"gpu backend", Warn, "engine kind vllm with the simulated GPU backend", `backend = "nvml"`}}},
		{name: "sim engine with NVML", engine: sim, gpuKnd: nvml,
			want: []check{{"gpu backend", Warn, "invisible to NVML", `backend = "sim"`}}},
		{name: "Pascal card", engine: vllm, gpuKnd: nvml,
			breakIt: func(h *host) { h.gpuInfo.Devices[0].ComputeMajor, h.gpuInfo.Devices[0].ComputeMinor = 6, 1 },
			want:    []check{{"compute capability", Fail, "compute capability 6.1: vLLM needs 7.0 or newer", "7.0 or newer (7.5 for AWQ models)"}}},
		{name: "Volta card, AWQ models", engine: vllm, gpuKnd: nvml,
			breakIt: func(h *host) { h.gpuInfo.Devices[0].ComputeMajor, h.gpuInfo.Devices[0].ComputeMinor = 7, 0 },
			want:    []check{{"compute capability", Fail, "agent architect: GPU 0 (NVIDIA GeForce RTX 4080) has compute capability 7.0: vLLM's AWQ kernels need 7.5", "non-AWQ model"}}},
		{name: "nvidia_uvm not loaded", engine: vllm, gpuKnd: nvml,
			breakIt: func(h *host) { h.modules = "nvidia 56799232 0 - Live 0x0\nnvidia_uvmx 1 0 - Live 0x0\n" },
			want:    []check{{"nvidia_uvm", Fail, "nvidia_uvm is not loaded", "modprobe nvidia_uvm, and load it at boot: echo nvidia_uvm > /etc/modules-load.d/vagent-nvidia-uvm.conf"}}},
		{name: "no venv", engine: vllm, gpuKnd: nvml,
			breakIt: func(h *host) { os.RemoveAll(filepath.Join(h.dir, "engines")) },
			want:    []check{{"engine", Fail, "no vLLM engine: " + "DIR/engines/current/bin/python is missing (no such file or directory)", "vagentctl install"}}},
		{name: "vllm does not import", engine: vllm, gpuKnd: nvml,
			breakIt: func(h *host) {
				h.runs[filepath.Join(h.dir, "engines/current/bin/python")] = runResult{
					out: "Traceback (most recent call last):\n  File \"<string>\", line 1\nModuleNotFoundError: No module named 'vllm'\n", err: errors.New("exit status 1")}
			},
			want: []check{{"engine", Fail, "does not import: ModuleNotFoundError: No module named 'vllm'", "vagentctl install --rollback"}}},
		{name: "vllm version differs", engine: vllm, gpuKnd: nvml,
			breakIt: func(h *host) {
				h.runs[filepath.Join(h.dir, "engines/current/bin/python")] = runResult{out: "0.17.1\n"}
			},
			want: []check{{"engine", Fail, "has vLLM 0.17.1 but engine.vllm_version is 0.18.0", `vagentctl install (installs 0.18.0), or set engine.vllm_version = "0.17.1"`}}},
		{name: "no simulator", engine: sim, gpuKnd: simGPU,
			breakIt: func(h *host) { os.Remove(h.cfg.Engine.SimBinary) },
			want:    []check{{"engine", Fail, "vllm-sim is missing: no such file or directory", "install the vagent package"}}},
		{name: "simulator not executable", engine: sim, gpuKnd: simGPU,
			breakIt: func(h *host) { os.Chmod(h.cfg.Engine.SimBinary, 0o644) },
			want:    []check{{"engine", Fail, "is not an executable file (mode -rw-r--r--)", "chmod 0755"}}},
		{name: "simulator fails", engine: sim, gpuKnd: simGPU,
			breakIt: func(h *host) {
				h.runs[h.cfg.Engine.SimBinary] = runResult{out: "vllm-sim: VLLM_SIM_VERSION: unknown\n", err: errors.New("exit status 2")}
			},
			want: []check{{"engine", Fail, "--version failed: exit status 2: vllm-sim: VLLM_SIM_VERSION: unknown", "reinstall"}}},
		{name: "model not pulled, simulator", engine: sim, gpuKnd: simGPU,
			breakIt: func(h *host) {
				os.RemoveAll(models.RepoFolder(filepath.Join(h.cfg.Paths.HFHome, "hub"), "Qwen/Qwen2.5-7B-Instruct-AWQ"))
			},
			want: []check{
				{"model po", Warn, "Qwen/Qwen2.5-7B-Instruct-AWQ@main is not pulled", "vagentctl pull po"},
				{"model po", Warn, "the simulator does not need it", ""},
				{"model dev", Pass, "", ""},
				// The plan falls back to the built-in table.
				{"plan", Pass, "po up to 32768 tokens", ""},
			}},
		{name: "model not pulled, vLLM", engine: vllm, gpuKnd: nvml,
			breakIt: func(h *host) { os.RemoveAll(h.cfg.Paths.HFHome) },
			want:    []check{{"model architect", Fail, "is not pulled", "vagentctl pull architect"}, {"model po", Fail, "HF_HUB_OFFLINE=1", ""}}},
		{name: "snapshot incomplete", engine: vllm, gpuKnd: nvml,
			breakIt: func(h *host) {
				snap := filepath.Join(models.RepoFolder(filepath.Join(h.cfg.Paths.HFHome, "hub"), "Qwen/Qwen2.5-Coder-14B-Instruct-AWQ"), "snapshots", commit)
				os.Remove(filepath.Join(snap, "model-00002-of-00003.safetensors"))
				os.Remove(filepath.Join(snap, "config.json"))
			},
			want: []check{{"model dev", Fail, "snapshot 0123456789ab is incomplete: config.json is missing; 1 of 3 weight files missing (model-00002-of-00003.safetensors)", "vagentctl pull dev (resumes)"}}},
		{name: "model in the agent's own HF_HUB_CACHE", engine: vllm, gpuKnd: nvml,
			agents: map[string]string{
				"own": "model = \"Qwen/Qwen2.5-7B-Instruct-AWQ\"\nport = 8010\ngpu_memory_utilization = 0.9\nmax_model_len = 4096\n[env]\nHF_HUB_CACHE = \"DIR/elsewhere\"\n",
			},
			breakIt: func(h *host) {
				// The engine of "own" reads DIR/elsewhere (its unit sets
				// HF_HUB_CACHE): the model is there, not in HF_HOME/hub.
				from := models.RepoFolder(filepath.Join(h.cfg.Paths.HFHome, "hub"), "Qwen/Qwen2.5-7B-Instruct-AWQ")
				os.MkdirAll(filepath.Join(h.dir, "elsewhere"), 0o755)
				if err := os.Rename(from, models.RepoFolder(filepath.Join(h.dir, "elsewhere"), "Qwen/Qwen2.5-7B-Instruct-AWQ")); err != nil {
					h.t.Fatal(err)
				}
			},
			want: []check{{"model own", Pass, "Qwen/Qwen2.5-7B-Instruct-AWQ@main snapshot", ""}}},
		{name: "auto backend says what it chose", engine: vllm, gpuKnd: nvml,
			breakIt: func(h *host) { h.cfg.GPU.BackendReason = "NVIDIA driver 550.54.15 answered with 1 GPU(s)" },
			want:    []check{{"gpu backend", Pass, "auto chose nvml: NVIDIA driver 550.54.15 answered with 1 GPU(s)", ""}}},
		{name: "local model directory", engine: vllm, gpuKnd: nvml,
			agents: map[string]string{
				"loc":  "model = \"DIR/models/loc\"\nserved_names = [\"loc\"]\nport = 8010\ngpu_memory_utilization = 0.9\nmax_model_len = 4096\n",
				"gone": "model = \"DIR/models\"\nserved_names = [\"gone\"]\nport = 8011\ngpu_memory_utilization = 0.9\nmax_model_len = 4096\n",
			},
			breakIt: func(h *host) {},
			want: []check{
				{"model loc", Pass, "local directory " + "DIR/models/loc: config.json and 1 weight files", ""},
				{"model gone", Fail, "model directory DIR/models has no config.json", "change model in"},
			}},
		{name: "units never applied", engine: sim, gpuKnd: simGPU,
			breakIt: func(h *host) { os.RemoveAll(h.cfg.Paths.UnitDir) },
			want:    []check{{"units", Warn, "missing vagent@.service, vagent@architect.service.d/50-vagent.conf", "run vagentctl apply"}}},
		{name: "units: the package's template and socket", engine: sim, gpuKnd: simGPU,
			breakIt: func(h *host) {
				// apply writes neither where the package's copies are the same.
				h.vendor = map[string][]byte{}
				for name, vendor := range map[string]string{units.TemplateName: units.VendorTemplate, units.SocketName: units.VendorSocket} {
					p := filepath.Join(h.cfg.Paths.UnitDir, name)
					b, _ := os.ReadFile(p)
					h.vendor[vendor] = b
					os.Remove(p)
				}
			},
			want: []check{{"units", Pass, "5 unit files in", ""}}},
		{name: "units out of date and stale", engine: sim, gpuKnd: simGPU,
			breakIt: func(h *host) {
				p := filepath.Join(h.cfg.Paths.UnitDir, "vagent@po.service.d", "50-vagent.conf")
				b, _ := os.ReadFile(p)
				os.WriteFile(p, append(b, "# edited\n"...), 0o644)
				os.MkdirAll(filepath.Join(h.cfg.Paths.UnitDir, "vagent@old.service.d"), 0o755)
				os.WriteFile(filepath.Join(h.cfg.Paths.UnitDir, "vagent@old.service.d", "50-vagent.conf"), []byte("# Written by vagent\n"), 0o644)
			},
			want: []check{{"units", Warn, "out of date vagent@po.service.d/50-vagent.conf; of agents no longer configured vagent@old.service.d/50-vagent.conf", "run vagentctl apply"}}},
		{name: "no systemd", engine: sim, gpuKnd: simGPU, agents: shippedWithPorts(t),
			breakIt: func(h *host) {
				h.sdErr = errors.New("connect to systemd over D-Bus: dial unix /run/dbus/system_bus_socket: no such file or directory")
				h.busy["127.0.0.1:9001"] = true
			},
			want: []check{
				{"systemd", Fail, "systemd is not reachable: connect to systemd over D-Bus", "systemd must be PID 1"},
				{"port dev", Warn, "127.0.0.1:9001 is in use, and without systemd doctor cannot tell whether vagent@dev.service holds it", "ss -ltnp 'sport = :9001'"},
				{"port po", Pass, "is free", ""},
			}},
		{name: "vagentd stopped or not installed", engine: sim, gpuKnd: simGPU,
			breakIt: func(h *host) {
				h.states["vagentd.service"] = supervisor.UnitState{LoadState: "loaded", ActiveState: "failed", SubState: "failed"}
			},
			want: []check{{"vagentd", Warn, "vagentd.service is failed (failed): the gateway is not serving", "systemctl enable --now vagentd"}}},
		{name: "vagentd not installed", engine: sim, gpuKnd: simGPU,
			breakIt: func(h *host) {
				h.states["vagentd.service"] = supervisor.UnitState{LoadState: "not-found", ActiveState: "inactive"}
			},
			want: []check{{"vagentd", Warn, "vagentd.service is not installed (not-found)", "install the vagent package"}}},
		{name: "ports: own engine, stranger, gateway", engine: sim, gpuKnd: simGPU, agents: shippedWithPorts(t),
			breakIt: func(h *host) {
				h.busy["127.0.0.1:9000"], h.busy["127.0.0.1:9002"], h.busy["127.0.0.1:8080"] = true, true, true
				h.states["vagent@architect.service"] = supervisor.UnitState{LoadState: "loaded", ActiveState: "activating", SubState: "start"}
			},
			want: []check{
				{"port architect", Pass, "127.0.0.1:9000 is in use by vagent@architect.service (activating)", ""},
				{"port po", Fail, "127.0.0.1:9002 is in use by another program (vagent@po.service is inactive)", "ss -ltnp 'sport = :9002'; stop that, or change port in " + "DIR/agents/po.toml"},
				{"port gateway", Pass, "127.0.0.1:8080 is in use by vagentd.service", ""},
			}},
		{name: "gateway port held by the socket", engine: sim, gpuKnd: simGPU,
			breakIt: func(h *host) {
				h.busy["127.0.0.1:8080"] = true
				h.states["vagentd.service"] = supervisor.UnitState{LoadState: "loaded", ActiveState: "inactive", SubState: "dead"}
				h.states["vagentd.socket"] = supervisor.UnitState{LoadState: "loaded", ActiveState: "active", SubState: "listening"}
			},
			want: []check{{"port gateway", Pass, "127.0.0.1:8080 is in use by vagentd.socket (active)", ""}}},
		{name: "vLLM without --uds", engine: sim, gpuKnd: simGPU, agents: shippedWithPorts(t),
			breakIt: func(h *host) { h.cfg.Engine.VLLMVersion = "0.9.2" },
			want: []check{
				{"engine sockets", Warn, "vLLM 0.9.2 has no --uds: engines listen on 127.0.0.1 with a key, which vLLM checks only on /v1 paths", "upgrade vLLM to 0.10.1 or later"},
				{"port dev", Pass, "127.0.0.1:9001 is free", ""},
			}},
		{name: "disk nearly full", engine: sim, gpuKnd: simGPU,
			breakIt: func(h *host) { h.free = 1 * gib },
			want:    []check{{"disk state_dir", Fail, "only 1.00 GiB free for", "a model takes 5-20 GB"}, {"disk hf_home", Fail, "only 1.00 GiB", "paths.hf_home"}}},
		{name: "disk low, dirs not made yet", engine: sim, gpuKnd: simGPU,
			breakIt: func(h *host) {
				h.free = 10 * gib
				os.RemoveAll(h.cfg.Paths.StateDir)
			},
			want: []check{{"disk state_dir", Warn, "10.00 GiB free for DIR/state (DIR/state does not exist yet; measured at DIR): less than 20 GiB", "free space"}}},
		{name: "32B does not fit 16 GB", engine: sim, gpuKnd: simGPU,
			agents: map[string]string{"big": "model = \"Qwen/Qwen2.5-32B-Instruct-AWQ\"\nport = 8000\ngpu_memory_utilization = 0.95\nmax_model_len = 8192\n"},
			want:   []check{{"plan", Fail, "cannot start alone: big its weights alone (18.00 GiB, 19.33 GB) exceed the whole 15.99 GiB card", "vagentctl plan shows the arithmetic"}}},
		{name: "max_model_len too long", engine: sim, gpuKnd: simGPU,
			agents: map[string]string{"long": "model = \"Qwen/Qwen2.5-14B-Instruct-AWQ\"\nport = 8000\ngpu_memory_utilization = 0.92\nmax_model_len = 32768\n"},
			want:   []check{{"plan", Fail, "cannot start alone: long max_model_len 32768 needs 6.00 GiB of KV cache", "lower max_model_len"}}},
		{name: "unknown model", engine: sim, gpuKnd: simGPU,
			agents: map[string]string{"odd": "model = \"acme/odd-7b\"\nport = 8000\ngpu_memory_utilization = 0.9\n"},
			want:   []check{{"plan", Warn, "cannot judge: odd (its model's figures are unknown", "vagentctl pull"}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.agents != nil && c.name == "local model directory" {
				// Local directories must exist when the config loads.
				base := t.TempDir()
				os.MkdirAll(filepath.Join(base, "models", "loc"), 0o755)
				for n, body := range c.agents {
					c.agents[n] = strings.ReplaceAll(body, "DIR", base)
				}
				os.WriteFile(filepath.Join(base, "models", "loc", "config.json"), []byte("{}"), 0o644)
				f, _ := os.Create(filepath.Join(base, "models", "loc", "model.safetensors"))
				f.Truncate(1e6)
				f.Close()
				for i := range c.want {
					c.want[i].finding = strings.ReplaceAll(c.want[i].finding, "DIR", base)
				}
			}
			h := newHost(t, c.engine, c.gpuKnd, c.agents)
			if c.breakIt != nil {
				c.breakIt(h)
			}
			for i := range c.want {
				c.want[i].finding = strings.ReplaceAll(c.want[i].finding, "DIR", h.dir)
				c.want[i].fix = strings.ReplaceAll(c.want[i].fix, "DIR", h.dir)
			}
			expect(t, h.run(), c.want...)
		})
	}
}

func TestEngineImportIsBounded(t *testing.T) {
	h := newHost(t, config.EngineVLLM, config.GPUBackendNVML, nil)
	env := h.env()
	env.Run = func(ctx context.Context, name string, args ...string) ([]byte, error) {
		if _, ok := ctx.Deadline(); !ok {
			t.Error("the engine check runs without a deadline")
		}
		return []byte("0.18.0\n"), nil
	}
	r := New(h.cfg, env).Run(context.Background())
	expect(t, r, check{"engine", Pass, "vLLM 0.18.0", ""})
}

// TestPortHeldByAnotherEngineFails holds an agent's port with a real
// listener that set SO_REUSEPORT, as vLLM does: a second vLLM would start
// on it without error, so doctor must see it as taken.
func TestPortHeldByAnotherEngineFails(t *testing.T) {
	h := newHost(t, config.EngineSim, config.GPUBackendSim, nil)
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		})
		return errors.Join(err, serr)
	}}
	l, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	h.cfg.Agent("dev").Port = port
	env := h.env()
	env.Listen = net.Listen
	r := New(h.cfg, env).Run(context.Background())
	res := find(r, "port dev")
	want := fmt.Sprintf("127.0.0.1:%d is in use by another program (vagent@dev.service is inactive)", port)
	if res == nil || res.Status != Fail || res.Finding != want {
		t.Errorf("port dev: %+v, want Fail %q", res, want)
	}
}

// TestSamplingSaysDefaultOrCap: doctor says what each [sampling] key does,
// and max_tokens is a default, not a cap.
func TestSamplingSaysDefaultOrCap(t *testing.T) {
	h := newHost(t, config.EngineSim, config.GPUBackendSim, nil)
	temp, maxTok := 0.2, 2048
	topK := 40
	h.cfg.Agent("dev").Sampling = config.Sampling{Temperature: &temp, TopK: &topK, MaxTokens: &maxTok}
	h.cfg.Agent("po").Sampling = config.Sampling{}
	r := h.run()
	res := find(r, "sampling dev")
	want := "temperature 0.2, top_k 40: default for requests that set none (--override-generation-config); a request's own value wins; " +
		"max_tokens 2048: default the gateway puts into requests that set none; not a cap: a request may ask for more"
	if res == nil || res.Status != Pass || res.Finding != want {
		t.Errorf("sampling dev: %+v\nwant Pass %q", res, want)
	}
	if res := find(r, "sampling po"); res != nil {
		t.Errorf("an agent without [sampling] gets %+v", res)
	}
}
