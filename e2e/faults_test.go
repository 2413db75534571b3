package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/internal/ledger"
)

// truth checks what every fault must leave behind: something runs and is
// healthy, the simulator's ledger holds exactly the running agents' engines,
// and status says so. read reads the ledger as the engines see it.
func (h *host) truth(t *testing.T, read func() *ledger.State) (running []string) {
	t.Helper()
	st := h.status()
	for name, s := range st {
		if s.ActiveState == "active" && s.Healthy {
			running = append(running, name)
		}
	}
	sort.Strings(running)
	if len(running) == 0 {
		t.Errorf("nothing runs: the GPU was left empty: %+v", st)
	}
	held := map[string]bool{}
	for _, e := range read().Entries {
		held[strings.TrimSuffix(strings.TrimPrefix(e.Unit, "vagent@"), ".service")] = true
	}
	var inLedger []string
	for name := range held {
		inLedger = append(inLedger, name)
	}
	sort.Strings(inLedger)
	if fmt.Sprint(inLedger) != fmt.Sprint(running) {
		t.Errorf("ledger holds %v, status says %v run", inLedger, running)
	}
	return running
}

// TestE2EFaultsGateway: with vagentd, a crash-looping agent brings back
// what it evicted and then backs off; vagentd killed mid-switch leaves a
// truthful host and vagentctl says what happened.
func TestE2EFaultsGateway(t *testing.T) {
	g := newGatewayHost(t, nil)
	ctx := t.Context()
	read := func() *ledger.State {
		st, err := g.ledger().Read()
		if err != nil {
			t.Fatal(err)
		}
		return st
	}

	t.Run("crash loop: the evicted agent comes back and requests back off", func(t *testing.T) {
		path := g.s.Path("etc/vagent/agents/dev.toml")
		orig, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		// The simulator exits at once on a malformed setting.
		if err := os.WriteFile(path, append(append([]byte{}, orig...), "\n[env]\nVLLM_SIM_TTFT_MS = \"bad\"\n"...), 0o644); err != nil {
			t.Fatal(err)
		}
		defer func() {
			os.WriteFile(path, orig, 0o644)
			g.mustCtl("apply")
		}()
		g.mustCtl("apply")
		g.mustCtl("switch", "po")

		resp, body, err := g.post(ctx, "/v1/chat/completions", "", chatBody("dev", 4, false))
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusInternalServerError || !strings.Contains(string(body), "failed to start") ||
			!strings.Contains(string(body), "restored what was evicted for it: po") {
			t.Fatalf("request for the crashing agent: %d %s; want 500 naming the failure and po restored", resp.StatusCode, body)
		}
		if running := g.truth(t, read); fmt.Sprint(running) != "[po]" {
			t.Errorf("running %v, want po back", running)
		}
		if st := g.status()["dev"]; st.State != "failed" {
			t.Errorf("dev in status: %+v, want failed", st)
		}

		resp, body, err = g.post(ctx, "/v1/chat/completions", "", chatBody("dev", 4, false))
		if err != nil {
			t.Fatal(err)
		}
		ra, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		if resp.StatusCode != http.StatusServiceUnavailable || ra < 1 || !strings.Contains(string(body), "start backoff") ||
			!strings.Contains(string(body), "VLLM_SIM_TTFT_MS") {
			t.Errorf("request during the backoff: %d (Retry-After %q) %s; want 503 naming the last failure", resp.StatusCode, resp.Header.Get("Retry-After"), body)
		}
		if out := g.mustCtl("status"); !strings.Contains(out, "dev: start backoff") {
			t.Errorf("status does not show the backoff:\n%s", out)
		}
		if v, ok := g.metric("vagent_start_backoff_seconds"); !ok || v <= 0 {
			t.Errorf("vagent_start_backoff_seconds = %v, %v; want the time left", v, ok)
		}
		if r := g.status()["po"]; !r.Healthy {
			t.Errorf("po after the backoff: %+v", r)
		}
	})

	t.Run("vagentd killed mid-switch", func(t *testing.T) {
		g.mustCtl("switch", "po")
		type out struct {
			stderr string
			code   int
		}
		done := make(chan out, 1)
		go func() {
			c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			_, errOut, code, _ := g.s.Exec(c, "vagentctl", "switch", "architect")
			done <- out{errOut, code}
		}()
		// Mid-switch: architect's engine is loading.
		eventually(t, 30*time.Second, "architect's engine to start", func() bool {
			p, err := g.unitProps(ctx, "vagent@architect.service")
			return err == nil && p.MainPID > 0
		})
		p, err := g.unitProps(ctx, gatewayUnit)
		if err != nil || p.MainPID == 0 {
			t.Fatalf("vagentd's PID: %+v %v", p, err)
		}
		if _, errOut, code, err := g.s.Exec(ctx, "kill", "-9", strconv.Itoa(p.MainPID)); err != nil || code != 0 {
			t.Fatalf("kill vagentd: %d %v %s", code, err, errOut)
		}
		r := <-done
		if r.code != 1 || !strings.Contains(r.stderr, "vagentd closed the connection mid-call") {
			t.Errorf("vagentctl switch when vagentd died: exit %d, stderr %q; want it named", r.code, r.stderr)
		}
		g.waitHealthy(30 * time.Second)
		eventually(t, 30*time.Second, "an agent healthy after vagentd's restart", func() bool {
			for _, s := range g.status() {
				if s.ActiveState == "active" && s.Healthy {
					return true
				}
			}
			return false
		})
		g.truth(t, read)
	})
}

