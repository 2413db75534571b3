package e2e

import (
	"net/http"
	"testing"
	"time"
)

// TestChaosClassify: TestE2EChaos's classifier explains a failure only by
// the event that can cause it, at the right time, and leaves the rest
// unexplained, so that its bounds can fail.
func TestChaosClassify(t *testing.T) {
	t0 := time.Now()
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	ev := func(k chaosKind, agent string, s float64) *chaosEvent {
		return &chaosEvent{kind: k, agent: agent, pid: 7, issued: at(s), done: at(s + 0.05)}
	}
	events := []*chaosEvent{
		ev(killGateway, "", 10),
		ev(restartGateway, "", 20),
		ev(killEngine, "dev", 30),
	}
	req := func(agent string, from, to float64, outcome string, status int, detail string) *chaosRequest {
		return &chaosRequest{agent: agent, start: at(from), end: at(to), outcome: outcome, status: status, detail: detail}
	}
	for _, c := range []struct {
		name  string
		r     *chaosRequest
		cause string // "" for unexplained
	}{
		{"cut in flight at a SIGKILL of vagentd", req("po", 9, 10.02, outCut, 0, "EOF"), string(killGateway)},
		{"cut after the SIGKILL", req("po", 11, 12, outCut, 0, "EOF"), ""},
		{"cut across a planned restart", req("po", 19, 21, outCut, 0, "EOF"), ""},
		{"error event across a planned restart", req("po", 19, 21, outErrorEvent, 503, "vagentd is restarting"), ""},
		{"error event at its engine's SIGKILL", req("dev", 29, 30.1, outErrorEvent, 502, "the engine's stream broke off"), string(killEngine)},
		{"error event at another agent's engine SIGKILL", req("po", 29, 30.1, outErrorEvent, 502, "the engine's stream broke off"), ""},
		{"a start the kill failed, joined just after it", req("dev", 30.1, 31, outStatus, 500, "agent dev failed to start: the engine was killed by SIGKILL during load"), string(killEngine)},
		{"the backoff after the kill", req("dev", 32, 32.1, outStatus, 503, "agent dev is in start backoff after 1 failed start(s) in a row"), string(killEngine)},
		{"a backoff before any kill", req("dev", 5, 5.1, outStatus, 503, "agent dev is in start backoff after 1 failed start(s) in a row"), ""},
		{"a 429 at an engine's SIGKILL", req("dev", 29, 30.1, outStatus, http.StatusTooManyRequests, "queue full"), ""},
		{"a timeout", req("dev", 29, 150, outTimeout, 0, ""), ""},
	} {
		tab := chaosClassify([]*chaosRequest{c.r}, events)
		if got := c.r.cause; got != c.cause {
			t.Errorf("%s: put down to %q, want %q", c.name, got, c.cause)
		}
		if want := map[bool]int{true: 0, false: 1}[c.cause != ""]; len(tab.unexplained) != want {
			t.Errorf("%s: %d unexplained, want %d", c.name, len(tab.unexplained), want)
		}
	}
	refused := req("po", 10.1, 10.1, outRefused, 0, "connection refused")
	if tab := chaosClassify([]*chaosRequest{refused}, events); tab.byOutcome[outRefused] != 1 || refused.cause != "" {
		t.Errorf("a refusal: %+v, cause %q; want counted as refused and never explained", tab.byOutcome, refused.cause)
	}
}
