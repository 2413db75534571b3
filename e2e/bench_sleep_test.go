package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/internal/enginekey"
)

// benchSleepSwitches is how many switches each mode is timed over.
const benchSleepSwitches = 8

// targetWakeOverheadMs is the gateway's own cost a wake switch may add
// beyond what the simulator spends (the sleep, the wake, the warm-up).
const targetWakeOverheadMs = 50

var (
	fellAsleepRE = regexp.MustCompile(`It took ([0-9.]+) seconds to fall asleep`)
	wokeUpRE     = regexp.MustCompile(`It took ([0-9.]+) seconds to wake up`)
)

// BenchmarkSleepSwitch compares, through vagentd on the simulator with its
// default timings (no load-time override: dev, 14B, loads in 2.1 s and po,
// 7B, in 1.05 s; a wake takes 2% of that, a sleep half a wake; a stopped
// engine's memory shows free after 300 ms), the time a request that needs
// a switch loses to it, by restart and by sleep and wake: the ratio of the
// two medians, and the gateway's own overhead on a wake switch, which is
// the request's wall time less the same request on a running agent and
// less what the simulator spent (the other agent's sleep and this one's
// wake as the engines log them, and the 1-token warm-up as the engine
// takes it directly). Target: at most 50 ms.
func BenchmarkSleepSwitch(b *testing.B) {
	settings := map[string]any{
		"gpu.sim_load_seconds":           0.0,
		"gateway.fairness_window":        "0s",
		"supervisor.host_ram_budget_mib": sleepBudgetMiB,
	}
	restart := newGatewayHost(b, settings)
	settings["supervisor.switch_mode"] = "sleep"
	sleeper := newGatewayHost(b, settings)

	b.ResetTimer()
	var restartSw, wakeSw, overheads []time.Duration
	var plain, warm time.Duration
	// One round takes long enough that b.N stays 1 (a stopped timer would
	// make the framework ask for more rounds).
	for range b.N {
		restartSw, _ = restart.timeSwitches(b, false)
		var res switchTimes
		wakeSw, res = sleeper.timeSwitches(b, true)
		overheads, plain, warm = res.overheads, res.plain, res.warmup
	}
	b.StopTimer()
	r, w, o := median(restartSw), median(wakeSw), median(overheads)
	b.ReportMetric(ms(r), "restart-switch-ms")
	b.ReportMetric(ms(w), "wake-switch-ms")
	b.ReportMetric(float64(w)/float64(r), "wake/restart")
	b.ReportMetric(ms(o), "wake-overhead-ms")
	fmt.Printf("sleep switch: by wake %.1f ms, by restart %.1f ms (medians of %d switches dev<->po, simulator's default timings): ratio %.3f (%.0fx faster)\n",
		ms(w), ms(r), len(wakeSw), float64(w)/float64(r), float64(r)/float64(w))
	fmt.Printf("wake switch overhead: median %.1f ms (min %.1f, max %.1f) beyond the simulated sleep, wake and warm-up (%.1f ms) and vLLM 0.18's %.0f ms scheduler pause before a sleep; request on a running agent %.1f ms; target <= %d ms\n",
		ms(o), ms(slices.Min(overheads)), ms(slices.Max(overheads)), ms(warm), ms(enginePauseBeforeSleep), ms(plain), targetWakeOverheadMs)
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// switchTimes are what a wake switch spent beyond the simulator, and the
// figures taken off to tell.
type switchTimes struct {
	overheads     []time.Duration
	plain, warmup time.Duration
}

// timeSwitches starts dev then po (unmeasured), then times requests that
// alternate between them, each needing a switch: the time each lost to
// its switch (wall time less the median of the same request on a running
// agent). With wake, it also works out each wake switch's overhead.
func (g *gwHost) timeSwitches(b *testing.B, wake bool) ([]time.Duration, switchTimes) {
	ctx := b.Context()
	req := func(agent string) time.Duration {
		t0 := time.Now()
		resp, body, err := g.post(ctx, "/v1/completions", "", map[string]any{"model": agent, "prompt": "Hi", "max_tokens": 1})
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("completion for %s: %v %s", agent, err, body)
		}
		return time.Since(t0)
	}
	req("dev")
	req("po")
	var plains []time.Duration
	for range 7 {
		plains = append(plains, req("po"))
	}
	var st switchTimes
	st.plain = median(plains)
	if wake {
		st.warmup = g.directWarmup(b, "po")
	}
	var lost []time.Duration
	for i := range benchSleepSwitches {
		target, other := "dev", "po"
		if i%2 == 1 {
			target, other = "po", "dev"
		}
		var asleepBefore, wokeBefore int
		if wake {
			asleepBefore = len(g.simTimes(ctx, other, fellAsleepRE))
			wokeBefore = len(g.simTimes(ctx, target, wokeUpRE))
		}
		wall := req(target)
		lost = append(lost, wall-st.plain)
		if !wake {
			continue
		}
		slept := g.simTimesAfter(b, other, fellAsleepRE, asleepBefore)
		woke := g.simTimesAfter(b, target, wokeUpRE, wokeBefore)
		st.overheads = append(st.overheads, wall-st.plain-slept-woke-st.warmup-enginePauseBeforeSleep)
	}
	if wake && len(g.simTimes(ctx, "dev", fellAsleepRE)) < benchSleepSwitches/2 {
		b.Fatal("the switches did not go by sleep and wake")
	}
	return lost, st
}

// enginePauseBeforeSleep is what vLLM 0.18 (the shipped engine.vllm_version)
// spends pausing its scheduler before a sleep, outside the time it logs for
// falling asleep: AsyncLLM.pause_generation's asyncio.sleep(0.02)
// (vllm/v1/engine/async_llm.py, v0.18.0rc2), which the simulator imitates.
// It is the engine's time, not vagent's.
const enginePauseBeforeSleep = 20 * time.Millisecond

// simTimes are the durations agent's engine logged with re, in order.
func (g *gwHost) simTimes(ctx context.Context, agent string, re *regexp.Regexp) []time.Duration {
	var out []time.Duration
	for _, m := range re.FindAllStringSubmatch(g.s.Journal(ctx, "vagent@"+agent+".service"), -1) {
		f, _ := strconv.ParseFloat(m[1], 64)
		out = append(out, time.Duration(f*float64(time.Second)))
	}
	return out
}

// simTimesAfter waits for the line after the first n and returns its time.
func (g *gwHost) simTimesAfter(b *testing.B, agent string, re *regexp.Regexp, n int) time.Duration {
	deadline := time.Now().Add(10 * time.Second)
	for {
		if ts := g.simTimes(b.Context(), agent, re); len(ts) > n {
			return ts[n]
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s logged no new %q", agent, re)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// directWarmup is the median time of the supervisor's warm-up completion
// sent straight to agent's running engine.
func (g *gwHost) directWarmup(b *testing.B, agent string) time.Duration {
	key, err := enginekey.Read(g.s.Path("var/lib/vagent/engine-key.env"))
	if err != nil {
		b.Fatal(err)
	}
	body, _ := json.Marshal(map[string]any{"model": agent, "prompt": "Hi", "max_tokens": 1, "temperature": 0})
	var ds []time.Duration
	for range 7 {
		req, _ := http.NewRequestWithContext(b.Context(), http.MethodPost,
			fmt.Sprintf("http://127.0.0.1:%d/v1/completions", g.ports[agent]), bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+key)
		t0 := time.Now()
		resp, err := g.hc.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("warm-up straight to %s: %d", agent, resp.StatusCode)
		}
		ds = append(ds, time.Since(t0))
	}
	return median(ds)
}
