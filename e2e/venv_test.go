package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/venv/wheeltest"
)

// venvWheels builds the local vllm wheels the venv test installs: each
// one's `vllm` console script execs vllm-sim from the sandbox, reporting the
// wheel's version, so that which engine an agent runs shows on /version
// and in its journal.
func venvWheels(t *testing.T, h *host, dir string) {
	t.Helper()
	for _, v := range []string{"0.18.0", "0.18.1"} {
		cli := wheeltest.SimCLI(h.s.Path("bin", "vllm-sim"),
			"VLLM_SIM_VERSION="+v,
			"VLLM_SIM_LEDGER="+h.s.Path("run/vagent/sim-ledger.json"),
			"VLLM_SIM_GPUS=1",
			"VLLM_SIM_TOTAL_MIB=16376",
			fmt.Sprintf("VLLM_SIM_LOAD_SECONDS=%g", simLoadSeconds),
		)
		if _, err := wheeltest.Build(dir, wheeltest.Wheel{Version: v, CLI: cli}); err != nil {
			t.Fatal(err)
		}
	}
	broken := wheeltest.Wheel{Version: "0.18.2", CLI: "def main():\n    pass\n",
		Init: "raise RuntimeError('vllm 0.18.2 is broken on purpose')\n"}
	if _, err := wheeltest.Build(dir, broken); err != nil {
		t.Fatal(err)
	}
}

