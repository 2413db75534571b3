package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/controlapi"
	"github.com/vagent-dev/vagent/supervisor"
)

// control calls the control API through ControlHandler (the unix socket's).
func (e *env) control(method, path string, body any) (int, []byte) {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req := httptest.NewRequest(method, path, rd)
	w := httptest.NewRecorder()
	e.g.ControlHandler().ServeHTTP(w, req)
	return w.Code, w.Body.Bytes()
}

func TestControlSwitchLoadStopStatus(t *testing.T) {
	e := newEnv(t, envOpts{modify: func(c *config.Config) { c.Agent("b").Aliases = []string{"planner"} }})
	st, b := e.control("POST", "/vagent/v1/switch", controlapi.Request{Agent: "a"})
	if st != 200 {
		t.Fatalf("switch: %d %s", st, b)
	}
	var res supervisor.Result
	json.Unmarshal(b, &res)
	if res.Agent != "a" || res.AlreadyRunning {
		t.Errorf("result %+v", res)
	}
	// load b by alias, pinned: a is evicted.
	pin := true
	st, b = e.control("POST", "/vagent/v1/load", controlapi.Request{Agent: "planner", Pin: &pin})
	if st != 200 {
		t.Fatalf("load: %d %s", st, b)
	}
	json.Unmarshal(b, &res)
	if res.Agent != "b" || len(res.Evicted) != 1 || res.Evicted[0] != "a" {
		t.Errorf("load result %+v", res)
	}
	// a cannot evict the pinned b: 409, and b still runs.
	st, b = e.control("POST", "/vagent/v1/switch", controlapi.Request{Agent: "a"})
	if st != 409 {
		t.Fatalf("switch over a pinned agent: %d %s", st, b)
	}
	if ei := errorOf(t, b); !strings.Contains(ei.Message, "pinned") {
		t.Errorf("message %q", ei.Message)
	}
	if !e.sw.isRunning("b") || e.phase("b") != phaseRunning {
		t.Errorf("b no longer runs")
	}
	// An inference request for a gets a clear error, not a hang.
	if st, body := e.chat("a"); st != 503 || !strings.Contains(string(body), "pinned") {
		t.Errorf("request for a while b is pinned: %d %s", st, body)
	}

	st, b = e.control("GET", "/vagent/v1/status", nil)
	if st != 200 {
		t.Fatalf("status: %d %s", st, b)
	}
	var sts []controlapi.AgentState
	if err := json.Unmarshal(b, &sts); err != nil {
		t.Fatal(err)
	}
	byName := map[string]controlapi.AgentState{}
	for _, s := range sts {
		byName[s.Agent] = s
	}
	if s := byName["b"]; s.State != StateRunning || !s.Pinned || s.Unit != "vagent@b.service" {
		t.Errorf("b: %+v", s)
	}
	if s := byName["a"]; s.State != StateStopped || s.Pinned {
		t.Errorf("a: %+v", s)
	}
	// The JSON carries the embedded status's fields and the gateway's.
	for _, k := range []string{`"agent":"b"`, `"active_state":"active"`, `"state":"running"`, `"in_flight":0`, `"queued":0`, `"pinned":true`} {
		if !strings.Contains(string(b), k) {
			t.Errorf("status JSON lacks %s: %s", k, b)
		}
	}

	// stop drops the pin.
	st, b = e.control("POST", "/vagent/v1/stop", controlapi.Request{Agent: "b"})
	if st != 200 {
		t.Fatalf("stop: %d %s", st, b)
	}
	if e.sw.isRunning("b") || e.phase("b") != phaseStopped {
		t.Errorf("b still runs")
	}
	if st, b := e.control("POST", "/vagent/v1/switch", controlapi.Request{Agent: "a"}); st != 200 {
		t.Errorf("switch after unpin: %d %s", st, b)
	}
}

