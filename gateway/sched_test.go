package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/supervisor"
)

type result struct {
	status int
	body   []byte
	header http.Header
	err    error
}

// goChat sends a chat request in the background.
func (e *env) goChat(ctx context.Context, model string) chan result {
	ch := make(chan result, 1)
	go func() {
		resp, err := e.post(ctx, "/v1/chat/completions", chatBody(model, false))
		if err != nil {
			ch <- result{err: err}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		ch <- result{status: resp.StatusCode, body: b, header: resp.Header}
	}()
	return ch
}

func TestConcurrentRequestsShareOneStart(t *testing.T) {
	e := newEnv(t, envOpts{})
	open := e.sw.gate("a")
	var chs []chan result
	for range 10 {
		chs = append(chs, e.goChat(context.Background(), "a"))
	}
	waitFor(t, "10 requests queued", func() bool { return e.queued("a") == 10 })
	open()
	for _, ch := range chs {
		if r := <-ch; r.status != 200 {
			t.Errorf("status %d %s %v", r.status, r.body, r.err)
		}
	}
	if n := e.sw.count("switch a"); n != 1 {
		t.Errorf("Switch(a) called %d times, want 1", n)
	}
}

func TestQueueFull429(t *testing.T) {
	e := newEnv(t, envOpts{modify: func(c *config.Config) { c.Gateway.QueueLength = 2 }})
	open := e.sw.gate("a")
	defer open()
	r1 := e.goChat(context.Background(), "a")
	waitFor(t, "1 queued", func() bool { return e.queued("a") == 1 })
	r2 := e.goChat(context.Background(), "b")
	waitFor(t, "2 queued", func() bool { return e.queued("a")+e.queued("b") == 2 })
	resp, err := e.post(context.Background(), "/v1/chat/completions", chatBody("a", false))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("got %d Retry-After %q: %s", resp.StatusCode, resp.Header.Get("Retry-After"), b)
	}
	if ei := errorOf(t, b); ei.Code != 429 {
		t.Errorf("code %d", ei.Code)
	}
	open()
	for _, ch := range []chan result{r1, r2} {
		if r := <-ch; r.status != 200 {
			t.Errorf("queued request: %d %s", r.status, r.body)
		}
	}
}

func TestMaxWait503(t *testing.T) {
	e := newEnv(t, envOpts{modify: func(c *config.Config) { c.Gateway.MaxWait = config.Duration{Duration: 50 * time.Millisecond} }})
	open := e.sw.gate("a")
	defer open()
	st, b := e.chat("a")
	if st != 503 {
		t.Fatalf("status %d %s", st, b)
	}
	if ei := errorOf(t, b); !strings.Contains(ei.Message, "max_wait") {
		t.Errorf("message %q", ei.Message)
	}
	resp, err := e.post(context.Background(), "/v1/chat/completions", chatBody("a", false))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("second: %d Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	// Nobody waits any more: the start was cancelled and the unit stopped.
	waitFor(t, "the start to be cancelled and stopped", func() bool { return e.sw.count("stop a") > 0 })
}

// Requests A B A B arriving while A starts are served A A B B: two
// switches, not four.
func TestGroupingPerAgent(t *testing.T) {
	e := newEnv(t, envOpts{})
	open := e.sw.gate("a")
	var chs []chan result
	order := []string{"a", "b", "a", "b", "a", "b"}
	for i, m := range order {
		chs = append(chs, e.goChat(context.Background(), m))
		n := i + 1
		waitFor(t, fmt.Sprintf("%d queued", n), func() bool { return e.queued("a")+e.queued("b") == n })
	}
	open()
	for i, ch := range chs {
		if r := <-ch; r.status != 200 {
			t.Errorf("request %d (%s): %d %s", i, order[i], r.status, r.body)
		}
	}
	calls := e.sw.callList()
	if strings.Join(calls, ",") != "switch a,switch b" {
		t.Errorf("switcher calls %v, want [switch a, switch b]", calls)
	}
	e.sw.mu.Lock()
	overlaps := e.sw.overlaps
	e.sw.mu.Unlock()
	if overlaps != 0 {
		t.Errorf("%d overlapping starts", overlaps)
	}
}

// A running agent that keeps getting requests yields to a waiting one once
// the fairness window has passed, and then gets its turn back.
func TestFairnessNoStarvation(t *testing.T) {
	e := newEnv(t, envOpts{modify: func(c *config.Config) {
		c.Gateway.FairnessWindow = config.Duration{Duration: 20 * time.Millisecond}
	}})
	// Keep a busy: every request holds for a moment so one is always in flight.
	e.engines["a"].setHandler(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(2 * time.Millisecond)
		vllmLike(w, r, map[string]any{"model": "x"})
	})
	if st, b := e.chat("a"); st != 200 {
		t.Fatalf("%d %s", st, b)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	aFailures := 0
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if st, _ := e.chat("a"); st != 200 {
					mu.Lock()
					aFailures++
					mu.Unlock()
				}
			}
		})
	}
	waitFor(t, "a busy", func() bool { return e.inflight("a") > 0 })
	st, b := e.chat("b")
	close(stop)
	wg.Wait()
	if st != 200 {
		t.Fatalf("b starved or failed: %d %s", st, b)
	}
	if aFailures != 0 {
		t.Errorf("%d requests for a failed", aFailures)
	}
	// a got its turn back after b.
	if n := e.sw.count("switch a"); n < 2 {
		t.Errorf("a switched to %d times: %v", n, e.sw.callList())
	}
}

