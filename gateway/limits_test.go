package gateway

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/vagent-dev/vagent/config"
)

// rawResponse sends head (a request line and headers, without the blank
// line) and then body on a new connection to addr, and reads the response;
// it fails the test when none comes within 10s.
func rawResponse(t *testing.T, addr, head, body string) (*http.Response, []byte) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, head+"\r\n\r\n"+body); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no response: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, b
}

func chatHead(e *env, contentLength int64) string {
	return fmt.Sprintf("POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d",
		e.srv.Listener.Addr(), contentLength)
}

// A client that declares the largest body and sends one byte gets a 408
// once gateway.body_timeout passes, in OpenAI's error shape, and the
// connection closes.
func TestSlowBodyGets408(t *testing.T) {
	e := newEnv(t, envOpts{modify: func(c *config.Config) {
		c.Gateway.BodyTimeout = config.Duration{Duration: 50 * time.Millisecond}
	}})
	resp, b := rawResponse(t, e.srv.Listener.Addr().String(), chatHead(e, 64<<20), "{")
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("status %d, want 408: %s", resp.StatusCode, b)
	}
	ei := errorOf(t, b)
	if ei.Type != typeTimeout || ei.Code != 408 || !strings.Contains(ei.Message, "gateway.body_timeout") {
		t.Errorf("error %+v", ei)
	}
	if !resp.Close {
		t.Error("the connection stays open after a body that did not arrive")
	}
	if n := len(e.engines["a"].requests()); n != 0 {
		t.Errorf("the engine got %d requests", n)
	}
}

// Memory follows the bytes that arrive, not the Content-Length a client
// declares: sixteen connections that each declare 64 MiB and send one byte
// made the gateway allocate 1 GiB.
func TestDeclaredBodySizeIsNotAllocated(t *testing.T) {
	e := newEnv(t, envOpts{modify: func(c *config.Config) {
		c.Gateway.BodyTimeout = config.Duration{Duration: 50 * time.Millisecond}
	}})
	const conns = 16
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	var wg sync.WaitGroup
	status := make(chan int, conns)
	for range conns {
		wg.Go(func() {
			resp, _ := rawResponse(t, e.srv.Listener.Addr().String(), chatHead(e, 64<<20), "{")
			status <- resp.StatusCode
		})
	}
	wg.Wait()
	runtime.ReadMemStats(&after)
	close(status)
	for st := range status {
		if st != http.StatusRequestTimeout {
			t.Errorf("status %d, want 408", st)
		}
	}
	// 16 x 64 MiB pre-sized would be 1 GiB; what arrived is 16 bytes.
	if got := after.TotalAlloc - before.TotalAlloc; got > 32<<20 {
		t.Errorf("%d connections that sent 1 byte each made the process allocate %d MiB", conns, got>>20)
	}
}

// The body's deadline ends with the body: a stream that takes longer than
// gateway.body_timeout is relayed whole.
func TestBodyTimeoutDoesNotCutResponses(t *testing.T) {
	e := newEnv(t, envOpts{modify: func(c *config.Config) {
		c.Gateway.BodyTimeout = config.Duration{Duration: 30 * time.Millisecond}
	}})
	e.engines["a"].setHandler(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 6 {
			fmt.Fprintf(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"t%d\"}}]}\n\n", i)
			w.(http.Flusher).Flush()
			time.Sleep(30 * time.Millisecond)
		}
		io.WriteString(w, "data: [DONE]\n\n")
	})
	resp, err := e.post(context.Background(), "/v1/chat/completions", chatBody("a", true))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	ev := sseEvents(t, resp.Body)
	if len(ev) != 7 || ev[6] != "[DONE]" {
		t.Fatalf("stream cut: %q", ev)
	}
}

func TestBodyTooLarge(t *testing.T) {
	e := newEnv(t, envOpts{modify: func(c *config.Config) { c.Gateway.MaxBodyMiB = 1 }})
	addr := e.srv.Listener.Addr().String()
	// Refused on its header alone: nothing of the body needs to come.
	resp, b := rawResponse(t, addr, chatHead(e, 1<<20+1), "")
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(errorOf(t, b).Message, "gateway.max_body_mib") {
		t.Errorf("declared 1 MiB + 1: %d %s", resp.StatusCode, b)
	}
	// Chunked: refused once the limit is passed.
	big := `{"model":"a","pad":"` + strings.Repeat("x", 1<<20) + `"}`
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/v1/chat/completions", io.MultiReader(strings.NewReader(big)))
	req.Header.Set("Content-Type", "application/json")
	r2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := io.ReadAll(r2.Body)
	r2.Body.Close()
	if r2.StatusCode != http.StatusRequestEntityTooLarge || errorOf(t, b2).Type != typeInvalidRequest {
		t.Errorf("chunked 1 MiB + 30: %d %s", r2.StatusCode, b2)
	}
	// At the limit: served.
	ok := `{"model":"a","pad":"` + strings.Repeat("x", 1<<20-len(`{"model":"a","pad":""}`)) + `"}`
	r3, err := e.post(context.Background(), "/v1/completions", ok)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, r3.Body)
	r3.Body.Close()
	if r3.StatusCode != http.StatusOK {
		t.Errorf("a body of exactly 1 MiB: %d", r3.StatusCode)
	}
}