// TestE2EFaultsHost: without vagentd, an agent that cannot fit beside a
// pinned one stops nothing, and a full run directory breaks neither a
// switch's invariants nor the read-only commands.
func TestE2EFaultsHost(t *testing.T) {
	h := newHost(t)
	ctx := t.Context()
	h.mustCtl("apply")
	ledgerPath := h.s.Path("run/vagent/sim-ledger.json")
	// Read inside the sandbox: the run directory may be a tmpfs mounted
	// there only.
	read := func() *ledger.State {
		out, errOut, code, err := h.s.Exec(ctx, "cat", ledgerPath)
		if err != nil || code != 0 {
			t.Fatalf("read the ledger: %d %v %s", code, err, errOut)
		}
		var st ledger.State
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("ledger: %v\n%s", err, out)
		}
		return &st
	}

	t.Run("an agent that cannot fit beside a pinned one stops nothing", func(t *testing.T) {
		if err := h.s.EditConfig("agents/po.toml", map[string]any{"pinned": true}); err != nil {
			t.Fatal(err)
		}
		defer func() {
			h.s.EditConfig("agents/po.toml", map[string]any{"pinned": false})
			h.mustCtl("apply")
		}()
		h.mustCtl("apply")
		h.mustCtl("switch", "po")
		pid := h.status()["po"].MainPID
		_, errOut, code := h.ctl("switch", "dev")
		if code != 1 || !strings.Contains(errOut, "pinned") {
			t.Errorf("switch dev beside pinned po: exit %d, %s", code, errOut)
		}
		if running := h.truth(t, read); fmt.Sprint(running) != "[po]" || h.status()["po"].MainPID != pid {
			t.Errorf("running %v (po PID %d, was %d): po must not be touched", running, h.status()["po"].MainPID, pid)
		}
	})

	t.Run("ENOSPC on the run directory", func(t *testing.T) {
		h.mustCtl("stop", "po")
		run := h.s.Path("run/vagent")
		if _, errOut, code, err := h.s.Exec(ctx, "mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", run); err != nil || code != 0 {
			t.Fatalf("mount a small tmpfs on the run directory: %d %v %s", code, err, errOut)
		}
		defer func() {
			h.ctl("stop", "po")
			h.ctl("stop", "dev")
			h.s.Exec(context.Background(), "umount", run)
		}()
		h.mustCtl("switch", "po")
		// Fill what is left.
		h.s.Exec(ctx, "sh", "-c", "dd if=/dev/zero of="+run+"/filler bs=4k 2>/dev/null; exit 0")
		if _, errOut, code, _ := h.s.Exec(ctx, "sh", "-c", "echo x > "+run+"/probe"); code == 0 {
			t.Fatalf("the run directory is not full: %s", errOut)
		}

		// Read-only commands work and tell the truth.
		if running := h.truth(t, read); fmt.Sprint(running) != "[po]" {
			t.Errorf("running %v on a full run directory, want po", running)
		}
		if out, errOut, code := h.ctl("gpu"); code != 0 {
			t.Errorf("vagentctl gpu on a full run directory: exit %d\n%s\n%s", code, out, errOut)
		}

		// A switch either brings up dev or brings po back.
		_, errOut, code := h.ctl("switch", "dev")
		running := h.truth(t, read)
		t.Logf("switch dev on a full run directory: exit %d, running %v\n%s", code, running, errOut)
		if code != 0 && !strings.Contains(errOut, "restored what was evicted for it: po") {
			t.Errorf("a failed switch did not restore po: %s", errOut)
		}
	})
}
