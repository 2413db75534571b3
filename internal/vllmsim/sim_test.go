package vllmsim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/internal/ledger"
	"github.com/vagent-dev/vagent/internal/syncbuf"
)

const (
	model7B  = "Qwen/Qwen2.5-7B-Instruct-AWQ"
	model14B = "Qwen/Qwen2.5-14B-Instruct-AWQ"
)

func runMain(t *testing.T, env func(string) string, args ...string) (int, string, string) {
	t.Helper()
	var out, errw syncbuf.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	code := Main(ctx, args, env, &out, &errw)
	return code, out.String(), errw.String()
}

func TestCommandLineErrorsExitTwoAtOnce(t *testing.T) {
	path := tempLedger(t)
	env := simEnvFor(t, path, nil)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"serve", model7B, "--foo"}, "vllm serve: error: unrecognized arguments: --foo\n"},
		{"unknown flag with value", []string{"serve", model7B, "--port", "8001", "--foo", "bar"}, "vllm serve: error: unrecognized arguments: --foo bar\n"},
		{"bad int", []string{"serve", model7B, "--port", "abc"}, "vllm serve: error: argument --port: invalid int value: 'abc'\n"},
		{"missing value", []string{"serve", model7B, "--max-num-seqs"}, "vllm serve: error: argument --max-num-seqs: expected one argument\n"},
		{"value for a boolean", []string{"serve", model7B, "--enforce-eager=true"}, "vllm serve: error: argument --enforce-eager: ignored explicit argument 'true'\n"},
		{"bad choice", []string{"serve", model7B, "--dtype", "int3"}, "vllm serve: error: argument --dtype: invalid choice: 'int3'"},
		{"bad json", []string{"serve", model7B, "--override-generation-config", "{temperature"}, "vllm serve: error: argument --override-generation-config: invalid loads value: '{temperature'\n"},
		{"bad alias value", []string{"serve", model7B, "-tp", "two"}, "vllm serve: error: argument --tensor-parallel-size/-tp: invalid int value: 'two'\n"},
		{"removed flag", []string{"serve", model7B, "--disable-log-requests"}, "vllm serve: error: unrecognized arguments: --disable-log-requests\n"},
		{"abbreviation", []string{"serve", model7B, "--max-model", "4096"}, "vllm serve: error: unrecognized arguments: --max-model 4096\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runMain(t, env, tc.args...)
			if code != 2 {
				t.Errorf("exit %d, want 2", code)
			}
			if !strings.HasPrefix(stderr, "usage: vllm serve [model_tag] [options]\n") {
				t.Errorf("stderr does not start with the usage line:\n%s", stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr %q lacks %q", stderr, tc.want)
			}
			if stdout != "" {
				t.Errorf("stdout not empty: %q", stdout)
			}
		})
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a rejected command line touched the ledger: %v", err)
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := runMain(t, simEnvFor(t, tempLedger(t), map[string]string{"VLLM_SIM_VERSION": "0.12.0"}), "--version")
	if code != 0 || out != "0.12.0\n" {
		t.Errorf("--version: exit %d, %q", code, out)
	}
}

func TestTaskFlagDependsOnVersion(t *testing.T) {
	path := tempLedger(t)
	code, _, stderr := runMain(t, simEnvFor(t, path, nil), "serve", model7B, "--task", "generate")
	if code != 2 || !strings.Contains(stderr, "vllm serve: error: unrecognized arguments: --task generate") {
		t.Fatalf("0.18 accepted --task: exit %d, stderr %q", code, stderr)
	}

	env := simEnvFor(t, path, map[string]string{"VLLM_SIM_VERSION": "0.12.0"})
	p := startSim(t, env, model7B, "--task", "generate", "--disable-log-requests")
	p.waitHealthy(t)
	r := p.do(t, http.MethodGet, "/version", "", "")
	if string(r.body) != `{"version":"0.12.0"}` {
		t.Errorf("/version = %s", r.body)
	}
	if code := p.stop(t); code != 0 {
		t.Errorf("exit %d after shutdown", code)
	}
}

func TestParserShapes(t *testing.T) {
	path := tempLedger(t)
	env := simEnvFor(t, path, nil)
	p := startSim(t, env, model7B,
		"--served-model-name", "po", "qwen2.5-7b-instruct",
		"--max_model_len=16k", // underscores and human-readable ints
		"--no-enable-prefix-caching", "--enforce-eager",
		"-tp", "1", "--gpu-memory-utilization", "0.5")
	p.waitHealthy(t)
	var models struct {
		Object string `json:"object"`
		Data   []struct {
			ID          string `json:"id"`
			Object      string `json:"object"`
			OwnedBy     string `json:"owned_by"`
			Root        string `json:"root"`
			MaxModelLen int    `json:"max_model_len"`
		} `json:"data"`
	}
	r := p.do(t, http.MethodGet, "/v1/models", "", "")
	decode(t, r.body, &models)
	if models.Object != "list" || len(models.Data) != 2 || models.Data[0].ID != "po" || models.Data[1].ID != "qwen2.5-7b-instruct" {
		t.Fatalf("/v1/models = %s", r.body)
	}
	for _, m := range models.Data {
		if m.Object != "model" || m.OwnedBy != "vllm" || m.Root != model7B || m.MaxModelLen != 16000 {
			t.Errorf("model entry %+v", m)
		}
	}
	if !strings.Contains(p.stdout.String(), "non-default args: {'model_tag': 'Qwen/Qwen2.5-7B-Instruct-AWQ', 'host': '127.0.0.1'") {
		t.Errorf("non-default args line missing:\n%s", p.stdout)
	}
	// The second served name is accepted as a model name too.
	r = p.postJSON(t, "/v1/completions", `{"model":"qwen2.5-7b-instruct","prompt":"hi","max_tokens":2}`)
	if r.status != 200 {
		t.Errorf("completion via second served name: %d %s", r.status, r.body)
	}
}

