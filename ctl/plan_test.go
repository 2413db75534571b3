package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v3"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/gpu"
	"github.com/vagent-dev/vagent/plan"
)

// hostConfig installs a shipped configuration (configs or
// configs/examples/24gb) in a temp dir with every host path moved under it,
// so that nothing of this machine is read or written. edit may rewrite the
// main file.
func hostConfig(t *testing.T, src string, edit func(main string) string) (conf, dir string) {
	t.Helper()
	dir = t.TempDir()
	data, err := os.ReadFile(filepath.Join("..", src, "vagent.toml"))
	if err != nil {
		t.Fatal(err)
	}
	main := strings.NewReplacer(
		`"/etc/systemd/system"`, `"`+dir+`/units"`,
		`"/var/lib/vagent`, `"`+dir+`/state`,
		`"/run/vagent`, `"`+dir+`/run`,
		`"/var/cache/vagent`, `"`+dir+`/cache`,
		`"/usr/bin/vllm-sim"`, `"`+dir+`/bin/vllm-sim"`,
	).Replace(string(data))
	if edit != nil {
		main = edit(main)
	}
	conf = filepath.Join(dir, "vagent.toml")
	if err := os.WriteFile(conf, []byte(main), 0o644); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "agents"), 0o755)
	agents, _ := filepath.Glob(filepath.Join("..", src, "agents", "*.toml"))
	for _, a := range agents {
		b, err := os.ReadFile(a)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "agents", filepath.Base(a)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return conf, dir
}

// runIssueCmd runs vagentctl with plan, doctor and setup available (they
// are added to a copy of App when app.go does not list them yet), printing
// errors and choosing the exit status as Main does.
func runIssueCmd(t *testing.T, conf string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	t.Setenv("HF_HUB_OFFLINE", "1") // tests never reach the Hub
	var o, e bytes.Buffer
	argv := append([]string{"vagentctl", "--config", conf}, args...)
	app := App(&o, &e)
	if app.Command("plan") != nil && app.Command("doctor") != nil && app.Command("setup") != nil {
		code = Main(context.Background(), argv, &o, &e)
		return o.String(), e.String(), code
	}
	for _, c := range []*cli.Command{planCmd(), doctorCmd(), setupCmd()} {
		if app.Command(c.Name) == nil {
			app.Commands = append(app.Commands, c)
		}
	}
	err := app.Run(context.Background(), argv)
	var ue *usageError
	switch {
	case err == nil:
		code = ExitOK
	case errors.As(err, &ue):
		code = ExitUsage
	default:
		code = ExitFailure
	}
	if err != nil {
		e.WriteString("vagentctl: " + err.Error() + "\n")
	}
	return o.String(), e.String(), code
}

func TestPlanShippedConfigs(t *testing.T) {
	conf, _ := hostConfig(t, "configs", nil)
	out, errOut, code := runIssueCmd(t, conf, "plan")
	if code != ExitOK || errOut != "" {
		t.Fatalf("exit %d, stderr %q\n%s", code, errOut, out)
	}
	for _, want := range []string{
		"GPU 0: 15.99 GiB (from gpu.sim_total_mib), 256 MiB kept free; vLLM 0.18.0 counts CUDA graphs outside the budget (before 0.21)",
		"architect  Qwen/Qwen2.5-14B-Instruct-AWQ        9.29 GiB  192 KiB   14.71 GiB  3.42 GiB  18432    12288 ok    yes",
		"po         Qwen/Qwen2.5-7B-Instruct-AWQ         5.19 GiB  56 KiB    14.71 GiB  7.53 GiB  32768*   32768 ok    yes",
		"together on GPU 0: no two of architect, dev, po fit at once",
		"3 of 3 agents fit their GPU alone",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("plan lacks %q:\n%s", want, out)
		}
	}
}

func TestPlan32BOn16GBExitsOne(t *testing.T) {
	conf, _ := hostConfig(t, "configs/examples/24gb", nil)
	out, errOut, code := runIssueCmd(t, conf, "plan")
	if code != ExitOK {
		t.Fatalf("24 GB example on its own card: exit %d %s\n%s", code, errOut, out)
	}
	out, errOut, code = runIssueCmd(t, conf, "plan", "--gpu-total-mib", "16376")
	if code != ExitFailure {
		t.Errorf("exit %d, want 1", code)
	}
	if !strings.Contains(out, "architect: does not fit: its weights alone (18.00 GiB, 19.33 GB) exceed the whole 15.99 GiB card (GPU 0)") ||
		!strings.Contains(out, "(from --gpu-total-mib)") {
		t.Errorf("plan text:\n%s", out)
	}
	if errOut != "vagentctl: plan: cannot start on the GPU as configured: architect, dev (see above)\n" {
		t.Errorf("stderr %q", errOut)
	}

	out, _, code = runIssueCmd(t, conf, "plan", "--gpu-total-mib", "16376", "--json")
	var p plan.Plan
	if err := json.Unmarshal([]byte(out), &p); err != nil || code != ExitFailure {
		t.Fatalf("json (exit %d): %v\n%s", code, err, out)
	}
	arch := p.Agent("architect")
	if arch == nil || arch.Status != plan.NoFit || arch.KVPerTokenBytes != 256<<10 || arch.WeightsBytes != 19_330_000_000 || arch.Facts.WeightsSource != plan.SourceBuiltin {
		t.Errorf("json architect = %+v", arch)
	}
}

func TestPlanWithoutADriver(t *testing.T) {
	conf, _ := hostConfig(t, "configs", func(m string) string {
		return strings.Replace(m, `backend = "auto"`, `backend = "nvml"`, 1)
	})
	saved := planOpenGPU
	defer func() { planOpenGPU = saved }()
	planOpenGPU = func(*config.Config) (gpu.Backend, error) { return nil, gpu.ErrNoDriver }
	out, errOut, code := runIssueCmd(t, conf, "plan")
	if code != ExitFailure || out != "" {
		t.Errorf("exit %d, stdout %q", code, out)
	}
	want := "vagentctl: plan: GPU sizes unknown: no NVIDIA driver (libnvidia-ml.so.1 not found); pass --gpu-total-mib N to plan for cards of N MiB\n"
	if errOut != want {
		t.Errorf("stderr %q\nwant %q", errOut, want)
	}
	// The flag stands in for the driver.
	if _, errOut, code := runIssueCmd(t, conf, "plan", "--gpu-total-mib", "24564"); code != ExitOK {
		t.Errorf("with --gpu-total-mib: exit %d %s", code, errOut)
	}
}

func TestPlanUsage(t *testing.T) {
	conf, _ := hostConfig(t, "configs", nil)
	if _, _, code := runIssueCmd(t, conf, "plan", "extra"); code != ExitUsage {
		t.Errorf("plan extra: exit %d, want 2", code)
	}
	if _, _, code := runIssueCmd(t, conf, "plan", "--gpu-total-mib", "lots"); code != ExitUsage {
		t.Errorf("bad --gpu-total-mib: exit %d, want 2", code)
	}
}
