package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/supervisor"
)

const testEngineKey = "engine-secret-0123456789"

// seen is a request as an engine received it.
type seen struct {
	Path   string
	Auth   string
	Body   map[string]any
	Raw    []byte
	Header http.Header
}

// fakeEngine is an agent's engine: an HTTP server answering like vLLM
// unless the test sets handler.
type fakeEngine struct {
	t    testing.TB
	srv  *httptest.Server
	port int

	mu      sync.Mutex
	reqs    []seen
	handler http.HandlerFunc
}

func newEngine(t testing.TB) *fakeEngine {
	e := &fakeEngine{t: t}
	e.srv = httptest.NewServer(http.HandlerFunc(e.serve))
	t.Cleanup(e.srv.Close)
	_, p, _ := net.SplitHostPort(e.srv.Listener.Addr().String())
	e.port, _ = strconv.Atoi(p)
	return e
}

func (e *fakeEngine) setHandler(h http.HandlerFunc) {
	e.mu.Lock()
	e.handler = h
	e.mu.Unlock()
}

func (e *fakeEngine) requests() []seen {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.reqs)
}

func (e *fakeEngine) serve(w http.ResponseWriter, r *http.Request) {
	raw, _ := io.ReadAll(r.Body)
	var body map[string]any
	json.Unmarshal(raw, &body)
	e.mu.Lock()
	e.reqs = append(e.reqs, seen{Path: r.URL.Path, Auth: r.Header.Get("Authorization"), Body: body, Raw: raw, Header: r.Header.Clone()})
	h := e.handler
	e.mu.Unlock()
	if r.Header.Get("Authorization") != "Bearer "+testEngineKey {
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, `{"error":"Unauthorized"}`)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(raw))
	if h != nil {
		h(w, r)
		return
	}
	vllmLike(w, r, body)
}

// vllmLike answers a completion the way vLLM does: JSON with usage, or SSE
// chunks, an optional usage chunk and [DONE].
func vllmLike(w http.ResponseWriter, _ *http.Request, body map[string]any) {
	model, _ := body["model"].(string)
	if stream, _ := body["stream"].(bool); stream {
		w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		for i := range 3 {
			fmt.Fprintf(w, "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":%q,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"t%d\"}}]}\n\n", model, i)
			w.(http.Flusher).Flush()
		}
		if so, _ := body["stream_options"].(map[string]any); so != nil && so["include_usage"] == true {
			fmt.Fprintf(w, "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":%q,\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"total_tokens\":8,\"completion_tokens\":3}}\n\n", model)
		}
		io.WriteString(w, "data: [DONE]\n\n")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"id":"c","object":"chat.completion","model":%q,"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"total_tokens":12,"completion_tokens":7}}`, model)
}

// fakeSwitcher stands in for the supervisor: agents that cannot share the
// GPU (by utilization) are evicted through BeforeEvict, as the real one does.
type fakeSwitcher struct {
	t   testing.TB
	cfg *config.Config
	g   *Gateway

	mu       sync.Mutex
	running  map[string]bool
	asleep   map[string]bool // sleep agents put to sleep, not stopped
	calls    []string
	gates    map[string]chan struct{}
	fail     map[string]error
	ctxErrs  map[string]error
	inSwitch map[string]int
	overlaps int
	starting int
}

func newSwitcher(t testing.TB, cfg *config.Config) *fakeSwitcher {
	return &fakeSwitcher{t: t, cfg: cfg, running: map[string]bool{}, asleep: map[string]bool{}, gates: map[string]chan struct{}{},
		fail: map[string]error{}, ctxErrs: map[string]error{}, inSwitch: map[string]int{}}
}

func (f *fakeSwitcher) record(s string) {
	f.mu.Lock()
	f.calls = append(f.calls, s)
	f.mu.Unlock()
}

// gate makes Switch(agent) wait until the returned function is called.
func (f *fakeSwitcher) gate(agent string) func() {
	ch := make(chan struct{})
	f.mu.Lock()
	f.gates[agent] = ch
	f.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(ch) }) }
}

