package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/plan"
)

// sleepBudgetMiB is the host RAM budget of the sleep tests: two sleepers'
// weights fit (the simulator moves 9.98 GB for a 14B AWQ agent, 5.57 GB for
// the 7B one: at most 19,036 MiB for two), three do not (24,348 MiB).
const sleepBudgetMiB = 20000

// sleepGPUMiB is the simulated card of TestE2ESleep. A sleeping engine
// keeps its CUDA context and CUDA graphs (0.8-0.9 GB for these agents), so
// on a 16 GiB card architect at 0.92 leaves room for one sleeper only; on
// 24 GiB the GPU holds two sleepers beside it and, as on 16 GiB, not three
// (2.06 GB free against 2.5 GB), so the host RAM budget is what this test
// exercises.
const sleepGPUMiB = 24576

// ledgerPeaks samples the simulator's ledger every few milliseconds until
// stop is closed: the most GPU 0 ever held, its total, and the most host
// RAM sleeping engines ever held together.
func (h *host) ledgerPeaks(stop <-chan struct{}) (gpu, total, hostRAM func() uint64) {
	var mu sync.Mutex
	var g, tot, hr uint64
	l := h.ledger()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if st, err := l.Read(); err == nil {
				var host uint64
				for _, e := range st.Entries {
					host += e.HostBytes
				}
				mu.Lock()
				g, tot, hr = max(g, st.Used(0)), st.TotalBytes, max(hr, host)
				mu.Unlock()
			}
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	get := func(p *uint64) func() uint64 {
		return func() uint64 { <-done; mu.Lock(); defer mu.Unlock(); return *p }
	}
	return get(&g), get(&tot), get(&hr)
}

