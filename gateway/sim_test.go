package gateway

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/internal/vllmsim"
)

// startSimEngine runs the vLLM simulator in-process as an agent's engine,
// with the engine key and a default temperature from
// --override-generation-config, and waits until it is healthy.
func startSimEngine(t *testing.T, served string) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	envm := map[string]string{
		"VLLM_SIM_LEDGER":            filepath.Join(t.TempDir(), "ledger.json"),
		"VLLM_SIM_LOAD_SECONDS":      "0",
		"VLLM_SIM_TOKENS_PER_SECOND": "2000",
		"VLLM_SIM_TTFT_MS":           "0",
		"VLLM_SIM_RELEASE_MS":        "0",
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	args := []string{"serve", "Qwen/Qwen2.5-0.5B-Instruct", "--host", "127.0.0.1", "--port", strconv.Itoa(port),
		"--served-model-name", served, "--api-key", testEngineKey,
		"--override-generation-config", `{"temperature":0.1}`, "--gpu-memory-utilization", "0.5"}
	go func() {
		done <- vllmsim.Main(ctx, args, func(k string) string { return envm[k] }, io.Discard, io.Discard)
	}()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return port
			}
		}
		select {
		case code := <-done:
			t.Fatalf("simulator exited with %d", code)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("simulator not healthy")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Against the simulator: the served name is what the engine sees, the
// engine key is accepted, streams end in [DONE] with the usage counted, and
// the engine's default sampling is left alone.
func TestThroughSimulator(t *testing.T) {
	const served = "Qwen/Qwen2.5-0.5B-Instruct-AWQ"
	port := startSimEngine(t, served)
	e := newEnv(t, envOpts{agents: []string{"dev"}, modify: func(c *config.Config) {
		a := c.Agent("dev")
		a.Port = port
		a.ServedNames = []string{served}
		a.Aliases = []string{"coder"}
		a.SystemPrompt = "You are dev."
	}})
	body := map[string]any{"model": "coder", "max_tokens": 6, "stream": true,
		"stream_options": map[string]any{"include_usage": true},
		"messages":       []any{map[string]any{"role": "user", "content": "write a function"}}}
	resp, err := e.post(context.Background(), "/v1/chat/completions", body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d %s", resp.StatusCode, b)
	}
	if got := resp.Header.Get("X-Vllm-Sim-Sampling"); !strings.Contains(got, `"temperature":0.1`) {
		t.Errorf("engine sampling %q: the override's temperature should apply", got)
	}
	evs := sseEvents(t, resp.Body)
	resp.Body.Close()
	if len(evs) < 3 || evs[len(evs)-1] != "[DONE]" {
		t.Fatalf("events %q", evs)
	}
	var chunk struct {
		Model string `json:"model"`
	}
	json.Unmarshal([]byte(evs[0]), &chunk)
	if chunk.Model != served {
		t.Errorf("chunk model %q", chunk.Model)
	}
	waitFor(t, "log line", func() bool { return len(e.logLines("request")) == 1 })
	if got := counterValue(t, e.reg, "vagent_tokens_total", map[string]string{"agent": "dev", "kind": "completion"}); got != 6 {
		t.Errorf("completion tokens %v, want 6", got)
	}
	if got := counterValue(t, e.reg, "vagent_tokens_total", map[string]string{"agent": "dev", "kind": "prompt"}); got == 0 {
		t.Errorf("prompt tokens not counted")
	}

	// Non-streamed, and an engine-side error passes through with vLLM's shape.
	st, b := e.chat("dev")
	if st != 200 || !strings.Contains(string(b), `"object":"chat.completion"`) {
		t.Fatalf("%d %s", st, b)
	}
	resp, err = e.post(context.Background(), "/v1/chat/completions", `{"model":"dev"}`)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Errorf("no messages: %d %s", resp.StatusCode, b)
	} else {
		errorOf(t, b)
	}
}
