package gateway

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"
)

// benchEnv is a gateway in front of one running agent whose engine answers
// at once, for measuring what the gateway adds.
func benchEnv(b *testing.B) (*env, string) {
	e := newEnv(b, envOpts{agents: []string{"a"}})
	e.sw.mu.Lock()
	e.sw.running["a"] = true
	e.sw.mu.Unlock()
	e.g.sync(context.Background())
	return e, "http://127.0.0.1:" + strconv.Itoa(e.engines["a"].port)
}

func benchPost(b *testing.B, client *http.Client, url string, body []byte, auth string) {
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := client.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		b.Fatalf("status %d", resp.StatusCode)
	}
}

// BenchmarkAddedLatency compares a small non-streamed completion sent
// straight to the engine with the same through the gateway.
func BenchmarkAddedLatency(b *testing.B) {
	e, direct := benchEnv(b)
	body := []byte(`{"model":"a","messages":[{"role":"user","content":"hello"}],"max_tokens":8}`)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.Run("direct", func(b *testing.B) {
		for b.Loop() {
			benchPost(b, client, direct+"/v1/chat/completions", body, "Bearer "+testEngineKey)
		}
	})
	b.Run("gateway", func(b *testing.B) {
		for b.Loop() {
			benchPost(b, client, e.srv.URL+"/v1/chat/completions", body, "")
		}
	})
}

// TestManyConcurrentStreams runs 500 streams through the gateway at once:
// every one must end in [DONE].
func TestManyConcurrentStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	e := newEnv(t, envOpts{agents: []string{"a"}})
	e.engines["a"].setHandler(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 20 {
			fmt.Fprintf(w, "data: {\"choices\":[{\"delta\":{\"content\":\"t%d\"}}]}\n\n", i)
			w.(http.Flusher).Flush()
			time.Sleep(time.Millisecond)
		}
		io.WriteString(w, "data: [DONE]\n\n")
	})
	// Already running: this is about streaming, not about queueing at a start.
	e.sw.mu.Lock()
	e.sw.running["a"] = true
	e.sw.mu.Unlock()
	e.g.sync(context.Background())
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 600}}
	const n = 500
	var wg sync.WaitGroup
	errs := make(chan string, n)
	body := []byte(`{"model":"a","stream":true,"messages":[{"role":"user","content":"hello"}]}`)
	for range n {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/v1/chat/completions", bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				errs <- err.Error()
				return
			}
			defer resp.Body.Close()
			evs := sseEvents(t, resp.Body)
			if resp.StatusCode != 200 || len(evs) != 21 || evs[20] != "[DONE]" {
				errs <- fmt.Sprintf("status %d, %d events", resp.StatusCode, len(evs))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if e.sw.count("switch a") != 0 {
		t.Errorf("switches %v", e.sw.callList())
	}
}