func TestStartupLogOrder(t *testing.T) {
	p := startSim(t, simEnvFor(t, tempLedger(t), nil), model14B, "--served-model-name", "architect",
		"--gpu-memory-utilization", "0.92", "--max-model-len", "12288")
	p.waitHealthy(t)
	out := p.stdout.String()
	order := []string{
		"]  ▄▄ ▄█ █     █     █ ▀▄▀ █  version 0.18.0",
		"] non-default args: {",
		"Loading safetensors checkpoint shards:",
		"] Model loading took 9.2946 GiB and ",
		"] Available KV cache memory: 3.53 GiB",
		"] GPU KV cache size: 19,264 tokens",
		"] Maximum concurrency for 12,288 tokens per request: 1.57x",
		"] init engine (profile, create kv cache, warmup model) took ",
		"] Starting vLLM server on http://127.0.0.1:",
		"INFO:     Started server process [",
		"INFO:     Waiting for application startup.",
		"INFO:     Application startup complete.",
	}
	at := 0
	for _, s := range order {
		i := strings.Index(out[at:], s)
		if i < 0 {
			t.Fatalf("log line %q missing or out of order:\n%s", s, out)
		}
		at += i + len(s)
	}
	if strings.Contains(out, "Uvicorn running on") {
		t.Error("vLLM prints no 'Uvicorn running on' line")
	}
	first := strings.SplitN(out, "\n", 2)[0]
	want := fmt.Sprintf("(APIServer pid=%d) INFO ", os.Getpid())
	if !strings.HasPrefix(first, want) || !strings.HasSuffix(first, "[utils.py:297] ") {
		t.Errorf("first line %q", first)
	}
}

func TestConnectionRefusedWhileLoading(t *testing.T) {
	path := tempLedger(t)
	env := simEnvFor(t, path, map[string]string{"VLLM_SIM_LOAD_SECONDS": "2"})
	p := startSim(t, env, model7B)
	p.waitOutput(t, "Starting to load model")
	// Bound during the load: a socket without SO_REUSEADDR cannot take the port...
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	err = syscall.Bind(fd, &syscall.SockaddrInet4{Port: p.port, Addr: [4]byte{127, 0, 0, 1}})
	syscall.Close(fd)
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("bind during the load: %v; vLLM binds the port at once", err)
	}
	// ...but nothing listens: connects are refused.
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p.port))
	if err == nil {
		conn.Close()
		t.Fatal("connect succeeded during the load")
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("connect during load: %v, want connection refused", err)
	}
	st := readLedger(t, path)
	if es := entriesFor(st, p.port); len(es) != 1 || es[0].State != ledger.StateLoading {
		t.Fatalf("ledger during load: %+v", st.Entries)
	}
	p.waitHealthy(t)
	r := p.do(t, http.MethodGet, "/health", "", "")
	if r.status != 200 || len(r.body) != 0 {
		t.Errorf("/health = %d %q", r.status, r.body)
	}
	es := entriesFor(readLedger(t, path), p.port)
	if len(es) != 1 || es[0].State != ledger.StateLoaded || es[0].PID != os.Getpid() || es[0].Model != model7B || es[0].PIDNS != ledger.SelfNS() {
		t.Errorf("ledger once loaded: %+v", es)
	}
}

func TestPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	path := tempLedger(t)
	code, _, stderr := runMain(t, simEnvFor(t, path, nil), "serve", model7B, "--host", "127.0.0.1", "--port", fmt.Sprint(port))
	if code != 1 || !strings.Contains(stderr, "OSError: [Errno 98] Address already in use") {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Error("a server that could not bind claimed memory")
	}
}