func (f *fakeSwitcher) callList() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeSwitcher) count(prefix string) int {
	n := 0
	for _, c := range f.callList() {
		if strings.HasPrefix(c, prefix) {
			n++
		}
	}
	return n
}

func (f *fakeSwitcher) isRunning(a string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.running[a]
}

func (f *fakeSwitcher) Switch(ctx context.Context, agent string) (*supervisor.Result, error) {
	f.record("switch " + agent)
	a := f.cfg.Agent(agent)
	if a == nil {
		return nil, fmt.Errorf("unknown agent %q", agent)
	}
	f.mu.Lock()
	if f.running[agent] {
		f.mu.Unlock()
		return &supervisor.Result{Agent: agent, AlreadyRunning: true}, nil
	}
	f.starting++
	if f.starting > 1 {
		f.overlaps++
	}
	gate := f.gates[agent]
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.starting--
		f.mu.Unlock()
	}()
	t0 := time.Now()
	res := &supervisor.Result{Agent: agent}
	for _, o := range f.cfg.Agents {
		if o == a || !f.isRunning(o.Name) || !config.CannotShare(a, o, 0, 0) {
			continue
		}
		if o.Pinned {
			return res, fmt.Errorf("agent %s cannot run beside %s, which is pinned (pinned = true in %s)", agent, o.Name, o.File)
		}
		if err := f.g.BeforeEvict(ctx, o.Name); err != nil {
			return res, fmt.Errorf("evict %s for %s: %w", o.Name, agent, err)
		}
		f.mu.Lock()
		f.running[o.Name] = false
		if f.cfg.Sleeps(o) {
			f.asleep[o.Name] = true
			res.Slept = append(res.Slept, supervisor.Sleep{Agent: o.Name, Level: 1, Duration: time.Millisecond})
		} else {
			res.Evicted = append(res.Evicted, o.Name)
		}
		f.mu.Unlock()
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			f.mu.Lock()
			f.ctxErrs[agent] = ctx.Err()
			f.mu.Unlock()
			return res, ctx.Err()
		}
	}
	f.mu.Lock()
	err := f.fail[agent]
	var re *supervisor.RestoreError
	if errors.As(err, &re) {
		// The supervisor brings back what it evicted for a failed start.
		for _, n := range re.Restored {
			f.running[n] = true
		}
		res.Restored = re.Restored
	}
	if err == nil {
		f.running[agent] = true
		if f.asleep[agent] {
			res.Woken, res.WakeDuration = true, 2*time.Millisecond
			delete(f.asleep, agent)
		}
	}
	f.mu.Unlock()
	res.Duration = time.Since(t0)
	return res, err
}

func (f *fakeSwitcher) Stop(ctx context.Context, agent string) error {
	f.record("stop " + agent)
	f.mu.Lock()
	f.running[agent] = false
	delete(f.asleep, agent)
	f.mu.Unlock()
	return nil
}

func (f *fakeSwitcher) Status(ctx context.Context) ([]supervisor.AgentStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []supervisor.AgentStatus
	for _, a := range f.cfg.Agents {
		st := supervisor.AgentStatus{Agent: a.Name, Unit: a.Unit(), LoadState: "loaded", ActiveState: "inactive", SubState: "dead", Port: a.Port, GPUs: a.GPUs}
		if f.running[a.Name] || f.asleep[a.Name] {
			st.ActiveState, st.SubState, st.Healthy = "active", "running", true
			st.Sleeping = f.asleep[a.Name]
		}
		out = append(out, st)
	}
	return out, nil
}

// env is a gateway under test with its engines and switcher.
type env struct {
	t       testing.TB
	cfg     *config.Config
	engines map[string]*fakeEngine
	sw      *fakeSwitcher
	g       *Gateway
	srv     *httptest.Server
	reg     *prometheus.Registry
	logs    *syncBuf
}

type envOpts struct {
	agents []string
	// util per agent (default 0.9: every pair conflicts).
	util   map[string]float64
	keys   *Keys
	modify func(*config.Config)
	noRun  bool
}