func TestControlErrors(t *testing.T) {
	e := newEnv(t, envOpts{})
	if st, b := e.control("POST", "/vagent/v1/switch", controlapi.Request{Agent: "zz"}); st != 404 || !strings.Contains(string(b), "a, b") {
		t.Errorf("unknown agent: %d %s", st, b)
	}
	if st, _ := e.control("POST", "/vagent/v1/switch", "not an object"); st != 400 {
		t.Errorf("bad body: %d", st)
	}
	if st, _ := e.control("GET", "/vagent/v1/switch", nil); st != 405 {
		t.Errorf("GET switch: %d", st)
	}
	e.sw.mu.Lock()
	e.sw.fail["a"] = &supervisor.StartError{Agent: "a", Reason: "exited", RootCause: "torch.OutOfMemoryError: CUDA out of memory."}
	e.sw.fail["b"] = &supervisor.FitError{Agent: "b", Need: 20 << 30, Free: 10 << 30, Why: "the GPU has only 16.00 GiB in all"}
	e.sw.mu.Unlock()
	st, b := e.control("POST", "/vagent/v1/switch", controlapi.Request{Agent: "a"})
	if st != 500 || !strings.Contains(string(b), "CUDA out of memory") {
		t.Errorf("start failure: %d %s", st, b)
	}
	st, b = e.control("POST", "/vagent/v1/switch", controlapi.Request{Agent: "b"})
	if st != 409 || !strings.Contains(string(b), "does not fit") {
		t.Errorf("fit failure: %d %s", st, b)
	}
}

// A stop through the control API fails the requests waiting for the agent
// and cancels its start.
func TestControlStopCancelsStart(t *testing.T) {
	e := newEnv(t, envOpts{})
	open := e.sw.gate("a")
	defer open()
	waiting := e.goChat(t.Context(), "a")
	waitFor(t, "a starting", func() bool { return e.phase("a") == phaseStarting })
	st, b := e.control("POST", "/vagent/v1/stop", controlapi.Request{Agent: "a"})
	if st != 200 {
		t.Fatalf("stop: %d %s", st, b)
	}
	r := <-waiting
	if r.status != 503 || !strings.Contains(string(r.body), "stopped by an administrator") {
		t.Errorf("waiting request: %d %s", r.status, r.body)
	}
	if e.phase("a") != phaseStopped || e.sw.count("stop a") == 0 {
		t.Errorf("a not stopped: %v", e.sw.callList())
	}
}

func TestLastUsed(t *testing.T) {
	e := newEnv(t, envOpts{})
	if !e.g.LastUsed("a").IsZero() {
		t.Errorf("unused agent has a last use")
	}
	t0 := time.Now()
	e.chat("a")
	if lu := e.g.LastUsed("a"); lu.Before(t0) {
		t.Errorf("LastUsed %v before the request", lu)
	}
	if !e.g.LastUsed("nope").IsZero() {
		t.Errorf("unknown agent")
	}
}

