// Package doctor checks a host for what vagent needs and says, one line per
// check, what passes, what is wrong and how to fix it: the driver and NVML,
// compute capability, nvidia_uvm, the engine, the models, the units, the
// ports, systemd, disk space and whether every agent fits its GPU.
//
// Every touch of the operating system goes through Env, a struct of
// functions, so that tests drive each check through fakes; HostEnv is the
// real host.
package doctor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/engine"
	"github.com/vagent-dev/vagent/gpu"
	"github.com/vagent-dev/vagent/plan"
	"github.com/vagent-dev/vagent/supervisor"
)

// Status is a check's verdict.
type Status string

// The verdicts. Only Fail makes doctor exit 1; Skip marks a check that does
// not apply to this configuration (nvidia_uvm with the simulator).
const (
	Pass Status = "PASS"
	Warn Status = "WARN"
	Fail Status = "FAIL"
	Skip Status = "SKIP"
)

// Result is one check's line.
type Result struct {
	Check   string `json:"check"`
	Status  Status `json:"status"`
	Finding string `json:"finding"`
	Fix     string `json:"fix,omitempty"`
}

// Env is every operating-system access doctor makes.
type Env struct {
	Stat     func(name string) (fs.FileInfo, error)
	ReadFile func(name string) ([]byte, error)
	ReadDir  func(name string) ([]fs.DirEntry, error)
	// Listen binds a TCP address (net.Listen).
	Listen func(network, address string) (net.Listener, error)
	// Run runs a program and returns its combined output.
	Run func(ctx context.Context, name string, args ...string) ([]byte, error)
	// FreeBytes is the space an unprivileged user may still use on the
	// filesystem holding path.
	FreeBytes func(path string) (uint64, error)
	// Systemd connects to systemd (supervisor.NewDBus).
	Systemd func(ctx context.Context) (supervisor.Systemd, error)
	// OpenGPU opens the GPU backend; doctor closes what it returns.
	OpenGPU func() (gpu.Backend, error)
	// Facts resolves an agent's model figures for the plan and the AWQ
	// compute-capability rule.
	Facts func(ctx context.Context, a *config.Agent) *plan.Facts
	// ProcModules is the kernel's module list (/proc/modules).
	ProcModules string
	// Meminfo reads the host's memory (/proc/meminfo) for the switching
	// check; nil skips it.
	Meminfo func() (plan.Meminfo, error)
}

// HostEnv is the real host for cfg: GPU facts from the backend cfg names.
func HostEnv(cfg *config.Config) Env {
	e := HostEnvWithGPU(cfg, nil)
	e.OpenGPU = func() (gpu.Backend, error) { return gpu.Open(cfg) }
	return e
}

// HostEnvWithGPU is the real host with GPU facts from b (a go-nvml mock in
// tests, or a backend the caller opened). Doctor closes b when it is done.
func HostEnvWithGPU(cfg *config.Config, b gpu.Backend) Env {
	r := plan.ResolverFromEnv(cfg, os.Getenv)
	r.Timeout = 5 * time.Second
	return Env{
		Stat:     os.Stat,
		ReadFile: os.ReadFile,
		ReadDir:  os.ReadDir,
		Listen:   net.Listen,
		Run: func(ctx context.Context, name string, args ...string) ([]byte, error) {
			return exec.CommandContext(ctx, name, args...).CombinedOutput()
		},
		FreeBytes: func(path string) (uint64, error) {
			var st syscall.Statfs_t
			if err := syscall.Statfs(path, &st); err != nil {
				return 0, err
			}
			return uint64(st.Bavail) * uint64(st.Bsize), nil
		},
		Systemd: func(ctx context.Context) (supervisor.Systemd, error) {
			sd, err := supervisor.NewDBus(ctx, cfg.Supervisor.DBusTimeout.Duration)
			if err != nil {
				return nil, err // not a typed nil in the interface
			}
			return sd, nil
		},
		OpenGPU:     func() (gpu.Backend, error) { return b, nil },
		Facts:       r.Facts,
		ProcModules: "/proc/modules",
		Meminfo:     plan.ReadMeminfo,
	}
}

