package vllmsim

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	vengine "github.com/vagent-dev/vagent/engine"
	"github.com/vagent-dev/vagent/journal"
)

// fakeSnapshot lays out model at revision main in the hub cache under home,
// with config.json unless bare.
func fakeSnapshot(t *testing.T, home, model string, bare bool) string {
	t.Helper()
	folder := filepath.Join(home, "hub", "models--"+strings.ReplaceAll(model, "/", "--"))
	commit := strings.Repeat("c0ffee", 6) + "abcd"
	snap := filepath.Join(folder, "snapshots", commit)
	if err := os.MkdirAll(filepath.Join(folder, "refs"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(snap, 0o755)
	os.WriteFile(filepath.Join(folder, "refs", "main"), []byte(commit), 0o644)
	if !bare {
		os.WriteFile(filepath.Join(snap, "config.json"), []byte("{}"), 0o644)
	}
	return snap
}

func TestOfflineRequiresTheCachedSnapshot(t *testing.T) {
	home := t.TempDir()
	const model = "Qwen/Qwen2.5-0.5B-Instruct"
	offline := map[string]string{"HF_HOME": home, "HF_HUB_OFFLINE": "1", "VLLM_SIM_REQUIRE_CACHE": "1"}

	// Not pulled: vLLM's offline error, exit status 1, before loading.
	p := startSim(t, simEnvFor(t, tempLedger(t), offline), model)
	if code := p.wait(t, 10*time.Second); code != 1 {
		t.Fatalf("exit %d, want 1\nstderr:\n%s", code, p.stderr)
	}
	stderr := p.stderr.String()
	if !strings.Contains(stderr, "huggingface_hub.errors.LocalEntryNotFoundError: Cannot find an appropriate cached snapshot folder for the specified revision on the local disk and outgoing traffic has been disabled.") {
		t.Errorf("stderr lacks the offline error:\n%s", stderr)
	}
	if strings.Contains(p.stdout.String(), "Starting to load model") {
		t.Error("loaded a model that is not in the cache")
	}
	// What vagentctl switch would print as the root cause.
	var entries []journal.Entry
	for _, l := range strings.Split(strings.TrimSpace(p.stdout.String()+stderr), "\n") {
		entries = append(entries, journal.Entry{Message: l, Priority: 6})
	}
	if got := journal.RootCause(entries, vengine.VLLM{}.Log(), journal.Exit{}); !strings.HasPrefix(got, "huggingface_hub.errors.LocalEntryNotFoundError: Cannot find an appropriate cached snapshot folder") {
		t.Errorf("root cause %q", got)
	}

	// Pulled: it resolves to the snapshot and serves.
	snap := fakeSnapshot(t, home, model, false)
	p = startSim(t, simEnvFor(t, tempLedger(t), offline), model)
	p.waitHealthy(t)
	if !strings.Contains(p.stdout.String(), "HF_HUB_OFFLINE is True, replace model_id ["+model+"] to model_path ["+snap+"]") {
		t.Errorf("stdout lacks the snapshot resolution:\n%s", p.stdout)
	}
	p.stop(t)

	// Another revision is not the pulled one.
	p = startSim(t, simEnvFor(t, tempLedger(t), offline), model, "--revision", "v2")
	if code := p.wait(t, 10*time.Second); code != 1 || !strings.Contains(p.stderr.String(), "LocalEntryNotFoundError") {
		t.Errorf("revision v2: exit %d\n%s", code, p.stderr)
	}
	// The commit itself needs no ref.
	p = startSim(t, simEnvFor(t, tempLedger(t), offline), model, "--revision", filepath.Base(snap))
	p.waitHealthy(t)
	p.stop(t)

	// Without the switch, or online, any model name runs as before.
	p = startSim(t, simEnvFor(t, tempLedger(t), map[string]string{"HF_HOME": home, "HF_HUB_OFFLINE": "1"}), "Qwen/Other-0.5B")
	p.waitHealthy(t)
	p.stop(t)
	p = startSim(t, simEnvFor(t, tempLedger(t), map[string]string{"HF_HOME": home, "VLLM_SIM_REQUIRE_CACHE": "1"}), "Qwen/Other-0.5B")
	p.waitHealthy(t)
	p.stop(t)
}

func TestOfflineSnapshotWithoutConfig(t *testing.T) {
	home := t.TempDir()
	const model = "Qwen/Qwen2.5-0.5B-Instruct"
	snap := fakeSnapshot(t, home, model, true)
	p := startSim(t, simEnvFor(t, tempLedger(t), map[string]string{"HF_HOME": home, "HF_HUB_OFFLINE": "true", "VLLM_SIM_REQUIRE_CACHE": "1"}), model)
	if code := p.wait(t, 10*time.Second); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if !strings.Contains(p.stderr.String(), "Invalid repository ID or local directory specified: '"+snap+"'") {
		t.Errorf("stderr:\n%s", p.stderr)
	}
}

func TestOfflineLocalPath(t *testing.T) {
	env := map[string]string{"HF_HOME": t.TempDir(), "HF_HUB_OFFLINE": "1", "VLLM_SIM_REQUIRE_CACHE": "1"}
	p := startSim(t, simEnvFor(t, tempLedger(t), env), "/srv/models/nowhere")
	if code := p.wait(t, 10*time.Second); code != 1 ||
		!strings.Contains(p.stderr.String(), "huggingface_hub.errors.HFValidationError: Repo id must be in the form 'repo_name' or 'namespace/repo_name': '/srv/models/nowhere'.") {
		t.Errorf("missing local dir: exit %d\n%s", p.code, p.stderr)
	}
	dir := filepath.Join(t.TempDir(), "Qwen2.5-0.5B-Instruct")
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "config.json"), []byte("{}"), 0o644)
	p = startSim(t, simEnvFor(t, tempLedger(t), env), dir)
	p.waitHealthy(t)
	p.stop(t)
}
