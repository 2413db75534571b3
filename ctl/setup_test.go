package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v3"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/supervisor"
)

// setupFakes replaces setup's steps with recorders; fail names a step that
// fails. It returns the log of steps run.
func setupFakes(t *testing.T, fail *string, missing ...string) *[]string {
	t.Helper()
	saved := setupSteps
	t.Cleanup(func() { setupSteps = saved })
	var ran []string
	step := func(name string) func(context.Context, *cli.Command, *config.Config) (string, error) {
		return func(_ context.Context, cmd *cli.Command, cfg *config.Config) (string, error) {
			ran = append(ran, name)
			fmt.Fprintf(cmd.Root().Writer, "%s: working\n%s: finished for %d agents\n", name, name, len(cfg.Agents))
			if *fail == name {
				return "", errors.New(name + " broke")
			}
			if name == "vagentd" {
				return "started vagentd.service", nil
			}
			return "", nil
		}
	}
	setupSteps = nil
	for _, n := range []string{"install", "pull", "apply", "vagentd"} {
		s := setupStep{n, step(n)}
		for _, m := range missing {
			if m == n {
				s.run = nil
			}
		}
		setupSteps = append(setupSteps, s)
	}
	return &ran
}

func setupVLLMConfig(t *testing.T) (string, string) {
	return hostConfig(t, "configs", func(m string) string {
		return strings.Replace(m, `kind = "sim"`, `kind = "vllm"`, 1)
	})
}

