package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// TestE2ESleepBehindTheGatewaysBack puts a 0.18 engine to sleep by hand
// while it streams: vLLM 0.18 aborts the stream (finish_reason "abort"),
// which reaches the client as an error event; the next request for the
// agent is not sent to the sleeping engine (where 0.18 would hold it until
// a wake nobody sends) but waits for vagent to wake it, and is served.
func TestE2ESleepBehindTheGatewaysBack(t *testing.T) {
	t.Parallel()
	g := newGatewayHost(t, map[string]any{
		"engine.vllm_version":    "0.18.0",
		"gateway.max_wait":       "60s",
		"supervisor.switch_mode": "sleep",
	})
	if err := g.s.EditConfig("agents/dev.toml", map[string]any{"env.VLLM_SIM_TOKENS_PER_SECOND": "10"}); err != nil {
		t.Fatal(err)
	}
	g.mustCtl("apply")
	key, err := os.ReadFile(g.s.Path("var/lib/vagent/engine-key.env"))
	if err != nil {
		t.Fatal(err)
	}
	engineKey := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(key)), "VLLM_API_KEY="))
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	if resp, body, err := g.post(ctx, "/v1/chat/completions", "", chatBody("dev", 4, false)); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("chat dev: %v %s", err, body)
	}
	first, done := g.startStream(ctx, "dev", 400, true)
	<-first
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/sleep?level=1", g.ports["dev"]), nil)
	req.Header.Set("Authorization", "Bearer "+engineKey)
	resp, err := g.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /sleep to dev's engine: %s", resp.Status)
	}
	s := <-done
	checkCut(t, "stream on dev", s, http.StatusServiceUnavailable)
	if _, msg, _ := s.errorEvent(); !strings.Contains(msg, "abort") {
		t.Errorf("error event %q; want it to say the engine aborted the request", msg)
	}
	resp, body, err := g.post(ctx, "/v1/chat/completions", "", chatBody("dev", 4, false))
	if err != nil || resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"finish_reason":"length"`) {
		t.Fatalf("chat dev after the sleep by hand: %v %d %s; want it served after a wake", err, resp.StatusCode, body)
	}
	if st := g.status()["dev"]; st.Sleeping {
		t.Errorf("dev: %+v; want it awake", st)
	}
	if !strings.Contains(g.gatewayJournal(), `msg="waking agent" agent=dev`) {
		t.Error("vagentd did not wake dev")
	}
}