func TestClientDisconnectCancelsStart(t *testing.T) {
	e := newEnv(t, envOpts{})
	open := e.sw.gate("a")
	defer open()
	ctx, cancel := context.WithCancel(context.Background())
	ch := e.goChat(ctx, "a")
	waitFor(t, "a starting", func() bool { return e.phase("a") == phaseStarting && e.queued("a") == 1 })
	cancel()
	if r := <-ch; r.err == nil {
		t.Fatalf("request finished: %d", r.status)
	}
	waitFor(t, "queue empty", func() bool { return e.queued("a") == 0 })
	waitFor(t, "start cancelled", func() bool {
		e.sw.mu.Lock()
		defer e.sw.mu.Unlock()
		return errors.Is(e.sw.ctxErrs["a"], context.Canceled)
	})
	waitFor(t, "the half-started unit stopped", func() bool { return e.sw.count("stop a") == 1 })
	waitFor(t, "a stopped", func() bool { return e.phase("a") == phaseStopped })
}

func TestDisconnectKeepsPinnedStart(t *testing.T) {
	e := newEnv(t, envOpts{modify: func(c *config.Config) { c.Agent("a").Pinned = true }})
	open := e.sw.gate("a")
	ctx, cancel := context.WithCancel(context.Background())
	ch := e.goChat(ctx, "a")
	waitFor(t, "a starting", func() bool { return e.phase("a") == phaseStarting && e.queued("a") == 1 })
	cancel()
	<-ch
	waitFor(t, "queue empty", func() bool { return e.queued("a") == 0 })
	open()
	waitFor(t, "a running", func() bool { return e.phase("a") == phaseRunning })
	if e.sw.count("stop") != 0 {
		t.Errorf("pinned agent stopped: %v", e.sw.callList())
	}
}

// One client leaving does not cancel a start others still wait for.
func TestDisconnectKeepsStartOthersWaitFor(t *testing.T) {
	e := newEnv(t, envOpts{})
	open := e.sw.gate("a")
	ctx, cancel := context.WithCancel(context.Background())
	gone := e.goChat(ctx, "a")
	stays := e.goChat(context.Background(), "a")
	waitFor(t, "2 queued", func() bool { return e.queued("a") == 2 })
	cancel()
	<-gone
	waitFor(t, "1 queued", func() bool { return e.queued("a") == 1 })
	open()
	if r := <-stays; r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if e.sw.count("switch a") != 1 || e.sw.count("stop") != 0 {
		t.Errorf("calls %v", e.sw.callList())
	}
}

func TestStartFailureReachesWaiters(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.sw.mu.Lock()
	e.sw.fail["a"] = &supervisor.StartError{Agent: "a", Reason: "exited",
		RootCause: "ValueError: No available memory for the cache blocks. Try increasing gpu_memory_utilization when initializing the engine."}
	e.sw.mu.Unlock()
	st, b := e.chat("a")
	if st != 500 {
		t.Fatalf("status %d %s", st, b)
	}
	if ei := errorOf(t, b); !strings.Contains(ei.Message, "No available memory for the cache blocks") {
		t.Errorf("message %q lacks the root cause", ei.Message)
	}
	if e.phase("a") != phaseFailed {
		t.Errorf("phase %v", e.phase("a"))
	}
	// A later request tries again.
	e.sw.mu.Lock()
	delete(e.sw.fail, "a")
	e.sw.mu.Unlock()
	if st, b := e.chat("a"); st != 200 {
		t.Fatalf("retry: %d %s", st, b)
	}
}