// Disk thresholds: below Fail bytes free a check fails, below Warn it warns
// (a model is 5–20 GB, a vLLM venv 7–10 GB).
const (
	DiskWarnBytes = 20 << 30
	DiskFailBytes = 2 << 30
)

// EngineTimeout bounds the engine's import check: importing vLLM loads
// torch and takes tens of seconds on a cold cache.
var EngineTimeout = 3 * time.Minute

// Doctor runs the checks of one configuration.
type Doctor struct {
	cfg *config.Config
	env Env
	eng engine.Engine

	// Filled as the checks run.
	info    *gpu.Info
	gpuErr  error
	facts   map[string]*plan.Facts
	sd      supervisor.Systemd
	sdErr   error
	results []Result
}

// New returns a doctor for cfg on env.
func New(cfg *config.Config, env Env) *Doctor {
	if cfg.GPU.Backend == config.GPUBackendAuto {
		// Checks need the backend "auto" stands for (vagentctl resolves it
		// on load; a caller that did not gets it resolved here).
		c := *cfg
		gpu.ResolveBackend(context.Background(), &c)
		cfg = &c
	}
	return &Doctor{cfg: cfg, env: env, eng: engine.Of(cfg)}
}

// Report is every check's result.
type Report struct {
	Results []Result `json:"checks"`
	Passed  int      `json:"passed"`
	Warned  int      `json:"warnings"`
	Failed  int      `json:"failed"`
	Skipped int      `json:"skipped"`
}

// OK reports whether nothing failed.
func (r *Report) OK() bool { return r.Failed == 0 }

// Run runs every check in order and returns their results.
func (d *Doctor) Run(ctx context.Context) *Report {
	d.results = nil
	d.openGPU(ctx)
	d.resolveFacts(ctx)
	defer func() {
		if d.sd != nil {
			d.sd.Close()
		}
	}()
	for _, check := range []func(context.Context){
		d.checkDriver, d.checkCompute, d.checkUVM, d.checkEngine, d.checkModels,
		d.checkUnits, d.checkSampling, d.checkSystemd, d.checkPorts, d.checkDisk, d.checkPlan,
		d.checkSwitching,
	} {
		check(ctx)
	}
	r := &Report{Results: d.results}
	for _, res := range d.results {
		switch res.Status {
		case Pass:
			r.Passed++
		case Warn:
			r.Warned++
		case Fail:
			r.Failed++
		case Skip:
			r.Skipped++
		}
	}
	return r
}

func (d *Doctor) add(check string, st Status, fix, format string, args ...any) {
	d.results = append(d.results, Result{Check: check, Status: st, Finding: fmt.Sprintf(format, args...), Fix: fix})
}

func (d *Doctor) openGPU(ctx context.Context) {
	b, err := d.env.OpenGPU()
	if err == nil && b == nil {
		err = errors.New("gpu: no GPU backend")
	}
	if err != nil {
		d.gpuErr = err
		return
	}
	defer b.Close()
	info, err := b.Info(ctx)
	if err != nil {
		d.gpuErr = err
		return
	}
	d.info = &info
}

func (d *Doctor) resolveFacts(ctx context.Context) {
	d.facts = map[string]*plan.Facts{}
	for _, a := range d.cfg.Agents {
		if d.env.Facts != nil {
			d.facts[a.Name] = d.env.Facts(ctx, a)
		}
	}
}

// totals are the GPU sizes by index, nil when unknown.
func (d *Doctor) totals() map[int]uint64 {
	if d.info == nil {
		if d.cfg.GPU.Backend == config.GPUBackendSim {
			t := map[int]uint64{}
			for i := 0; i < d.cfg.GPU.SimCount; i++ {
				t[i] = d.cfg.GPU.SimTotalMiB << 20
			}
			return t
		}
		return nil
	}
	t := map[int]uint64{}
	for _, dev := range d.info.Devices {
		t[dev.Index] = dev.TotalBytes
	}
	return t
}

func trimGPU(err error) string { return strings.TrimPrefix(err.Error(), "gpu: ") }

