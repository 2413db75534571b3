package vllmsim

// Fidelity tests: each runs the simulator as its own process (this test
// binary, re-executed as vllm-sim) for every vLLM version where the
// behaviour differs, and is named by a row of docs/engine-fidelity.md.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/vagent-dev/vagent/internal/ledger"
	"github.com/vagent-dev/vagent/internal/syncbuf"
)

// execEnv makes the test binary run as vllm-sim, so that the tests see a
// real process: its own PID, signals, exit status.
const execEnv = "VLLM_SIM_TEST_EXEC"

func TestMain(m *testing.M) {
	// A tensor-parallel engine run inside a test starts its workers from
	// this binary: they must run as workers, never as the tests.
	if os.Getenv(execEnv) == "1" || os.Getenv(WorkerEnv) != "" {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		code := Main(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// versions are the vLLM versions whose behaviour the simulator imitates.
var versions = []string{"0.12.0", "0.18.0"}

// procEnv is a fast simulator environment for a process.
func procEnv(ledgerPath, version string, extra map[string]string) []string {
	env := map[string]string{
		"VLLM_SIM_LEDGER":            ledgerPath,
		"VLLM_SIM_VERSION":           version,
		"VLLM_SIM_LOAD_SECONDS":      "0",
		"VLLM_SIM_TOKENS_PER_SECOND": "10000",
		"VLLM_SIM_TTFT_MS":           "0",
		"VLLM_SIM_RELEASE_MS":        "0",
	}
	for k, v := range extra {
		env[k] = v
	}
	out := []string{execEnv + "=1"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "VLLM_") && !strings.HasPrefix(kv, "CUDA_VISIBLE_DEVICES=") {
			out = append(out, kv)
		}
	}
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return out
}

// execSim starts the simulator as a process on port with `serve MODEL
// --host 127.0.0.1 --port PORT ARGS...`; stop sends SIGTERM.
func execSim(t *testing.T, env []string, port int, model string, args ...string) *simProc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	argv := append([]string{"serve", model, "--host", "127.0.0.1", "--port", strconv.Itoa(port)}, args...)
	cmd := exec.Command(exe, argv...)
	cmd.Env = env
	p := &simProc{port: port, url: "http://127.0.0.1:" + strconv.Itoa(port),
		done: make(chan int, 1), stdout: &syncbuf.Buffer{}, stderr: &syncbuf.Buffer{}}
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.pid = cmd.Process.Pid
	p.cancel = func() { cmd.Process.Signal(syscall.SIGTERM) }
	go func() {
		cmd.Wait()
		p.done <- cmd.ProcessState.ExitCode()
	}()
	t.Cleanup(func() {
		if !p.exited {
			cmd.Process.Kill()
			p.wait(t, 10*time.Second)
		}
	})
	return p
}

// runSim runs the simulator as a process to its end: exit status, stdout,
// stderr.
func runSim(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = env
	var out, errw syncbuf.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errw
	done := make(chan struct{})
	go func() {
		cmd.Run()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("simulator did not exit\n%s\n%s", out.String(), errw.String())
	}
	return cmd.ProcessState.ExitCode(), out.String(), errw.String()
}

// stream is a request whose body is read as it comes.
type stream struct {
	status chan int
	events chan string // SSE data payloads, closed at EOF
	body   chan []byte // a plain request's whole body
}

// send starts a request in the background.
func send(p *simProc, path, body string) *stream {
	s := &stream{status: make(chan int, 1), events: make(chan string, 10000), body: make(chan []byte, 1)}
	go func() {
		defer close(s.events)
		resp, err := http.Post(p.url+path, "application/json", strings.NewReader(body))
		if err != nil {
			s.status <- -1
			s.body <- []byte(err.Error())
			return
		}
		defer resp.Body.Close()
		s.status <- resp.StatusCode
		if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
			data, _ := io.ReadAll(resp.Body)
			s.body <- data
			return
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if line := sc.Text(); strings.HasPrefix(line, "data: ") {
				s.events <- strings.TrimPrefix(line, "data: ")
			}
		}
		s.body <- nil
	}()
	return s
}

// all waits for the end of a stream and returns its events.
func (s *stream) all(t *testing.T) []string {
	t.Helper()
	var out []string
	timeout := time.After(20 * time.Second)
	for {
		select {
		case ev, ok := <-s.events:
			if !ok {
				return out
			}
			out = append(out, ev)
		case <-timeout:
			t.Fatalf("stream did not end; so far %q", out)
		}
	}
}

// first waits for the first event of a stream.
func (s *stream) first(t *testing.T) string {
	t.Helper()
	select {
	case ev := <-s.events:
		return ev
	case <-time.After(20 * time.Second):
		t.Fatal("no event")
		return ""
	}
}