// TestE2ESleep runs the shipped agents as sleep agents through vagentd in a
// throwaway systemd: dev and po, which cannot share the GPU, alternate by
// sleep and wake without a restart; the GPU is never over-committed; the
// host RAM budget holds two sleepers, and a third forces a real stop of
// the least recently used one; clients cannot reach the engines' sleep
// routes through the gateway.
func TestE2ESleep(t *testing.T) {
	t.Parallel()
	g := newGatewayHost(t, map[string]any{
		"gateway.fairness_window":        "1s",
		"gateway.drain_timeout":          "5s",
		"gateway.max_wait":               "60s",
		"supervisor.switch_mode":         "sleep",
		"supervisor.host_ram_budget_mib": sleepBudgetMiB,
		"gpu.sim_total_mib":              sleepGPUMiB,
	})
	stop := make(chan struct{})
	gpuPeak, gpuTotal, hostPeak := g.ledgerPeaks(stop)
	chat := func(t *testing.T, agent string) time.Duration {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		t0 := time.Now()
		resp, body, err := g.post(ctx, "/v1/chat/completions", "", chatBody(agent, 4, false))
		if err != nil {
			t.Fatalf("chat %s: %v", agent, err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("chat %s: %d %s", agent, resp.StatusCode, body)
		}
		return time.Since(t0)
	}
	starts := func(agent string) int {
		return strings.Count(g.gatewayJournal(), `msg="starting agent" agent=`+agent+" ")
	}

	t.Run("units are rendered for sleep mode", func(t *testing.T) {
		out, err := g.s.Systemctl(t.Context(), "cat", "vagent@dev.service")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"--enable-sleep-mode", `"VLLM_SERVER_DEV_MODE=1"`} {
			if !strings.Contains(out, want) {
				t.Errorf("vagent@dev.service lacks %s:\n%s", want, out)
			}
		}
		if strings.Contains(out, "Conflicts=") {
			t.Errorf("a sleep agent carries Conflicts=:\n%s", out)
		}
	})

	var pids map[string]int
	t.Run("dev and po alternate by sleep and wake, never by restart", func(t *testing.T) {
		chat(t, "dev")
		chat(t, "po") // dev goes to sleep; po starts cold
		st := g.status()
		if !st["dev"].Sleeping || st["dev"].State != "sleeping" || st["dev"].ActiveState != "active" || st["dev"].SleepLevel != 1 {
			t.Fatalf("dev after the switch to po: %+v; want asleep at level 1, its unit active", st["dev"])
		}
		if st["po"].Sleeping || st["po"].State != "running" {
			t.Fatalf("po: %+v", st["po"])
		}
		pids = map[string]int{"dev": st["dev"].MainPID, "po": st["po"].MainPID}
		restarts := map[string]int{"dev": st["dev"].Restarts, "po": st["po"].Restarts}
		startsBefore := map[string]int{"dev": starts("dev"), "po": starts("po")}
		if startsBefore["dev"] != 1 || startsBefore["po"] != 1 {
			t.Errorf("starts logged: %v, want one each", startsBefore)
		}

		var took []time.Duration
		for range 4 {
			for _, a := range []string{"dev", "po"} {
				took = append(took, chat(t, a))
				now := g.status()
				other := map[string]string{"dev": "po", "po": "dev"}[a]
				if now[a].Sleeping || !now[other].Sleeping {
					t.Errorf("after a request for %s: %s sleeping %v, %s sleeping %v", a, a, now[a].Sleeping, other, now[other].Sleeping)
				}
			}
		}
		st = g.status()
		for _, a := range []string{"dev", "po"} {
			if st[a].MainPID != pids[a] || st[a].Restarts != restarts[a] {
				t.Errorf("%s's engine changed: PID %d -> %d, restarts %d -> %d", a, pids[a], st[a].MainPID, restarts[a], st[a].Restarts)
			}
			if n := starts(a); n != startsBefore[a] {
				t.Errorf("%s was started %d more times: switches must wake it", a, n-startsBefore[a])
			}
		}
		journal := g.gatewayJournal()
		if n := strings.Count(journal, `msg="waking agent"`); n < 8 {
			t.Errorf("vagentd logged %d wakes, want at least 8", n)
		}
		t.Logf("request times with a wake switch: %v", took)

		_, body := g.get("/metrics", "")
		for _, want := range []string{
			`vagent_agent_state{agent="dev",state="sleeping"} 1`,
			`vagent_agent_state{agent="po",state="running"} 1`,
		} {
			if !strings.Contains(string(body), want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
		if n, _ := sumMetric(body, "vagent_wake_duration_seconds_count"); n < 8 {
			t.Errorf("vagent_wake_duration_seconds_count = %v, want at least 8", n)
		}
		if n, _ := sumMetric(body, "vagent_sleep_duration_seconds_count"); n < 9 {
			t.Errorf("vagent_sleep_duration_seconds_count = %v, want at least 9", n)
		}
		code, models := g.get("/v1/models", "")
		if code != http.StatusOK || !strings.Contains(string(models), `"id":"dev","object":"model"`) ||
			!strings.Contains(string(models), `"state":"sleeping"`) {
			t.Errorf("/v1/models: %d %s", code, models)
		}
		if out := g.mustCtl("status"); !strings.Contains(out, "sleeping (level 1)") {
			t.Errorf("vagentctl status does not show the sleeper:\n%s", out)
		}
	})

	t.Run("plan shows the cold starts and wakes vagentd timed", func(t *testing.T) {
		// plan exits 1 when an agent cannot start alone on this test's
		// card; its JSON is what is checked here.
		out, errOut, _ := g.ctl("plan", "--offline", "--json", "--host-ram-mib", "65536")
		var p plan.Plan
		if err := json.Unmarshal([]byte(out), &p); err != nil || p.Switching == nil {
			t.Fatalf("plan --json: %v\n%s%s", err, out, errOut)
		}
		for _, a := range p.Switching.Agents {
			if a.Agent != "dev" && a.Agent != "po" {
				continue
			}
			if a.ColdStart == nil || !a.ColdStart.Measured || a.ColdStart.Seconds <= 0 ||
				a.WakeLevel1 == nil || !a.WakeLevel1.Measured || a.WakeLevel1.Seconds <= 0 {
				t.Errorf("%s: cold start %+v, level-1 wake %+v; want both measured by vagentd", a.Agent, a.ColdStart, a.WakeLevel1)
			}
		}
		if out := g.mustCtl("status", "--json"); !strings.Contains(out, `"cold_start_ns"`) || !strings.Contains(out, `"wake_level1_ns"`) {
			t.Errorf("status --json lacks the measured times:\n%s", out)
		}
	})

	t.Run("the gateway never forwards the engines' sleep routes", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		for _, path := range []string{"/sleep?level=1", "/wake_up", "/collective_rpc", "/v1/../sleep?level=1", "/v1/%2e%2e/wake_up"} {
			resp, body, err := g.post(ctx, path, "", map[string]any{"model": "po", "method": "reload_weights"})
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusBadRequest {
				t.Errorf("POST %s through the gateway: %d %s", path, resp.StatusCode, body)
			}
		}
		if st := g.status(); st["po"].Sleeping || !st["dev"].Sleeping {
			t.Errorf("after the refused calls: po sleeping %v, dev sleeping %v", st["po"].Sleeping, st["dev"].Sleeping)
		}
	})

	t.Run("a third sleeper forces a real stop of the least recently used", func(t *testing.T) {
		// po runs, dev sleeps. architect starts cold; po goes to sleep:
		// two sleepers (dev, po) fit the budget.
		chat(t, "architect")
		st := g.status()
		if !st["dev"].Sleeping || !st["po"].Sleeping || st["architect"].Sleeping || st["architect"].State != "running" {
			t.Fatalf("after architect: dev %+v, po %+v, architect %+v", st["dev"], st["po"], st["architect"])
		}
		if st["dev"].HostBytes == 0 || st["po"].HostBytes == 0 {
			t.Errorf("sleepers hold no host RAM: dev %d, po %d", st["dev"].HostBytes, st["po"].HostBytes)
		}
		// Waking dev puts architect to sleep first: dev, po and architect
		// would be three sleepers, past the budget; po, the least recently
		// used sleeper that is not being woken, is stopped for real.
		chat(t, "dev")
		st = g.status()
		if st["po"].ActiveState != "inactive" {
			t.Errorf("po: %+v; want it stopped for the host RAM budget", st["po"])
		}
		if st["dev"].Sleeping || st["dev"].MainPID != pids["dev"] {
			t.Errorf("dev: %+v; want the same engine (PID %d) awake", st["dev"], pids["dev"])
		}
		if !st["architect"].Sleeping {
			t.Errorf("architect: %+v; want it asleep", st["architect"])
		}
		if !strings.Contains(g.gatewayJournal(), `msg="stopping sleeping agent: host RAM budget" agent=po`) {
			t.Error("vagentd did not log the stop for the host RAM budget")
		}
	})

	close(stop)
	budget := uint64(sleepBudgetMiB) << 20
	if gpuPeak() == 0 || gpuPeak() > gpuTotal() {
		t.Errorf("ledger GPU peak %d, GPU total %d", gpuPeak(), gpuTotal())
	}
	if hostPeak() > budget {
		t.Errorf("sleepers held %.2f GiB of host RAM, past the budget of %.2f GiB", float64(hostPeak())/(1<<30), float64(budget)/(1<<30))
	}
	if hostPeak() < 15_000_000_000 {
		t.Errorf("host RAM peak %d: two sleepers never held their weights", hostPeak())
	}
	t.Logf("ledger peaks: GPU %.2f of %.2f GiB, host RAM %.2f of %.2f GiB",
		float64(gpuPeak())/(1<<30), float64(gpuTotal())/(1<<30), float64(hostPeak())/(1<<30), float64(budget)/(1<<30))
}
