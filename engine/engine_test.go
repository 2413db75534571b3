package engine

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vagent-dev/vagent/config"
)

// serve runs h on l until the test ends.
func serve(t *testing.T, l net.Listener, h http.HandlerFunc) {
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

// fakeVLLM answers the routes the Client calls as vLLM does, and records
// them.
type fakeVLLM struct {
	mu     sync.Mutex
	calls  []string
	asleep bool
	key    string
}

func (f *fakeVLLM) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	body, _ := io.ReadAll(r.Body)
	call := r.Method + " " + r.URL.RequestURI()
	if len(body) > 0 {
		call += " " + string(body)
	}
	f.calls = append(f.calls, call)
	if strings.HasPrefix(r.URL.Path, "/v1/") && r.Header.Get("Authorization") != "Bearer "+f.key {
		http.Error(w, `{"error":"Unauthorized"}`, http.StatusUnauthorized)
		return
	}
	switch r.URL.Path {
	case "/health":
	case "/sleep":
		f.asleep = true
	case "/wake_up":
		f.asleep = false
	case "/is_sleeping":
		if f.asleep {
			io.WriteString(w, `{"is_sleeping":true}`)
		} else {
			io.WriteString(w, `{"is_sleeping":false}`)
		}
	case "/collective_rpc", "/reset_prefix_cache", "/v1/completions":
	default:
		http.NotFound(w, r)
	}
}

func TestEndpointTCP(t *testing.T) {
	ep := TCP("127.0.0.1", 8001)
	if ep.Network() != "tcp" || ep.Address() != "127.0.0.1:8001" || ep.String() != "127.0.0.1:8001" {
		t.Errorf("TCP endpoint: %s %s %s", ep.Network(), ep.Address(), ep)
	}
	if got := ep.URL("/health"); got != "http://127.0.0.1:8001/health" {
		t.Errorf("URL = %s", got)
	}
}

// TestEndpointPerAgent: an agent without a port is served on its socket
// under run_dir/engines, one with a port on the loopback.
func TestEndpointPerAgent(t *testing.T) {
	c := config.Defaults()
	if got := (VLLM{}).Endpoint(&c, &config.Agent{Name: "dev", Port: 8002}); got != TCP("127.0.0.1", 8002) {
		t.Errorf("agent with a port: endpoint = %s", got)
	}
	got := (VLLM{Sim: true}).Endpoint(&c, &config.Agent{Name: "dev"})
	if got != Unix("/run/vagent/engines/dev.sock") || got.Network() != "unix" {
		t.Errorf("agent without a port: endpoint = %s", got)
	}
}

// TestCommandListens: the words that say where the engine listens, per
// vLLM version and port; --uds replaces --host and --port (vLLM ignores
// them beside it).
func TestCommandListens(t *testing.T) {
	for _, tc := range []struct {
		version string
		port    int
		want    string // the words after the model, up to --gpu-memory-utilization
		err     string
	}{
		{"0.18.0", 0, "--uds /run/vagent/engines/dev.sock", ""},
		{"0.12.0", 0, "--uds /run/vagent/engines/dev.sock", ""},
		{"0.10.1", 0, "--uds /run/vagent/engines/dev.sock", ""},
		{"0.18.0", 8001, "--host 127.0.0.1 --port 8001", ""},
		{"0.10.0", 8001, "--host 127.0.0.1 --port 8001", ""},
		{"0.9.2", 0, "", "port: must be set: vLLM 0.9.2 (engine.vllm_version) has no --uds"},
	} {
		c := config.Defaults()
		c.Engine.VLLMVersion = tc.version
		c.Engine.Kind = config.EngineSim
		c.Engine.SimBinary = "/usr/bin/vllm-sim"
		a := &config.Agent{Name: "dev", File: "/etc/vagent/agents/dev.toml", Model: "org/m", Port: tc.port, GPUMemoryUtilization: 0.5, GPUs: []int{0}}
		args, errs := Of(&c).Command(&c, a)
		if tc.err != "" {
			if len(errs) == 0 || !strings.Contains(errs.Error(), tc.err) {
				t.Errorf("%s port %d: errors %v, want %q", tc.version, tc.port, errs, tc.err)
			}
			continue
		}
		if len(errs) > 0 {
			t.Errorf("%s port %d: %v", tc.version, tc.port, errs)
			continue
		}
		var words []string
		for _, x := range args[3:] {
			if x.Val == "--gpu-memory-utilization" {
				break
			}
			words = append(words, x.Val)
		}
		if got := strings.Join(words, " "); got != tc.want {
			t.Errorf("%s port %d: %q, want %q", tc.version, tc.port, got, tc.want)
		}
	}
}