func TestOverCommitFailsWithVLLMsText(t *testing.T) {
	path := tempLedger(t)
	env := simEnvFor(t, path, map[string]string{"VLLM_SIM_LOAD_SECONDS": "0.3"})
	total := uint64(DefaultTotalMiB) * mib

	// Watch the ledger the whole time: it must never hold more than the GPU.
	stopWatch := make(chan struct{})
	var watch sync.WaitGroup
	var maxUsed uint64
	watch.Add(1)
	go func() {
		defer watch.Done()
		for {
			select {
			case <-stopWatch:
				return
			default:
			}
			if st, err := ledger.Open(path, 0, 0).Read(); err == nil && st.Used(0) > maxUsed {
				maxUsed = st.Used(0)
			}
			time.Sleep(time.Millisecond)
		}
	}()

	a := startSim(t, env, model7B, "--gpu-memory-utilization", "0.9")
	b := startSim(t, env, model7B, "--gpu-memory-utilization", "0.9")
	var winner, loser *simProc
	for winner == nil {
		select {
		case a.code = <-a.done:
			a.exited, loser, winner = true, a, b
		case b.code = <-b.done:
			b.exited, loser, winner = true, b, a
		case <-time.After(10 * time.Second):
			t.Fatal("neither simulator failed")
		}
	}
	winner.waitHealthy(t)
	close(stopWatch)
	watch.Wait()

	if loser.code != 1 {
		t.Errorf("second engine exit %d, want 1", loser.code)
	}
	stderr := loser.stderr.String()
	want := "ValueError: Free memory on device cuda:0 (1.6/15.99 GiB) on startup is less than desired GPU memory utilization (0.9, 14.39 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes."
	if !strings.Contains(stderr, want) {
		t.Errorf("stderr lacks %q:\n%s", want, stderr)
	}
	if !strings.Contains(loser.stdout.String(), want) {
		t.Errorf("the engine's ERROR log lacks the root cause:\n%s", loser.stdout)
	}
	last := strings.TrimSpace(stderr[strings.LastIndex(strings.TrimSpace(stderr), "\n")+1:])
	if !strings.HasSuffix(last, "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}") {
		t.Errorf("last stderr line %q", last)
	}
	if maxUsed > total {
		t.Errorf("ledger held %d bytes on a %d-byte GPU", maxUsed, total)
	}
	st := readLedger(t, path)
	if len(entriesFor(st, loser.port)) != 0 {
		t.Errorf("the failed engine left an entry: %+v", st.Entries)
	}
	if es := entriesFor(st, winner.port); len(es) != 1 || es[0].Bytes != uint64(float64(total)*0.9+0.999) {
		t.Errorf("winner's entry %+v, want %d bytes", es, uint64(float64(total)*0.9+0.999))
	}
}

func TestStartupMemoryFailures(t *testing.T) {
	cases := []struct {
		name  string
		model string
		args  []string
		want  string
	}{
		{"weights do not fit", "Qwen/Qwen2.5-32B-Instruct-AWQ", nil,
			"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate "},
		{"no room for KV", model14B, []string{"--gpu-memory-utilization", "0.6"},
			"ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing the engine. See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."},
		{"context too long", model14B, []string{"--gpu-memory-utilization", "0.92"},
			"ValueError: To serve at least one request with the models's max seq len (32768), (6.0 GiB KV cache is needed, which is larger than the available KV cache memory (3.53 GiB). Based on the available memory, the estimated maximum model length is 19264. Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine. See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := tempLedger(t)
			p := startSim(t, simEnvFor(t, path, nil), tc.model, tc.args...)
			if code := p.wait(t, 10*time.Second); code != 1 {
				t.Fatalf("exit %d, want 1\n%s", code, p.stderr)
			}
			stderr := p.stderr.String()
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr lacks %q:\n%s", tc.want, stderr)
			}
			if !strings.Contains(stderr, "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}") {
				t.Errorf("no RuntimeError line:\n%s", stderr)
			}
			if st := readLedger(t, path); len(st.Entries) != 0 {
				t.Errorf("failed engine left entries: %+v", st.Entries)
			}
		})
	}
}

func TestBadValuesExitOne(t *testing.T) {
	path := tempLedger(t)
	code, _, stderr := runMain(t, simEnvFor(t, path, nil), "serve", model7B, "--port", fmt.Sprint(freePort(t)), "--gpu-memory-utilization", "1.5")
	if code != 1 || !strings.Contains(stderr, "1 validation error for CacheConfig") || !strings.Contains(stderr, "Input should be less than or equal to 1") {
		t.Errorf("utilization 1.5: exit %d\n%s", code, stderr)
	}
	code, _, stderr = runMain(t, simEnvFor(t, path, nil), "serve", model7B, "--port", fmt.Sprint(freePort(t)), "--enable-auto-tool-choice")
	if code != 1 || !strings.Contains(stderr, "TypeError: Error: --enable-auto-tool-choice requires --tool-call-parser") {
		t.Errorf("auto tool choice without parser: exit %d\n%s", code, stderr)
	}
	code, _, stderr = runMain(t, simEnvFor(t, path, nil), "serve", model7B, "--port", fmt.Sprint(freePort(t)), "--max-model-len", "65536")
	if code != 1 || !strings.Contains(stderr, "User-specified max_model_len (65536) is greater than the derived max_model_len") {
		t.Errorf("max_model_len too long: exit %d\n%s", code, stderr)
	}
}

