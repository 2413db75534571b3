package docs

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/ctl"
	"github.com/vagent-dev/vagent/e2e/sandbox"
	"github.com/vagent-dev/vagent/engine"
	"github.com/vagent-dev/vagent/gateway"
	"github.com/vagent-dev/vagent/internal/syncbuf"
	"github.com/vagent-dev/vagent/internal/vllmsim"
	"github.com/vagent-dev/vagent/journal"
	"github.com/vagent-dev/vagent/supervisor"
)

// root is the repository, seen from this package's directory.
const root = ".."

// installConfig copies the configuration tree src (relative to the
// repository, like "configs") into a temporary directory, points every path
// of vagent.toml into that directory, applies set to vagent.toml and
// agents[NAME] to agents/NAME.toml (keys as sandbox.SetTOML takes them), and
// returns the path of the copied vagent.toml.
func installConfig(t testing.TB, src string, set map[string]any, agents map[string]map[string]any) string {
	t.Helper()
	return installConfigAt(t, t.TempDir(), src, set, agents)
}

// installConfigAt is installConfig into dir.
func installConfigAt(t testing.TB, dir, src string, set map[string]any, agents map[string]map[string]any) string {
	t.Helper()
	from := filepath.Join(root, src)
	err := filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		to := filepath.Join(dir, rel)
		if d.IsDir() {
			if rel == "examples" {
				return filepath.SkipDir
			}
			return os.MkdirAll(to, 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(to, data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	all := map[string]any{
		"paths.unit_dir":         filepath.Join(dir, "units"),
		"paths.state_dir":        filepath.Join(dir, "state"),
		"paths.run_dir":          filepath.Join(dir, "run"),
		"paths.hf_home":          filepath.Join(dir, "hf"),
		"paths.cache_dir":        filepath.Join(dir, "cache"),
		"gpu.sim_ledger":         filepath.Join(dir, "run", "sim-ledger.json"),
		"gateway.control_socket": filepath.Join(dir, "run", "vagentd.sock"),
		"engine.sim_binary":      filepath.Join(dir, "bin", "vllm-sim"),
	}
	for k, v := range set {
		all[k] = v
	}
	edit(t, filepath.Join(dir, "vagent.toml"), all)
	for name, kv := range agents {
		p := filepath.Join(dir, "agents", name+".toml")
		if _, err := os.Stat(p); err != nil {
			// A new agent: its model and port come first.
			if err := os.WriteFile(p, nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		edit(t, p, kv)
	}
	for _, d := range []string{"units", "state", "run", "hf", "cache"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	return filepath.Join(dir, "vagent.toml")
}

func edit(t testing.TB, path string, set map[string]any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out, err := sandbox.SetTOML(data, set)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
}

func loadConfig(t testing.TB, path string) *config.Config {
	t.Helper()
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("load %s: %v", path, err)
	}
	return cfg
}

// vagentctl runs ctl.Main, as the vagentctl binary does, and returns what
// it printed and its exit status.
func vagentctl(t testing.TB, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	code = ctl.Main(ctx, append([]string{"vagentctl"}, args...), &out, &errOut)
	return out.String(), errOut.String(), code
}

// simResult is one vllm-sim run that ended.
type simResult struct {
	code           int
	stdout, stderr string
}

// output is what journald would hold of the run: its standard output,
// then its standard error (the simulator logs to the first and writes
// tracebacks to the second).
func (r simResult) output() string { return r.stdout + r.stderr }

// runSim runs the simulator in this process (vllmsim.Main, what vllm-sim
// runs) with `serve MODEL --host 127.0.0.1 ARGS...` and a private ledger,
// and waits for it to exit; stop ends a run that started serving.
func runSim(t testing.TB, env map[string]string, model string, args ...string) simResult {
	t.Helper()
	e := map[string]string{
		"VLLM_SIM_LEDGER":       filepath.Join(t.TempDir(), "ledger.json"),
		"VLLM_SIM_LOAD_SECONDS": "0",
		"VLLM_SIM_RELEASE_MS":   "0",
	}
	for k, v := range env {
		e[k] = v
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var out, errOut syncbuf.Buffer
	argv := append([]string{"serve", model, "--host", "127.0.0.1"}, args...)
	code := vllmsim.Main(ctx, argv, func(k string) string { return e[k] }, &out, &errOut)
	return simResult{code, out.String(), errOut.String()}
}

// simServe runs the simulator until the test ends, once it answers /health.
func simServe(t testing.TB, env map[string]string, model string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var out syncbuf.Buffer
	go func() {
		done <- vllmsim.Main(ctx, append([]string{"serve", model, "--host", "127.0.0.1"}, args...),
			func(k string) string { return env[k] }, &out, &out)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	port := ""
	for i, a := range args {
		if a == "--port" && i+1 < len(args) {
			port = args[i+1]
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case code := <-done:
			t.Fatalf("simulator exited with %d:\n%s", code, out.String())
		default:
		}
		resp, err := http.Get("http://127.0.0.1:" + port + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("simulator not healthy after 20s:\n%s", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rootCause is what the supervisor lifts from a failed engine's journal:
// journal.RootCause over the engine's lines followed by systemd's own
// report of the failure, as journald holds them.
func rootCause(output string) string {
	var entries []journal.Entry
	for _, l := range strings.Split(strings.TrimRight(output, "\n"), "\n") {
		entries = append(entries, journal.Entry{Message: l, Priority: 6, Identifier: "vllm", PID: 4242})
	}
	for _, l := range []string{
		"vagent@dev.service: Main process exited, code=exited, status=1/FAILURE",
		"vagent@dev.service: Failed with result 'exit-code'.",
	} {
		entries = append(entries, journal.Entry{Message: l, Priority: 4, Identifier: "systemd", PID: 1})
	}
	return journal.RootCause(entries, engine.VLLM{}.Log(), journal.Exit{Code: journal.ExitedCode, Status: 1, Result: "exit-code"})
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// fakeSystemd is systemd as the supervisor sees it, every unit loaded and
// in the state states gives it (inactive by default).
type fakeSystemd struct {
	mu     sync.Mutex
	states map[string]supervisor.UnitState
}

func (f *fakeSystemd) state(unit string) supervisor.UnitState {
	f.mu.Lock()
	defer f.mu.Unlock()
	if st, ok := f.states[unit]; ok {
		return st
	}
	return supervisor.UnitState{LoadState: "loaded", ActiveState: "inactive", SubState: "dead", Result: "success"}
}

func (f *fakeSystemd) Start(ctx context.Context, unit string) error { return nil }
func (f *fakeSystemd) Stop(ctx context.Context, unit string) error  { return nil }
func (f *fakeSystemd) Reload(ctx context.Context) error             { return nil }
func (f *fakeSystemd) ResetFailed(ctx context.Context, unit string) error {
	return nil
}
func (f *fakeSystemd) State(ctx context.Context, unit string) (supervisor.UnitState, error) {
	return f.state(unit), nil
}
func (f *fakeSystemd) Close() {}

// fakeGPU is one GPU with total and free bytes, and no agent's process on it.
type fakeGPU struct{ total, free uint64 }

func (g fakeGPU) Memory(ctx context.Context) (map[int]supervisor.GPUMemory, error) {
	return map[int]supervisor.GPUMemory{0: {Total: g.total, Free: g.free}}, nil
}

func (g fakeGPU) AgentBytes(ctx context.Context) (map[string]uint64, error) {
	return map[string]uint64{}, nil
}

// fakeSwitcher is the supervisor as the gateway sees it: Switch succeeds at
// once unless err says otherwise (or block holds it), and Status reports
// status.
type fakeSwitcher struct {
	mu     sync.Mutex
	err    func(agent string) error
	block  chan struct{}
	status []supervisor.AgentStatus
	cfg    *config.Config
}

func (f *fakeSwitcher) Switch(ctx context.Context, agent string) (*supervisor.Result, error) {
	f.mu.Lock()
	errf, block := f.err, f.block
	f.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if errf != nil {
		if err := errf(agent); err != nil {
			return nil, err
		}
	}
	return &supervisor.Result{Agent: agent, Duration: 1500 * time.Millisecond}, nil
}

func (f *fakeSwitcher) Stop(ctx context.Context, agent string) error { return nil }

// Backoff reports no agent backing off; its presence makes the gateway
// export vagent_start_backoff_seconds, as it does with the supervisor.
func (f *fakeSwitcher) Backoff(string) (supervisor.Backoff, bool) { return supervisor.Backoff{}, false }

func (f *fakeSwitcher) Status(ctx context.Context) ([]supervisor.AgentStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.status != nil {
		return f.status, nil
	}
	var out []supervisor.AgentStatus
	for _, a := range f.cfg.Agents {
		out = append(out, supervisor.AgentStatus{Agent: a.Name, Unit: a.Unit(), LoadState: "loaded",
			ActiveState: "inactive", SubState: "dead", Result: "success", Port: a.Port, GPUs: a.GPUs})
	}
	return out, nil
}

// vagentd is a gateway as vagentd runs it: the OpenAI endpoint on a TCP
// port and the control API on the configuration's control socket.
type vagentd struct {
	cfg  *config.Config
	gw   *gateway.Gateway
	base string // http://127.0.0.1:PORT
}

// startVagentd serves a gateway for cfg with sw as its supervisor until
// the test ends.
func startVagentd(t testing.TB, cfg *config.Config, o gateway.Options) *vagentd {
	t.Helper()
	o.Config = cfg
	gw, err := gateway.New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() {
		gw.Run(ctx)
		close(runDone)
	}()
	sock := cfg.Gateway.ControlSocket
	os.MkdirAll(filepath.Dir(sock), 0o755)
	cl, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctlSrv := &http.Server{Handler: gw.ControlHandler()}
	go ctlSrv.Serve(cl)
	al, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	apiSrv := gw.Server(nil)
	go apiSrv.Serve(gw.Listener(al))
	t.Cleanup(func() {
		ctlSrv.Close()
		apiSrv.Close()
		cancel()
		<-runDone
	})
	return &vagentd{cfg: cfg, gw: gw, base: "http://" + al.Addr().String()}
}

// post sends body to path on the gateway and returns the status, the
// Retry-After header and the answer.
func (v *vagentd) post(t testing.TB, path, key, body string) (int, string, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, v.base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return resp.StatusCode, resp.Header.Get("Retry-After"), b.String()
}

func chat(model string, stream bool) string {
	return fmt.Sprintf(`{"model": %q, "stream": %v, "max_tokens": 8, "messages": [{"role": "user", "content": "Say hello."}]}`, model, stream)
}

func itoa(n int) string { return strconv.Itoa(n) }
