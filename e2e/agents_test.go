package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/e2e/sandbox"
	"github.com/vagent-dev/vagent/internal/ledger"
)

// host is one throwaway systemd with the shipped agents installed on the
// simulator, each on its own free port.
type host struct {
	t     testing.TB
	s     *sandbox.Sandbox
	conf  string
	ports map[string]int
	// listens are the agents' own listeners' ports (listen).
	listens map[string]int
}

const simLoadSeconds = 0.5

func newHost(t testing.TB) *host { return newHostPorts(t, true) }

// newHostPorts is newHost; without ports the agents keep the shipped files'
// setting, a unix socket per engine.
func newHostPorts(t testing.TB, ports bool) *host {
	t.Helper()
	s := sandbox.New(t, sandbox.Options{})
	ctx := t.Context()
	if err := s.Build(ctx, "./cmd/vagentctl", "./cmd/vllm-sim"); err != nil {
		t.Fatal(err)
	}
	conf, err := s.InstallConfig("../configs", map[string]any{
		"gpu.sim_load_seconds": simLoadSeconds,
		"units.restart_sec":    "1s",
	})
	if err != nil {
		t.Fatal(err)
	}
	h := &host{t: t, s: s, conf: conf, ports: map[string]int{}, listens: map[string]int{}}
	for _, a := range []string{"architect", "dev", "po"} {
		// The shipped agents' own listeners (8000-8002) on free ports:
		// sandboxes run side by side.
		l, err := sandbox.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		if err := s.EditConfig("agents/"+a+".toml", map[string]any{"listen": fmt.Sprintf("127.0.0.1:%d", l)}); err != nil {
			t.Fatal(err)
		}
		h.listens[a] = l
		if !ports {
			continue
		}
		p, err := sandbox.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		if err := s.EditConfig("agents/"+a+".toml", map[string]any{"port": p}); err != nil {
			t.Fatal(err)
		}
		h.ports[a] = p
	}
	return h
}

// ctl runs vagentctl inside the sandbox.
func (h *host) ctl(args ...string) (stdout, stderr string, code int) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(h.t.Context(), 2*time.Minute)
	defer cancel()
	stdout, stderr, code, err := h.s.Exec(ctx, "vagentctl", args...)
	if err != nil {
		h.t.Fatalf("vagentctl %s: %v", strings.Join(args, " "), err)
	}
	return stdout, stderr, code
}