func (d *Doctor) checkDriver(ctx context.Context) {
	c := d.cfg
	if c.GPU.BackendReason != "" {
		d.add("gpu backend", Pass, "", "auto chose %s: %s", c.GPU.Backend, c.GPU.BackendReason)
	}
	if c.Engine.Kind == config.EngineVLLM && c.GPU.Backend == config.GPUBackendSim {
		d.add("gpu backend", Warn, fmt.Sprintf(`set [gpu] backend = "nvml" in %s`, c.Path),
			"engine kind vllm with the simulated GPU backend: vagent would plan and switch against made-up GPUs")
	}
	if c.Engine.Kind == config.EngineSim && c.GPU.Backend == config.GPUBackendNVML {
		d.add("gpu backend", Warn, fmt.Sprintf(`set [gpu] backend = "sim" in %s, or install vLLM and set [engine] kind = "vllm"`, c.Path),
			"engine kind sim with the NVML backend: the simulator's memory is invisible to NVML, so switches cannot tell what it holds")
	}
	if c.GPU.Backend == config.GPUBackendSim {
		if d.gpuErr != nil {
			d.add("driver", Fail, fmt.Sprintf("check gpu.sim_ledger in %s and that its directory is writable", c.Path),
				"simulator: the GPU ledger cannot be read: %s", trimGPU(d.gpuErr))
			return
		}
		d.add("driver", Pass, "", "simulator backend, no NVIDIA driver needed: %d simulated GPU(s) of %s (ledger %s)",
			c.GPU.SimCount, gpu.FormatBytes(c.GPU.SimTotalMiB<<20), c.GPU.SimLedger)
		return
	}
	if d.gpuErr != nil {
		fix := fmt.Sprintf(`install the NVIDIA driver so that nvidia-smi works, or set [gpu] backend = "sim" in %s to use the simulator`, c.Path)
		d.add("driver", Fail, fix, "%s", trimGPU(d.gpuErr))
		return
	}
	in := d.info
	if len(in.Devices) == 0 {
		d.add("driver", Fail, "check nvidia-smi and dmesg: the driver is loaded but sees no device",
			"NVML: driver %s loaded but it reports no GPU", in.Driver)
		return
	}
	names := make([]string, len(in.Devices))
	for i, dev := range in.Devices {
		names[i] = fmt.Sprintf("%d: %s %s", dev.Index, dev.Name, gpu.FormatBytes(dev.TotalBytes))
	}
	finding := fmt.Sprintf("NVML: driver %s, CUDA %s, %d GPU(s) (%s)", in.Driver, in.CUDA, len(in.Devices), strings.Join(names, "; "))
	if major := cudaMajor(in.CUDA); major > 0 && major < 12 {
		d.add("driver", Warn, "upgrade the NVIDIA driver to one that supports CUDA 12 or newer", "%s: vLLM's wheels need CUDA 12 or newer", finding)
		return
	}
	d.add("driver", Pass, "", "%s", finding)
}

func cudaMajor(v string) int {
	var major int
	fmt.Sscanf(v, "%d", &major)
	return major
}

// awq reports whether agent a runs an AWQ checkpoint.
func (d *Doctor) awq(a *config.Agent) bool {
	if f := d.facts[a.Name]; f != nil && f.AWQ() {
		return true
	}
	return strings.Contains(strings.ToLower(a.Quantization), "awq") || strings.Contains(strings.ToLower(a.Model), "awq")
}

func (d *Doctor) checkCompute(ctx context.Context) {
	if d.info == nil {
		d.add("compute capability", Skip, "", "no GPU facts (see driver)")
		return
	}
	var bad, good []string
	var fix string
	seen := map[int]bool{}
	for _, a := range d.cfg.Agents {
		for _, g := range a.GPUs {
			dev, ok := d.info.Device(g)
			if !ok {
				bad = append(bad, fmt.Sprintf("agent %s uses GPU %d, which does not exist (%d GPUs)", a.Name, g, len(d.info.Devices)))
				fix = fmt.Sprintf("change gpus in %s", a.File)
				continue
			}
			if err := gpu.CheckComputeCapability(dev, d.awq(a)); err != nil {
				bad = append(bad, fmt.Sprintf("agent %s: %s", a.Name, trimGPU(err)))
				fix = "run vLLM on a GPU of compute capability 7.0 or newer (7.5 for AWQ models), or choose a non-AWQ model"
				continue
			}
			if !seen[g] {
				seen[g] = true
				good = append(good, fmt.Sprintf("GPU %d %s", g, dev.ComputeCapability()))
			}
		}
	}
	if len(bad) > 0 {
		d.add("compute capability", Fail, fix, "%s", strings.Join(bad, "; "))
		return
	}
	d.add("compute capability", Pass, "", "%s: vLLM needs 7.0, AWQ 7.5", strings.Join(good, ", "))
}

