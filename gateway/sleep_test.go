package gateway

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/config"
)

func sleepMode(c *config.Config) { c.Supervisor.SwitchMode = config.SwitchSleep }

// rawRequest sends one request line as written, so that dot segments and
// escapes reach the gateway unchanged, and returns the status.
func rawRequest(t *testing.T, addr, method, target, body string) (int, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		method, target, len(body), body)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestGatewayNeverForwardsEngineControlRoutes(t *testing.T) {
	e := newEnv(t, envOpts{modify: sleepMode})
	// a runs, so that anything forwarded would reach its engine.
	if st, b := e.chat("a"); st != 200 {
		t.Fatalf("chat: %d %s", st, b)
	}
	before := len(e.engines["a"].requests())
	addr := strings.TrimPrefix(e.srv.URL, "http://")
	body := `{"model":"a","method":"reload_weights"}`
	for _, target := range []string{
		"/sleep?level=1", "/wake_up", "/is_sleeping", "/collective_rpc", "/reset_prefix_cache",
		"/server_info", "/v1/load_lora_adapter", "/SLEEP", "/sleep/",
		"/v1/../sleep?level=1", "/v1/chat/../../wake_up", "/v1/%2e%2e/sleep", "/v1/..%2Fsleep",
		"/v1//../collective_rpc", "/v1/./chat/completions", "/v1\\..\\sleep",
	} {
		for _, method := range []string{http.MethodPost, http.MethodGet} {
			st, b := rawRequest(t, addr, method, target, body)
			if st != http.StatusNotFound && st != http.StatusBadRequest {
				t.Errorf("%s %s: %d %s; want 404 or 400", method, target, st, b)
				continue
			}
			var eb errorBody
			if json.Unmarshal([]byte(b), &eb) != nil || eb.Error.Message == "" {
				t.Errorf("%s %s: not an OpenAI-shaped error: %s", method, target, b)
			}
		}
	}
	if got := e.engines["a"].requests(); len(got) != before {
		for _, r := range got[before:] {
			t.Errorf("the engine received %s", r.Path)
		}
	}
	// The ordinary routes still work, and a served name with an escaped
	// slash still finds its model.
	if st, b := e.chat("a"); st != 200 {
		t.Errorf("chat after the refusals: %d %s", st, b)
	}
	if st, b := rawRequest(t, addr, http.MethodGet, "/v1/models/a", ""); st != 200 {
		t.Errorf("GET /v1/models/a: %d %s", st, b)
	}
}

func TestSleepingAgentsShowAndWake(t *testing.T) {
	e := newEnv(t, envOpts{modify: sleepMode})
	for _, m := range []string{"a", "b", "a"} {
		if st, b := e.chat(m); st != 200 {
			t.Fatalf("chat %s: %d %s", m, st, b)
		}
	}
	// a woke; b sleeps: never routed to, shown as sleeping everywhere.
	if p := e.phase("b"); p != phaseSleeping {
		t.Fatalf("b's phase %d, want sleeping", p)
	}
	resp, err := http.Get(e.srv.URL + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	var list modelList
	json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	states := map[string]string{}
	for _, m := range list.Data {
		states[m.ID] = m.State
	}
	if states["a"] != StateRunning || states["b"] != StateSleeping {
		t.Errorf("/v1/models states %v; want a running, b sleeping", states)
	}
	st, err := e.g.status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if want := map[string]string{"a": StateRunning, "b": StateSleeping}[s.Agent]; s.State != want {
			t.Errorf("control status of %s: %s, want %s", s.Agent, s.State, want)
		}
	}
	metrics := scrape(t, e)
	for _, want := range []string{
		`vagent_agent_state{agent="b",state="sleeping"} 1`,
		`vagent_agent_state{agent="a",state="sleeping"} 0`,
		`vagent_wake_duration_seconds_count{agent="a"} 1`,
		`vagent_sleep_duration_seconds_count{agent="a"} 1`,
		`vagent_sleep_duration_seconds_count{agent="b"} 1`,
		`vagent_switches_total{from="b",reason="request",to="a"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// b's engine got only the requests sent while it was awake.
	if n := len(e.engines["b"].requests()); n != 1 {
		t.Errorf("b's engine got %d requests, want 1", n)
	}
	if st, b := e.chat("b"); st != 200 {
		t.Fatalf("chat b: %d %s", st, b)
	}
	if p := e.phase("a"); p != phaseSleeping {
		t.Errorf("a's phase %d after the switch back, want sleeping", p)
	}
}

func TestSyncFindsSleepingAgents(t *testing.T) {
	e := newEnv(t, envOpts{modify: sleepMode, noRun: true})
	e.sw.mu.Lock()
	e.sw.asleep["b"] = true
	e.sw.running["a"] = true
	e.sw.mu.Unlock()
	e.g.sync(context.Background())
	if pa, pb := e.phase("a"), e.phase("b"); pa != phaseRunning || pb != phaseSleeping {
		t.Fatalf("after sync: a %d, b %d; want running and sleeping", pa, pb)
	}
	// Someone woke b behind the gateway's back (and a slept).
	e.sw.mu.Lock()
	delete(e.sw.asleep, "b")
	e.sw.running["b"] = true
	e.sw.running["a"] = false
	e.sw.asleep["a"] = true
	e.sw.mu.Unlock()
	e.g.sync(context.Background())
	if pa, pb := e.phase("a"), e.phase("b"); pa != phaseSleeping || pb != phaseRunning {
		t.Fatalf("after the second sync: a %d, b %d; want sleeping and running", pa, pb)
	}
}

func scrape(t *testing.T, e *env) string {
	t.Helper()
	resp, err := http.Get(e.srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