// mustCtl runs vagentctl and fails the test unless it exits 0.
func (h *host) mustCtl(args ...string) string {
	h.t.Helper()
	out, errOut, code := h.ctl(args...)
	if code != 0 {
		h.t.Fatalf("vagentctl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

type agentStatus struct {
	Agent       string `json:"agent"`
	ActiveState string `json:"active_state"`
	SubState    string `json:"sub_state"`
	MainPID     int    `json:"main_pid"`
	Restarts    int    `json:"restarts"`
	Healthy     bool   `json:"healthy"`
	VRAMBytes   uint64 `json:"vram_bytes"`
	// Sleep mode's fields; State is vagentd's view, present when status
	// went through it.
	Sleeping   bool   `json:"sleeping"`
	SleepLevel int    `json:"sleep_level"`
	HostBytes  uint64 `json:"host_bytes"`
	State      string `json:"state"`
	SwitchMode string `json:"switch_mode"`
}

func (h *host) status() map[string]agentStatus {
	h.t.Helper()
	var st []agentStatus
	if err := json.Unmarshal([]byte(h.mustCtl("status", "--json")), &st); err != nil {
		h.t.Fatalf("status --json: %v", err)
	}
	out := map[string]agentStatus{}
	for _, s := range st {
		out[s.Agent] = s
	}
	return out
}

// running lists the agents whose unit is active, sorted.
func (h *host) running() []string {
	var out []string
	for name, s := range h.status() {
		if s.ActiveState == "active" {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

func (h *host) ledger() *ledger.Ledger {
	return ledger.Open(h.s.Path("run/vagent/sim-ledger.json"), 0, 0)
}

// sampleLedger reads the simulator's GPU ledger every few milliseconds until
// stop is closed and reports the most memory ever held on GPU 0 and the
// GPU's total.
func (h *host) sampleLedger(stop <-chan struct{}) (peak, total func() uint64) {
	var mu sync.Mutex
	var p, tot uint64
	l := h.ledger()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if st, err := l.Read(); err == nil {
				mu.Lock()
				if u := st.Used(0); u > p {
					p = u
				}
				tot = st.TotalBytes
				mu.Unlock()
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	wait := func() { <-done }
	return func() uint64 { wait(); mu.Lock(); defer mu.Unlock(); return p },
		func() uint64 { wait(); mu.Lock(); defer mu.Unlock(); return tot }
}

// eventually polls cond until it holds or the bound passes.
func eventually(t testing.TB, bound time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", bound, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// dirDigest hashes every file under dir, so that a test can tell whether a
// command changed anything there.
func dirDigest(t testing.TB, dir string) string {
	t.Helper()
	hsh := sha256.New()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fmt.Fprintf(hsh, "%s %v\n", strings.TrimPrefix(p, dir), d.Type())
		if d.Type().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			hsh.Write(data)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(hsh.Sum(nil))
}

// TestE2EAgents drives the real vagentctl and vllm-sim through a real
// systemd: apply, switches, a start by hand, a crash, a start that cannot
// fit, logs and concurrent switches. The steps share one host and run in
// order; each leaves the host as the next expects.
func TestE2EAgents(t *testing.T) {
	h := newHost(t)

	t.Run("apply", func(t *testing.T) {
		out := h.mustCtl("apply")
		for _, a := range []string{"architect", "dev", "po"} {
			if !strings.Contains(out, "added vagent@"+a+".service") {
				t.Errorf("apply output lacks %s:\n%s", a, out)
			}
		}
		dropIn, err := os.ReadFile(filepath.Join(h.s.UnitDir(), "vagent@dev.service.d", "50-vagent.conf"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(dropIn), "Conflicts=vagent@architect.service vagent@po.service") {
			t.Errorf("dev drop-in lacks its conflicts:\n%s", dropIn)
		}
		if out := h.mustCtl("apply"); !strings.Contains(out, "units are up to date") {
			t.Errorf("second apply rewrote units:\n%s", out)
		}
		if _, err := h.s.Systemctl(t.Context(), "cat", "vagent@po.service"); err != nil {
			t.Errorf("systemd does not know vagent@po after apply: %v", err)
		}
	})

	t.Run("switch po", func(t *testing.T) {
		out := h.mustCtl("switch", "po")
		if !strings.Contains(out, "po is healthy") {
			t.Errorf("switch output: %s", out)
		}
		st := h.status()["po"]
		if st.ActiveState != "active" || !st.Healthy || st.VRAMBytes == 0 {
			t.Errorf("po after switch: %+v", st)
		}
	})

	t.Run("switch dev evicts po and never over-commits", func(t *testing.T) {
		stop := make(chan struct{})
		peak, total := h.sampleLedger(stop)
		out := h.mustCtl("switch", "dev")
		close(stop)
		if !strings.Contains(out, "(stopped po)") {
			t.Errorf("switch output: %s", out)
		}
		if got := h.running(); strings.Join(got, ",") != "dev" {
			t.Errorf("running after switch dev: %v", got)
		}
		if !h.status()["dev"].Healthy {
			t.Error("dev not healthy")
		}
		if peak() == 0 || peak() > total() {
			t.Errorf("ledger peak %d during the switch, GPU total %d", peak(), total())
		}
		t.Logf("ledger peak during switch: %.2f GiB of %.2f GiB", float64(peak())/(1<<30), float64(total())/(1<<30))
	})

	t.Run("systemctl start by hand stops the conflicting agent", func(t *testing.T) {
		if _, err := h.s.Systemctl(t.Context(), "start", "vagent@architect.service"); err != nil {
			t.Fatal(err)
		}
		if got := h.running(); strings.Join(got, ",") != "architect" {
			t.Errorf("running after systemctl start vagent@architect: %v", got)
		}
		// The supervisor waits for an engine someone else started.
		if out := h.mustCtl("switch", "architect"); strings.Contains(out, "stopped") {
			t.Errorf("switch to a starting agent evicted something: %s", out)
		}
		if !h.status()["architect"].Healthy {
			t.Error("architect not healthy")
		}
	})

	t.Run("kill -9 of the engine is restarted by systemd", func(t *testing.T) {
		before := h.status()["architect"]
		if before.MainPID == 0 {
			t.Fatalf("architect has no main PID: %+v", before)
		}
		if _, errOut, code, err := h.s.Exec(t.Context(), "kill", "-9", strconv.Itoa(before.MainPID)); err != nil || code != 0 {
			t.Fatalf("kill -9 %d: %v %s", before.MainPID, err, errOut)
		}
		eventually(t, 30*time.Second, "architect restarted and healthy", func() bool {
			st := h.status()["architect"]
			return st.Restarts > before.Restarts && st.Healthy && st.MainPID != before.MainPID
		})
		out := h.mustCtl("status")
		if !strings.Contains(out, "architect") || !strings.Contains(out, "RESTARTS") {
			t.Errorf("status table:\n%s", out)
		}
		t.Logf("status after the crash:\n%s", out)
	})

	t.Run("logs show engine lines from journald", func(t *testing.T) {
		out := h.mustCtl("logs", "architect", "-n", "5")
		lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
		if len(lines) != 5 {
			t.Errorf("logs -n 5 printed %d lines:\n%s", len(lines), out)
		}
		all := h.mustCtl("logs", "architect", "-n", "200")
		for _, want := range []string{"█  version ", "Application startup complete."} {
			if !strings.Contains(all, want) {
				t.Errorf("logs lack %q:\n%s", want, all)
			}
		}
	})

	t.Run("test, gpu, restart and render", func(t *testing.T) {
		out := h.mustCtl("test", "architect", "--max-tokens", "8")
		if !strings.Contains(out, "architect: 8 tokens, time to first token") || !strings.Contains(out, "tokens/s") {
			t.Errorf("test output:\n%s", out)
		}
		var g struct {
			Devices []struct {
				TotalBytes uint64 `json:"total_bytes"`
			} `json:"devices"`
			Processes []struct {
				Agent     string `json:"agent"`
				UsedBytes uint64 `json:"used_bytes"`
			} `json:"processes"`
		}
		if err := json.Unmarshal([]byte(h.mustCtl("gpu", "--json")), &g); err != nil {
			t.Fatal(err)
		}
		if len(g.Devices) != 1 || g.Devices[0].TotalBytes != 16376<<20 {
			t.Errorf("gpu devices: %+v", g.Devices)
		}
		if len(g.Processes) != 1 || g.Processes[0].Agent != "architect" || g.Processes[0].UsedBytes == 0 {
			t.Errorf("gpu processes: %+v, want architect's engine", g.Processes)
		}
		pid := h.status()["architect"].MainPID
		h.mustCtl("restart", "architect")
		if st := h.status()["architect"]; !st.Healthy || st.MainPID == pid {
			t.Errorf("after restart: %+v (PID before %d)", st, pid)
		}
		dir := h.s.Path("rendered")
		out = h.mustCtl("render", "--out", dir)
		if !strings.Contains(out, "vagent@po.service.d/50-vagent.conf") {
			t.Errorf("render output:\n%s", out)
		}
		rendered, err := os.ReadFile(filepath.Join(dir, "vagent@po.service.d", "50-vagent.conf"))
		if err != nil {
			t.Fatal(err)
		}
		applied, err := os.ReadFile(filepath.Join(h.s.UnitDir(), "vagent@po.service.d", "50-vagent.conf"))
		if err != nil {
			t.Fatal(err)
		}
		if string(rendered) != string(applied) {
			t.Errorf("render and apply differ:\n%s\n---\n%s", rendered, applied)
		}
		if _, errOut, code := h.ctl("switch"); code != 2 || !strings.Contains(errOut, "exactly one AGENT") {
			t.Errorf("switch without an agent: exit %d, %s; want usage error 2", code, errOut)
		}
		if _, errOut, code := h.ctl("switch", "nosuch"); code != 1 || !strings.Contains(errOut, `unknown agent "nosuch"`) {
			t.Errorf("switch nosuch: exit %d, %s", code, errOut)
		}
	})

	t.Run("an agent that can never fit is refused before anything is stopped", func(t *testing.T) {
		port, err := sandbox.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		// A 32B AWQ model's weights (18 GiB) exceed the whole 16 GB card:
		// the budget check passes (0.5 of the card), the engine does not.
		big := fmt.Sprintf("model = \"Qwen/Qwen2.5-32B-Instruct-AWQ\"\nport = %d\ngpu_memory_utilization = 0.5\nmax_model_len = 8192\n", port)
		path := h.s.Path("etc/vagent/agents/big.toml")
		if err := os.WriteFile(path, []byte(big), 0o644); err != nil {
			t.Fatal(err)
		}
		defer func() {
			os.Remove(path)
			h.mustCtl("apply")
		}()
		// apply refuses it as the plan does, and changes nothing.
		if _, errOut, code := h.ctl("apply"); code != 1 || !strings.Contains(errOut, "agent big ("+path+") can never start on its GPU as configured: does not fit: its weights alone") {
			t.Fatalf("apply with big: exit %d, want 1 naming why; stderr: %s", code, errOut)
		}
		if _, err := os.Stat(filepath.Join(h.s.UnitDir(), "vagent@big.service.d")); !os.IsNotExist(err) {
			t.Errorf("a refused apply wrote big's drop-in: %v", err)
		}
		h.mustCtl("apply", "--force")
		before := h.status()["architect"]
		_, errOut, code := h.ctl("switch", "big")
		if code != 1 {
			t.Fatalf("switch big: exit %d, want 1; stderr: %s", code, errOut)
		}
		if !strings.Contains(errOut, "agent big can never start on its GPU as configured, so nothing was stopped for it: does not fit: its weights alone") {
			t.Errorf("switch big did not say why it can never fit:\n%s", errOut)
		}
		if !strings.Contains(errOut, "hint: ") {
			t.Errorf("no hint:\n%s", errOut)
		}
		if after := h.status()["architect"]; before.Healthy && (!after.Healthy || after.MainPID != before.MainPID) {
			t.Errorf("architect was touched by a refused switch: before %+v after %+v", before, after)
		}
		st := h.status()["big"]
		if st.ActiveState == "active" || st.ActiveState == "activating" {
			t.Errorf("failed agent left running: %+v", st)
		}
		ls, err := h.ledger().Read()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ls.Entries {
			if e.Unit == "vagent@big.service" {
				t.Errorf("ledger holds an entry of big after the refused start: %+v", e)
			}
		}
	})

	t.Run("bad configs are rejected and change nothing", func(t *testing.T) {
		cases := []struct {
			name, file, body string
			want             []string
		}{
			{"unknown key", "agents/po.toml", "\nmax_model_length = 4096\n",
				[]string{"agents/po.toml:", "max_model_length: unknown key"}},
			{"duplicate port", "agents/po.toml", fmt.Sprintf("\nport = %d\n", h.ports["dev"]),
				[]string{"agents/", "port: ", "is already used by agent"}},
			{"newline in a value", "agents/po.toml", "\nchat_template = \"x\\nExecStartPre=/bin/false\"\n",
				[]string{"agents/po.toml:", "chat_template: must not contain a newline"}},
			{"bad agent name", "agents/Dev.Team.toml", "model = \"Qwen/x\"\nport = 1\n",
				[]string{"agents/Dev.Team.toml", "name: agent names"}},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				path := h.s.Path("etc/vagent", tc.file)
				orig, err := os.ReadFile(path)
				existed := err == nil
				body := tc.body
				if existed {
					// Top-level keys go before the file's first table.
					// Writing "port = ..." twice is itself a TOML error:
					// replace the key instead where the file has it.
					body = strings.TrimLeft(tc.body, "\n") + string(orig)
					if strings.HasPrefix(strings.TrimSpace(tc.body), "port =") {
						if err := h.s.EditConfig(tc.file, map[string]any{"port": h.ports["dev"]}); err != nil {
							t.Fatal(err)
						}
						b, _ := os.ReadFile(path)
						body = string(b)
					}
				}
				if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
				defer func() {
					if existed {
						os.WriteFile(path, orig, 0o644)
					} else {
						os.Remove(path)
					}
				}()
				before := dirDigest(t, h.s.UnitDir())
				_, errOut, code := h.ctl("apply")
				if code != 1 {
					t.Errorf("apply exit %d, want 1", code)
				}
				for _, w := range tc.want {
					if !strings.Contains(errOut, w) {
						t.Errorf("stderr lacks %q:\n%s", w, errOut)
					}
				}
				if !strings.Contains(errOut, "nothing was changed") {
					t.Errorf("stderr lacks the hint:\n%s", errOut)
				}
				if after := dirDigest(t, h.s.UnitDir()); after != before {
					t.Error("a rejected config changed the unit directory")
				}
			})
		}
	})

	t.Run("concurrent switches do not interleave", func(t *testing.T) {
		stop := make(chan struct{})
		peak, total := h.sampleLedger(stop)
		var wg sync.WaitGroup
		codes := map[string]int{}
		var mu sync.Mutex
		for _, a := range []string{"po", "dev"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errOut, code := h.ctl("switch", a)
				mu.Lock()
				codes[a] = code
				mu.Unlock()
				if code != 0 {
					t.Errorf("switch %s: exit %d: %s", a, code, errOut)
				}
			}()
		}
		wg.Wait()
		close(stop)
		if got := h.running(); len(got) != 1 {
			t.Errorf("running after two concurrent switches: %v, want exactly one", got)
		}
		if peak() > total() {
			t.Errorf("ledger peak %d above GPU total %d", peak(), total())
		}
	})
}