// Agents that can share the GPU run side by side: no eviction, no waiting.
func TestSharingAgentsRunTogether(t *testing.T) {
	e := newEnv(t, envOpts{util: map[string]float64{"a": 0.4, "b": 0.4}})
	e.engines["a"].setHandler(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(20 * time.Millisecond)
		vllmLike(w, r, map[string]any{"model": "x"})
	})
	if st, _ := e.chat("a"); st != 200 {
		t.Fatal(st)
	}
	slow := e.goChat(context.Background(), "a")
	waitFor(t, "a busy", func() bool { return e.inflight("a") == 1 })
	if st, b := e.chat("b"); st != 200 {
		t.Fatalf("%d %s", st, b)
	}
	<-slow
	if !e.sw.isRunning("a") || !e.sw.isRunning("b") {
		t.Errorf("both should run: %v", e.sw.callList())
	}
}

func TestIdleTimeoutStopsAgent(t *testing.T) {
	e := newEnv(t, envOpts{modify: func(c *config.Config) {
		c.Agent("a").IdleTimeout = config.Duration{Duration: 30 * time.Millisecond}
		c.Agent("b").IdleTimeout = config.Duration{Duration: 30 * time.Millisecond}
		c.Agent("b").Pinned = true
	}, util: map[string]float64{"a": 0.4, "b": 0.4}})
	for _, m := range []string{"a", "b"} {
		if st, b := e.chat(m); st != 200 {
			t.Fatalf("%d %s", st, b)
		}
	}
	waitFor(t, "a stopped for idleness", func() bool { return e.sw.count("stop a") == 1 && e.phase("a") == phaseStopped })
	time.Sleep(100 * time.Millisecond)
	if e.sw.count("stop b") != 0 {
		t.Errorf("pinned agent b stopped")
	}
	// The next request starts it again.
	if st, b := e.chat("a"); st != 200 {
		t.Fatalf("%d %s", st, b)
	}
	if e.sw.count("switch a") != 2 {
		t.Errorf("calls %v", e.sw.callList())
	}
}

func TestSyncFindsRunningAgentsAndDeadEngines(t *testing.T) {
	e := newEnv(t, envOpts{noRun: true})
	e.sw.mu.Lock()
	e.sw.running["a"] = true // running before vagentd started
	e.sw.mu.Unlock()
	e.g.sync(context.Background())
	if e.phase("a") != phaseRunning {
		t.Fatalf("a not found running")
	}
	if st, _ := e.chat("a"); st != 200 {
		t.Fatal(st)
	}
	if n := e.sw.count("switch"); n != 0 {
		t.Errorf("switched for a running agent: %v", e.sw.callList())
	}
	e.sw.mu.Lock()
	e.sw.running["a"] = false
	e.sw.mu.Unlock()
	e.g.sync(context.Background())
	if e.phase("a") != phaseStopped {
		t.Errorf("a still running after its unit stopped")
	}
}

// An engine that is gone (connection refused) is started again and the
// request retried, transparently.
func TestDeadEngineRestartedOnRequest(t *testing.T) {
	e := newEnv(t, envOpts{})
	if st, _ := e.chat("a"); st != 200 {
		t.Fatal(st)
	}
	// The engine dies behind the gateway's back: refuse connections until
	// the next Switch brings it back.
	eng := e.engines["a"]
	addr := eng.srv.Listener.Addr().String()
	eng.srv.CloseClientConnections()
	eng.srv.Listener.Close()
	e.sw.mu.Lock()
	e.sw.running["a"] = false
	e.sw.mu.Unlock()
	restarted := make(chan struct{})
	go func() {
		waitFor(t, "restart", func() bool { return e.sw.count("switch a") == 2 })
		ln, err := listenRetry(addr)
		if err != nil {
			t.Error(err)
			close(restarted)
			return
		}
		srv := &http.Server{Handler: http.HandlerFunc(eng.serve)}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		close(restarted)
	}()
	e.sw.gate("a") // hold the restart until the engine listens again
	go func() {
		<-restarted
		e.sw.mu.Lock()
		close(e.sw.gates["a"])
		e.sw.mu.Unlock()
	}()
	if st, b := e.chat("a"); st != 200 {
		t.Fatalf("%d %s", st, b)
	}
}
