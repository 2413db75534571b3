package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/models"
	"github.com/vagent-dev/vagent/models/hubtest"
)

// requireCache makes an agent's simulator behave like vLLM with
// HF_HUB_OFFLINE=1: it starts only from a snapshot in the HF cache.
func requireCache(t testing.TB, h *host, agent string) {
	t.Helper()
	path := h.s.Path("etc/vagent/agents", agent+".toml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data = append(data, "\n[env]\nVLLM_SIM_REQUIRE_CACHE = \"1\"\n"...)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// pullCtl runs vagentctl inside the sandbox with the fake Hub as
// HF_ENDPOINT, plus extra environment.
func (h *host) pullCtl(endpoint string, env []string, args ...string) (stdout, stderr string, code int) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.t.Context(), 2*time.Minute)
	defer cancel()
	env = append([]string{"HF_ENDPOINT=" + endpoint}, env...)
	stdout, stderr, code, err := h.s.ExecEnv(ctx, env, "vagentctl", args...)
	if err != nil {
		h.t.Fatalf("vagentctl %s: %v", strings.Join(args, " "), err)
	}
	return stdout, stderr, code
}

// TestE2EPull pulls an agent's model from a local Hub-speaking server with
// the real vagentctl inside a throwaway systemd, then starts the agent's
// unit offline (HF_HUB_OFFLINE=1, the simulator requiring the cached
// snapshot as vLLM does); an agent whose model was not pulled fails with
// vLLM's offline error, which switch prints.
func TestE2EPull(t *testing.T) {
	h := newHost(t)
	po := hubtest.ModelRepo("Qwen/Qwen2.5-7B-Instruct-AWQ", 3<<20, 2<<20)
	architect := hubtest.ModelRepo("Qwen/Qwen2.5-14B-Instruct-AWQ", 1<<20)
	architect.Gated = true
	hub := hubtest.New(po, architect)
	hub.Token = "hf_e2e_token"
	defer hub.Close()
	// The first download of a shard breaks mid-way: the pull resumes it.
	hub.DropAfter(po.Files[3], 1<<20+4321)
	for _, a := range []string{"po", "dev"} {
		requireCache(t, h, a)
	}
	h.mustCtl("apply")
	hfHome := h.s.Path("var/lib/vagent/hf")

	t.Run("pull po --json", func(t *testing.T) {
		out, errOut, code := h.pullCtl(hub.URL, nil, "pull", "po", "--json", "--jobs", "2")
		if code != 0 {
			t.Fatalf("pull po: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
		}
		kinds := map[string]int{}
		var summary models.Event
		sc := bufio.NewScanner(strings.NewReader(out))
		for sc.Scan() {
			var e models.Event
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				t.Fatalf("not a JSON line: %q: %v", sc.Text(), err)
			}
			kinds[e.Event]++
			if e.Event == models.EventSummary {
				summary = e
			}
			if e.Agent != "po" || e.Repo != po.ID {
				t.Errorf("event for another agent or repo: %s", sc.Text())
			}
		}
		if kinds["summary"] != 1 || kinds["done"] != len(po.Files) || kinds["error"] != 1 {
			t.Errorf("events %v: want %d done, one retried error (the dropped connection), one summary", kinds, len(po.Files))
		}
		want := filepath.Join(hfHome, "hub", "models--Qwen--Qwen2.5-7B-Instruct-AWQ", "snapshots", po.Commit)
		if summary.Snapshot != want {
			t.Errorf("snapshot %q, want %q", summary.Snapshot, want)
		}
		if dir, err := models.SnapshotDir(filepath.Join(hfHome, "hub"), po.ID, ""); err != nil || dir != want {
			t.Errorf("SnapshotDir: %q, %v", dir, err)
		}
		var resumed bool
		for _, r := range hub.Requests() {
			if strings.HasPrefix(r.Path, "/cdn/") && r.Range == fmt.Sprintf("bytes=%d-", 1<<20+4321) {
				resumed = true
			}
		}
		if !resumed {
			t.Errorf("no resumed download after the dropped connection: %+v", hub.Requests())
		}
	})

	t.Run("a second pull skips what is there", func(t *testing.T) {
		hub.ResetLog()
		out, errOut, code := h.pullCtl(hub.URL, nil, "pull", "po")
		t.Logf("vagentctl pull po:\n%s", out)
		if code != 0 || !strings.Contains(out, "po: model-00001-of-00002.safetensors: already complete") ||
			!strings.Contains(out, fmt.Sprintf("(%d files: 0 fetched, %d already there;", len(po.Files), len(po.Files))) {
			t.Errorf("second pull: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
		}
		for _, r := range hub.Requests() {
			if !strings.HasPrefix(r.Path, "/api/") {
				t.Errorf("second pull downloaded %s", r.Path)
			}
		}
	})

	t.Run("po starts offline from the cache", func(t *testing.T) {
		out := h.mustCtl("switch", "po")
		if !strings.Contains(out, "po is healthy") {
			t.Errorf("switch po: %s", out)
		}
		logs := h.mustCtl("logs", "po", "-n", "200")
		if !strings.Contains(logs, "HF_HUB_OFFLINE is True, replace model_id [Qwen/Qwen2.5-7B-Instruct-AWQ]") {
			t.Errorf("the engine did not resolve the cached snapshot:\n%s", logs)
		}
	})

	t.Run("an agent not pulled fails with vLLM's offline error", func(t *testing.T) {
		_, errOut, code := h.ctl("switch", "dev")
		if code != 1 {
			t.Fatalf("switch dev: exit %d, want 1; stderr: %s", code, errOut)
		}
		t.Logf("vagentctl switch dev:\n%s", errOut)
		if !strings.Contains(errOut, "huggingface_hub.errors.LocalEntryNotFoundError: Cannot find an appropriate cached snapshot folder for the specified revision on the local disk and outgoing traffic has been disabled") {
			t.Errorf("switch dev did not print the offline error:\n%s", errOut)
		}
		st := h.status()["dev"]
		if st.ActiveState == "active" || st.ActiveState == "activating" {
			t.Errorf("dev left running: %+v", st)
		}
	})

	t.Run("a gated repository needs HF_TOKEN", func(t *testing.T) {
		_, errOut, code := h.pullCtl(hub.URL, nil, "pull", "architect")
		t.Logf("vagentctl pull architect:\n%s", errOut)
		if code != 1 || !strings.Contains(errOut, "agent architect: pull Qwen/Qwen2.5-14B-Instruct-AWQ@main: access to Qwen/Qwen2.5-14B-Instruct-AWQ is restricted (401 Unauthorized)") ||
			!strings.Contains(errOut, "HF_TOKEN") {
			t.Errorf("pull architect without a token: exit %d\n%s", code, errOut)
		}
		out, errOut, code := h.pullCtl(hub.URL, []string{"HF_TOKEN=" + hub.Token}, "pull", "architect")
		if code != 0 || !strings.Contains(out, "architect: Qwen/Qwen2.5-14B-Instruct-AWQ@main ready in ") {
			t.Errorf("pull architect with the token: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
		}
	})
	t.Run("pull --source copies a model from elsewhere", func(t *testing.T) {
		src := h.s.Path("srv/models/tiny")
		if err := os.MkdirAll(src, 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(src, "config.json"), []byte(`{}`), 0o644)
		os.WriteFile(filepath.Join(src, "model.safetensors"), []byte("weights"), 0o644)
		out := h.mustCtl("pull", "--source", src, "--dest", "tiny")
		dest := filepath.Join(hfHome, "local", "tiny")
		if !strings.Contains(out, fmt.Sprintf("set model = %q", dest)) {
			t.Errorf("pull --source output:\n%s", out)
		}
		if data, err := os.ReadFile(filepath.Join(dest, "model.safetensors")); err != nil || string(data) != "weights" {
			t.Errorf("copied weights: %q, %v", data, err)
		}
		if _, errOut, code := h.ctl("pull", "--dest", "tiny"); code != 2 || !strings.Contains(errOut, "--dest goes with --source") {
			t.Errorf("pull --dest alone: exit %d: %s", code, errOut)
		}
		if _, errOut, code := h.ctl("pull", "nosuch"); code != 1 || !strings.Contains(errOut, `unknown agent "nosuch"`) {
			t.Errorf("pull nosuch: exit %d: %s", code, errOut)
		}
	})
}