func TestKVCacheMemoryBytes(t *testing.T) {
	path := tempLedger(t)
	// A pinned KV cache: the engine holds weights + overheads + KV...
	p := startSim(t, simEnvFor(t, path, nil), model7B, "--kv-cache-memory-bytes", "2G", "--gpu-memory-utilization", "0.5")
	p.waitHealthy(t)
	es := entriesFor(readLedger(t, path), p.port)
	want := uint64(5.57e9) + activationFor(7) + 400*mib + 2*gib
	if len(es) != 1 || es[0].Bytes != want {
		t.Fatalf("entries %+v, want %d bytes", es, want)
	}
	// ...but vLLM still checks free memory against utilization × total.
	q := startSim(t, simEnvFor(t, path, nil), model7B, "--kv-cache-memory-bytes", "2G")
	if code := q.wait(t, 10*time.Second); code != 1 || !strings.Contains(q.stderr.String(), "ValueError: Free memory on device cuda:0 (") {
		t.Fatalf("exit %d\n%s", code, q.stderr)
	}
}

func TestChatCompletions(t *testing.T) {
	p := startSim(t, simEnvFor(t, tempLedger(t), nil), model7B, "--served-model-name", "po",
		"--override-generation-config", `{"temperature":0.1,"top_p":0.9}`)
	p.waitHealthy(t)
	body := `{"model":"po","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"write a plan"}],"max_tokens":5}`
	r := p.postJSON(t, "/v1/chat/completions", body)
	if r.status != 200 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	var resp struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Model   string `json:"model"`
		Choices []struct {
			Index   int `json:"index"`
			Message struct {
				Role    string `json:"role"`
				Content string `json:"content"`
			} `json:"message"`
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
		Usage usage `json:"usage"`
	}
	decode(t, r.body, &resp)
	if !strings.HasPrefix(resp.ID, "chatcmpl-") || resp.Object != "chat.completion" || resp.Model != "po" || len(resp.Choices) != 1 {
		t.Fatalf("response %s", r.body)
	}
	c := resp.Choices[0]
	if c.Message.Role != "assistant" || len(strings.Fields(c.Message.Content)) != 5 || c.FinishReason != "length" {
		t.Errorf("choice %+v", c)
	}
	// 5 words + ChatML: 3 header and 2 footer tokens per message, 3 for the assistant header.
	if resp.Usage != (usage{PromptTokens: 5 + 2*5 + 3, CompletionTokens: 5, TotalTokens: 23}) {
		t.Errorf("usage %+v", resp.Usage)
	}
	if got := r.header.Get("X-Vllm-Sim-Sampling"); !strings.Contains(got, `"temperature":0.1`) || !strings.Contains(got, `"top_p":0.9`) {
		t.Errorf("effective sampling %q does not carry the override", got)
	}
	// Same prompt, same text.
	r2 := p.postJSON(t, "/v1/chat/completions", body)
	var resp2 struct {
		Choices []struct {
			Message struct{ Content string } `json:"message"`
		} `json:"choices"`
	}
	decode(t, r2.body, &resp2)
	if resp2.Choices[0].Message.Content != c.Message.Content {
		t.Errorf("not deterministic: %q vs %q", resp2.Choices[0].Message.Content, c.Message.Content)
	}
	// Without max_tokens the answer ends by itself.
	r3 := p.postJSON(t, "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}]}`)
	var resp3 struct {
		Choices []struct {
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
		Model string `json:"model"`
		Usage usage  `json:"usage"`
	}
	decode(t, r3.body, &resp3)
	if resp3.Choices[0].FinishReason != "stop" || resp3.Usage.CompletionTokens < 16 || resp3.Model != "po" {
		t.Errorf("no max_tokens: %s", r3.body)
	}
}

func TestStreamingShape(t *testing.T) {
	p := startSim(t, simEnvFor(t, tempLedger(t), nil), model7B, "--served-model-name", "po")
	p.waitHealthy(t)
	r := p.postJSON(t, "/v1/chat/completions",
		`{"model":"po","messages":[{"role":"user","content":"hello there"}],"max_tokens":4,"stream":true,"stream_options":{"include_usage":true}}`)
	if r.status != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("status %d, content type %q", r.status, r.header.Get("Content-Type"))
	}
	events := sseEvents(t, r.body)
	if len(events) != 7 || events[len(events)-1] != "[DONE]" {
		t.Fatalf("want role chunk, 4 content chunks, usage chunk, [DONE]; got %d events:\n%s", len(events), r.body)
	}
	type chunk struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Model   string `json:"model"`
		Choices []struct {
			Index int `json:"index"`
			Delta struct {
				Role    string  `json:"role"`
				Content *string `json:"content"`
			} `json:"delta"`
			FinishReason *string `json:"finish_reason"`
		} `json:"choices"`
		Usage *usage `json:"usage"`
	}
	var chunks []chunk
	for _, ev := range events[:len(events)-1] {
		var c chunk
		decode(t, []byte(ev), &c)
		chunks = append(chunks, c)
	}
	id := chunks[0].ID
	text := ""
	for i, c := range chunks {
		if c.ID != id || c.Object != "chat.completion.chunk" || c.Model != "po" {
			t.Errorf("chunk %d header: %+v", i, c)
		}
		if i == len(chunks)-1 {
			break
		}
		if len(c.Choices) != 1 || c.Usage != nil {
			t.Fatalf("chunk %d: %s", i, events[i])
		}
		ch := c.Choices[0]
		if i == 0 {
			if ch.Delta.Role != "assistant" || ch.Delta.Content == nil || *ch.Delta.Content != "" {
				t.Errorf("first chunk carries the role: %s", events[i])
			}
			continue
		}
		text += *ch.Delta.Content
		last := i == len(chunks)-2
		if last != (ch.FinishReason != nil) || (last && *ch.FinishReason != "length") {
			t.Errorf("chunk %d finish_reason: %s", i, events[i])
		}
	}
	u := chunks[len(chunks)-1]
	if len(u.Choices) != 0 || u.Usage == nil || u.Usage.CompletionTokens != 4 || u.Usage.PromptTokens != 10 || u.Usage.TotalTokens != 14 {
		t.Errorf("usage chunk: %s", events[len(events)-2])
	}
	if !strings.Contains(string(r.body), `"choices":[]`) {
		t.Errorf("usage chunk lacks empty choices: %s", events[len(events)-2])
	}
	// The stream says what the plain request says.
	plain := p.postJSON(t, "/v1/chat/completions", `{"model":"po","messages":[{"role":"user","content":"hello there"}],"max_tokens":4}`)
	if !strings.Contains(string(plain.body), fmt.Sprintf(`"content":%q`, text)) {
		t.Errorf("stream text %q differs from %s", text, plain.body)
	}

	// Completions stream, without usage.
	r = p.postJSON(t, "/v1/completions", `{"model":"po","prompt":"once upon","max_tokens":3,"stream":true}`)
	events = sseEvents(t, r.body)
	if len(events) != 4 || events[3] != "[DONE]" || !strings.Contains(events[0], `"object":"text_completion"`) || strings.Contains(r.body2(), `"usage"`) {
		t.Errorf("completion stream:\n%s", r.body)
	}
}

