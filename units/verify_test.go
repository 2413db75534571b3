package units

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/engine"
)

// systemdAnalyze finds systemd-analyze. Where the tests must run (as root,
// or in CI) its absence fails them; elsewhere it skips.
func systemdAnalyze(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Geteuid() == 0 || os.Getenv("CI") != "" {
			t.Fatalf("systemd-analyze is needed to verify rendered units: %v", err)
		}
		t.Skipf("systemd-analyze not installed: %v", err)
	}
	return p
}

// verify writes files into a fresh unit directory and runs
// `systemd-analyze verify` on every agent instance at once, with the
// directory first on the unit search path (SYSTEMD_UNIT_PATH ending in ':'
// keeps the system directories for targets such as multi-user.target).
// systemd-analyze exits 0 even after "Unknown key" or "Unbalanced quoting,
// ignoring" warnings, so any output line about a vagent unit is a failure
// too. It returns that output.
func verify(t *testing.T, files Files, agents []string) string {
	t.Helper()
	analyze := systemdAnalyze(t)
	dir := t.TempDir()
	if _, err := Write(dir, files); err != nil {
		t.Fatal(err)
	}
	args := []string{"verify", "--man=no"}
	for _, a := range agents {
		args = append(args, config.UnitName(a))
	}
	cmd := exec.Command(analyze, args...)
	cmd.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+dir+":", "SYSTEMD_LOG_COLOR=0")
	out, err := cmd.CombinedOutput()
	var bad []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "vagent") || strings.Contains(l, dir) {
			bad = append(bad, l)
		} else if strings.TrimSpace(l) != "" {
			t.Logf("systemd-analyze (not about vagent): %s", l)
		}
	}
	if err != nil && len(bad) == 0 {
		bad = append(bad, err.Error())
	}
	return strings.Join(bad, "\n")
}

// fakeEngine makes an executable where the rendered ExecStart points:
// verify refuses a command that does not exist.
func fakeEngine(t *testing.T, cfg *config.Config) {
	t.Helper()
	dir := t.TempDir()
	if cfg.Engine.Kind == config.EngineSim {
		cfg.Engine.SimBinary = filepath.Join(dir, "vllm-sim")
	} else {
		cfg.Engine.Venv = filepath.Join(dir, "venv")
	}
	bin, _ := engine.VLLM{Sim: cfg.Engine.Kind == config.EngineSim}.Binary(cfg)
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

func agentNames(cfg *config.Config) []string {
	var out []string
	for _, a := range cfg.Agents {
		out = append(out, a.Name)
	}
	return out
}

func TestSystemdVerify(t *testing.T) {
	for _, tc := range []struct {
		name, path string
		mutate     func(*config.Config)
	}{
		{"shipped", "../configs/vagent.toml", func(*config.Config) {}},
		{"shipped with a user", "../configs/vagent.toml", func(c *config.Config) { c.Units.User, c.Units.Group = "vagent", "vagent" }},
		{"24gb", "../configs/examples/24gb/vagent.toml", func(*config.Config) {}},
		{"24gb on vllm", "../configs/examples/24gb/vagent.toml", func(c *config.Config) { c.Engine.Kind = config.EngineVLLM }},
		{"awkward values", "../configs/vagent.toml", func(c *config.Config) {
			a := c.Agent("dev")
			a.ChatTemplate = `{% for m in messages %}{{ m['content'] }} $HOME ${X} "q" \n;{% endfor %}`
			a.ExtraArgs = []string{"--seed", "-1", "--max-logprobs=5"}
			a.Env = map[string]string{"PS1": `$ 100% "x" 'y' \`, "EMPTY": ""}
			c.GPU.SimLoadSeconds = 0.25
		}},
		{"awkward paths", "../configs/vagent.toml", func(c *config.Config) {
			c.Paths.StateDir, c.Paths.CacheDir = awkwardDirs[0], awkwardDirs[1]
			c.Paths.HFHome, c.Paths.RunDir = awkwardDirs[2], awkwardDirs[3]
			c.GPU.SimLedger = awkwardDirs[4] + "/ledger.json"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := loadConfig(t, tc.path)
			tc.mutate(cfg)
			fakeEngine(t, cfg)
			files, err := Render(cfg, map[int]uint64{0: gib16})
			if err != nil {
				t.Fatal(err)
			}
			if bad := verify(t, files, agentNames(cfg)); bad != "" {
				t.Errorf("systemd-analyze verify:\n%s", bad)
			}
		})
	}

	// The check itself must catch a broken unit, or it proves nothing.
	t.Run("catches a broken drop-in", func(t *testing.T) {
		cfg := loadConfig(t, "../configs/vagent.toml")
		fakeEngine(t, cfg)
		files, err := Render(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		p := DropInPath("dev")
		files[p] = append(bytes.Clone(files[p]), "Bogus=1\nExecStartPre=/bin/true \"unbalanced\n"...)
		if bad := verify(t, files, agentNames(cfg)); !strings.Contains(bad, "Unbalanced quoting") || !strings.Contains(bad, "Bogus") {
			t.Errorf("a broken drop-in passed verify: %q", bad)
		}
	})
	t.Run("an instance without a drop-in is refused", func(t *testing.T) {
		cfg := loadConfig(t, "../configs/vagent.toml")
		fakeEngine(t, cfg)
		files, err := Render(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		if bad := verify(t, files, []string{"typo"}); !strings.Contains(bad, "no ExecStart") {
			t.Errorf("vagent@typo.service passed verify: %q", bad)
		}
	})
}