// metricValue reads one sample of the simulator's /metrics.
func metricValue(t *testing.T, p *simProc, name string) float64 {
	t.Helper()
	for _, line := range strings.Split(string(p.do(t, http.MethodGet, "/metrics", "", "").body), "\n") {
		if strings.HasPrefix(line, name+"{") || (strings.Contains(name, "{") && strings.HasPrefix(line, name)) {
			f, _ := strconv.ParseFloat(line[strings.LastIndex(line, " ")+1:], 64)
			return f
		}
	}
	t.Fatalf("/metrics has no %s", name)
	return 0
}

// waitMetric polls /metrics until name has value v.
func waitMetric(t *testing.T, p *simProc, name string, v float64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for metricValue(t, p, name) != v {
		if time.Now().After(deadline) {
			t.Fatalf("%s never reached %v", name, v)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// finishOf decodes the finish_reason of a stream chunk's first choice.
func finishOf(t *testing.T, ev string) string {
	t.Helper()
	var c struct {
		Choices []struct {
			FinishReason *string `json:"finish_reason"`
		} `json:"choices"`
	}
	decode(t, []byte(ev), &c)
	if len(c.Choices) == 0 || c.Choices[0].FinishReason == nil {
		return ""
	}
	return *c.Choices[0].FinishReason
}

// plainResult decodes a plain completion: text, finish reason.
func plainResult(t *testing.T, body []byte) (string, string) {
	t.Helper()
	var r struct {
		Choices []struct {
			Text         string `json:"text"`
			FinishReason string `json:"finish_reason"`
			Message      struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
	}
	decode(t, body, &r)
	if len(r.Choices) != 1 {
		t.Fatalf("choices in %s", body)
	}
	return r.Choices[0].Text + r.Choices[0].Message.Content, r.Choices[0].FinishReason
}

const (
	longStream = `{"messages":[{"role":"user","content":"tell a long story"}],"max_tokens":5000,"stream":true}`
	longPlain  = `{"prompt":"another long story","max_tokens":5000}`
	shortChat  = `{"messages":[{"role":"user","content":"hi"}],"max_tokens":3}`
)

// TestSleepRequestsPerVersion: 0.18's /sleep pauses the scheduler — the
// requests running end with HTTP 200 and finish_reason "abort" (a stream:
// an abort chunk, then [DONE]) and new requests wait for /wake_up; 0.12
// lets requests run on a sleeping engine.
func TestSleepRequestsPerVersion(t *testing.T) {
	for _, v := range versions {
		t.Run(v, func(t *testing.T) {
			path := tempLedger(t)
			env := procEnv(path, v, map[string]string{"VLLM_SERVER_DEV_MODE": "1", "VLLM_SIM_TOKENS_PER_SECOND": "50"})
			p := execSim(t, env, freePort(t), model7B, "--enable-sleep-mode", "--gpu-memory-utilization", "0.5", "--max-model-len", "8192")
			p.waitHealthy(t)
			st := send(p, "/v1/chat/completions", longStream)
			plain := send(p, "/v1/completions", longPlain)
			if ev := st.first(t); !strings.Contains(ev, `"role":"assistant"`) {
				t.Fatalf("first event %s", ev)
			}
			waitMetric(t, p, `vllm:num_requests_running`, 2)
			if r := p.do(t, http.MethodPost, "/sleep?level=1", "", ""); r.status != 200 || len(r.body) != 0 {
				t.Fatalf("/sleep: %d %q", r.status, r.body)
			}
			if r := p.do(t, http.MethodGet, "/is_sleeping", "", ""); string(r.body) != `{"is_sleeping":true}` {
				t.Errorf("/is_sleeping: %s", r.body)
			}
			if v == "0.18.0" {
				evs := st.all(t)
				if n := len(evs); n < 3 || evs[n-1] != "[DONE]" || finishOf(t, evs[n-2]) != "abort" {
					t.Fatalf("stream cut by the sleep: %q", evs)
				}
				if !strings.Contains(evs[len(evs)-2], `"delta":{"content":""}`) {
					t.Errorf("abort chunk %s", evs[len(evs)-2])
				}
				if s := <-plain.status; s != 200 {
					t.Errorf("plain request cut by the sleep: status %d", s)
				}
				if _, fin := plainResult(t, <-plain.body); fin != "abort" {
					t.Errorf("plain request cut by the sleep: finish_reason %q", fin)
				}
				// A request sent while asleep waits for the wake.
				late := send(p, "/v1/chat/completions", shortChat)
				waitMetric(t, p, `vllm:num_requests_waiting`, 1)
				select {
				case s := <-late.status:
					t.Fatalf("request to a sleeping 0.18 engine answered %d before /wake_up", s)
				default:
				}
				if r := p.do(t, http.MethodPost, "/wake_up", "", ""); r.status != 200 {
					t.Fatalf("/wake_up: %d %s", r.status, r.body)
				}
				if s := <-late.status; s != 200 {
					t.Fatalf("queued request: %d", s)
				}
				text, fin := plainResult(t, <-late.body)
				if fin != "length" || strings.Contains(text, "!!") {
					t.Errorf("queued request after the wake: %q %q", text, fin)
				}
				if n := metricValue(t, p, `vllm:request_success_total{engine="0",model_name="`+model7B+`",finished_reason="abort"`); n != 2 {
					t.Errorf("abort count %v, want 2", n)
				}
				return
			}
			// 0.12: nothing stops the requests; the model computes on
			// memory it gave back (the simulator's "!!").
			late := send(p, "/v1/chat/completions", shortChat)
			if s := <-late.status; s != 200 {
				t.Fatalf("request to a sleeping 0.12 engine: %d", s)
			}
			if text, fin := plainResult(t, <-late.body); fin != "length" || !strings.Contains(text, "!!") {
				t.Errorf("request to a sleeping 0.12 engine: %q %q", text, fin)
			}
			if metricValue(t, p, `vllm:num_requests_running`) != 2 {
				t.Error("the running requests stopped at the sleep")
			}
			p.do(t, http.MethodPost, "/wake_up", "", "")
		})
	}
}

// TestSleepLevelZeroPausesOnly: 0.18's level 0 pauses the scheduler and
// frees nothing; the tag "scheduling" resumes it. 0.12 has no level 0: any
// level but 1 discards the weights.
func TestSleepLevelZeroPausesOnly(t *testing.T) {
	for _, v := range versions {
		t.Run(v, func(t *testing.T) {
			path := tempLedger(t)
			p := execSim(t, procEnv(path, v, map[string]string{"VLLM_SERVER_DEV_MODE": "1"}), freePort(t), model7B,
				"--enable-sleep-mode", "--gpu-memory-utilization", "0.5", "--max-model-len", "8192")
			p.waitHealthy(t)
			held := entriesFor(readLedger(t, path), p.port)[0].Bytes
			if r := p.do(t, http.MethodPost, "/sleep?level=0", "", ""); r.status != 200 {
				t.Fatalf("/sleep?level=0: %d", r.status)
			}
			e := entriesFor(readLedger(t, path), p.port)[0]
			if v == "0.18.0" {
				if e.Bytes != held || e.State != ledger.StateLoaded {
					t.Errorf("level 0 changed memory: %+v, held %d", e, held)
				}
				late := send(p, "/v1/chat/completions", shortChat)
				waitMetric(t, p, `vllm:num_requests_waiting`, 1)
				p.do(t, http.MethodPost, "/wake_up?tags=scheduling", "", "")
				if s := <-late.status; s != 200 {
					t.Fatalf("queued request: %d", s)
				}
				if r := p.do(t, http.MethodGet, "/is_sleeping", "", ""); string(r.body) != `{"is_sleeping":false}` {
					t.Errorf("after resume: %s", r.body)
				}
				return
			}
			if e.Bytes >= held || e.HostBytes != 0 {
				t.Errorf("0.12 level 0 should discard like level 2: %+v", e)
			}
		})
	}
}

// TestDevRoutesWithoutSleepMode: VLLM_SERVER_DEV_MODE=1 serves the sleep
// routes without --enable-sleep-mode; a sleep then frees only torch's
// cache (the activations): weights and KV cache stay.
func TestDevRoutesWithoutSleepMode(t *testing.T) {
	for _, v := range versions {
		t.Run(v, func(t *testing.T) {
			path := tempLedger(t)
			p := execSim(t, procEnv(path, v, map[string]string{"VLLM_SERVER_DEV_MODE": "1"}), freePort(t), model7B,
				"--gpu-memory-utilization", "0.5", "--max-model-len", "8192")
			p.waitHealthy(t)
			held := entriesFor(readLedger(t, path), p.port)[0].Bytes
			p.waitOutput(t, "SECURITY WARNING: Development endpoints are enabled!")
			for _, route := range []string{"/sleep", "/wake_up", "/collective_rpc", "/reset_prefix_cache", "/reset_mm_cache"} {
				p.waitOutput(t, "Route: "+route+", Methods: POST")
			}
			if r := p.do(t, http.MethodPost, "/sleep", "", ""); r.status != 200 {
				t.Fatalf("/sleep: %d", r.status)
			}
			e := entriesFor(readLedger(t, path), p.port)[0]
			if want := held - activationFor(7); e.Bytes != want {
				t.Errorf("asleep without sleep mode holds %d, want %d (only the activations freed)", e.Bytes, want)
			}
			if r := p.do(t, http.MethodGet, "/is_sleeping", "", ""); string(r.body) != `{"is_sleeping":true}` {
				t.Errorf("/is_sleeping: %s", r.body)
			}
			if r := p.do(t, http.MethodPost, "/wake_up", "", ""); r.status != 200 {
				t.Fatalf("/wake_up: %d", r.status)
			}
			r := p.postJSON(t, "/v1/chat/completions", shortChat)
			if text, _ := plainResult(t, r.body); strings.Contains(text, "!!") {
				t.Errorf("weights kept without sleep mode, yet the answer is garbage: %q", text)
			}
			// Starlette's plain 500 for a level int() cannot parse.
			if r := p.do(t, http.MethodPost, "/sleep?level=x", "", ""); r.status != 500 || string(r.body) != "Internal Server Error" {
				t.Errorf("/sleep?level=x: %d %q", r.status, r.body)
			}
			// An unknown tag is a warning and a 200.
			if r := p.do(t, http.MethodPost, "/wake_up?tags=nope", "", ""); r.status != 200 {
				t.Errorf("/wake_up?tags=nope: %d", r.status)
			}
		})
	}
}

// TestSleepResidualIsContextAndGraphs: asleep, an engine keeps its CUDA
// context and its CUDA graphs (none with --enforce-eager) in the ledger,
// where vagent measures it.
func TestSleepResidualIsContextAndGraphs(t *testing.T) {
	for _, eager := range []bool{false, true} {
		t.Run(fmt.Sprintf("eager=%v", eager), func(t *testing.T) {
			path := tempLedger(t)
			args := []string{"--enable-sleep-mode", "--gpu-memory-utilization", "0.5", "--max-model-len", "8192"}
			if eager {
				args = append(args, "--enforce-eager")
			}
			p := execSim(t, procEnv(path, "0.18.0", map[string]string{"VLLM_SERVER_DEV_MODE": "1"}), freePort(t), model7B, args...)
			p.waitHealthy(t)
			p.do(t, http.MethodPost, "/sleep?level=1", "", "")
			e := entriesFor(readLedger(t, path), p.port)[0]
			want := uint64(400 * mib)
			if !eager {
				want += uint64(0.25*gib + 0.02*5.57e9)
			}
			if e.Bytes != want || e.HostBytes != uint64(5.57e9) {
				t.Errorf("asleep: %d bytes on the GPU (%d on the host), want %d: CUDA context + graphs", e.Bytes, e.HostBytes, want)
			}
			// The line went out before the answer; the pipe may lag.
			p.waitOutput(t, fmt.Sprintf("memory, %s GiB memory is still in use.", pyRound2(float64(want)/gib)))
		})
	}
}

// TestCompletionsStopAtSixteen: /v1/completions without max_tokens
// generates 16 tokens (CompletionRequest.max_tokens = 16); chat has no such
// default.
func TestCompletionsStopAtSixteen(t *testing.T) {
	p := execSim(t, procEnv(tempLedger(t), "0.18.0", nil), freePort(t), model7B)
	p.waitHealthy(t)
	r := p.postJSON(t, "/v1/completions", `{"prompt":"write a long plan"}`)
	var resp struct {
		Choices []struct {
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
		Usage usage `json:"usage"`
	}
	decode(t, r.body, &resp)
	if resp.Usage.CompletionTokens != 16 || resp.Choices[0].FinishReason != "length" {
		t.Errorf("completion without max_tokens: %s", r.body)
	}
	r = p.postJSON(t, "/v1/chat/completions", `{"messages":[{"role":"user","content":"write a long plan"}]}`)
	decode(t, r.body, &resp)
	if resp.Choices[0].FinishReason != "stop" {
		t.Errorf("chat without max_tokens ends by itself: %s", r.body)
	}
}

// TestOverrideGenerationConfig: only repetition_penalty, temperature,
// top_k, top_p, min_p and max_new_tokens of --override-generation-config
// count; max_new_tokens caps every request (min with the client's value)
// and is the default of requests without one.
func TestOverrideGenerationConfig(t *testing.T) {
	for _, v := range versions {
		t.Run(v, func(t *testing.T) {
			p := execSim(t, procEnv(tempLedger(t), v, nil), freePort(t), model7B, "--generation-config", "vllm",
				"--override-generation-config", `{"max_new_tokens":5,"temperature":0.1,"presence_penalty":0.5,"max_tokens":3}`)
			p.waitHealthy(t)
			cases := []struct {
				path, body string
				want       int
			}{
				{"/v1/chat/completions", `{"messages":[{"role":"user","content":"write a long plan"}]}`, 5},
				{"/v1/chat/completions", `{"messages":[{"role":"user","content":"write a long plan"}],"max_tokens":40}`, 5},
				{"/v1/chat/completions", `{"messages":[{"role":"user","content":"write a long plan"}],"max_tokens":2}`, 2},
				{"/v1/completions", `{"prompt":"write a long plan"}`, 5},
			}
			for _, c := range cases {
				r := p.postJSON(t, c.path, c.body)
				var resp struct {
					Usage usage `json:"usage"`
				}
				decode(t, r.body, &resp)
				if resp.Usage.CompletionTokens != c.want {
					t.Errorf("%s %s: %d tokens, want %d", c.path, c.body, resp.Usage.CompletionTokens, c.want)
				}
				sampling := r.header.Get("X-Vllm-Sim-Sampling")
				if !strings.Contains(sampling, `"temperature":0.1`) || strings.Contains(sampling, "presence_penalty") {
					t.Errorf("effective sampling %s: want the temperature, not the presence_penalty", sampling)
				}
			}
		})
	}
}

// TestSecondEngineOnSamePort: vLLM binds with SO_REUSEPORT, so a second
// engine on a port already served starts without error.
func TestSecondEngineOnSamePort(t *testing.T) {
	port := freePort(t)
	path := tempLedger(t)
	a := execSim(t, procEnv(path, "0.18.0", nil), port, model7B, "--gpu-memory-utilization", "0.5", "--max-model-len", "8192")
	a.waitHealthy(t)
	b := execSim(t, procEnv(path, "0.18.0", nil), port, "Qwen/Qwen2.5-0.5B-Instruct", "--gpu-memory-utilization", "0.3")
	b.waitOutput(t, "Application startup complete.")
	select {
	case code := <-b.done:
		b.exited = true
		t.Fatalf("second engine exited %d:\n%s", code, b.stderr)
	default:
	}
	if strings.Contains(b.stderr.String(), "Address already in use") {
		t.Errorf("second engine: %s", b.stderr)
	}
	if code := b.stop(t); code != 0 {
		t.Errorf("second engine exit %d", code)
	}
}

// TestShutdownPerVersion: on SIGTERM 0.18 ends every running request with
// finish_reason "abort" (a stream: abort chunk, [DONE]) and HTTP 200;
// 0.12 (uvicorn's graceful shutdown) lets them finish. Never a 503.
func TestShutdownPerVersion(t *testing.T) {
	for _, v := range versions {
		t.Run(v, func(t *testing.T) {
			path := tempLedger(t)
			p := execSim(t, procEnv(path, v, map[string]string{"VLLM_SIM_TOKENS_PER_SECOND": "200", "VLLM_SIM_RELEASE_MS": "50"}), freePort(t), model7B,
				"--max-model-len", "8192")
			p.waitHealthy(t)
			body := `{"messages":[{"role":"user","content":"tell a story"}],"max_tokens":300,"stream":true}`
			st := send(p, "/v1/chat/completions", body)
			plain := send(p, "/v1/completions", `{"prompt":"another story","max_tokens":300}`)
			st.first(t)
			waitMetric(t, p, `vllm:num_requests_running`, 2)
			p.cancel()
			evs := st.all(t)
			n := len(evs)
			if n < 2 || evs[n-1] != "[DONE]" {
				t.Fatalf("stream at shutdown: %q", evs)
			}
			// 0.12 lets the requests end as they would have.
			aborted := v == "0.18.0"
			if got := finishOf(t, evs[n-2]); (got == "abort") != aborted || got == "" {
				t.Errorf("stream at shutdown ended with %q (abort wanted: %v)", got, aborted)
			}
			if s := <-plain.status; s != 200 {
				t.Errorf("plain request at shutdown: %d", s)
			}
			if _, fin := plainResult(t, <-plain.body); (fin == "abort") != aborted {
				t.Errorf("plain request at shutdown: %q (abort wanted: %v)", fin, aborted)
			}
			if code := p.wait(t, 20*time.Second); code != 0 {
				t.Errorf("exit %d", code)
			}
			if len(entriesFor(readLedger(t, path), p.port)) != 0 {
				t.Error("the ledger still holds the engine's memory after shutdown")
			}
			if v == "0.12.0" && !strings.Contains(p.stdout.String(), "INFO:     Shutting down\n"+fmt.Sprintf("(APIServer pid=%d) ", p.pid)+"INFO:     Waiting for connections to close. (CTRL+C to force quit)") {
				t.Errorf("no uvicorn line about the connections it waits for:\n%s", p.stdout)
			}
			if v == "0.18.0" && !strings.Contains(p.stdout.String(), "Shutdown initiated (timeout=0)") {
				t.Errorf("no shutdown line:\n%s", p.stdout) // the process has exited: its output is all in
			}
		})
	}
}

// TestStartupTextsPerVersion: the version banner and the listening line.
func TestStartupTextsPerVersion(t *testing.T) {
	want := map[string][]string{
		"0.12.0": {"[api_server.py:1772] vLLM API server version 0.12.0", "[api_server.py:1848] Starting vLLM API server 0 on http://127.0.0.1:"},
		"0.18.0": {"[utils.py:297]  ▄▄ ▄█ █     █     █ ▀▄▀ █  version 0.18.0", "[utils.py:297]   █▄█▀ █     █     █     █  model   " + model7B,
			"[api_server.py:580] Starting vLLM server on http://127.0.0.1:"},
	}
	for _, v := range versions {
		t.Run(v, func(t *testing.T) {
			p := execSim(t, procEnv(tempLedger(t), v, nil), freePort(t), model7B)
			p.waitHealthy(t)
			p.waitOutput(t, "Application startup complete.")
			out := p.stdout.String()
			for _, w := range want[v] {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
			other := "Starting vLLM server on"
			if v == "0.18.0" {
				other = "vLLM API server version"
			}
			if strings.Contains(out, other) {
				t.Errorf("%s prints %q", v, other)
			}
			if !strings.Contains(out, fmt.Sprintf("(APIServer pid=%d) INFO ", p.pid)) {
				t.Errorf("lines do not carry the process's pid %d", p.pid)
			}
		})
	}
}

// TestStartupErrorTextsPerVersion: the free-memory and KV-cache errors.
func TestStartupErrorTextsPerVersion(t *testing.T) {
	want := map[string][]string{
		"0.12.0": {
			"ValueError: Free memory on device (1.6/15.99 GiB) on startup is less than desired GPU memory utilization (0.9, 14.39 GiB).",
			"ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine.\n",
			"(6.00 GiB KV cache is needed, which is larger than the available KV cache memory (3.53 GiB). Based on the available memory, the estimated maximum model length is 19264. Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.\n",
		},
		"0.18.0": {
			"ValueError: Free memory on device cuda:0 (1.6/15.99 GiB) on startup is less than desired GPU memory utilization (0.9, 14.39 GiB).",
			"ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine. See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details.\n",
			"(6.0 GiB KV cache is needed, which is larger than the available KV cache memory (3.53 GiB). Based on the available memory, the estimated maximum model length is 19264. Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine. See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details.\n",
		},
	}
	for _, v := range versions {
		t.Run(v, func(t *testing.T) {
			path := tempLedger(t)
			holder := execSim(t, procEnv(path, v, nil), freePort(t), model7B, "--gpu-memory-utilization", "0.9")
			holder.waitHealthy(t)
			_, _, stderr := runSim(t, procEnv(path, v, nil), "serve", model7B, "--port", strconv.Itoa(freePort(t)))
			if !strings.Contains(stderr, want[v][0]) {
				t.Errorf("free memory: stderr lacks %q:\n%s", want[v][0], stderr)
			}
			holder.stop(t)
			_, _, stderr = runSim(t, procEnv(path, v, nil), "serve", model14B, "--port", strconv.Itoa(freePort(t)), "--gpu-memory-utilization", "0.6")
			if !strings.Contains(stderr, want[v][1]) {
				t.Errorf("no KV room: stderr lacks %q:\n%s", want[v][1], stderr)
			}
			_, _, stderr = runSim(t, procEnv(path, v, nil), "serve", model14B, "--port", strconv.Itoa(freePort(t)), "--gpu-memory-utilization", "0.92")
			if !strings.Contains(stderr, want[v][2]) {
				t.Errorf("context too long: stderr lacks %q:\n%s", want[v][2], stderr)
			}
		})
	}
}

// TestArgparseErrorPrefix: errors of `vllm serve`'s parser carry the
// subcommand's prog.
func TestArgparseErrorPrefix(t *testing.T) {
	for _, v := range versions {
		code, out, stderr := runSim(t, procEnv(tempLedger(t), v, nil), "serve", model7B, "--port", "abc")
		if code != 2 || out != "" || stderr != "usage: vllm serve [model_tag] [options]\nvllm serve: error: argument --port: invalid int value: 'abc'\n" {
			t.Errorf("%s: exit %d, stderr %q", v, code, stderr)
		}
	}
}

// TestToolCallParserCheckedAtStart: with --enable-auto-tool-choice an
// unregistered --tool-call-parser fails before the port is bound.
func TestToolCallParserCheckedAtStart(t *testing.T) {
	for _, v := range versions {
		t.Run(v, func(t *testing.T) {
			path := tempLedger(t)
			code, _, stderr := runSim(t, procEnv(path, v, nil), "serve", model7B, "--port", strconv.Itoa(freePort(t)),
				"--enable-auto-tool-choice", "--tool-call-parser", "nope")
			want := "KeyError: 'invalid tool call parser: nope (chose from { deepseek_v3,deepseek_v31,"
			if code != 1 || !strings.Contains(stderr, want) || !strings.Contains(stderr, ",xlam })'") {
				t.Errorf("exit %d, stderr:\n%s", code, stderr)
			}
			if (v == "0.18.0") != strings.Contains(stderr, "step3p5") {
				t.Errorf("%s parser list:\n%s", v, stderr)
			}
			if _, err := os.Stat(path); err == nil {
				t.Error("the failed start touched the ledger")
			}
		})
	}
}

// TestWrongContentTypeIs400: validate_json_request raises
// RequestValidationError, which vLLM answers with a 400.
func TestWrongContentTypeIs400(t *testing.T) {
	for _, v := range versions {
		p := execSim(t, procEnv(tempLedger(t), v, nil), freePort(t), model7B)
		p.waitHealthy(t)
		r := p.do(t, http.MethodPost, "/v1/completions", "text/plain", `{"prompt":"hi"}`)
		var body errorBody
		decode(t, r.body, &body)
		if r.status != 400 || body.Error.Type != "Bad Request" || body.Error.Code != 400 || !strings.Contains(body.Error.Message, "Unsupported Media Type: Only 'application/json' is allowed") {
			t.Errorf("%s: %d %s", v, r.status, r.body)
		}
		p.stop(t)
	}
}

// promlintProblems runs client_golang's promlint (what `promtool check
// metrics` runs) on a /metrics page.
func promlintProblems(t *testing.T, page string) []string {
	t.Helper()
	problems, err := newLinter(page)
	if err != nil {
		t.Fatalf("promlint: %v\n%s", err, page)
	}
	return problems
}

// TestMetricsPassPromlint: the only problems promtool finds are vLLM's own
// ':' in metric names; counters' and histograms' _created series are gauge
// families of their own, as prometheus_client writes them.
func TestMetricsPassPromlint(t *testing.T) {
	p := execSim(t, procEnv(tempLedger(t), "0.18.0", nil), freePort(t), model7B)
	p.waitHealthy(t)
	p.postJSON(t, "/v1/completions", `{"prompt":"a b c","max_tokens":2}`)
	page := string(p.do(t, http.MethodGet, "/metrics", "", "").body)
	problems := promlintProblems(t, page)
	if len(problems) == 0 {
		t.Fatal("promlint found nothing: vLLM's names contain ':'")
	}
	for _, pr := range problems {
		if !strings.Contains(pr, "metric names should not contain ':'") {
			t.Errorf("promlint: %s", pr)
		}
	}
	if !strings.Contains(page, "# TYPE vllm:prompt_tokens_created gauge\n") {
		t.Error("the counter's _created series is not its own gauge family")
	}
	families := map[string]bool{}
	for _, line := range strings.Split(page, "\n") {
		if strings.HasPrefix(line, "# TYPE ") {
			name := strings.Fields(line)[2]
			if families[name] {
				t.Errorf("family %s declared twice", name)
			}
			families[name] = true
		}
	}
}

func newLinter(page string) ([]string, error) {
	ps, err := promlint.New(strings.NewReader(page)).Lint()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range ps {
		out = append(out, p.Metric+": "+p.Text)
	}
	return out, nil
}

// TestAPIShapesPerVersion: the answers vagent reads besides completions —
// the 401 of the key check (on /v1 only, scheme "bearer" in any case), the
// 404 of an unknown model (0.18 names the parameter), FastAPI's 404 and
// 405, /v1/models, /tokenize, /version, /load, /ping, /health.
func TestAPIShapesPerVersion(t *testing.T) {
	for _, v := range versions {
		t.Run(v, func(t *testing.T) {
			p := execSim(t, procEnv(tempLedger(t), v, nil), freePort(t), model7B, "--served-model-name", "po", "--api-key", "k3y")
			p.waitHealthy(t)
			auth := []string{"Authorization", "bearer k3y"}
			for _, hdr := range [][]string{nil, {"Authorization", "Bearer nope"}, {"Authorization", "Basic k3y"}} {
				if r := p.do(t, http.MethodGet, "/v1/models", "", "", hdr...); r.status != 401 || string(r.body) != `{"error":"Unauthorized"}` {
					t.Errorf("/v1/models with %q: %d %s", hdr, r.status, r.body)
				}
			}
			param := "null"
			if v == "0.18.0" {
				param = `"model"`
			}
			r := p.postJSON(t, "/v1/chat/completions", `{"model":"x","messages":[{"role":"user","content":"hi"}]}`, auth...)
			if want := "{\"error\":{\"message\":\"The model `x` does not exist.\",\"type\":\"NotFoundError\",\"param\":" + param + ",\"code\":404}}"; r.status != 404 || string(r.body) != want {
				t.Errorf("unknown model: %d %s, want %s", r.status, r.body, want)
			}
			// The length check (_validate_input): 0.18 names the parameter.
			r = p.postJSON(t, "/v1/completions", `{"model":"po","prompt":"hi","max_tokens":40000}`, auth...)
			want := map[string]string{
				"0.12.0": `{"error":{"message":"'max_tokens' or 'max_completion_tokens' is too large: 40000. This model's maximum context length is 32768 tokens and your request has 1 input tokens (40000 > 32768 - 1).","type":"BadRequestError","param":null,"code":400}}`,
				"0.18.0": `{"error":{"message":"This model's maximum context length is 32768 tokens. However, you requested 40000 output tokens and your prompt contains 1 input tokens, for a total of 40001 tokens (1 + 40000 = 40001 > 32768). Please reduce the length of the input prompt or the number of requested output tokens.","type":"BadRequestError","param":"max_tokens","code":400}}`,
			}[v]
			if r.status != 400 || string(r.body) != want {
				t.Errorf("max_tokens too large: %d %s\nwant %s", r.status, r.body, want)
			}
			if r := p.do(t, http.MethodGet, "/nope", "", ""); r.status != 404 || string(r.body) != `{"detail":"Not Found"}` {
				t.Errorf("unknown route: %d %s", r.status, r.body)
			}
			if r := p.do(t, http.MethodGet, "/v1/completions", "", "", auth...); r.status != 405 || string(r.body) != `{"detail":"Method Not Allowed"}` {
				t.Errorf("GET /v1/completions: %d %s", r.status, r.body)
			}
			r = p.do(t, http.MethodGet, "/v1/models", "", "", auth...)
			var models struct {
				Object string `json:"object"`
				Data   []map[string]any
			}
			decode(t, r.body, &models)
			if models.Object != "list" || len(models.Data) != 1 {
				t.Fatalf("/v1/models: %s", r.body)
			}
			for _, k := range []string{"id", "object", "created", "owned_by", "root", "parent", "max_model_len", "permission"} {
				if _, ok := models.Data[0][k]; !ok {
					t.Errorf("/v1/models entry lacks %s: %s", k, r.body)
				}
			}
			if m := models.Data[0]; m["id"] != "po" || m["root"] != model7B || m["owned_by"] != "vllm" || m["max_model_len"] != float64(32768) {
				t.Errorf("/v1/models entry: %v", m)
			}
			r = p.postJSON(t, "/tokenize", `{"model":"po","prompt":"three small words"}`)
			if !strings.HasPrefix(string(r.body), `{"count":3,"max_model_len":32768,"tokens":[`) {
				t.Errorf("/tokenize: %s", r.body)
			}
			if r := p.do(t, http.MethodGet, "/version", "", ""); string(r.body) != `{"version":"`+v+`"}` {
				t.Errorf("/version: %s", r.body)
			}
			if r := p.do(t, http.MethodGet, "/load", "", ""); string(r.body) != `{"server_load":0}` {
				t.Errorf("/load: %s", r.body)
			}
			for _, m := range []string{http.MethodGet, http.MethodPost} {
				if r := p.do(t, m, "/ping", "", ""); r.status != 200 || len(r.body) != 0 {
					t.Errorf("%s /ping: %d %q", m, r.status, r.body)
				}
			}
			if r := p.do(t, http.MethodGet, "/health", "", ""); r.status != 200 || len(r.body) != 0 {
				t.Errorf("/health: %d %q", r.status, r.body)
			}
		})
	}
}

// TestIgnoreEOS: vLLM's ignore_eos makes a request generate up to its
// length limit, past the point where the "model" would end its answer.
func TestIgnoreEOS(t *testing.T) {
	p := execSim(t, procEnv(tempLedger(t), "0.18.0", nil), freePort(t), model7B)
	p.waitHealthy(t)
	var resp struct {
		Choices []struct {
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
		Usage usage `json:"usage"`
	}
	r := p.postJSON(t, "/v1/chat/completions", `{"messages":[{"role":"user","content":"write a long plan"}],"max_tokens":200}`)
	decode(t, r.body, &resp)
	if resp.Usage.CompletionTokens >= 200 || resp.Choices[0].FinishReason != "stop" {
		t.Fatalf("without ignore_eos the answer should end by itself before 200 tokens: %s", r.body)
	}
	r = p.postJSON(t, "/v1/chat/completions", `{"messages":[{"role":"user","content":"write a long plan"}],"max_tokens":200,"ignore_eos":true}`)
	decode(t, r.body, &resp)
	if resp.Usage.CompletionTokens != 200 || resp.Choices[0].FinishReason != "length" {
		t.Errorf("ignore_eos: %s", r.body)
	}
}

// TestShutdownAbortsWhatWaitsForWake: a 0.18 shutdown aborts the requests
// queued in the paused scheduler too (finish_requests(None)): they end with
// HTTP 200 and "abort" instead of a dropped connection. 0.12 queues nothing
// while asleep.
func TestShutdownAbortsWhatWaitsForWake(t *testing.T) {
	p := execSim(t, procEnv(tempLedger(t), "0.18.0", map[string]string{"VLLM_SERVER_DEV_MODE": "1"}), freePort(t), model7B,
		"--enable-sleep-mode", "--gpu-memory-utilization", "0.5", "--max-model-len", "8192")
	p.waitHealthy(t)
	p.do(t, http.MethodPost, "/sleep", "", "")
	st := send(p, "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":3,"stream":true}`)
	plain := send(p, "/v1/completions", `{"prompt":"hi","max_tokens":3}`)
	waitMetric(t, p, `vllm:num_requests_waiting`, 2)
	p.cancel()
	evs := st.all(t)
	if n := len(evs); n != 3 || evs[2] != "[DONE]" || finishOf(t, evs[1]) != "abort" || !strings.Contains(evs[0], `"role":"assistant"`) {
		t.Errorf("queued stream at shutdown: %q", evs)
	}
	if s := <-plain.status; s != 200 {
		t.Errorf("queued request at shutdown: %d", s)
	}
	if text, fin := plainResult(t, <-plain.body); fin != "abort" || text != "" {
		t.Errorf("queued request at shutdown: %q %q", text, fin)
	}
	if code := p.wait(t, 20*time.Second); code != 0 {
		t.Errorf("exit %d", code)
	}
}