func (r response) body2() string { return string(r.body) }

func TestErrorShapes(t *testing.T) {
	p := startSim(t, simEnvFor(t, tempLedger(t), nil), model7B, "--served-model-name", "po")
	p.waitHealthy(t)
	r := p.do(t, http.MethodPost, "/v1/chat/completions", "text/plain", `{"model":"po","messages":[]}`)
	if r.status != 400 || string(r.body) != `{"error":{"message":"[\"Unsupported Media Type: Only 'application/json' is allowed\"]","type":"Bad Request","param":null,"code":400}}` {
		t.Errorf("wrong content type: %d %s", r.status, r.body)
	}
	r = p.postJSON(t, "/v1/chat/completions", `{"model":"x","messages":[{"role":"user","content":"hi"}]}`)
	if r.status != 404 || string(r.body) != "{\"error\":{\"message\":\"The model `x` does not exist.\",\"type\":\"NotFoundError\",\"param\":\"model\",\"code\":404}}" {
		t.Errorf("404: %d %s", r.status, r.body)
	}
	r = p.postJSON(t, "/v1/completions", `{"model":"po","prompt":"hi","max_tokens":40000}`)
	if r.status != 400 || !strings.Contains(string(r.body), `"type":"BadRequestError"`) || !strings.Contains(string(r.body), "maximum context length is 32768 tokens") {
		t.Errorf("400: %d %s", r.status, r.body)
	}
	r = p.postJSON(t, "/v1/chat/completions", `{"model":"po","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}`)
	if r.status != 400 || !strings.Contains(string(r.body), `\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set`) {
		t.Errorf("tools without auto tool choice: %d %s", r.status, r.body)
	}
	r = p.do(t, http.MethodGet, "/v1/embeddings", "", "")
	if r.status != 404 {
		t.Errorf("/v1/embeddings: %d", r.status)
	}
	r = p.do(t, http.MethodGet, "/v1/chat/completions", "", "")
	if r.status != 405 {
		t.Errorf("GET chat: %d", r.status)
	}
	for _, path := range []string{"/sleep", "/wake_up"} {
		if r = p.do(t, http.MethodPost, path, "", ""); r.status != 404 {
			t.Errorf("%s without sleep mode: %d", path, r.status)
		}
	}
	if r = p.do(t, http.MethodPost, "/ping", "", ""); r.status != 200 || len(r.body) != 0 {
		t.Errorf("POST /ping: %d %q", r.status, r.body)
	}
	if r = p.do(t, http.MethodGet, "/load", "", ""); string(r.body) != `{"server_load":0}` {
		t.Errorf("/load: %s", r.body)
	}
	r = p.postJSON(t, "/tokenize", `{"model":"po","prompt":"three small words"}`)
	var tok struct {
		Count       int   `json:"count"`
		MaxModelLen int   `json:"max_model_len"`
		Tokens      []int `json:"tokens"`
	}
	decode(t, r.body, &tok)
	if tok.Count != 3 || tok.MaxModelLen != 32768 || len(tok.Tokens) != 3 {
		t.Errorf("/tokenize: %s", r.body)
	}
	r = p.postJSON(t, "/detokenize", fmt.Sprintf(`{"model":"po","tokens":[%d,%d,%d]}`, tok.Tokens[0], tok.Tokens[1], tok.Tokens[2]))
	if string(r.body) != `{"prompt":"three small words"}` {
		t.Errorf("/detokenize: %s", r.body)
	}
}

