package daemon

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/internal/enginekey"
	"github.com/vagent-dev/vagent/supervisor"
)

// fakeSystemd is systemd as the supervisor sees it, with every call recorded.
type fakeSystemd struct {
	mu     sync.Mutex
	calls  []string
	active map[string]bool
}

func (f *fakeSystemd) record(op, unit string, active bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, op+" "+unit)
	f.active[unit] = active
}

func (f *fakeSystemd) Start(_ context.Context, unit string) error {
	f.record("start", unit, true)
	return nil
}

func (f *fakeSystemd) Stop(_ context.Context, unit string) error {
	f.record("stop", unit, false)
	return nil
}

func (f *fakeSystemd) Reload(context.Context) error              { return nil }
func (f *fakeSystemd) ResetFailed(context.Context, string) error { return nil }
func (f *fakeSystemd) Close()                                    {}
func (f *fakeSystemd) State(_ context.Context, unit string) (supervisor.UnitState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.active[unit] {
		return supervisor.UnitState{LoadState: "loaded", ActiveState: "active", SubState: "running", MainPID: 4242, Since: time.Now()}, nil
	}
	return supervisor.UnitState{LoadState: "loaded", ActiveState: "inactive", SubState: "dead"}, nil
}

func (f *fakeSystemd) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// testConfig is the shipped configuration with every path under a fresh
// temporary directory, the endpoint on a free port, no agent on a listener
// of its own (the shipped fixed ports are not a test's), and the engine's
// key made; it returns the key too.
func testConfig(t *testing.T) (*config.Config, string) {
	t.Helper()
	cfg, err := config.Load("../configs/vagent.toml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg.Paths.StateDir = filepath.Join(dir, "state")
	cfg.Paths.RunDir = filepath.Join(dir, "run")
	cfg.GPU.SimLedger = filepath.Join(dir, "run", "ledger.json")
	cfg.Gateway.Listen = "127.0.0.1:0"
	cfg.Gateway.ControlSocket = filepath.Join(dir, "run", "vagentd.sock")
	for _, a := range cfg.Agents {
		a.Listen = ""
	}
	key, err := enginekey.Ensure(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cfg, key
}

// slowEngine is an engine that streams n chunks, one every gap.
func slowEngine(t *testing.T, key string, n int, gap time.Duration) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/health":
			return
		case "/v1/chat/completions":
		default:
			http.NotFound(w, r)
			return
		}
		if r.Header.Get("Authorization") != "Bearer "+key {
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"error":"Unauthorized"}`))
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range n {
			fmt.Fprintf(w, "data: {\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"model\":\"dev\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"t%d \"}}]}\n\n", i)
			w.(http.Flusher).Flush()
			time.Sleep(gap)
		}
		fmt.Fprint(w, "data: [DONE]\n\n")
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestRunDrainsAndLeavesAgentsRunning stops vagentd (its context ends, as
// on SIGTERM) while a stream is in flight: the stream finishes whole, the
// listeners close, Run returns nil, and no agent is stopped.
func TestRunDrainsAndLeavesAgentsRunning(t *testing.T) {
	cfg, key := testConfig(t)
	cfg.Gateway.DrainTimeout.Duration = 10 * time.Second
	const chunks = 6
	engine := slowEngine(t, key, chunks, 100*time.Millisecond)
	cfg.Agent("dev").Port = engine.Listener.Addr().(*net.TCPAddr).Port
	sd := &fakeSystemd{active: map[string]bool{"vagent@dev.service": true}}

	var mu sync.Mutex
	var states []string
	ready := make(chan net.Addr, 1)
	var logs bytes.Buffer
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, cfg, Options{
			Log:     NewLogger(&syncWriter{w: &logs}, 0),
			Systemd: sd,
			Notify: func(s string) error {
				mu.Lock()
				states = append(states, s)
				mu.Unlock()
				return nil
			},
			Ready: func(api, _ net.Addr) { ready <- api },
		})
	}()
	var addr net.Addr
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatalf("Run: %v\n%s", err, logs.String())
	case <-time.After(5 * time.Second):
		t.Fatal("not ready after 5s")
	}
	if fi, err := os.Stat(cfg.Gateway.ControlSocket); err != nil || fi.Mode().Perm() != 0o660 {
		t.Errorf("control socket: %v %v", fi, err)
	}

	body := `{"model":"dev","messages":[{"role":"user","content":"hi"}],"stream":true}`
	resp, err := http.Post("http://"+addr.String()+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stream: %s", resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	got, sawDone := 0, false
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "data: ") {
			continue
		}
		if line == "data: [DONE]" {
			sawDone = true
			break
		}
		if strings.Contains(line, `"error"`) {
			t.Fatalf("error event during the drain: %s", line)
		}
		got++
		if got == 1 {
			stop() // SIGTERM
		}
	}
	if got != chunks || !sawDone {
		t.Errorf("stream in flight at stop: %d of %d chunks, [DONE] %v", got, chunks, sawDone)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after stop: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if _, err := net.DialTimeout("tcp", addr.String(), time.Second); err == nil {
		t.Error("the gateway still accepts connections after Run returned")
	}
	if _, err := os.Stat(cfg.Gateway.ControlSocket); err == nil {
		t.Error("control socket left behind after a clean stop")
	}
	for _, c := range sd.Calls() {
		if strings.HasPrefix(c, "stop ") {
			t.Errorf("vagentd stopped an agent while stopping itself: %s", c)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(states) < 2 || !strings.HasPrefix(states[0], "READY=1") || states[len(states)-1] != "STOPPING=1" {
		t.Errorf("sd_notify states %q: want READY=1 first and STOPPING=1 last", states)
	}
	if !strings.Contains(logs.String(), "agents keep running") {
		t.Errorf("no log line saying agents keep running:\n%s", logs.String())
	}
}

type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// TestRunCutsStreamsPastShutdownTimeout stops vagentd while a stream that
// would outlast gateway.shutdown_timeout is in flight: past the bound the
// client gets an error event that says so, then [DONE], never a bare EOF,
// and Run returns nil.
func TestRunCutsStreamsPastShutdownTimeout(t *testing.T) {
	cfg, _ := testConfig(t)
	cfg.Gateway.ShutdownTimeout.Duration = 200 * time.Millisecond
	// An engine whose stream ends only when the gateway hangs up.
	engine := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/chat/completions" {
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for {
			fmt.Fprint(w, "data: {\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"model\":\"dev\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"t \"}}]}\n\n")
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}))
	t.Cleanup(engine.Close)
	cfg.Agent("dev").Port = engine.Listener.Addr().(*net.TCPAddr).Port
	sd := &fakeSystemd{active: map[string]bool{"vagent@dev.service": true}}

	ready := make(chan net.Addr, 1)
	var logs bytes.Buffer
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, cfg, Options{
			Log:     NewLogger(&syncWriter{w: &logs}, 0),
			Systemd: sd,
			Notify:  func(string) error { return nil },
			Ready:   func(api, _ net.Addr) { ready <- api },
		})
	}()
	var addr net.Addr
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatalf("Run: %v\n%s", err, logs.String())
	}
	body := `{"model":"dev","messages":[{"role":"user","content":"hi"}],"stream":true}`
	resp, err := http.Post("http://"+addr.String()+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	var last []string
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "data: ") {
			continue
		}
		if len(last) == 0 {
			stop() // SIGTERM
		}
		last = append(last, line)
	}
	n := len(last)
	if n < 3 || last[n-1] != "data: [DONE]" || !strings.Contains(last[n-2], `"error"`) ||
		!strings.Contains(last[n-2], "did not finish within gateway.shutdown_timeout (200ms)") {
		t.Fatalf("stream cut by the shutdown ended with %q; want an error event naming gateway.shutdown_timeout, then [DONE]", last[max(0, n-2):])
	}
	if err := <-done; err != nil {
		t.Errorf("Run after stop: %v", err)
	}
	if !strings.Contains(logs.String(), "cutting them with an error") {
		t.Errorf("no log line about the cut:\n%s", logs.String())
	}
}

// systemd SIGKILLs a vagentd that outlasts TimeoutStopSec: the shipped unit
// must give the default shutdown_timeout, the cut requests' grace and the
// gateway loop's stop time to end.
func TestUnitStopTimeoutOutlastsShutdown(t *testing.T) {
	b, err := os.ReadFile("../packaging/vagentd.service")
	if err != nil {
		t.Fatal(err)
	}
	var stop time.Duration
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "TimeoutStopSec="); ok {
			if stop, err = time.ParseDuration(v); err != nil {
				t.Fatalf("packaging/vagentd.service: TimeoutStopSec=%s: %v", v, err)
			}
		}
	}
	need := config.Defaults().Gateway.ShutdownTimeout.Duration + cutGrace + 5*time.Second
	if stop <= need {
		t.Errorf("packaging/vagentd.service: TimeoutStopSec=%s, want more than %s (gateway.shutdown_timeout's default, the cut's grace, the loop's stop)", stop, need)
	}
}