func TestSetupRunsResumesAndRedoes(t *testing.T) {
	conf, dir := setupVLLMConfig(t)
	fail := "apply"
	ran := setupFakes(t, &fail)

	// First run: apply fails; install and pull are recorded, vagentd never runs.
	out, errOut, code := runIssueCmd(t, conf, "setup")
	if code != ExitFailure || strings.Join(*ran, ",") != "install,pull,apply" {
		t.Fatalf("exit %d ran %v\n%s%s", code, *ran, out, errOut)
	}
	if !strings.Contains(errOut, "setup: apply: apply broke (rerun vagentctl setup to resume from here)") {
		t.Errorf("stderr %q", errOut)
	}
	for _, want := range []string{
		"install  DONE     install: working; install: finished for 3 agents",
		"apply    FAILED   apply broke",
		"vagentd  NOT RUN  an earlier step failed",
		"setup: 2 done now, 1 failed, 1 not run; progress kept in " + filepath.Join(dir, "state", "setup.json"),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	var st setupState
	data, err := os.ReadFile(filepath.Join(dir, "state", "setup.json"))
	if err != nil || json.Unmarshal(data, &st) != nil {
		t.Fatalf("setup.json: %v\n%s", err, data)
	}
	if len(st.Steps) != 2 || st.Steps["install"].Inputs == "" || st.Steps["pull"].Inputs == "" {
		t.Errorf("recorded %+v", st.Steps)
	}

	// Rerun: resumes at apply.
	fail, *ran = "", nil
	out, errOut, code = runIssueCmd(t, conf, "setup")
	if code != ExitOK || strings.Join(*ran, ",") != "apply,vagentd" {
		t.Fatalf("resume: exit %d ran %v\n%s%s", code, *ran, out, errOut)
	}
	if !strings.Contains(out, "install  UP TO DATE  done ") || !strings.Contains(out, "vagentd  DONE        started vagentd.service") {
		t.Errorf("resume output:\n%s", out)
	}

	// Nothing changed: only vagentd is checked again.
	*ran = nil
	runIssueCmd(t, conf, "setup")
	if strings.Join(*ran, ",") != "vagentd" {
		t.Errorf("up to date: ran %v", *ran)
	}

	// A new revision: pull and apply (the units carry --revision) redo.
	po := filepath.Join(dir, "agents", "po.toml")
	b, _ := os.ReadFile(po)
	os.WriteFile(po, append([]byte("revision = \"v2\"\n"), b...), 0o644)
	*ran = nil
	runIssueCmd(t, conf, "setup")
	if strings.Join(*ran, ",") != "pull,apply,vagentd" {
		t.Errorf("after a revision change: ran %v", *ran)
	}

	// --from redoes from a step on.
	*ran = nil
	if _, errOut, code := runIssueCmd(t, conf, "setup", "--from", "pull"); code != ExitOK || strings.Join(*ran, ",") != "pull,apply,vagentd" {
		t.Errorf("--from pull: exit %d ran %v %s", code, *ran, errOut)
	}
	if _, errOut, code := runIssueCmd(t, conf, "setup", "--from", "nope"); code != ExitUsage || !strings.Contains(errOut, `--from "nope" is not a step (steps: install, pull, apply, vagentd)`) {
		t.Errorf("--from nope: exit %d %s", code, errOut)
	}
}

func TestSetupSkipsAndUnavailableSteps(t *testing.T) {
	conf, dir := setupVLLMConfig(t)
	fail := ""
	ran := setupFakes(t, &fail, "pull")
	out, errOut, code := runIssueCmd(t, conf, "setup", "--skip-install")
	if code != ExitOK || strings.Join(*ran, ",") != "apply,vagentd" {
		t.Fatalf("exit %d ran %v\n%s%s", code, *ran, out, errOut)
	}
	for _, want := range []string{
		"install  SKIPPED  --skip-install",
		`pull     WARN     not available in this build: vagentctl has no "pull" command, do this step by hand`,
		"setup: 2 done now, 1 skipped, 1 not available",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// Skipped and unavailable steps are not recorded as done.
	data, _ := os.ReadFile(filepath.Join(dir, "state", "setup.json"))
	if strings.Contains(string(data), `"install"`) || strings.Contains(string(data), `"pull"`) {
		t.Errorf("setup.json records skipped steps:\n%s", data)
	}

	// The simulator needs no vLLM: install is skipped with the reason.
	simConf, _ := hostConfig(t, "configs", nil)
	*ran = nil
	out, _, _ = runIssueCmd(t, simConf, "setup", "--skip-pull", "--json")
	var rep setupReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	if !rep.OK || len(rep.Steps) != 4 || rep.Steps[0].Status != setupSkipped || !strings.Contains(rep.Steps[0].Summary, `engine.kind is "sim": the simulator needs no vLLM`) ||
		rep.Steps[1].Status != setupSkipped || rep.Steps[2].Status != setupRan || rep.Steps[2].Summary != "apply: working; apply: finished for 3 agents" {
		t.Errorf("json report %+v", rep)
	}
	if strings.Join(*ran, ",") != "apply,vagentd" {
		t.Errorf("ran %v", *ran)
	}
}

func TestSetupCorruptStateStartsOver(t *testing.T) {
	conf, dir := setupVLLMConfig(t)
	fail := ""
	ran := setupFakes(t, &fail)
	os.MkdirAll(filepath.Join(dir, "state"), 0o755)
	os.WriteFile(filepath.Join(dir, "state", "setup.json"), []byte("{half"), 0o644)
	_, errOut, code := runIssueCmd(t, conf, "setup")
	if code != ExitOK || strings.Join(*ran, ",") != "install,pull,apply,vagentd" || !strings.Contains(errOut, "setup.json is corrupt, starting over") {
		t.Errorf("exit %d ran %v stderr %q", code, *ran, errOut)
	}
}

func TestSetupSubcommandUnavailable(t *testing.T) {
	conf, _ := setupVLLMConfig(t)
	saved := setupSteps
	defer func() { setupSteps = saved }()
	setupSteps = []setupStep{{"frobnicate", setupSubcommand("frobnicate")}}
	out, _, code := runIssueCmd(t, conf, "setup")
	if code != ExitOK || !strings.Contains(out, `frobnicate  WARN  not available in this build: vagentctl has no "frobnicate" command`) {
		t.Errorf("exit %d\n%s", code, out)
	}
}

// setupSD is a fake systemd for the vagentd step.
type setupSD struct {
	state              supervisor.UnitState
	started, resetDone bool
	startErr           error
}

func (s *setupSD) Start(_ context.Context, unit string) error {
	s.started = true
	return s.startErr
}
func (s *setupSD) Stop(context.Context, string) error { return nil }
func (s *setupSD) Reload(context.Context) error       { return nil }
func (s *setupSD) ResetFailed(context.Context, string) error {
	s.resetDone = true
	return nil
}
func (s *setupSD) State(context.Context, string) (supervisor.UnitState, error) { return s.state, nil }
func (s *setupSD) Close()                                                      {}

func TestStartVagentd(t *testing.T) {
	saved := setupSystemd
	defer func() { setupSystemd = saved }()
	cases := []struct {
		name        string
		state       supervisor.UnitState
		startErr    error
		want, err   string
		start, rset bool
	}{
		{"running", supervisor.UnitState{LoadState: "loaded", ActiveState: "active", SubState: "running"}, nil, "vagentd.service was already running", "", false, false},
		{"stopped", supervisor.UnitState{LoadState: "loaded", ActiveState: "inactive", SubState: "dead"}, nil, "started vagentd.service", "", true, false},
		{"failed", supervisor.UnitState{LoadState: "loaded", ActiveState: "failed", SubState: "failed"}, nil, "started vagentd.service", "", true, true},
		{"not installed", supervisor.UnitState{LoadState: "not-found", ActiveState: "inactive"}, nil, "", "vagentd.service is not installed (not-found): install the vagent package", false, false},
		{"start fails", supervisor.UnitState{LoadState: "loaded", ActiveState: "inactive"}, &supervisor.JobError{Op: "start", Unit: "vagentd.service", Result: "failed"}, "", "start vagentd.service: job failed (journalctl -u vagentd.service says why)", true, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sd := &setupSD{state: c.state, startErr: c.startErr}
			setupSystemd = func(context.Context, *config.Config) (supervisor.Systemd, error) { return sd, nil }
			got, err := startVagentd(context.Background(), nil, &config.Config{})
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Errorf("err = %v, want %q", err, c.err)
				}
			} else if err != nil || !strings.HasPrefix(got, c.want) {
				t.Errorf("got %q, %v; want %q", got, err, c.want)
			}
			if sd.started != c.start || sd.resetDone != c.rset {
				t.Errorf("started %v reset %v", sd.started, sd.resetDone)
			}
		})
	}
	setupSystemd = func(context.Context, *config.Config) (supervisor.Systemd, error) {
		return nil, &dbusError{errors.New("connect to systemd over D-Bus: no answer")}
	}
	if _, err := startVagentd(context.Background(), nil, &config.Config{}); err == nil || !strings.Contains(err.Error(), "no answer") {
		t.Errorf("no systemd: %v", err)
	}
}