func TestAPIKeyGuardsV1Only(t *testing.T) {
	for _, viaEnv := range []bool{false, true} {
		t.Run(fmt.Sprintf("env=%v", viaEnv), func(t *testing.T) {
			extra := map[string]string{}
			var args []string
			if viaEnv {
				extra["VLLM_API_KEY"] = "s3cret"
			} else {
				args = []string{"--api-key", "s3cret"}
			}
			p := startSim(t, simEnvFor(t, tempLedger(t), extra), model7B, args...)
			p.waitHealthy(t)
			for _, hdr := range [][]string{nil, {"Authorization", "Bearer wrong"}} {
				r := p.do(t, http.MethodGet, "/v1/models", "", "", hdr...)
				if r.status != 401 || string(r.body) != `{"error":"Unauthorized"}` {
					t.Errorf("/v1/models with %v: %d %s", hdr, r.status, r.body)
				}
			}
			if r := p.do(t, http.MethodGet, "/v1/models", "", "", "Authorization", "Bearer s3cret"); r.status != 200 {
				t.Errorf("/v1/models with the key: %d", r.status)
			}
			for _, path := range []string{"/health", "/metrics", "/version"} {
				if r := p.do(t, http.MethodGet, path, "", ""); r.status != 200 {
					t.Errorf("%s without key: %d", path, r.status)
				}
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	p := startSim(t, simEnvFor(t, tempLedger(t), nil), model7B, "--served-model-name", "po", "other")
	p.waitHealthy(t)
	p.postJSON(t, "/v1/completions", `{"model":"other","prompt":"a b c","max_tokens":2}`)
	r := p.do(t, http.MethodGet, "/metrics", "", "")
	m := string(r.body)
	if !strings.HasPrefix(r.header.Get("Content-Type"), "text/plain") {
		t.Errorf("content type %q", r.header.Get("Content-Type"))
	}
	for _, want := range []string{
		"# TYPE vllm:num_requests_running gauge",
		`vllm:num_requests_running{engine="0",model_name="po"} 0.0`,
		`vllm:num_requests_waiting{engine="0",model_name="po"} 0.0`,
		`vllm:kv_cache_usage_perc{engine="0",model_name="po"} 0.0`,
		"# TYPE vllm:prompt_tokens_total counter",
		`vllm:prompt_tokens_total{engine="0",model_name="po"} 3.0`,
		`vllm:generation_tokens_total{engine="0",model_name="po"} 2.0`,
		`vllm:request_success_total{engine="0",model_name="po",finished_reason="length"} 1.0`,
		`vllm:request_success_total{engine="0",model_name="po",finished_reason="stop"} 0.0`,
		"# TYPE vllm:time_to_first_token_seconds histogram",
		`vllm:time_to_first_token_seconds_count{engine="0",model_name="po"} 1.0`,
		`vllm:e2e_request_latency_seconds_bucket{engine="0",model_name="po",le="+Inf"} 1.0`,
		"# TYPE vllm:inter_token_latency_seconds histogram",
		"# TYPE vllm:request_queue_time_seconds histogram",
		"vllm:num_preemptions_total",
		"vllm:prefix_cache_queries_total",
		"vllm:prefix_cache_hits_total",
		`gpu_memory_utilization="0.9"`,
		"# TYPE vllm:cache_config_info gauge",
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(m, "vllm:gpu_cache_usage_perc") {
		t.Error("vllm:gpu_cache_usage_perc was removed in 0.12")
	}
}

func TestSleepAndWake(t *testing.T) {
	path := tempLedger(t)
	env := simEnvFor(t, path, map[string]string{"VLLM_SERVER_DEV_MODE": "1"})
	p := startSim(t, env, model7B, "--enable-sleep-mode", "--gpu-memory-utilization", "0.5", "--served-model-name", "po", "--max-model-len", "8192")
	p.waitHealthy(t)
	held := entriesFor(readLedger(t, path), p.port)[0].Bytes

	if r := p.do(t, http.MethodGet, "/is_sleeping", "", ""); string(r.body) != `{"is_sleeping":false}` {
		t.Fatalf("/is_sleeping: %s", r.body)
	}
	if r := p.do(t, http.MethodPost, "/sleep?level=1", "", ""); r.status != 200 {
		t.Fatalf("/sleep: %d %s", r.status, r.body)
	}
	e := entriesFor(readLedger(t, path), p.port)[0]
	if e.State != ledger.StateSleeping || e.Bytes >= held/10 || e.Bytes < 200*mib || e.HostBytes != uint64(5.57e9) {
		t.Errorf("asleep (level 1): %+v (held %d)", e, held)
	}
	if r := p.do(t, http.MethodGet, "/is_sleeping", "", ""); string(r.body) != `{"is_sleeping":true}` {
		t.Errorf("/is_sleeping: %s", r.body)
	}
	if r := p.do(t, http.MethodGet, "/health", "", ""); r.status != 200 {
		t.Errorf("/health while asleep: %d", r.status)
	}

	// Another engine takes the freed memory: waking cannot fit.
	q := startSim(t, simEnvFor(t, path, nil), model7B, "--gpu-memory-utilization", "0.6")
	q.waitHealthy(t)
	r := p.do(t, http.MethodPost, "/wake_up", "", "")
	if r.status != 500 || !strings.Contains(string(r.body), "Free memory on device cuda:0 (") {
		t.Errorf("wake without room: %d %s", r.status, r.body)
	}
	if e := entriesFor(readLedger(t, path), p.port)[0]; e.State != ledger.StateSleeping {
		t.Errorf("failed wake changed the entry: %+v", e)
	}
	q.stop(t)

	if r := p.do(t, http.MethodPost, "/wake_up", "", ""); r.status != 200 {
		t.Fatalf("/wake_up: %d %s", r.status, r.body)
	}
	e = entriesFor(readLedger(t, path), p.port)[0]
	if e.State != ledger.StateLoaded || e.Bytes != held || e.HostBytes != 0 {
		t.Errorf("awake: %+v, want %d bytes", e, held)
	}
	if r := p.postJSON(t, "/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}`); r.status != 200 {
		t.Errorf("completion after wake: %d %s", r.status, r.body)
	}

	// Level 2 keeps nothing on the host; after waking, reload the weights.
	p.do(t, http.MethodPost, "/sleep?level=2", "", "")
	if e := entriesFor(readLedger(t, path), p.port)[0]; e.HostBytes != 0 || e.State != ledger.StateSleeping {
		t.Errorf("asleep (level 2): %+v", e)
	}
	p.do(t, http.MethodPost, "/wake_up?tags=weights", "", "")
	if r := p.do(t, http.MethodGet, "/is_sleeping", "", ""); string(r.body) != `{"is_sleeping":true}` {
		t.Errorf("only weights awake, /is_sleeping: %s", r.body)
	}
	p.do(t, http.MethodPost, "/wake_up?tags=kv_cache", "", "")
	if e := entriesFor(readLedger(t, path), p.port)[0]; e.Bytes != held || e.State != ledger.StateLoaded {
		t.Errorf("awake after tags: %+v", e)
	}
	if r := p.postJSON(t, "/collective_rpc", `{"method":"reload_weights"}`); r.status != 200 {
		t.Errorf("/collective_rpc: %d %s", r.status, r.body)
	}
	if r := p.do(t, http.MethodPost, "/reset_prefix_cache", "", ""); r.status != 200 {
		t.Errorf("/reset_prefix_cache: %d", r.status)
	}
}

// TestTensorParallelSplitsAcrossGPUs: with -tp 2 the weights are split and
// each GPU's share is held by a worker process of its own, as vLLM's
// MultiprocExecutor runs one VllmWorker per rank: the ledger (NVML's view)
// names two workers, neither of them the API server, and they go with it,
// even when it is killed.
func TestTensorParallelSplitsAcrossGPUs(t *testing.T) {
	path := tempLedger(t)
	env := procEnv(path, "0.18.0", map[string]string{"VLLM_SIM_GPUS": "2", "CUDA_VISIBLE_DEVICES": "0,1"})
	p := execSim(t, env, freePort(t), "Qwen/Qwen2.5-32B-Instruct-AWQ", "-tp", "2", "--max-model-len", "8192")
	p.waitHealthy(t)
	es := entriesFor(readLedger(t, path), p.port)
	if len(es) != 2 || es[0].GPU == es[1].GPU {
		t.Fatalf("entries %+v", es)
	}
	if es[0].PID == es[1].PID || es[0].PID == p.pid || es[1].PID == p.pid {
		t.Errorf("GPU holders: PIDs %d and %d, API server %d: want a worker process per rank", es[0].PID, es[1].PID, p.pid)
	}
	if es[0].Bytes != es[1].Bytes || es[0].Bytes == 0 {
		t.Errorf("per-rank memory %d and %d: want the same share on each GPU", es[0].Bytes, es[1].Bytes)
	}
	for _, e := range es {
		if err := syscall.Kill(e.PID, 0); err != nil {
			t.Errorf("worker %d on GPU %d: %v", e.PID, e.GPU, err)
		}
	}
	if !strings.Contains(p.stdout.String(), fmt.Sprintf("Model loading took %.4f GiB", 19.33e9/2/gib)) {
		t.Errorf("weights not split:\n%s", p.stdout)
	}

	// SIGKILL leaves the engine no chance to clean up: its workers go
	// with it and the driver (the ledger's pruning) frees their memory.
	if err := syscall.Kill(p.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.wait(t, 10*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for _, e := range es {
		for syscall.Kill(e.PID, 0) == nil {
			if time.Now().After(deadline) {
				t.Fatalf("worker %d outlived its killed engine", e.PID)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if err := ledger.Open(path, 2, 0).Prune(); err != nil {
		t.Fatal(err)
	}
	if left := entriesFor(readLedger(t, path), p.port); len(left) != 0 {
		t.Errorf("after the engine was killed the ledger still holds %+v", left)
	}
}

// TestTensorParallelWorkersEndWithTheEngine: a clean stop (SIGTERM) gives
// the memory back and leaves no worker behind.
func TestTensorParallelWorkersEndWithTheEngine(t *testing.T) {
	path := tempLedger(t)
	env := procEnv(path, "0.12.0", map[string]string{"VLLM_SIM_GPUS": "2", "CUDA_VISIBLE_DEVICES": "1,0"})
	p := execSim(t, env, freePort(t), model7B, "-tp", "2", "--max-model-len", "4096", "--gpu-memory-utilization", "0.4")
	p.waitHealthy(t)
	es := entriesFor(readLedger(t, path), p.port)
	if len(es) != 2 {
		t.Fatalf("entries %+v", es)
	}
	p.cancel()
	if code := p.wait(t, 10*time.Second); code != 0 {
		t.Errorf("exit %d after SIGTERM", code)
	}
	for _, e := range es {
		if err := syscall.Kill(e.PID, 0); err == nil {
			t.Errorf("worker %d still runs after its engine stopped", e.PID)
		}
	}
	if left := entriesFor(readLedger(t, path), p.port); len(left) != 0 {
		t.Errorf("after a clean stop the ledger still holds %+v", left)
	}
}

func TestUnitFromCgroup(t *testing.T) {
	old := readCgroup
	defer func() { readCgroup = old }()
	readCgroup = func() ([]byte, error) {
		return []byte("0::/system.slice/system-vagent.slice/vagent@dev.service\n"), nil
	}
	if u := unitFromCgroup(); u != "vagent@dev.service" {
		t.Errorf("unit %q", u)
	}
	readCgroup = func() ([]byte, error) { return []byte("0::/user.slice/session-1.scope\n"), nil }
	if u := unitFromCgroup(); u != "" {
		t.Errorf("unit %q outside vagent", u)
	}
}

func TestWakeTakesAFractionOfTheColdStart(t *testing.T) {
	path := tempLedger(t)
	env := simEnvFor(t, path, map[string]string{"VLLM_SERVER_DEV_MODE": "1",
		"VLLM_SIM_LOAD_SECONDS": "1", "VLLM_SIM_WAKE_FRACTION": "0.1"})
	t0 := time.Now()
	p := startSim(t, env, model7B, "--enable-sleep-mode", "--gpu-memory-utilization", "0.5", "--max-model-len", "8192")
	p.waitHealthy(t)
	cold := time.Since(t0)
	timed := func(path string) time.Duration {
		t.Helper()
		t0 := time.Now()
		if r := p.do(t, http.MethodPost, path, "", ""); r.status != 200 {
			t.Fatalf("%s: %d %s", path, r.status, r.body)
		}
		return time.Since(t0)
	}
	asleep := timed("/sleep?level=1")
	wake := timed("/wake_up")
	if cold < time.Second || wake < 100*time.Millisecond || wake > 400*time.Millisecond || asleep < 50*time.Millisecond || asleep > wake {
		t.Errorf("cold start %s, sleep %s, wake %s: want the wake at about 0.1 of the cold start, the sleep half of it", cold, asleep, wake)
	}
	// After a level-2 sleep the weights reload as at start (0.7 of it).
	timed("/sleep?level=2")
	timed("/wake_up")
	t1 := time.Now()
	if r := p.postJSON(t, "/collective_rpc", `{"method":"reload_weights"}`); r.status != 200 {
		t.Fatalf("/collective_rpc: %d %s", r.status, r.body)
	}
	if d := time.Since(t1); d < 600*time.Millisecond {
		t.Errorf("reload_weights took %s, want about 0.7 s", d)
	}
}

// VLLM_SIM_COMPLETIONS gets one line per answer written whole, streamed or
// not, named by the request's X-Request-Id; an answer whose client left
// first is not there.
func TestCompletionsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "completions")
	p := startSim(t, simEnvFor(t, tempLedger(t), map[string]string{"VLLM_SIM_COMPLETIONS": path, "VLLM_SIM_TOKENS_PER_SECOND": "20"}),
		model7B, "--served-model-name", "po")
	p.waitHealthy(t)
	if r := p.do(t, "POST", "/v1/chat/completions", "application/json",
		`{"model":"po","messages":[{"role":"user","content":"hi"}],"max_tokens":2}`, "X-Request-Id", "batch_x-1-1"); r.status != 200 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	if r := p.do(t, "POST", "/v1/completions", "application/json",
		`{"model":"po","prompt":"hi","max_tokens":2,"stream":true}`, "X-Request-Id", "run_y-2-1"); r.status != 200 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	// A client that gives up after 100ms on a 2.5 s answer.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", p.url+"/v1/chat/completions",
		strings.NewReader(`{"model":"po","messages":[{"role":"user","content":"hi"}],"max_tokens":50}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Request-Id", "gone-3-1")
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatal("the slow request was answered within 100ms")
	}
	// A fourth request, answered after the abandoned one ended: the file
	// is complete once it is there.
	if r := p.do(t, "POST", "/v1/chat/completions", "application/json",
		`{"model":"po","messages":[{"role":"user","content":"hi"}],"max_tokens":1}`, "X-Request-Id", "last-4-1"); r.status != 200 {
		t.Fatalf("status %d: %s", r.status, r.body)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), "batch_x-1-1 po\nrun_y-2-1 po\nlast-4-1 po\n"; got != want {
		t.Fatalf("completions file:\n%s\nwant:\n%s", got, want)
	}
}
