package vllmsim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/internal/ledger"
	"github.com/vagent-dev/vagent/internal/syncbuf"
)

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// simEnvFor is a fast simulator environment on a private ledger: instant
// load, instant release, 10k tokens/s.
func simEnvFor(t *testing.T, ledgerPath string, extra map[string]string) func(string) string {
	env := map[string]string{
		"VLLM_SIM_LEDGER":            ledgerPath,
		"VLLM_SIM_LOAD_SECONDS":      "0",
		"VLLM_SIM_TOKENS_PER_SECOND": "10000",
		"VLLM_SIM_TTFT_MS":           "0",
		"VLLM_SIM_RELEASE_MS":        "0",
	}
	for k, v := range extra {
		env[k] = v
	}
	return func(k string) string { return env[k] }
}

type simProc struct {
	pid    int // the process's, when run as one
	port   int
	url    string
	cancel context.CancelFunc
	done   chan int
	code   int
	exited bool
	stdout *syncbuf.Buffer
	stderr *syncbuf.Buffer
}

// startSim runs Main in the background with `serve MODEL --host 127.0.0.1
// --port P ARGS...`.
func startSim(t *testing.T, env func(string) string, model string, args ...string) *simProc {
	t.Helper()
	port := freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	p := &simProc{port: port, url: "http://127.0.0.1:" + strconv.Itoa(port), cancel: cancel,
		done: make(chan int, 1), stdout: &syncbuf.Buffer{}, stderr: &syncbuf.Buffer{}}
	argv := append([]string{"serve", model, "--host", "127.0.0.1", "--port", strconv.Itoa(port)}, args...)
	go func() { p.done <- Main(ctx, argv, env, p.stdout, p.stderr) }()
	t.Cleanup(func() { p.stop(t) })
	return p
}

// wait returns the exit status, failing the test after d.
func (p *simProc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	if p.exited {
		return p.code
	}
	select {
	case p.code = <-p.done:
		p.exited = true
		return p.code
	case <-time.After(d):
		t.Fatalf("simulator still running after %v\nstdout:\n%s\nstderr:\n%s", d, p.stdout, p.stderr)
		return -1
	}
}

func (p *simProc) stop(t *testing.T) int {
	p.cancel()
	return p.wait(t, 10*time.Second)
}

// waitHealthy polls /health until 200, failing if the simulator exits.
func (p *simProc) waitHealthy(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case p.code = <-p.done:
			p.exited = true
			t.Fatalf("simulator exited with %d\nstdout:\n%s\nstderr:\n%s", p.code, p.stdout, p.stderr)
		default:
		}
		resp, err := http.Get(p.url + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no healthy simulator after 10s\nstdout:\n%s", p.stdout)
}

// waitOutput waits until stdout contains s.
func (p *simProc) waitOutput(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(p.stdout.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("stdout never showed %q:\n%s", s, p.stdout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (p *simProc) do(t *testing.T, method, path, contentType, body string, header ...string) response {
	t.Helper()
	req, err := http.NewRequest(method, p.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read: %v", method, path, err)
	}
	return response{resp.StatusCode, resp.Header, data}
}

func (p *simProc) postJSON(t *testing.T, path, body string, header ...string) response {
	t.Helper()
	return p.do(t, http.MethodPost, path, "application/json", body, header...)
}

// sseEvents splits an event stream into its data payloads.
func sseEvents(t *testing.T, body []byte) []string {
	t.Helper()
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		if !strings.HasPrefix(line, "data: ") {
			t.Fatalf("stream line %q is not an SSE data line", line)
		}
		out = append(out, strings.TrimPrefix(line, "data: "))
	}
	return out
}

func readLedger(t *testing.T, path string) *ledger.State {
	t.Helper()
	st, err := ledger.Open(path, 0, 0).Read()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// entriesFor returns the ledger entries of the simulator on port.
func entriesFor(st *ledger.State, port int) []ledger.Entry {
	var out []ledger.Entry
	for _, e := range st.Entries {
		if e.Port == port {
			out = append(out, e)
		}
	}
	return out
}

func tempLedger(t *testing.T) string {
	return filepath.Join(t.TempDir(), "sim-ledger.json")
}

func decode(t *testing.T, data []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("decode %s: %v", data, err)
	}
}