func TestMetricsNamesAndLint(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.chat("a")
	e.chat("b") // a switch from a to b
	e.chat("nope")
	resp, err := e.post(t.Context(), "/v1/chat/completions", chatBody("b", true))
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	waitFor(t, "log lines", func() bool { return len(e.logLines("request")) == 4 })

	problems, err := testutil.GatherAndLint(e.reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, mf := range mfs {
		have[mf.GetName()] = true
	}
	for _, n := range []string{
		"vagent_agent_state", "vagent_switches_total", "vagent_switch_duration_seconds",
		"vagent_queue_depth", "vagent_queue_wait_seconds", "vagent_requests_total",
		"vagent_request_duration_seconds", "vagent_time_to_first_token_seconds", "vagent_tokens_total",
		"vagent_requests_in_flight", "vagent_agent_pinned", "vagent_requests_cut_total", "vagent_start_failures_total",
	} {
		if !have[n] {
			t.Errorf("metric %s missing", n)
		}
	}
	if v := gaugeValue(t, e.reg, "vagent_agent_state", map[string]string{"agent": "b", "state": "running"}); v != 1 {
		t.Errorf("b running gauge %v", v)
	}
	if v := gaugeValue(t, e.reg, "vagent_agent_state", map[string]string{"agent": "a", "state": "stopped"}); v != 1 {
		t.Errorf("a stopped gauge %v", v)
	}
	if v := counterValue(t, e.reg, "vagent_switches_total", map[string]string{"from": "a", "to": "b", "reason": "request"}); v != 1 {
		t.Errorf("switch a→b %v", v)
	}
	if v := counterValue(t, e.reg, "vagent_requests_total", map[string]string{"agent": "", "status": "404"}); v != 1 {
		t.Errorf("unrouted 404s %v", v)
	}
	if v := counterValue(t, e.reg, "vagent_requests_total", map[string]string{"agent": "b", "status": "200"}); v != 2 {
		t.Errorf("b 200s %v", v)
	}
}

func TestVRAMMetric(t *testing.T) {
	e := newEnv(t, envOpts{})
	reg := prometheus.NewRegistry()
	g, err := New(Options{Config: e.cfg, Switcher: e.sw, Registry: reg, GPU: fakeGPU{"a": 7 << 30}})
	if err != nil {
		t.Fatal(err)
	}
	_ = g
	if v := gaugeValue(t, reg, "vagent_vram_bytes", map[string]string{"agent": "a"}); v != 7<<30 {
		t.Errorf("vram a %v", v)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint %v %v", problems, err)
	}
}

type fakeGPU map[string]uint64

func (f fakeGPU) Memory(context.Context) (map[int]supervisor.GPUMemory, error) {
	return map[int]supervisor.GPUMemory{0: {Total: 16 << 30, Free: 8 << 30}}, nil
}

func (f fakeGPU) AgentBytes(context.Context) (map[string]uint64, error) { return f, nil }

// find returns the metric of family name whose labels include want.
func find(t *testing.T, reg prometheus.Gatherer, name string, want map[string]string) *dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue next
				}
			}
			return m
		}
	}
	return nil
}

func counterValue(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	m := find(t, reg, name, labels)
	if m == nil {
		return 0
	}
	return m.GetCounter().GetValue()
}

func gaugeValue(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	m := find(t, reg, name, labels)
	if m == nil {
		return -1
	}
	return m.GetGauge().GetValue()
}

func histogramCount(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string) uint64 {
	t.Helper()
	m := find(t, reg, name, labels)
	if m == nil {
		return 0
	}
	return m.GetHistogram().GetSampleCount()
}

func TestControlAPIWithoutKeysIsOnlyOnTheSocket(t *testing.T) {
	e := newEnv(t, envOpts{})
	req := httptest.NewRequest("GET", "/vagent/v1/status", nil)
	w := httptest.NewRecorder()
	e.g.Handler().ServeHTTP(w, req)
	if w.Code != 403 || !strings.Contains(w.Body.String(), "only on the control socket") {
		t.Fatalf("control API over TCP without keys: %d %s; want 403", w.Code, w.Body)
	}
	if st, b := e.control("GET", "/vagent/v1/status", nil); st != 200 {
		t.Fatalf("control socket: %d %s", st, b)
	}
}

// TestMountControl: a mounted control route (pipeline runs) is served for
// its path and below on the control socket, and on the gateway's port for
// admin keys only; the gateway's own routes stay its own.
func TestMountControl(t *testing.T) {
	e := newEnv(t, envOpts{keys: testKeys(t)})
	e.g.MountControl(controlapi.PathRuns, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("runs:" + r.URL.Path))
	}))
	for path, want := range map[string]string{
		controlapi.PathRuns:                 "runs:" + controlapi.PathRuns,
		controlapi.PathRuns + "/run_1/info": "runs:" + controlapi.PathRuns + "/run_1/info",
		controlapi.Prefix + "runsx":         "no control route",
		controlapi.PathStatus:               `"agent":"a"`,
	} {
		if st, b := e.control("GET", path, nil); !strings.Contains(string(b), want) {
			t.Errorf("socket %s: %d %s, want %q", path, st, b, want)
		}
	}
	get := func(key string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, e.srv.URL+controlapi.PathRuns, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if st, b := get(adminKey); st != 200 || b != "runs:"+controlapi.PathRuns {
		t.Errorf("admin key: %d %s", st, b)
	}
	if st, b := get(bobKey); st != 403 {
		t.Errorf("inference key: %d %s", st, b)
	}
}