func TestReadBounded(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789"), 10_000) // 100 kB
	for _, tc := range []struct {
		name     string
		r        io.Reader
		declared int64
		limit    int64
		want     []byte
		err      error
		maxCap   int
	}{
		{"declared", bytes.NewReader(body), int64(len(body)), 1 << 20, body, nil, len(body) + 1},
		{"chunked", iotest.HalfReader(bytes.NewReader(body)), -1, 1 << 20, body, nil, 2 * len(body)},
		{"empty", strings.NewReader(""), 0, 1 << 20, []byte{}, nil, 1},
		{"at the limit", bytes.NewReader(body), -1, int64(len(body)), body, nil, len(body) + 1},
		{"past the limit", bytes.NewReader(body), -1, int64(len(body) - 1), nil, errBodyTooBig, len(body)},
		// 64 MiB declared, one byte sent, then the client stalls: the
		// buffer is what one chunk takes, not what was declared.
		{"declared, not sent", io.MultiReader(strings.NewReader("{"), iotest.ErrReader(errStalled)), 64 << 20, 64 << 20, []byte("{"), errStalled, bodyChunk},
		// 100 kB arrived of 64 MiB declared: at most twice what came.
		{"partly sent", io.MultiReader(bytes.NewReader(body), iotest.ErrReader(errStalled)), 64 << 20, 64 << 20, body, errStalled, 2 * len(body)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readBounded(tc.r, tc.declared, tc.limit)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if tc.want != nil && !bytes.Equal(got, tc.want) {
				t.Errorf("read %d bytes, want %d", len(got), len(tc.want))
			}
			if cap(got) > tc.maxCap {
				t.Errorf("buffer of %d bytes for %d read (at most %d)", cap(got), len(got), tc.maxCap)
			}
		})
	}
}

var errStalled = errors.New("client stalled")

// Each key may hold gateway.max_requests_per_key requests open; the next
// gets 429 with Retry-After, other keys are not affected, and a slot comes
// back when its request ends.
func TestRequestsPerKeyLimit(t *testing.T) {
	e := newEnv(t, envOpts{keys: testKeys(t), modify: func(c *config.Config) { c.Gateway.MaxRequestsPerKey = 2 }})
	release := make(chan struct{})
	e.engines["a"].setHandler(func(w http.ResponseWriter, r *http.Request) {
		if bytes.Contains(must(io.ReadAll(r.Body)), []byte("hold")) {
			<-release
		}
		vllmLike(w, r, map[string]any{"model": "a"})
	})
	held := map[string]any{"model": "a", "messages": []any{map[string]any{"role": "user", "content": "hold"}}}
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			resp, err := e.post(context.Background(), "/v1/chat/completions", held, "Authorization", "Bearer "+aliceKey)
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		})
	}
	waitFor(t, "two requests at the engine", func() bool { return len(e.engines["a"].requests()) == 2 })

	resp, err := e.post(context.Background(), "/v1/chat/completions", chatBody("a", false), "Authorization", "Bearer "+aliceKey)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("third request of a key limited to 2: %d Retry-After %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), b)
	}
	if ei := errorOf(t, b); ei.Type != typeRateLimit || !strings.Contains(ei.Message, "key alice") || !strings.Contains(ei.Message, "gateway.max_requests_per_key") {
		t.Errorf("error %+v", ei)
	}
	if n := len(e.engines["a"].requests()); n != 2 {
		t.Errorf("the engine got %d requests, want the 2 held", n)
	}
	if st, b := e.chat("a", "Authorization", "Bearer "+bobKey); st != http.StatusOK {
		t.Errorf("another key while alice is at her limit: %d %s", st, b)
	}
	close(release)
	wg.Wait()
	if st, b := e.chat("a", "Authorization", "Bearer "+aliceKey); st != http.StatusOK {
		t.Errorf("alice after her requests ended: %d %s", st, b)
	}
}