func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	if len(o.agents) == 0 {
		o.agents = []string{"a", "b"}
	}
	c := config.Defaults()
	c.Path = "/test/vagent.toml"
	c.Gateway.QueueLength = 100
	c.Gateway.MaxWait = config.Duration{Duration: time.Minute}
	c.Gateway.DrainTimeout = config.Duration{Duration: time.Minute}
	c.Gateway.FairnessWindow = config.Duration{Duration: time.Minute}
	c.Gateway.RequestTimeout = config.Duration{Duration: time.Minute}
	e := &env{t: t, cfg: &c, engines: map[string]*fakeEngine{}, logs: &syncBuf{}}
	for _, name := range o.agents {
		eng := newEngine(t)
		e.engines[name] = eng
		util := 0.9
		if u, ok := o.util[name]; ok {
			util = u
		}
		c.Agents = append(c.Agents, &config.Agent{
			Name: name, File: "/test/agents/" + name + ".toml", Model: "org/" + name + "-7b",
			Port: eng.port, GPUs: []int{0}, GPUMemoryUtilization: util, TensorParallelSize: 1,
		})
	}
	if o.modify != nil {
		o.modify(&c)
	}
	e.sw = newSwitcher(t, &c)
	e.reg = prometheus.NewRegistry()
	g, err := New(Options{Config: &c, Switcher: e.sw, Keys: o.keys, EngineKey: testEngineKey,
		Log: newTestLogger(e.logs), Registry: e.reg, SyncInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	e.sw.g = g
	e.g = g
	e.srv = httptest.NewServer(g.Handler())
	t.Cleanup(e.srv.Close)
	if !o.noRun {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { g.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	return e
}

// post sends a JSON body to the gateway.
func (e *env) post(ctx context.Context, path string, body any, hdr ...string) (*http.Response, error) {
	var b []byte
	switch v := body.(type) {
	case string:
		b = []byte(v)
	case []byte:
		b = v
	default:
		b, _ = json.Marshal(v)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.srv.URL+path, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	return http.DefaultClient.Do(req)
}

// chat posts a chat completion for model and returns status and body.
func (e *env) chat(model string, hdr ...string) (int, []byte) {
	e.t.Helper()
	resp, err := e.post(context.Background(), "/v1/chat/completions", chatBody(model, false), hdr...)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func chatBody(model string, stream bool) map[string]any {
	m := map[string]any{"model": model, "messages": []any{map[string]any{"role": "user", "content": "hello"}}}
	if stream {
		m["stream"] = true
	}
	return m
}

// waitFor polls cond until it holds, failing the test after a generous bound.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (e *env) queued(agent string) int {
	e.g.mu.Lock()
	defer e.g.mu.Unlock()
	return len(e.g.byAgent[agent].waiters)
}

func (e *env) inflight(agent string) int {
	e.g.mu.Lock()
	defer e.g.mu.Unlock()
	return e.g.byAgent[agent].inflight
}

func (e *env) phase(agent string) phase {
	e.g.mu.Lock()
	defer e.g.mu.Unlock()
	return e.g.byAgent[agent].phase
}

// sseEvents reads a whole SSE body into its data payloads.
func sseEvents(t testing.TB, r io.Reader) []string {
	t.Helper()
	var out []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			out = append(out, p)
		}
	}
	return out
}

// errorOf decodes an OpenAI-shaped error body.
func errorOf(t testing.TB, b []byte) errorInfo {
	t.Helper()
	var eb errorBody
	if err := json.Unmarshal(b, &eb); err != nil || eb.Error.Message == "" {
		t.Fatalf("not an OpenAI-shaped error: %s", b)
	}
	return eb.Error
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newTestLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// logLines returns the log records with msg.
func (e *env) logLines(msg string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(e.logs.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// listenRetry listens on addr again, retrying while the old socket lingers.
func listenRetry(addr string) (net.Listener, error) {
	var err error
	for range 100 {
		var ln net.Listener
		if ln, err = net.Listen("tcp", addr); err == nil {
			return ln, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil, err
}
