package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Gateway benchmark sizes and the targets printed beside the results.
const (
	benchLatencyPairs    = 2000
	benchStreamTokens    = 8000
	benchStreamRounds    = 5
	benchStreamsPerRound = 20
	// benchEngineTokensPerSec paces the stream benchmark's engine, per stream.
	benchEngineTokensPerSec = 200
	benchConcurrent         = 500
	benchConcurrentToken    = 64

	targetAddedP50Ms  = 0.2
	targetStreamRatio = 0.97
	targetPeakRSSMB   = 40
)

// BenchmarkGateway measures vagentd's cost in front of one running engine,
// in one run against the same engine (dev on the simulator with no token
// or first-token delay, so that the engine is fast and the gateway shows):
// the latency a small non-streamed completion gains through the gateway
// (p50, p99), streamed chunks per second through the gateway as a ratio of
// direct, 500 concurrent streams through the gateway (all must succeed),
// and vagentd's peak RSS (VmHWM) after that load.
func BenchmarkGateway(b *testing.B) {
	g := newGatewayHost(b, nil)
	path := g.s.Path("etc/vagent/agents/dev.toml")
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	data = append(data, "\n[env]\nVLLM_SIM_TOKENS_PER_SECOND = \"0\"\nVLLM_SIM_TTFT_MS = \"0\"\n"...)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		b.Fatal(err)
	}
	// po paces its tokens like an engine does (faster than one stream on
	// any GPU decodes): the stream ratio asks whether the gateway keeps
	// pace with an engine, not how fast two copies of a byte stream can
	// share two CPUs.
	poPath := g.s.Path("etc/vagent/agents/po.toml")
	poData, err := os.ReadFile(poPath)
	if err != nil {
		b.Fatal(err)
	}
	poData = append(poData, fmt.Sprintf("\n[env]\nVLLM_SIM_TOKENS_PER_SECOND = \"%d\"\nVLLM_SIM_TTFT_MS = \"0\"\n", benchEngineTokensPerSec)...)
	if err := os.WriteFile(poPath, poData, 0o644); err != nil {
		b.Fatal(err)
	}
	g.mustCtl("apply")
	g.mustCtl("switch", "dev")
	key, err := os.ReadFile(g.s.Path("var/lib/vagent/engine-key.env"))
	if err != nil {
		b.Fatal(err)
	}
	engineKey := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(key)), "VLLM_API_KEY="))
	direct := fmt.Sprintf("http://127.0.0.1:%d", g.ports["dev"])
	directPo := fmt.Sprintf("http://127.0.0.1:%d", g.ports["po"])
	ctx := b.Context()
	hc := &http.Client{Transport: &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 1024}}

	b.ResetTimer()
	var (
		addedP50, addedP99, ratio float64
		gwLat, dLat               []time.Duration
		gwRate, dRate             float64
		failures                  int64
		firstFailure              string
	)
	for range b.N {
		// Latency, alternating so that drift hits both paths alike.
		gwLat, dLat = gwLat[:0], dLat[:0]
		for i := range benchLatencyPairs + 100 {
			dd, err := timedCompletion(ctx, hc, direct, engineKey)
			if err != nil {
				b.Fatalf("direct: %v", err)
			}
			gd, err := timedCompletion(ctx, hc, g.base, "")
			if err != nil {
				b.Fatalf("gateway: %v", err)
			}
			if i >= 100 { // the first ones warm connections up
				dLat, gwLat = append(dLat, dd), append(gwLat, gd)
			}
		}
		slices.Sort(dLat)
		slices.Sort(gwLat)
		addedP50 = ms(pct(gwLat, 50) - pct(dLat, 50))
		addedP99 = ms(pct(gwLat, 99) - pct(dLat, 99))

		// Streamed chunks per second from the paced engine: rounds of
		// concurrent streams each way, alternating; the median round of each.
		g.mustCtl("switch", "po")
		var gr, dr []float64
		for range benchStreamRounds {
			r, err := streamRates(ctx, hc, directPo, engineKey)
			if err != nil {
				b.Fatalf("direct stream: %v", err)
			}
			dr = append(dr, r)
			if r, err = streamRates(ctx, hc, g.base, ""); err != nil {
				b.Fatalf("gateway stream: %v", err)
			}
			gr = append(gr, r)
		}
		slices.Sort(dr)
		slices.Sort(gr)
		dRate, gwRate = dr[len(dr)/2], gr[len(gr)/2]
		ratio = gwRate / dRate

		// Concurrent streams through the gateway.
		failures = 0
		var once sync.Once
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range benchConcurrent {
			wg.Go(func() {
				<-start
				if _, _, err := streamChunks(ctx, hc, g.base, "", "po", benchConcurrentToken); err != nil {
					atomic.AddInt64(&failures, 1)
					once.Do(func() { firstFailure = err.Error() })
				}
			})
		}
		close(start)
		wg.Wait()
	}
	b.StopTimer()

	props, err := g.unitProps(ctx, gatewayUnit)
	if err != nil {
		b.Fatal(err)
	}
	hwm, err := g.vmHWM(props.MainPID)
	if err != nil {
		b.Fatal(err)
	}
	peakMB := float64(hwm) / (1 << 20)

	b.ReportMetric(addedP50, "added-p50-ms")
	b.ReportMetric(addedP99, "added-p99-ms")
	b.ReportMetric(ratio, "stream-ratio")
	b.ReportMetric(float64(failures), "stream-errors")
	b.ReportMetric(peakMB, "vagentd-peak-MB")
	mark := func(ok bool) string {
		if ok {
			return "ok"
		}
		return "MISSED"
	}
	fmt.Printf("gateway added latency (small non-streamed completion, %d pairs): p50 %.3f ms, p99 %.3f ms (direct p50 %.3f ms, p99 %.3f ms; gateway p50 %.3f ms, p99 %.3f ms); target p50 <= %.1f ms: %s\n",
		benchLatencyPairs, addedP50, addedP99, ms(pct(dLat, 50)), ms(pct(dLat, 99)), ms(pct(gwLat, 50)), ms(pct(gwLat, 99)),
		targetAddedP50Ms, mark(addedP50 <= targetAddedP50Ms))
	// Client, gateway and engine all run on this host: with fewer CPUs
	// than busy processes the relay competes with both ends for CPU.
	fmt.Printf("gateway streamed chunks/s: %.0f through the gateway vs %.0f direct (%d concurrent streams from an engine pacing %d tokens/s each, median of %d rounds, %d CPUs): ratio %.3f; target >= %.2f: %s\n",
		gwRate, dRate, benchStreamsPerRound, benchEngineTokensPerSec, benchStreamRounds, runtime.NumCPU(), ratio, targetStreamRatio, mark(ratio >= targetStreamRatio))
	fmt.Printf("gateway %d concurrent streams: %d errors; target 0: %s\n", benchConcurrent, failures, mark(failures == 0))
	fmt.Printf("vagentd peak RSS (VmHWM) after that load: %.1f MB; target <= %d MB: %s\n", peakMB, targetPeakRSSMB, mark(peakMB <= targetPeakRSSMB))
	if failures > 0 {
		b.Errorf("%d of %d concurrent streams failed; first: %s", failures, benchConcurrent, firstFailure)
	}
}