func (d *Doctor) checkUVM(ctx context.Context) {
	if d.cfg.GPU.Backend != config.GPUBackendNVML {
		d.add("nvidia_uvm", Skip, "", "not needed with the simulator")
		return
	}
	data, err := d.env.ReadFile(d.env.ProcModules)
	if err != nil {
		d.add("nvidia_uvm", Warn, "check by hand: lsmod | grep nvidia_uvm", "cannot read %s: %v", d.env.ProcModules, err)
		return
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "nvidia_uvm ") {
			d.add("nvidia_uvm", Pass, "", "nvidia_uvm is loaded")
			return
		}
	}
	d.add("nvidia_uvm", Fail,
		"modprobe nvidia_uvm, and load it at boot: echo nvidia_uvm > /etc/modules-load.d/vagent-nvidia-uvm.conf",
		"nvidia_uvm is not loaded: CUDA cannot start in units with DevicePolicy=closed, which see only the device nodes present when they start")
}

func (d *Doctor) checkEngine(ctx context.Context) {
	c := d.cfg
	ctx, cancel := context.WithTimeout(ctx, EngineTimeout)
	defer cancel()
	if c.Engine.Kind == config.EngineSim {
		bin := c.Engine.SimBinary
		st, err := d.env.Stat(bin)
		switch {
		case err != nil:
			d.add("engine", Fail, fmt.Sprintf("install the vagent package (it ships vllm-sim), or set engine.sim_binary in %s", c.Path),
				"the simulator %s is missing: %v", bin, errText(err))
			return
		case !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0:
			d.add("engine", Fail, "chmod 0755 "+bin, "the simulator %s is not an executable file (mode %s)", bin, st.Mode())
			return
		}
		out, err := d.env.Run(ctx, bin, "--version")
		if err != nil {
			d.add("engine", Fail, "reinstall the vagent package", "%s --version failed: %v: %s", bin, err, lastLine(out))
			return
		}
		d.add("engine", Pass, "", "simulator %s, vLLM %s flags", bin, lastLine(out))
		return
	}
	py := filepath.Join(c.Engine.Venv, "bin", "python")
	if _, err := d.env.Stat(py); err != nil {
		d.add("engine", Fail, "vagentctl install", "no vLLM engine: %s is missing (%s)", py, errText(err))
		return
	}
	out, err := d.env.Run(ctx, py, "-c", engine.VLLMVersionScript)
	if err != nil {
		d.add("engine", Fail, "vagentctl install (builds a fresh engine), or vagentctl install --rollback",
			"vLLM in %s does not import: %s", c.Engine.Venv, lastLine(out))
		return
	}
	got := lastLine(out)
	if got != c.Engine.VLLMVersion {
		d.add("engine", Fail,
			fmt.Sprintf(`vagentctl install (installs %s), or set engine.vllm_version = %q in %s and run vagentctl apply`, c.Engine.VLLMVersion, got, c.Path),
			"%s has vLLM %s but engine.vllm_version is %s: units are rendered for %s's flags", c.Engine.Venv, got, c.Engine.VLLMVersion, c.Engine.VLLMVersion)
		return
	}
	d.add("engine", Pass, "", "vLLM %s imports from %s", got, c.Engine.Venv)
}

// lastLine is the last non-empty line of a program's output (import
// warnings come before the version; a traceback ends with the error).
func lastLine(out []byte) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" {
			return l
		}
	}
	return "(no output)"
}

func errText(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// Write prints the report, one line per check, then a count.
func (r *Report) Write(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, res := range r.Results {
		line := res.Finding
		if res.Fix != "" {
			line += " — fix: " + res.Fix
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", res.Status, res.Check, line)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\n%d passed, %d warned, %d failed, %d skipped\n", r.Passed, r.Warned, r.Failed, r.Skipped)
	return err
}

// WriteJSON prints the report as JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(struct {
		*Report
		OK bool `json:"ok"`
	}{r, r.OK()})
}
