package gateway

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

// abortChunk is the chunk vLLM ends a stream with when its engine drops
// the request: put to sleep (0.18's scheduler pause) or stopped.
const abortChunk = `{"id":"c","object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":""},"finish_reason":"abort"}]}`

// abortedAnswer is a whole answer vLLM aborted: HTTP 200, a short text.
const abortedAnswer = `{"id":"c","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Par"},"finish_reason":"abort"}],"usage":{"prompt_tokens":5,"total_tokens":6,"completion_tokens":1}}`

// TestStreamAbortedByEngineIsAnError: a stream the engine ends with
// finish_reason "abort" and [DONE] (it was put to sleep or stopped) reaches
// the client as an error event and [DONE], never as a short answer that
// finished normally.
func TestStreamAbortedByEngineIsAnError(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.engines["a"].setHandler(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n")
		io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Par\"}}]}\n\n")
		io.WriteString(w, "data: "+abortChunk+"\n\ndata: [DONE]\n\n")
	})
	st, evs, err := e.streamEvents(context.Background(), "a")
	if err != nil || st != 200 {
		t.Fatal(st, err)
	}
	if len(evs) != 4 || !strings.Contains(evs[1], "Par") || evs[3] != "[DONE]" {
		t.Fatalf("events %q; want two chunks, an error event and [DONE]", evs)
	}
	for _, ev := range evs {
		if strings.Contains(ev, `"finish_reason":"abort"`) {
			t.Errorf("the abort chunk reached the client: %s", ev)
		}
	}
	var eb errorBody
	if err := json.Unmarshal([]byte(evs[2]), &eb); err != nil || eb.Error.Code != http.StatusServiceUnavailable ||
		!strings.Contains(eb.Error.Message, "agent a") || !strings.Contains(eb.Error.Message, "abort") {
		t.Errorf("error event %q", evs[2])
	}
	waitFor(t, "log line", func() bool { return len(e.logLines("request")) == 1 })
	if l := e.logLines("request")[0]; l["status"] != float64(503) || l["stream"] != true {
		t.Errorf("log line %v", l)
	}
}

// TestAbortedAnswerIsSentAgain: a non-streamed answer the engine aborted
// was not sent to the client yet, so the gateway sends the request once
// more and the client gets the whole answer.
func TestAbortedAnswerIsSentAgain(t *testing.T) {
	e := newEnv(t, envOpts{})
	var n atomic.Int32
	e.engines["a"].setHandler(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if n.Add(1) == 1 {
			io.WriteString(w, abortedAnswer)
			return
		}
		io.WriteString(w, `{"id":"c","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Paris."},"finish_reason":"stop"}]}`)
	})
	st, body := e.chat("a")
	if st != 200 || !strings.Contains(string(body), `"Paris."`) {
		t.Fatalf("chat: %d %s; want the second, whole answer", st, body)
	}
	if got := len(e.engines["a"].requests()); got != 2 {
		t.Errorf("the engine got %d requests, want 2", got)
	}
}

// TestAbortedTwiceIs503: an answer aborted again after the second try is a
// 503 with Retry-After, never the short answer.
func TestAbortedTwiceIs503(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.engines["a"].setHandler(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, abortedAnswer)
	})
	resp, err := e.post(context.Background(), "/v1/chat/completions", chatBody("a", false))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("%d (Retry-After %q) %s; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	var eb errorBody
	if json.Unmarshal(body, &eb) != nil || !strings.Contains(eb.Error.Message, "abort") {
		t.Errorf("body %s", body)
	}
	if got := len(e.engines["a"].requests()); got != 2 {
		t.Errorf("the engine got %d requests, want 2", got)
	}
}

// TestAbortInTextIsNotAnAbort: the word in a model's answer is just text.
func TestAbortInTextIsNotAnAbort(t *testing.T) {
	for _, b := range []string{
		`{"choices":[{"message":{"content":"say \"abort\""},"finish_reason":"stop"}]}`,
		`{"choices":[{"message":{"content":"\"abort"},"finish_reason":"length"}]}`,
	} {
		if aborted([]byte(b)) {
			t.Errorf("aborted(%s) = true", b)
		}
	}
	if !aborted([]byte(abortedAnswer)) || !aborted([]byte(abortChunk)) {
		t.Error("an abort not seen")
	}
}

// TestAbortBySleepBehindTheGatewayWaitsForTheWake: an engine put to sleep
// behind the gateway's back aborts its request; the gateway learns that it
// sleeps before sending the request again, so the request waits for a wake
// (a Switch) and is served, instead of going to the sleeping engine.
func TestAbortBySleepBehindTheGatewayWaitsForTheWake(t *testing.T) {
	e := newEnv(t, envOpts{modify: sleepMode})
	if st, b := e.chat("a"); st != 200 {
		t.Fatalf("chat: %d %s", st, b)
	}
	var n atomic.Int32
	e.engines["a"].setHandler(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if n.Add(1) == 1 {
			// Someone put the engine to sleep under this request.
			e.sw.mu.Lock()
			e.sw.running["a"] = false
			e.sw.asleep["a"] = true
			e.sw.mu.Unlock()
			io.WriteString(w, abortedAnswer)
			return
		}
		e.sw.mu.Lock()
		asleep := e.sw.asleep["a"]
		e.sw.mu.Unlock()
		if asleep {
			t.Error("a request reached the sleeping engine")
		}
		vllmLike(w, r, map[string]any{"model": "a"})
	})
	switches := e.sw.count("switch a")
	st, b := e.chat("a")
	if st != 200 || !strings.Contains(string(b), `"finish_reason":"stop"`) {
		t.Fatalf("chat: %d %s; want the whole answer after the wake", st, b)
	}
	if e.sw.count("switch a") != switches+1 {
		t.Errorf("switches %v: want one more switch to a (its wake)", e.sw.callList())
	}
}

// TestAbortedStreamThenRequestWaitsForTheWake: once a stream's client has
// heard of the abort, the gateway knows the engine sleeps: the client's
// next request waits for a wake instead of going to the sleeping engine.
func TestAbortedStreamThenRequestWaitsForTheWake(t *testing.T) {
	e := newEnv(t, envOpts{modify: sleepMode})
	if st, b := e.chat("a"); st != 200 {
		t.Fatalf("chat: %d %s", st, b)
	}
	var n atomic.Int32
	e.engines["a"].setHandler(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			e.sw.mu.Lock()
			e.sw.running["a"] = false
			e.sw.asleep["a"] = true
			e.sw.mu.Unlock()
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Par\"}}]}\n\n")
			io.WriteString(w, "data: "+abortChunk+"\n\ndata: [DONE]\n\n")
			return
		}
		e.sw.mu.Lock()
		asleep := e.sw.asleep["a"]
		e.sw.mu.Unlock()
		if asleep {
			t.Error("a request reached the sleeping engine")
		}
		vllmLike(w, r, map[string]any{"model": "a"})
	})
	switches := e.sw.count("switch a")
	st, evs, err := e.streamEvents(context.Background(), "a")
	if err != nil || st != 200 || len(evs) != 3 {
		t.Fatalf("stream: %d %q %v", st, evs, err)
	}
	if st, b := e.chat("a"); st != 200 {
		t.Fatalf("chat after the abort: %d %s", st, b)
	}
	if e.sw.count("switch a") != switches+1 {
		t.Errorf("switches %v: want one more switch to a (its wake)", e.sw.callList())
	}
}
