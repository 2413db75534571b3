package gateway

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/config"
)

// bgPost sends a request through BackgroundHandler in process.
func (e *env) bgPost(ctx context.Context, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequestWithContext(ctx, http.MethodPost, "/v1/chat/completions", bytes.NewReader([]byte(body)))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	e.g.BackgroundHandler().ServeHTTP(rec, req)
	return rec
}

// Background work needs no client key (vagentd sends it itself) and gets
// the agent's system prompt and sampling defaults as a client's request
// does.
func TestBackgroundBypassesKeysKeepsDefaults(t *testing.T) {
	e := newEnv(t, envOpts{keys: testKeys(t), modify: func(c *config.Config) {
		c.Agent("b").SystemPrompt = "You are b."
		mt := 77
		c.Agent("b").Sampling.MaxTokens = &mt
	}})
	rec := e.bgPost(context.Background(), `{"model":"b","messages":[{"role":"user","content":"hi"}]}`)
	if rec.Code != 200 {
		t.Fatalf("background request: %d %s", rec.Code, rec.Body)
	}
	reqs := e.engines["b"].requests()
	if len(reqs) != 1 {
		t.Fatalf("engine b saw %d requests", len(reqs))
	}
	msgs, _ := reqs[0].Body["messages"].([]any)
	first, _ := msgs[0].(map[string]any)
	if first["role"] != "system" || first["content"] != "You are b." {
		t.Errorf("system prompt not applied: %v", msgs)
	}
	if reqs[0].Body["max_tokens"] != float64(77) || reqs[0].Auth != "Bearer "+testEngineKey {
		t.Errorf("engine saw max_tokens %v auth %q", reqs[0].Body["max_tokens"], reqs[0].Auth)
	}
	// The same over the network without a key is refused: no header makes
	// a client's request background work.
	st, b := e.chat("b", "X-Vagent-Background", "1")
	if st != 401 {
		t.Fatalf("client without a key: %d %s", st, b)
	}
}

// Load tells interactive requests from background ones, and the scheduler
// serves an agent with interactive requests waiting before one with
// background work only, even when the background work waited longer.
func TestLoadAndInteractiveFirst(t *testing.T) {
	e := newEnv(t, envOpts{agents: []string{"a", "b", "c"}})
	if st, b := e.chat("a"); st != 200 {
		t.Fatalf("warm a: %d %s", st, b)
	}
	// Hold a busy with a request, so b and c must wait.
	release := make(chan struct{})
	e.engines["a"].setHandler(func(w http.ResponseWriter, r *http.Request) {
		<-release
		io.WriteString(w, `{"choices":[{"index":0,"message":{"content":"x"},"finish_reason":"stop"}]}`)
	})
	go e.chat("a")
	waitFor(t, "a busy", func() bool { return e.inflight("a") == 1 && len(e.engines["a"].requests()) == 2 })
	e.engines["a"].setHandler(nil)
	bgDone := make(chan int, 1)
	go func() {
		bgDone <- e.bgPost(context.Background(), `{"model":"b","messages":[{"role":"user","content":"hi"}]}`).Code
	}()
	waitFor(t, "background request queued for b", func() bool { return e.queued("b") == 1 })
	time.Sleep(5 * time.Millisecond) // c's request is younger
	cDone := make(chan int, 1)
	go func() { st, _ := e.chat("c"); cDone <- st }()
	waitFor(t, "interactive request queued for c", func() bool { return e.queued("c") == 1 })

	loads := map[string]AgentLoad{}
	for _, l := range e.g.Load() {
		loads[l.Agent] = l
	}
	if l := loads["a"]; l.State != StateRunning || l.InFlight != 1 || len(l.Conflicts) != 2 {
		t.Errorf("a: %+v", l)
	}
	if l := loads["b"]; l.Background != 1 || l.Interactive != 0 {
		t.Errorf("b: %+v", l)
	}
	if l := loads["c"]; l.Interactive != 1 || l.Background != 0 {
		t.Errorf("c: %+v", l)
	}
	close(release)
	if st := <-cDone; st != 200 {
		t.Fatalf("c: %d", st)
	}
	if st := <-bgDone; st != 200 {
		t.Fatalf("b: %d", st)
	}
	var order []string
	for _, c := range e.sw.callList() {
		if c == "switch b" || c == "switch c" {
			order = append(order, c)
		}
	}
	if len(order) != 2 || order[0] != "switch c" {
		t.Fatalf("switches %v: the interactive request's agent c should start before b's background work", order)
	}
}