// Without a keys file all clients share one limit.
func TestRequestsLimitWithoutKeys(t *testing.T) {
	e := newEnv(t, envOpts{modify: func(c *config.Config) {
		c.Gateway.MaxRequestsPerKey = 1
		c.Gateway.BodyTimeout = config.Duration{Duration: time.Minute}
	}})
	// A body that never comes holds its slot while the gateway waits for it.
	c, err := net.Dial("tcp", e.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, chatHead(e, 100)+"\r\n\r\n{")
	var st int
	var b []byte
	waitFor(t, "a 429", func() bool {
		st, b = e.chat("a")
		return st != http.StatusOK
	})
	if st != http.StatusTooManyRequests || !strings.Contains(errorOf(t, b).Message, "without a keys file") {
		t.Fatalf("second client while one holds the only slot: %d %s", st, b)
	}
	c.Close()
	waitFor(t, "the slot back", func() bool { st, _ = e.chat("a"); return st == http.StatusOK })
}

func must[T any](v T, _ error) T { return v }

// serveLimited serves g on a listener of its own, with the server and
// listener vagentd uses.
func serveLimited(t *testing.T, g *Gateway) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := g.Server(nil)
	lln := g.Listener(ln)
	go srv.Serve(lln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// readClosed reads from c until the server closes it, failing the test
// when it stays open 10s.
func readClosed(t *testing.T, c net.Conn, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, c)
	if err != nil {
		t.Fatalf("%s: the gateway kept the connection open: %v", what, err)
	}
}

// Idle keep-alive connections and slow headers are closed.
func TestConnectionDeadlines(t *testing.T) {
	e := newEnv(t, envOpts{modify: func(c *config.Config) {
		c.Gateway.KeepaliveTimeout = config.Duration{Duration: 50 * time.Millisecond}
		c.Gateway.HeaderTimeout = config.Duration{Duration: 50 * time.Millisecond}
	}})
	addr := serveLimited(t, e.g)

	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	io.WriteString(idle, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(idle)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK || resp.Close {
		t.Fatalf("healthz: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	readClosed(t, idle, "idle keep-alive connection")

	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	io.WriteString(slow, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
	readClosed(t, slow, "headers that never end")
}

// Past gateway.max_connections a new connection is not served until an
// open one closes.
func TestConnectionCap(t *testing.T) {
	e := newEnv(t, envOpts{modify: func(c *config.Config) { c.Gateway.MaxConnections = 2 }})
	addr := serveLimited(t, e.g)
	var open []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || resp.StatusCode != 200 {
			t.Fatalf("connection %d: %v %v", len(open), resp, err)
		}
		open = append(open, c)
	}
	third, err := net.Dial("tcp", addr) // the kernel's backlog takes it
	if err != nil {
		t.Fatal(err)
	}
	defer third.Close()
	io.WriteString(third, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	got := make(chan error, 1)
	go func() {
		third.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(third), nil)
		if err == nil && resp.StatusCode != 200 {
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("a third connection was served past max_connections 2 (err %v)", err)
	case <-time.After(200 * time.Millisecond):
	}
	open[0].Close()
	if err := <-got; err != nil {
		t.Fatalf("third connection after one closed: %v", err)
	}
}

// A key limited to some agents is not told the others' names.
func TestUnknownModelListsOnlyTheKeysAgents(t *testing.T) {
	e := newEnv(t, envOpts{keys: testKeys(t)})
	others := e.cfg.Agent("b").Names()
	check := func(what string, st, want int, b []byte) {
		t.Helper()
		if st != want {
			t.Fatalf("%s: status %d, want %d: %s", what, st, want, b)
		}
		msg := errorOf(t, b).Message
		_, list, ok := strings.Cut(msg, ": ")
		if !ok {
			t.Fatalf("%s: no list of models: %s", what, msg)
		}
		if i := strings.LastIndex(list, ": "); i >= 0 {
			list = list[i+2:]
		}
		listed := strings.Split(list, ", ")
		for _, n := range others {
			if slices.Contains(listed, n) {
				t.Errorf("%s: alice (agents a) is told of %q: %s", what, n, msg)
			}
		}
		if !slices.Contains(listed, "a") {
			t.Errorf("%s: alice's own agent not listed: %s", what, msg)
		}
	}
	st, b := e.chat("nope", "Authorization", "Bearer "+aliceKey)
	check("unknown model", st, http.StatusNotFound, b)
	resp, err := e.post(context.Background(), "/v1/chat/completions", `{"messages":[]}`, "Authorization", "Bearer "+aliceKey)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	check("no model", resp.StatusCode, http.StatusBadRequest, b)

	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/v1/models/nope", nil)
	req.Header.Set("Authorization", "Bearer "+aliceKey)
	r2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(r2.Body)
	r2.Body.Close()
	check("GET /v1/models/nope", r2.StatusCode, http.StatusNotFound, b)

	// A key for every agent still hears of all of them.
	st, b = e.chat("nope", "Authorization", "Bearer "+bobKey)
	if st != http.StatusNotFound || !strings.Contains(string(b), others[0]) {
		t.Errorf("bob (all agents): %d %s", st, b)
	}
}
