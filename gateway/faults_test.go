package gateway

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/controlapi"
	"github.com/vagent-dev/vagent/supervisor"
)

// A request for an agent in its start backoff gets 503 with Retry-After
// and the last failure's root cause, and is not counted as a new failure.
func TestBackoffAnswers503WithRetryAfter(t *testing.T) {
	e := newEnv(t, envOpts{})
	cause := "agent a failed to start: ValueError: No available memory for the cache blocks."
	e.sw.mu.Lock()
	e.sw.fail["a"] = &supervisor.BackoffError{Agent: "a", RetryAfter: 7500 * time.Millisecond,
		Backoff: supervisor.Backoff{Failures: 2, Cause: cause}}
	e.sw.mu.Unlock()
	resp, err := e.post(context.Background(), "/v1/chat/completions", chatBody("a", false))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "8" {
		t.Fatalf("status %d, Retry-After %q: want 503 and 8\n%s", resp.StatusCode, resp.Header.Get("Retry-After"), b)
	}
	if ei := errorOf(t, b); !strings.Contains(ei.Message, cause) || !strings.Contains(ei.Message, "start backoff") {
		t.Errorf("message %q, want the backoff and its cause", ei.Message)
	}
	if e.phase("a") != phaseFailed {
		t.Errorf("phase %v, want failed", e.phase("a"))
	}
}

// Agents the supervisor brought back after a failed start serve again at
// once, without another switch.
func TestRestoredAgentServesAgain(t *testing.T) {
	e := newEnv(t, envOpts{})
	if st, b := e.chat("a"); st != 200 {
		t.Fatalf("%d %s", st, b)
	}
	e.sw.mu.Lock()
	e.sw.fail["b"] = &supervisor.RestoreError{Err: &supervisor.StartError{Agent: "b", Reason: "exited", RootCause: "torch.OutOfMemoryError: CUDA out of memory."},
		Restored: []string{"a"}}
	e.sw.mu.Unlock()
	st, b := e.chat("b")
	if st != 500 {
		t.Fatalf("status %d %s", st, b)
	}
	if ei := errorOf(t, b); !strings.Contains(ei.Message, "CUDA out of memory") || !strings.Contains(ei.Message, "restored what was evicted for it: a") {
		t.Errorf("message %q, want the root cause and what was restored", ei.Message)
	}
	if e.phase("a") != phaseRunning {
		t.Fatalf("a is %v after being restored, want running", e.phase("a"))
	}
	if st, b := e.chat("a"); st != 200 {
		t.Fatalf("a after restore: %d %s", st, b)
	}
	if n := e.sw.count("switch a"); n != 1 {
		t.Errorf("%d switches to a, want 1 (restored agents need none): %v", n, e.sw.callList())
	}
}

// A failed start whose unit the supervisor stopped again is failed in the
// control API's status, with its reason, not stopped.
func TestControlStatusShowsFailedStart(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.sw.mu.Lock()
	e.sw.fail["a"] = &supervisor.StartError{Agent: "a", Reason: "exited", RootCause: "torch.OutOfMemoryError: CUDA out of memory."}
	e.sw.mu.Unlock()
	if st, b := e.chat("a"); st != 500 {
		t.Fatalf("%d %s", st, b)
	}
	st, b := e.control("GET", "/vagent/v1/status", nil)
	if st != 200 {
		t.Fatalf("status: %d %s", st, b)
	}
	var as []controlapi.AgentState
	if err := json.Unmarshal(b, &as); err != nil {
		t.Fatal(err)
	}
	for _, a := range as {
		if a.Agent == "a" && (a.State != controlapi.StateFailed || !strings.Contains(a.Error, "CUDA out of memory")) {
			t.Errorf("a in status: state %q error %q, want failed with its reason", a.State, a.Error)
		}
	}
}
