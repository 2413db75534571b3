package gateway

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/config"
)

// streamEvents posts a streamed chat request and returns its data payloads.
func (e *env) streamEvents(ctx context.Context, model string) (int, []string, error) {
	resp, err := e.post(ctx, "/v1/chat/completions", chatBody(model, true))
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	return resp.StatusCode, sseEvents(e.t, resp.Body), nil
}

func TestStreamPassesThrough(t *testing.T) {
	e := newEnv(t, envOpts{})
	st, evs, err := e.streamEvents(context.Background(), "a")
	if err != nil || st != 200 {
		t.Fatal(st, err)
	}
	if len(evs) != 4 || evs[3] != "[DONE]" || !strings.Contains(evs[0], `"t0"`) {
		t.Fatalf("events %q", evs)
	}
}

// Each event reaches the client before the engine sends the next one.
func TestStreamIsNotBuffered(t *testing.T) {
	e := newEnv(t, envOpts{})
	next := make(chan struct{})
	e.engines["a"].setHandler(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 3 {
			fmt.Fprintf(w, "data: {\"n\":%d}\n\n", i)
			w.(http.Flusher).Flush()
			select {
			case <-next:
			case <-r.Context().Done():
				return
			}
		}
		io.WriteString(w, "data: [DONE]\n\n")
	})
	resp, err := e.post(context.Background(), "/v1/chat/completions", chatBody("a", true))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		t.Errorf("Content-Type %q", ct)
	}
	br := bufio.NewReader(resp.Body)
	for i := range 3 {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("data: {\"n\":%d}\n", i); line != want {
			t.Fatalf("line %q, want %q", line, want)
		}
		br.ReadString('\n') // the blank line
		next <- struct{}{}  // only now does the engine send the next event
	}
	rest, _ := io.ReadAll(br)
	if string(rest) != "data: [DONE]\n\n" {
		t.Errorf("rest %q", rest)
	}
}

// An engine that dies mid-stream: the client gets an error event, then
// [DONE], never a bare EOF.
func TestStreamEngineDiesMidway(t *testing.T) {
	for _, partial := range []bool{false, true} {
		t.Run(fmt.Sprintf("partial=%v", partial), func(t *testing.T) {
			e := newEnv(t, envOpts{})
			e.engines["a"].setHandler(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				io.WriteString(w, "data: {\"n\":0}\n\ndata: {\"n\":1}\n\n")
				if partial {
					io.WriteString(w, "data: {\"n\":")
				}
				w.(http.Flusher).Flush()
				panic(http.ErrAbortHandler) // connection reset, no [DONE]
			})
			st, evs, err := e.streamEvents(context.Background(), "a")
			if err != nil || st != 200 {
				t.Fatal(st, err)
			}
			if len(evs) < 4 || evs[0] != `{"n":0}` || evs[1] != `{"n":1}` {
				t.Fatalf("events %q", evs)
			}
			last, errEv := evs[len(evs)-1], evs[len(evs)-2]
			if last != "[DONE]" {
				t.Errorf("last event %q, want [DONE]", last)
			}
			var eb errorBody
			if err := json.Unmarshal([]byte(errEv), &eb); err != nil || eb.Error.Code != 502 || !strings.Contains(eb.Error.Message, "agent a") {
				t.Errorf("error event %q", errEv)
			}
			waitFor(t, "log line", func() bool { return len(e.logLines("request")) == 1 })
			if l := e.logLines("request")[0]; l["status"] != float64(502) || l["stream"] != true {
				t.Errorf("log line %v", l)
			}
		})
	}
}

func TestStreamUsageAndTTFTMetrics(t *testing.T) {
	e := newEnv(t, envOpts{})
	body := chatBody("a", true)
	body["stream_options"] = map[string]any{"include_usage": true}
	resp, err := e.post(context.Background(), "/v1/chat/completions", body)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	e.chat("a") // non-streamed: usage 5 + 7
	waitFor(t, "log lines", func() bool { return len(e.logLines("request")) == 2 })
	if got := counterValue(t, e.reg, "vagent_tokens_total", map[string]string{"agent": "a", "kind": "prompt"}); got != 10 {
		t.Errorf("prompt tokens %v, want 10", got)
	}
	if got := counterValue(t, e.reg, "vagent_tokens_total", map[string]string{"agent": "a", "kind": "completion"}); got != 10 {
		t.Errorf("completion tokens %v, want 10", got)
	}
	if n := histogramCount(t, e.reg, "vagent_time_to_first_token_seconds", map[string]string{"agent": "a"}); n != 1 {
		t.Errorf("ttft observations %d, want 1", n)
	}
}