// pct is the p-th percentile of sorted durations.
func pct(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	return sorted[min(max(i-1, 0), len(sorted)-1)]
}

// timedCompletion sends one small non-streamed chat completion for dev to
// base and returns how long the answer took.
func timedCompletion(ctx context.Context, hc *http.Client, base, key string) (time.Duration, error) {
	body, _ := json.Marshal(chatBody("dev", 4, false))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/chat/completions", bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	t0 := time.Now()
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	out, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(t0)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s: %.300s", resp.Status, out)
	}
	return took, nil
}

// streamRates streams benchStreamsPerRound completions of benchStreamTokens
// tokens one after the other and returns their chunks per second together.
func streamRates(ctx context.Context, hc *http.Client, base, key string) (float64, error) {
	var chunks atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, benchStreamsPerRound)
	t0 := time.Now()
	for range benchStreamsPerRound {
		wg.Go(func() {
			n, _, err := streamChunks(ctx, hc, base, key, "po", benchStreamTokens)
			if err != nil {
				errs <- err
				return
			}
			chunks.Add(int64(n))
		})
	}
	wg.Wait()
	took := time.Since(t0)
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	return float64(chunks.Load()) / took.Seconds(), nil
}

// streamChunks streams a chat completion of tokens tokens for model from base
// and returns how many chunks came and how long the whole stream took, from
// sending the request to [DONE] (timing from the first chunk would measure
// only the client's parsing when the engine has written everything before
// the client reads). A stream that does not end with [DONE], or carries an
// error event, is an error.
func streamChunks(ctx context.Context, hc *http.Client, base, key, model string, tokens int) (int, time.Duration, error) {
	body, _ := json.Marshal(map[string]any{
		"model":      model,
		"messages":   []map[string]string{{"role": "user", "content": "Write a long story."}},
		"max_tokens": tokens,
		"stream":     true,
	})
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/chat/completions", bytes.NewReader(body))
	if err != nil {
		return 0, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	t0 := time.Now()
	resp, err := hc.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		out, _ := io.ReadAll(resp.Body)
		return 0, 0, fmt.Errorf("%s: %.300s", resp.Status, out)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	chunks := 0
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			if chunks < 2 {
				return 0, 0, fmt.Errorf("stream of %d chunks", chunks)
			}
			return chunks, time.Since(t0), nil
		}
		if strings.HasPrefix(data, `{"error"`) || strings.Contains(data, `"error":{`) {
			return 0, 0, fmt.Errorf("error event: %.300s", data)
		}
		chunks++
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	return 0, 0, fmt.Errorf("stream ended without [DONE] after %d chunks", chunks)
}
