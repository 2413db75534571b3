package e2e

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestE2ERestart drives vagentd through the ends a start or a stream can
// meet: an engine killed while it loads, and a planned restart of vagentd
// with a stream in flight. The steps share one host and run in order.
func TestE2ERestart(t *testing.T) {
	t.Parallel()
	g := newGatewayHost(t, map[string]any{
		"gateway.max_wait": "120s",
	})
	// po loads for a minute: long enough to be killed while it does.
	if err := g.s.EditConfig("agents/po.toml", map[string]any{"env.VLLM_SIM_LOAD_SECONDS": "60"}); err != nil {
		t.Fatal(err)
	}
	g.mustCtl("apply")

	t.Run("engine killed during load: the client's error names the signal", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
		defer cancel()
		type result struct {
			status int
			body   []byte
			err    error
		}
		done := make(chan result, 1)
		go func() {
			resp, body, err := g.post(ctx, "/v1/chat/completions", "", chatBody("po", 4, false))
			r := result{body: body, err: err}
			if resp != nil {
				r.status = resp.StatusCode
			}
			done <- r
		}()
		waitJournal(ctx, t, g.s, "vagent@po.service", "Loading safetensors checkpoint shards")
		pid := g.status()["po"].MainPID
		if pid == 0 {
			t.Fatal("po has no main PID while it loads")
		}
		if _, errOut, code, err := g.s.Exec(ctx, "kill", "-9", strconv.Itoa(pid)); err != nil || code != 0 {
			t.Fatalf("kill -9 %d: %v %s", pid, err, errOut)
		}
		r := <-done
		if r.err != nil {
			t.Fatalf("request to po: %v", r.err)
		}
		msg := string(r.body)
		if r.status < 500 || !strings.Contains(msg, "agent po failed to start: the engine was killed by SIGKILL during load") {
			t.Fatalf("request to po after its engine was killed while loading: %d %s", r.status, msg)
		}
		if strings.Contains(msg, "Loading safetensors") {
			t.Errorf("the error quotes a progress bar: %s", msg)
		}
		checkErrorShape(t, r.body)
		t.Logf("client saw %d %s", r.status, msg)
	})
}
