package ctl

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/doctor"
	"github.com/vagent-dev/vagent/gpu"
)

func TestDoctorCommandOnTheSimulator(t *testing.T) {
	conf, dir := hostConfig(t, "configs", nil)
	// No vllm-sim at engine.sim_binary: the engine check fails.
	out, errOut, code := runIssueCmd(t, conf, "doctor")
	if code != ExitFailure {
		t.Errorf("exit %d, want 1", code)
	}
	if !strings.HasPrefix(errOut, "vagentctl: doctor: ") || !strings.Contains(errOut, " checks failed") {
		t.Errorf("stderr %q", errOut)
	}
	for _, want := range []string{
		"PASS  gpu backend         auto chose sim: engine.kind is \"sim\": the simulator's engines hold memory in its ledger",
		"PASS  driver              simulator backend, no NVIDIA driver needed",
		"SKIP  nvidia_uvm          not needed with the simulator",
		"FAIL  engine              the simulator " + dir + "/bin/vllm-sim is missing: no such file or directory — fix: install the vagent package",
		"WARN  model po            Qwen/Qwen2.5-7B-Instruct-AWQ@main is not pulled",
		"PASS  plan                every agent fits its GPU alone: architect up to 18432 tokens",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("doctor lacks %q:\n%s", want, out)
		}
	}

	out, _, code = runIssueCmd(t, conf, "doctor", "--json")
	var r struct {
		Checks []doctor.Result `json:"checks"`
		OK     bool            `json:"ok"`
		Failed int             `json:"failed"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.OK || r.Failed < 1 || code != ExitFailure {
		t.Fatalf("json (exit %d, %v):\n%s", code, err, out)
	}
	if r.Checks[0].Check != "gpu backend" || r.Checks[0].Status != doctor.Pass || r.Checks[1].Check != "driver" || r.Checks[1].Status != doctor.Pass {
		t.Errorf("first check %+v", r.Checks[0])
	}
}

func TestDoctorCommandWithoutADriver(t *testing.T) {
	conf, _ := hostConfig(t, "configs", func(m string) string {
		m = strings.Replace(m, `backend = "auto"`, `backend = "nvml"`, 1)
		return strings.Replace(m, `kind = "sim"`, `kind = "vllm"`, 1)
	})
	saved := doctorEnv
	defer func() { doctorEnv = saved }()
	doctorEnv = func(cfg *config.Config) doctor.Env {
		e := doctor.HostEnv(cfg)
		e.OpenGPU = func() (gpu.Backend, error) { return nil, gpu.ErrNoDriver }
		return e
	}
	out, _, code := runIssueCmd(t, conf, "doctor")
	if code != ExitFailure {
		t.Errorf("exit %d", code)
	}
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "driver") && strings.Contains(l, "libnvidia-ml.so.1") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "FAIL  driver") {
		t.Errorf("no driver must be said in one line:\n%s", out)
	}
}

// TestGPUCommandOnThisHost: vagentctl gpu with the NVML backend either lists
// this host's GPUs or says in one line that there is no driver.
func TestGPUCommandOnThisHost(t *testing.T) {
	conf, _ := hostConfig(t, "configs", func(m string) string {
		return strings.Replace(m, `backend = "auto"`, `backend = "nvml"`, 1)
	})
	cfg, err := config.Load(conf)
	if err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runIssueCmd(t, conf, "gpu")
	if b, err := gpu.Open(cfg); err == nil {
		b.Close()
		if code != ExitOK || !strings.HasPrefix(out, "backend nvml, driver ") {
			t.Errorf("with a driver: exit %d\n%s%s", code, out, errOut)
		}
		return
	}
	if code != ExitFailure || out != "" || strings.Count(errOut, "\n") != 1 ||
		!(strings.Contains(errOut, "libnvidia-ml.so.1") || strings.Contains(errOut, "without cgo") || strings.Contains(errOut, "NVIDIA")) {
		t.Errorf("without a driver: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func TestDoctorEnvIsTheHost(t *testing.T) {
	conf, dir := hostConfig(t, "configs", nil)
	cfg, err := config.Load(conf)
	if err != nil {
		t.Fatal(err)
	}
	e := doctorEnv(cfg)
	if e.ProcModules != "/proc/modules" || e.OpenGPU == nil || e.Systemd == nil {
		t.Errorf("host env %+v", e)
	}
	os.MkdirAll(filepath.Join(dir, "x"), 0o755)
	if st, err := e.Stat(filepath.Join(dir, "x")); err != nil || !st.IsDir() {
		t.Errorf("stat: %v", err)
	}
}
