package gateway

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/engine"
)

// The engine client keeps connections open between requests, notices ones
// the engine closed, and never reuses one whose exchange was cut.
func TestEngineClientConnections(t *testing.T) {
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/slow" {
			<-r.Context().Done()
			return
		}
		io.WriteString(w, `{"ok":true}`)
	}))
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	ep := engine.TCP("127.0.0.1", srv.Listener.Addr().(*net.TCPAddr).Port)
	ec := newEngineClient()
	get := func(ctx context.Context, path string) error {
		orig, _ := http.NewRequest(http.MethodPost, ep.URL(path), nil)
		req := &outRequest{method: "POST", uri: path, host: ep.Host(), header: http.Header{"Content-Type": {"application/json"}}, orig: orig}
		resp, err := ec.do(ctx, ep, req, []byte("{}"))
		if err != nil {
			return err
		}
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		return err
	}
	for range 5 {
		if err := get(context.Background(), "/"); err != nil {
			t.Fatal(err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections for 5 sequential requests, want 1", n)
	}
	// The engine drops its idle connections (as on a restart): the next
	// request notices and dials again.
	srv.CloseClientConnections()
	waitFor(t, "connection closed", func() bool {
		ec.mu.Lock()
		defer ec.mu.Unlock()
		c := ec.idle[ep][0]
		return !c.open()
	})
	if err := get(context.Background(), "/"); err != nil {
		t.Fatal(err)
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
	// A cut exchange does not go back to the pool.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := get(ctx, "/slow"); err == nil {
		t.Fatal("slow request not cut")
	}
	ec.mu.Lock()
	idle := len(ec.idle[ep])
	ec.mu.Unlock()
	if idle != 0 {
		t.Errorf("%d idle connections after a cut exchange, want 0", idle)
	}
}

// TestEngineClientUnixSocket proxies to an engine on a unix socket (vLLM's
// --uds): the client dials the endpoint, whatever its network.
func TestEngineClientUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "engine.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Host+" "+r.URL.Path)
	})}
	go srv.Serve(ln)
	defer srv.Close()
	ep := engine.Unix(path)
	ec := newEngineClient()
	for range 2 {
		orig, _ := http.NewRequest(http.MethodPost, ep.URL("/v1/completions"), nil)
		req := &outRequest{method: "POST", uri: "/v1/completions", host: ep.Host(), header: http.Header{}, orig: orig}
		resp, err := ec.do(context.Background(), ep, req, []byte("{}"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "localhost /v1/completions" {
			t.Errorf("engine saw %q", b)
		}
	}
	ec.mu.Lock()
	idle := len(ec.idle[ep])
	ec.mu.Unlock()
	if idle != 1 {
		t.Errorf("%d idle connections to the socket, want 1", idle)
	}
}