// A client's request for an agent that cannot run beside one starting for
// background work only cancels that start: the background request is
// answered as yielded (never sent to an engine) and the client waits for
// its own switch alone.
func TestBackgroundStartYieldsToClient(t *testing.T) {
	e := newEnv(t, envOpts{agents: []string{"a", "b"}})
	openB := e.sw.gate("b")
	defer openB()
	bg := make(chan *httptest.ResponseRecorder, 1)
	go func() {
		bg <- e.bgPost(context.Background(), `{"model":"b","messages":[{"role":"user","content":"hi"}]}`)
	}()
	waitFor(t, "b starting for background work", func() bool { return e.phase("b") == phaseStarting })
	st, body := e.chat("a")
	if st != 200 {
		t.Fatalf("client's request for a: %d %s", st, body)
	}
	rec := <-bg
	if rec.Code != http.StatusServiceUnavailable || !Yielded(rec.Header()) {
		t.Fatalf("background request: %d %v %s, want 503 marked yielded", rec.Code, rec.Header(), rec.Body)
	}
	if n := len(e.engines["b"].requests()); n != 0 {
		t.Errorf("b's engine got %d requests", n)
	}
	if e.sw.isRunning("b") {
		t.Error("b's cancelled start left it running")
	}
	// A client waiting for b keeps b's start.
	openB()
	e2 := newEnv(t, envOpts{agents: []string{"a", "b"}})
	gate := e2.sw.gate("b")
	clientB := make(chan int, 1)
	go func() { st, _ := e2.chat("b"); clientB <- st }()
	bg2 := make(chan *httptest.ResponseRecorder, 1)
	go func() {
		bg2 <- e2.bgPost(context.Background(), `{"model":"b","messages":[{"role":"user","content":"hi"}]}`)
	}()
	waitFor(t, "b starting with both waiting", func() bool { return e2.phase("b") == phaseStarting && e2.queued("b") == 2 })
	aDone := make(chan int, 1)
	go func() { st, _ := e2.chat("a"); aDone <- st }()
	waitFor(t, "a's request queued", func() bool { return e2.queued("a") == 1 })
	gate()
	if st := <-clientB; st != 200 {
		t.Fatalf("client for b: %d", st)
	}
	if rec := <-bg2; rec.Code != 200 || Yielded(rec.Header()) {
		t.Fatalf("background request beside a client: %d %v", rec.Code, rec.Header())
	}
	if st := <-aDone; st != 200 {
		t.Fatalf("client for a: %d", st)
	}
}

// TestBackgroundTurnIsNotCancelled: background work whose turn has come
// (TakeTurn: it has given way for work.max_yield) keeps its start when a
// client asks for an agent that cannot run beside it; the client is served
// after it, by the usual switch.
func TestBackgroundTurnIsNotCancelled(t *testing.T) {
	e := newEnv(t, envOpts{agents: []string{"a", "b"}})
	openB := e.sw.gate("b")
	defer openB()
	bg := make(chan *httptest.ResponseRecorder, 1)
	go func() {
		bg <- e.bgPost(TakeTurn(context.Background()), `{"model":"b","messages":[{"role":"user","content":"hi"}]}`)
	}()
	waitFor(t, "b starting for background work", func() bool { return e.phase("b") == phaseStarting })
	client := make(chan int, 1)
	go func() { st, _ := e.chat("a"); client <- st }()
	waitFor(t, "the client's request queued for a", func() bool { return e.queued("a") == 1 })
	if e.phase("b") != phaseStarting {
		t.Fatalf("b's start for work whose turn came: phase %v, want still starting", e.phase("b"))
	}
	openB()
	if rec := <-bg; rec.Code != 200 || Yielded(rec.Header()) {
		t.Fatalf("background request with its turn: %d %v %s", rec.Code, rec.Header(), rec.Body)
	}
	if st := <-client; st != 200 {
		t.Fatalf("client for a after the background turn: %d", st)
	}
	if n := len(e.engines["b"].requests()); n != 1 {
		t.Errorf("b's engine got %d requests, want 1", n)
	}
}