// BeforeEvict waits for requests in flight, and new requests wait for the
// agent's next turn meanwhile.
func TestBeforeEvictWaitsForInFlight(t *testing.T) {
	e := newEnv(t, envOpts{})
	release := make(chan struct{})
	e.engines["a"].setHandler(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: {\"n\":0}\n\n")
		w.(http.Flusher).Flush()
		<-release
		io.WriteString(w, "data: [DONE]\n\n")
	})
	type streamRes struct {
		evs []string
		err error
	}
	sres := make(chan streamRes, 1)
	go func() {
		_, evs, err := e.streamEvents(context.Background(), "a")
		sres <- streamRes{evs, err}
	}()
	waitFor(t, "stream in flight", func() bool { return e.inflight("a") == 1 })
	evicted := make(chan error, 1)
	go func() { evicted <- e.g.BeforeEvict(context.Background(), "a") }()
	waitFor(t, "draining", func() bool { return e.phase("a") == phaseDraining })
	late := e.goChat(context.Background(), "a")
	waitFor(t, "late request queued", func() bool { return e.queued("a") == 1 })
	select {
	case err := <-evicted:
		t.Fatalf("BeforeEvict returned %v with a request in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if err := <-evicted; err != nil {
		t.Fatal(err)
	}
	r := <-sres
	if r.err != nil || len(r.evs) != 2 || r.evs[1] != "[DONE]" {
		t.Fatalf("stream %q %v", r.evs, r.err)
	}
	// The supervisor would now stop a; the switch's result says so, and the
	// late request starts it again.
	e.sw.mu.Lock()
	e.sw.running["a"] = false
	e.sw.mu.Unlock()
	e.g.mu.Lock()
	e.g.afterSwitchLocked(e.g.byAgent["b"], nil, time.Now())
	e.g.scheduleLocked()
	e.g.mu.Unlock()
	if lr := <-late; lr.status != 200 {
		t.Fatalf("late request %d %s", lr.status, lr.body)
	}
}

// Past drain_timeout, requests in flight are cut with an explicit error:
// an SSE error event for a stream, a 503 for a plain request.
func TestBeforeEvictCutsAfterDrainBound(t *testing.T) {
	e := newEnv(t, envOpts{modify: func(c *config.Config) {
		c.Gateway.DrainTimeout = config.Duration{Duration: 30 * time.Millisecond}
	}})
	e.engines["a"].setHandler(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.Header.Get("Accept"), "stream") || r.URL.Query().Get("s") == "1" {
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, "data: {\"n\":0}\n\n")
			w.(http.Flusher).Flush()
		}
		<-r.Context().Done() // never finishes on its own
	})
	// Bring a up first.
	e.sw.mu.Lock()
	e.sw.running["a"] = true
	e.sw.mu.Unlock()
	e.g.sync(context.Background())

	streamDone := make(chan []string, 1)
	go func() {
		resp, err := e.post(context.Background(), "/v1/chat/completions?s=1", chatBody("a", true))
		if err != nil {
			streamDone <- []string{"ERR " + err.Error()}
			return
		}
		defer resp.Body.Close()
		streamDone <- sseEvents(t, resp.Body)
	}()
	plain := e.goChat(context.Background(), "a")
	waitFor(t, "2 in flight", func() bool { return e.inflight("a") == 2 })
	if err := e.g.BeforeEvict(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	evs := <-streamDone
	if len(evs) != 3 || evs[2] != "[DONE]" {
		t.Fatalf("stream events %q", evs)
	}
	var eb errorBody
	if err := json.Unmarshal([]byte(evs[1]), &eb); err != nil || eb.Error.Code != 503 || !strings.Contains(eb.Error.Message, "drain_timeout") {
		t.Errorf("error event %q", evs[1])
	}
	pr := <-plain
	if pr.status != 503 || pr.header.Get("Retry-After") == "" {
		t.Fatalf("plain request: %d %s", pr.status, pr.body)
	}
	if ei := errorOf(t, pr.body); !strings.Contains(ei.Message, "make room") {
		t.Errorf("plain error %q", ei.Message)
	}
	if e.inflight("a") != 0 {
		t.Errorf("in flight after cut: %d", e.inflight("a"))
	}
	if got := counterValue(t, e.reg, "vagent_requests_cut_total", map[string]string{"agent": "a"}); got != 2 {
		t.Errorf("cut counter %v", got)
	}
}