// TestCommandSocketTooLong: a socket path sun_path cannot hold is refused
// naming run_dir.
func TestCommandSocketTooLong(t *testing.T) {
	c := config.Defaults()
	c.Paths.RunDir = "/run/" + strings.Repeat("r", 90)
	a := &config.Agent{Name: "dev", Model: "org/m", GPUMemoryUtilization: 0.5, GPUs: []int{0}}
	_, errs := Of(&c).Command(&c, a)
	if len(errs) == 0 || !strings.Contains(errs.Error(), "paths.run_dir") || !strings.Contains(errs.Error(), "(107)") {
		t.Errorf("errors = %v", errs)
	}
}

func TestUnixSockets(t *testing.T) {
	for v, want := range map[string]bool{"0.9.2": false, "0.10.0": false, "0.10.1": true, "0.10.1.1": true, "0.10.2rc1": true, "0.11.0": true, "0.12.0": true, "0.18.0rc2": true, "1.0": true, "junk": true} {
		if UnixSockets(v) != want {
			t.Errorf("UnixSockets(%q) = %v", v, !want)
		}
	}
}

// TestClientOverUnixSocket drives the whole sleep sequence through an
// engine that listens on a unix socket: nothing in the client may assume a
// TCP address.
func TestClientOverUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "engine.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeVLLM{key: "k"}
	serve(t, l, f.ServeHTTP)
	ep := Unix(path)
	if ep.String() != "unix:"+path || ep.URL("/x") != "http://localhost/x" {
		t.Errorf("unix endpoint: %s %s", ep, ep.URL("/x"))
	}
	exerciseClient(t, VLLM{}.Client(ep, "k"), f)
}

func TestClientOverTCP(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeVLLM{key: "k"}
	serve(t, l, f.ServeHTTP)
	exerciseClient(t, VLLM{}.Client(TCP("127.0.0.1", l.Addr().(*net.TCPAddr).Port), "k"), f)
}

func exerciseClient(t *testing.T, c Client, f *fakeVLLM) {
	t.Helper()
	ctx := context.Background()
	if !c.Healthy(ctx) {
		t.Fatal("not healthy")
	}
	if err := c.Sleep(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if asleep, err := c.IsSleeping(ctx); err != nil || !asleep {
		t.Fatalf("IsSleeping after Sleep = %v, %v", asleep, err)
	}
	if err := c.Wake(ctx); err != nil {
		t.Fatal(err)
	}
	if asleep, err := c.IsSleeping(ctx); err != nil || asleep {
		t.Fatalf("IsSleeping after Wake = %v, %v", asleep, err)
	}
	if err := c.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WarmUp(ctx, "m"); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"GET /health",
		"POST /sleep?level=2",
		"GET /is_sleeping",
		"POST /wake_up",
		"GET /is_sleeping",
		`POST /collective_rpc {"method":"reload_weights"}`,
		"POST /reset_prefix_cache",
		`POST /v1/completions {"max_tokens":1,"model":"m","prompt":"Hi","temperature":0}`,
	}
	if got := strings.Join(f.calls, "\n"); got != strings.Join(want, "\n") {
		t.Errorf("calls:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
	f.key = "other"
	if err := c.WarmUp(ctx, "m"); !IsUnauthorized(err) {
		t.Errorf("WarmUp with a wrong key: %v, want a 401", err)
	}
	if err := c.Sleep(ctx, 1); err != nil {
		t.Fatal(err)
	}
}

func TestClientErrorNamesCall(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serve(t, l, func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "sleep mode is not enabled", http.StatusInternalServerError)
	})
	c := VLLM{}.Client(TCP("127.0.0.1", l.Addr().(*net.TCPAddr).Port), "")
	err = c.Sleep(context.Background(), 1)
	if err == nil || err.Error() != "POST /sleep?level=1: 500 Internal Server Error: sleep mode is not enabled" {
		t.Errorf("Sleep against a failing engine: %v", err)
	}
	if c.Healthy(context.Background()) {
		t.Error("a 500 on /health counts as healthy")
	}
}

func TestCheckFreeRefusesAnyListener(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	ep := TCP("127.0.0.1", port)
	if err := ep.CheckFree(); !errors.Is(err, ErrInUse) {
		t.Errorf("CheckFree with a listener on the port: %v", err)
	}
	l.Close()
	if err := ep.CheckFree(); err != nil {
		t.Errorf("CheckFree on a free port: %v", err)
	}

	// vLLM binds with SO_REUSEPORT: a second vLLM would start beside it.
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		return errors.Join(err, serr)
	}}
	rl, err := lc.Listen(context.Background(), "tcp", ep.Address())
	if err != nil {
		t.Fatal(err)
	}
	defer rl.Close()
	if err := ep.CheckFree(); !errors.Is(err, ErrInUse) {
		t.Errorf("CheckFree with a SO_REUSEPORT listener on the port: %v", err)
	}
}

func TestCheckFreeUnixSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "engine.sock")
	ep := Unix(path)
	if err := ep.CheckFree(); err != nil {
		t.Errorf("no socket: %v", err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	if err := ep.CheckFree(); !errors.Is(err, ErrInUse) {
		t.Errorf("a listening socket: %v", err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if err := ep.CheckFree(); err != nil {
		t.Errorf("a socket file nobody listens on: %v", err)
	}
}

func TestRoutes(t *testing.T) {
	e := VLLM{}
	for _, p := range []string{"/sleep", "/wake_up", "/is_sleeping", "/collective_rpc", "/reset_prefix_cache", "/v1/load_lora_adapter"} {
		if !e.ControlRoute(p) {
			t.Errorf("%s is not a control route", p)
		}
	}
	for _, p := range []string{"/v1/chat/completions", "/health", "/tokenize"} {
		if e.ControlRoute(p) {
			t.Errorf("%s is a control route", p)
		}
	}
	if !e.ModelRoute("/tokenize") || e.ModelRoute("/sleep") {
		t.Error("model routes")
	}
}

func TestFor(t *testing.T) {
	if e, err := For("vllm"); err != nil || e != (VLLM{}) {
		t.Errorf("For(vllm) = %v, %v", e, err)
	}
	if e, err := For("sim"); err != nil || e != (VLLM{Sim: true}) {
		t.Errorf("For(sim) = %v, %v", e, err)
	}
	if _, err := For("sglang"); err == nil {
		t.Error("For(sglang) is no error")
	}
}

func TestVersions(t *testing.T) {
	for v, want := range map[string]bool{"0.18.0": false, "0.20.2": false, "0.21.0": true, "0.28.1": true, "1.0.0": true, "0.21rc1": true, "junk": true} {
		if GraphsInBudget(v) != want {
			t.Errorf("GraphsInBudget(%q) = %v", v, !want)
		}
	}
	for v, want := range map[string]bool{"0.18.0": false, "0.19.1": false, "0.20rc1": true, "0.20.0": true, "1.2": true, "junk": false} {
		if CUDA13Wheels(v) != want {
			t.Errorf("CUDA13Wheels(%q) = %v", v, !want)
		}
	}
	if VLLMRequirement("0.18.0") != "vllm==0.18.0" {
		t.Error(VLLMRequirement("0.18.0"))
	}
	if _, err := VLLMFlags("0.18.0"); err != nil {
		t.Error(err)
	}
}

func TestCommandSim(t *testing.T) {
	c := config.Defaults()
	c.Engine.Kind = config.EngineSim
	c.Engine.SimBinary = "/usr/bin/vllm-sim"
	a := &config.Agent{Name: "dev", Model: "org/m", Port: 8001, GPUMemoryUtilization: 0.5, GPUs: []int{0}}
	e, _ := For(c.Engine.Kind)
	args, errs := e.Command(&c, a)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	var words []string
	for _, x := range args {
		words = append(words, x.Val)
	}
	want := "/usr/bin/vllm-sim serve org/m --host 127.0.0.1 --port 8001 --gpu-memory-utilization 0.5"
	if got := strings.Join(words, " "); got != want {
		t.Errorf("argv:\n got %s\nwant %s", got, want)
	}
	c.Engine.Kind = config.EngineVLLM
	c.Engine.Venv = "/opt/venv"
	args, _ = Of(&c).Command(&c, a)
	if args[0].Val != "/opt/venv/bin/vllm" || args[0].Field != "engine.venv" {
		t.Errorf("vllm binary = %+v", args[0])
	}
}

// TestSamplingMaxTokensIsNoCap: vLLM caps every request at a max_new_tokens
// given in --override-generation-config, so max_tokens is not rendered
// there; it is the default the gateway injects.
func TestSamplingMaxTokensIsNoCap(t *testing.T) {
	temp, topK, maxTok := 0.2, 40, 512
	a := &config.Agent{Sampling: config.Sampling{Temperature: &temp, TopK: &topK, MaxTokens: &maxTok}}
	gen, err := GenerationConfig(a.Sampling)
	if err != nil || gen != `{"temperature":0.2,"top_k":40}` {
		t.Errorf("GenerationConfig = %s, %v", gen, err)
	}
	if gen, _ := GenerationConfig(config.Sampling{MaxTokens: &maxTok}); gen != "" {
		t.Errorf("max_tokens alone renders %s", gen)
	}
	if n, ok := DefaultMaxTokens(a); !ok || n != 512 {
		t.Errorf("DefaultMaxTokens = %d, %v", n, ok)
	}
	if _, ok := DefaultMaxTokens(&config.Agent{}); ok {
		t.Error("DefaultMaxTokens without [sampling] max_tokens")
	}
	var got []string
	for _, k := range (VLLM{}).Sampling(a) {
		got = append(got, k.Key+"="+k.Value+": "+k.Effect)
	}
	want := []string{
		"temperature=0.2: " + samplingDefault,
		"top_k=40: " + samplingDefault,
		"max_tokens=512: default the gateway puts into requests that set none; not a cap: a request may ask for more",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Sampling:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
