package controlapi

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vagent-dev/vagent/config"
)

func testConfig(t *testing.T) *config.Config {
	c := config.Defaults()
	c.Gateway.ControlSocket = filepath.Join(t.TempDir(), "vagentd.sock")
	return &c
}

func TestReach(t *testing.T) {
	cfg := testConfig(t)
	sock := cfg.Gateway.ControlSocket
	// No socket: no daemon, no error.
	if c, err := Reach(context.Background(), cfg); c != nil || err != nil {
		t.Errorf("no socket: %v, %v", c, err)
	}
	// A socket nobody listens on (vagentd was killed): no daemon, no error.
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if c, err := Reach(context.Background(), cfg); c != nil || err != nil {
		t.Errorf("stale socket: %v, %v", c, err)
	}
	os.Remove(sock)
	ln, err = net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if c, err := Reach(context.Background(), cfg); c == nil || err != nil {
		t.Errorf("live socket: %v, %v", c, err)
	}
}

// serve answers the control socket with h until the test ends.
func serve(t *testing.T, cfg *config.Config, h http.HandlerFunc) *Client {
	t.Helper()
	ln, err := net.Listen("unix", cfg.Gateway.ControlSocket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	c, err := Reach(context.Background(), cfg)
	if c == nil || err != nil {
		t.Fatalf("reach: %v %v", c, err)
	}
	return c
}

// A vagentd that dies during a call is named as such, not as a bare EOF.
func TestCallLostMidCall(t *testing.T) {
	cfg := testConfig(t)
	c := serve(t, cfg, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case PathSwitch: // dies before it answers
			conn, _, _ := http.NewResponseController(w).Hijack()
			conn.Close()
		case PathStatus: // dies while it answers
			w.Header().Set("Content-Length", "1000")
			w.Write([]byte(`[{"agent":`))
			w.(http.Flusher).Flush()
			conn, _, _ := http.NewResponseController(w).Hijack()
			conn.Close()
		}
	})
	_, err := c.Switch(context.Background(), "dev")
	var e *Error
	if !errors.As(err, &e) || !e.Lost || !strings.HasPrefix(err.Error(), "vagentd closed the connection mid-call (crashed or restarted?): POST /vagent/v1/switch") {
		t.Errorf("switch while vagentd dies: %v", err)
	}
	_, _, err = c.Status(context.Background())
	if !errors.As(err, &e) || !e.Lost || !strings.Contains(err.Error(), "vagentd closed the connection mid-call (crashed or restarted?): GET /vagent/v1/status") {
		t.Errorf("status while vagentd dies: %v", err)
	}
}

func TestCallErrors(t *testing.T) {
	cfg := testConfig(t)
	c := serve(t, cfg, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusConflict)
		w.Write([]byte(`{"error":{"message":"agent po is pinned","type":"conflict_error","code":409}}`))
	})
	err := c.Stop(context.Background(), "po")
	var e *Error
	if !errors.As(err, &e) || e.Lost || e.Status != 409 || e.Code != "409" || err.Error() != "vagentd: agent po is pinned" {
		t.Errorf("refused stop: %#v", err)
	}
}