// engineVersion asks an agent's engine which version it is.
func engineVersion(t *testing.T, port int) string {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/version", port))
	if err != nil {
		t.Fatalf("GET /version: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var v struct {
		Version string `json:"version"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("GET /version: %v: %s", err, b)
	}
	return v.Version
}

// TestE2EVenv installs vLLM (a local wheel whose `vllm` execs vllm-sim)
// into the managed venv offline, runs an agent on it through systemd,
// upgrades with the agent running, restarts it onto the new engine, rolls
// back, and checks that a wheel that fails to import leaves the old engine
// current and serving.
func TestE2EVenv(t *testing.T) {
	h := newHost(t)
	if err := h.s.EditConfig("vagent.toml", map[string]any{"engine.kind": "vllm"}); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code, err := h.s.Exec(t.Context(), "python3", "-c", "import venv, ensurepip"); err != nil || code != 0 {
		t.Fatalf("python3 with the venv module is needed inside the sandbox (apt-get install python3 python3-venv): %v %s%s", err, out, errOut)
	}
	wheels := h.s.Path("wheels") // the sandbox hides the host's /tmp
	venvWheels(t, h, wheels)
	engines := h.s.Path("var/lib/vagent/engines")
	current := func() string {
		t.Helper()
		target, err := os.Readlink(filepath.Join(engines, "current"))
		if err != nil {
			t.Fatalf("engines/current: %v", err)
		}
		return target
	}
	port := h.ports["po"]
	mainPID := func() int { return h.status()["po"].MainPID }

	t.Run("install", func(t *testing.T) {
		out := h.mustCtl("install", "--find-links", wheels, "--installer", "pip")
		for _, want := range []string{
			"create: python3 -m venv " + engines + "/vllm-0.18.0",
			"--no-index --find-links " + wheels,
			"Successfully installed vllm-0.18.0",
			"imports vllm 0.18.0",
			"switch: current -> vllm-0.18.0",
			"done: vLLM 0.18.0 is the current engine",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("install output lacks %q:\n%s", want, out)
			}
		}
		if got := current(); got != "vllm-0.18.0" {
			t.Errorf("current -> %s", got)
		}
	})

	t.Run("an agent runs on the engine through systemd", func(t *testing.T) {
		h.mustCtl("apply")
		if out := h.mustCtl("switch", "po"); !strings.Contains(out, "po is healthy") {
			t.Fatalf("switch po: %s", out)
		}
		exec, err := h.s.Systemctl(t.Context(), "show", "-p", "ExecStart", "vagent@po.service")
		if err != nil || !strings.Contains(exec, engines+"/current/bin/vllm serve") {
			t.Errorf("ExecStart of po: %s %v", exec, err)
		}
		if v := engineVersion(t, port); v != "0.18.0" {
			t.Errorf("po runs engine %s, want 0.18.0", v)
		}
		if j := h.s.Journal(t.Context(), "vagent@po.service"); !strings.Contains(j, "█  version 0.18.0") {
			t.Errorf("journal lacks the engine's version line:\n%s", j)
		}
	})

	t.Run("upgrade switches current; the running agent keeps its engine until restarted", func(t *testing.T) {
		pid := mainPID()
		out := h.mustCtl("install", "--version", "0.18.1", "--find-links", wheels, "--installer", "pip", "--json")
		var res struct {
			OK       bool     `json:"ok"`
			Version  string   `json:"version"`
			Current  string   `json:"current"`
			Previous string   `json:"previous"`
			Log      string   `json:"log"`
			Notes    []string `json:"notes"`
		}
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("install --json: %v\n%s", err, out)
		}
		if !res.OK || res.Version != "0.18.1" || res.Current != engines+"/vllm-0.18.1" || res.Previous != engines+"/vllm-0.18.0" {
			t.Errorf("install --json: %+v", res)
		}
		if _, err := os.Stat(res.Log); err != nil {
			t.Errorf("install log: %v", err)
		}
		if !strings.Contains(strings.Join(res.Notes, "\n"), `set it to "0.18.1"`) {
			t.Errorf("no note about engine.vllm_version: %q", res.Notes)
		}
		if got := current(); got != "vllm-0.18.1" {
			t.Errorf("current -> %s", got)
		}
		if v := engineVersion(t, port); v != "0.18.0" || mainPID() != pid {
			t.Errorf("the running agent changed: version %s, pid %d (was %d)", v, mainPID(), pid)
		}
		h.mustCtl("restart", "po")
		if v := engineVersion(t, port); v != "0.18.1" {
			t.Errorf("after restart po runs %s, want 0.18.1", v)
		}
		if j := h.s.Journal(t.Context(), "vagent@po.service"); !strings.Contains(j, "█  version 0.18.1") {
			t.Errorf("journal lacks the new engine's version line:\n%s", j)
		}
	})

	t.Run("rollback", func(t *testing.T) {
		out := h.mustCtl("install", "--rollback")
		if !strings.Contains(out, "switch: current -> vllm-0.18.0 (previous: vllm-0.18.1)") {
			t.Errorf("rollback output:\n%s", out)
		}
		if got := current(); got != "vllm-0.18.0" {
			t.Errorf("current -> %s", got)
		}
		h.mustCtl("restart", "po")
		if v := engineVersion(t, port); v != "0.18.0" {
			t.Errorf("after rollback and restart po runs %s, want 0.18.0", v)
		}
	})

	t.Run("a wheel that fails to import leaves the old engine serving", func(t *testing.T) {
		pid := mainPID()
		out, errOut, code := h.ctl("install", "--version", "0.18.2", "--find-links", wheels, "--installer", "pip")
		if code != 1 {
			t.Fatalf("broken install exited %d\nstdout: %s\nstderr: %s", code, out, errOut)
		}
		for _, want := range []string{
			"install vLLM 0.18.2: verify: the new venv cannot import vllm",
			"RuntimeError: vllm 0.18.2 is broken on purpose",
			"full log: " + engines + "/install-0.18.2-",
			"the current engine is unchanged: " + engines + "/vllm-0.18.0",
		} {
			if !strings.Contains(errOut, want) {
				t.Errorf("stderr lacks %q:\n%s", want, errOut)
			}
		}
		if got := current(); got != "vllm-0.18.0" {
			t.Errorf("current -> %s after a failed install", got)
		}
		if _, err := os.Stat(filepath.Join(engines, "vllm-0.18.2")); !os.IsNotExist(err) {
			t.Errorf("the broken engine was left behind: %v", err)
		}
		if v := engineVersion(t, port); v != "0.18.0" || mainPID() != pid {
			t.Errorf("po changed: version %s pid %d (was %d)", v, mainPID(), pid)
		}
		h.mustCtl("restart", "po")
		if v := engineVersion(t, port); v != "0.18.0" || !h.status()["po"].Healthy {
			t.Errorf("after restart po runs %s (healthy %v), want 0.18.0", v, h.status()["po"].Healthy)
		}
	})
}
