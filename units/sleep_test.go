package units

import (
	"slices"
	"strings"
	"testing"

	"github.com/vagent-dev/vagent/config"
)

func TestSleepAgents(t *testing.T) {
	sleeper := testAgent("dev", 0.92)
	sleeper.SwitchMode = config.SwitchSleep
	restarter := testAgent("po", 0.92)
	other := testAgent("qa", 0.92)
	cfg := testConfig(sleeper, restarter, other)
	files, err := Render(cfg, map[int]uint64{0: gib16})
	if err != nil {
		t.Fatal(err)
	}
	dev := readDropIn(t, files, "dev")
	if !slices.Contains(dev.argv, "--enable-sleep-mode") {
		t.Errorf("sleep agent's command line lacks --enable-sleep-mode: %q", dev.argv)
	}
	if dev.env["VLLM_SERVER_DEV_MODE"] != "1" {
		t.Errorf("sleep agent's environment: VLLM_SERVER_DEV_MODE=%q, want 1", dev.env["VLLM_SERVER_DEV_MODE"])
	}
	// Still only on 127.0.0.1: the dev routes take no key.
	if host, _ := flagValue(dev.argv, "--host"); host != "127.0.0.1" {
		t.Errorf("sleep agent listens on %q", host)
	}
	po := readDropIn(t, files, "po")
	if slices.Contains(po.argv, "--enable-sleep-mode") || po.env["VLLM_SERVER_DEV_MODE"] != "" {
		t.Errorf("restart agent rendered with sleep mode: %q %v", po.argv, po.env)
	}
	// A sleeping engine stays up beside the one that runs: no Conflicts=
	// between a sleep agent and anyone; restart agents keep theirs.
	if got := conflictsOf(t, files, "dev"); len(got) != 0 {
		t.Errorf("sleep agent conflicts with %v", got)
	}
	if got := conflictsOf(t, files, "po"); !slices.Equal(got, []string{"vagent@qa.service"}) {
		t.Errorf("po conflicts with %v, want qa only", got)
	}

	// The global default makes every agent a sleep agent.
	cfg.Supervisor.SwitchMode = config.SwitchSleep
	files, err = Render(cfg, map[int]uint64{0: gib16})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range cfg.Agents {
		u := readDropIn(t, files, a.Name)
		if !slices.Contains(u.argv, "--enable-sleep-mode") || len(conflictsOf(t, files, a.Name)) != 0 {
			t.Errorf("%s under supervisor.switch_mode = sleep: %q", a.Name, u.argv)
		}
	}
	// An agent may opt out.
	restarter.SwitchMode = config.SwitchRestart
	files, err = Render(cfg, map[int]uint64{0: gib16})
	if err != nil {
		t.Fatal(err)
	}
	if u := readDropIn(t, files, "po"); slices.Contains(u.argv, "--enable-sleep-mode") {
		t.Errorf("po with switch_mode = restart rendered with sleep mode")
	}
}

func TestSleepModeRefusals(t *testing.T) {
	a := testAgent("dev", 0.5)
	a.ExtraArgs = []string{"--enable-sleep-mode"}
	_, err := Render(testConfig(a), nil)
	if e := configError(t, err, a.File, "extra_args"); !strings.Contains(e.Msg, "set that key instead") {
		t.Errorf("--enable-sleep-mode in extra_args: %v", e)
	}
	b := testAgent("po", 0.5)
	b.Env = map[string]string{"VLLM_SERVER_DEV_MODE": "1"}
	_, err = Render(testConfig(b), nil)
	if e := configError(t, err, b.File, "env"); !strings.Contains(e.Msg, "set by vagent itself") {
		t.Errorf("VLLM_SERVER_DEV_MODE in env: %v", e)
	}
}

func TestSystemdVerifySleepAgents(t *testing.T) {
	cfg := loadConfig(t, "../configs/vagent.toml")
	cfg.Supervisor.SwitchMode = config.SwitchSleep
	fakeEngine(t, cfg)
	files, err := Render(cfg, map[int]uint64{0: gib16})
	if err != nil {
		t.Fatal(err)
	}
	if bad := verify(t, files, agentNames(cfg)); bad != "" {
		t.Errorf("systemd-analyze verify:\n%s", bad)
	}
}
