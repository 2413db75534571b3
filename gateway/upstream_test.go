package gateway

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
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
	addr := srv.Listener.Addr().String()
	ec := newEngineClient()
	get := func(ctx context.Context, path string) error {
		orig, _ := http.NewRequest(http.MethodPost, "http://"+addr+path, nil)
		req := &outRequest{method: "POST", uri: path, host: addr, header: http.Header{"Content-Type": {"application/json"}}, orig: orig}
		resp, err := ec.do(ctx, addr, req, []byte("{}"))
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
		c := ec.idle[addr][0]
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
	idle := len(ec.idle[addr])
	ec.mu.Unlock()
	if idle != 0 {
		t.Errorf("%d idle connections after a cut exchange, want 0", idle)
	}
}