// A switch through the supervisor drains the evicted agent: its request in
// flight finishes before the other agent starts.
func TestSwitchDrainsEvictedAgent(t *testing.T) {
	e := newEnv(t, envOpts{modify: func(c *config.Config) {
		c.Gateway.FairnessWindow = config.Duration{Duration: 0}
	}})
	release := make(chan struct{})
	e.engines["a"].setHandler(func(w http.ResponseWriter, r *http.Request) {
		<-release
		vllmLike(w, r, map[string]any{"model": "x"})
	})
	slow := e.goChat(context.Background(), "a")
	waitFor(t, "a busy", func() bool { return e.inflight("a") == 1 })
	bres := e.goChat(context.Background(), "b")
	waitFor(t, "a draining", func() bool { return e.phase("a") == phaseDraining })
	if e.sw.isRunning("b") {
		t.Fatal("b started while a still serves")
	}
	close(release)
	if r := <-slow; r.status != 200 {
		t.Fatalf("a: %d %s", r.status, r.body)
	}
	if r := <-bres; r.status != 200 {
		t.Fatalf("b: %d %s", r.status, r.body)
	}
	if got := counterValue(t, e.reg, "vagent_switches_total", map[string]string{"from": "a", "to": "b", "reason": "request"}); got != 1 {
		t.Errorf("switches a→b %v", got)
	}
}

func TestClientLeavingStreamFreesSlot(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.engines["a"].setHandler(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: {}\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := e.post(ctx, "/v1/chat/completions", chatBody("a", true))
	if err != nil {
		t.Fatal(err)
	}
	bufio.NewReader(resp.Body).ReadString('\n')
	cancel()
	resp.Body.Close()
	waitFor(t, "slot freed", func() bool { return e.inflight("a") == 0 })
	waitFor(t, "log", func() bool { return len(e.logLines("request")) == 1 })
	if l := e.logLines("request")[0]; l["status"] != float64(499) {
		t.Errorf("log %v", l)
	}
}

// request_timeout bounds the exchange with the engine: 504 for a plain
// request, an error event for a stream. Waiting for the agent does not count.
func TestRequestTimeout(t *testing.T) {
	e := newEnv(t, envOpts{modify: func(c *config.Config) {
		c.Gateway.RequestTimeout = config.Duration{Duration: 100 * time.Millisecond}
	}})
	e.engines["a"].setHandler(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Query().Get("s") {
		case "quick":
			vllmLike(w, r, map[string]any{"model": "x"})
			return
		case "1":
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, "data: {}\n\n")
			w.(http.Flusher).Flush()
		}
		<-r.Context().Done()
	})
	open := e.sw.gate("a")
	quick := make(chan int, 1)
	go func() {
		resp, err := e.post(context.Background(), "/v1/chat/completions?s=quick", chatBody("a", false))
		if err != nil {
			quick <- 0
			return
		}
		resp.Body.Close()
		quick <- resp.StatusCode
	}()
	waitFor(t, "queued", func() bool { return e.queued("a") == 1 })
	time.Sleep(150 * time.Millisecond) // longer than request_timeout, spent waiting
	open()
	if st := <-quick; st != 200 {
		t.Fatalf("a request that waited longer than request_timeout for its agent: %d", st)
	}
	st, b := e.chat("a")
	if st != 504 || !strings.Contains(errorOf(t, b).Message, "request_timeout") {
		t.Fatalf("plain: %d %s", st, b)
	}
	resp, err := e.post(context.Background(), "/v1/chat/completions?s=1", chatBody("a", true))
	if err != nil {
		t.Fatal(err)
	}
	evs := sseEvents(t, resp.Body)
	resp.Body.Close()
	if len(evs) != 3 || evs[2] != "[DONE]" || !strings.Contains(evs[1], `"code":504`) {
		t.Fatalf("stream events %q", evs)
	}
}

// A client that closes as soon as it has read [DONE] got its whole answer:
// the request counts as a success, not as 499, even though its closing
// cancels the exchange with an engine that has not yet ended its body.
func TestStreamDoneThenCloseIsSuccess(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.engines["a"].setHandler(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: {\"n\":0}\n\ndata: [DONE]\n\n")
		w.(http.Flusher).Flush()
		// The body ends only after the client has gone.
		<-r.Context().Done()
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp, err := e.post(ctx, "/v1/chat/completions", chatBody("a", true))
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("stream ended before [DONE]: %v", err)
		}
		if line == "data: [DONE]\n" {
			break
		}
	}
	cancel()
	resp.Body.Close()
	waitFor(t, "log", func() bool { return len(e.logLines("request")) == 1 })
	if l := e.logLines("request")[0]; l["status"] != float64(200) {
		t.Errorf("log %v", l)
	}
	if v := counterValue(t, e.reg, "vagent_requests_total", map[string]string{"agent": "a", "status": "200"}); v != 1 {
		t.Errorf("vagent_requests_total{agent=a,status=200} = %v", v)
	}
}
