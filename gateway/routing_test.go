package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"

	"github.com/vagent-dev/vagent/config"
)

func TestRoutesByAliasAndRewritesModel(t *testing.T) {
	e := newEnv(t, envOpts{modify: func(c *config.Config) {
		a := c.Agent("a")
		a.ServedNames = []string{"Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"}
		a.Aliases = []string{"coder", "gpt-4o"}
	}})
	body := `{"model":"coder","messages":[{"role":"user","content":"hi"}],"temperature":0.3,"extra":{"nested":[1,2,{"model":"keep"}]},"x":"é\u00e9"}`
	resp, err := e.post(context.Background(), "/v1/chat/completions", body, "Authorization", "Bearer client-key-should-not-pass")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	if got := resp.Header.Get("X-Vagent-Agent"); got != "a" {
		t.Errorf("X-Vagent-Agent = %q", got)
	}
	reqs := e.engines["a"].requests()
	if len(reqs) != 1 {
		t.Fatalf("engine a got %d requests", len(reqs))
	}
	up := reqs[0]
	if up.Auth != "Bearer "+testEngineKey {
		t.Errorf("engine saw Authorization %q, want the engine key", up.Auth)
	}
	want := strings.Replace(body, `"model":"coder"`, `"model":"Qwen/Qwen2.5-Coder-7B-Instruct-AWQ"`, 1)
	if string(up.Raw) != want {
		t.Errorf("upstream body\n got %s\nwant %s", up.Raw, want)
	}
	if got := e.sw.callList(); len(got) != 1 || got[0] != "switch a" {
		t.Errorf("switcher calls %v, want one switch to a", got)
	}
	// The agent's own name and its served name route too; b was not touched.
	for _, m := range []string{"a", "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ", "gpt-4o"} {
		if st, b := e.chat(m); st != 200 {
			t.Errorf("model %s: %d %s", m, st, b)
		}
	}
	if n := len(e.engines["b"].requests()); n != 0 {
		t.Errorf("engine b got %d requests", n)
	}
}

func TestUnknownModel404ListsNames(t *testing.T) {
	e := newEnv(t, envOpts{modify: func(c *config.Config) { c.Agent("b").Aliases = []string{"planner"} }})
	st, b := e.chat("gpt-5")
	if st != 404 {
		t.Fatalf("status %d", st)
	}
	ei := errorOf(t, b)
	for _, n := range []string{"gpt-5", "a", "b", "planner"} {
		if !strings.Contains(ei.Message, n) {
			t.Errorf("message %q does not mention %s", ei.Message, n)
		}
	}
	if ei.Code != 404 {
		t.Errorf("code %d", ei.Code)
	}
	if len(e.sw.callList()) != 0 {
		t.Errorf("switched for an unknown model: %v", e.sw.callList())
	}
}

func TestBadBodies400(t *testing.T) {
	e := newEnv(t, envOpts{})
	for _, body := range []string{``, `{"model":`, `[1,2]`, `{"messages":[]}`, `{"model":7}`} {
		resp, err := e.post(context.Background(), "/v1/completions", body)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Errorf("body %q: status %d %s", body, resp.StatusCode, b)
			continue
		}
		errorOf(t, b)
	}
	// GET on an inference route.
	resp, err := http.Get(e.srv.URL + "/v1/chat/completions")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 {
		t.Errorf("GET inference route: %d", resp.StatusCode)
	}
}

func TestUpstreamErrorsPassThrough(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.engines["a"].setHandler(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(400)
		io.WriteString(w, `{"error":{"message":"This model's maximum context length is 4096 tokens.","type":"BadRequestError","param":null,"code":400}}`)
	})
	st, b := e.chat("a")
	if st != 400 || !strings.Contains(string(b), "maximum context length") {
		t.Fatalf("got %d %s", st, b)
	}
}

func TestOtherRoutesAndQuery(t *testing.T) {
	e := newEnv(t, envOpts{})
	resp, err := e.post(context.Background(), "/tokenize?x=1", `{"model":"b","prompt":"hello"}`)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	reqs := e.engines["b"].requests()
	if len(reqs) != 1 || reqs[0].Path != "/tokenize" || reqs[0].Body["model"] != "org/b-7b" {
		t.Fatalf("engine b saw %+v", reqs)
	}
}

func TestSystemPrompt(t *testing.T) {
	e := newEnv(t, envOpts{modify: func(c *config.Config) { c.Agent("a").SystemPrompt = "You are a careful Go developer." }})
	cases := []struct {
		path, body string
		want       []string // roles upstream, or nil for untouched
	}{
		{"/v1/chat/completions", `{"model":"a","messages":[{"role":"user","content":"hi"}]}`, []string{"system", "user"}},
		{"/v1/chat/completions", `{"model":"a","messages":[]}`, []string{"system"}},
		{"/v1/chat/completions", `{"model":"a","messages":[{"role":"user","content":"hi"},{"role":"system","content":"mine"}]}`, []string{"user", "system"}},
		{"/v1/chat/completions", `{"model":"a","messages":[{"role":"developer","content":"mine"},{"role":"user","content":"x"}]}`, []string{"developer", "user"}},
		{"/v1/completions", `{"model":"a","prompt":"hi"}`, nil},
	}
	for i, c := range cases {
		resp, err := e.post(context.Background(), c.path, c.body)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		reqs := e.engines["a"].requests()
		up := reqs[len(reqs)-1]
		if c.want == nil {
			if _, ok := up.Body["messages"]; ok {
				t.Errorf("case %d: messages added to a completion", i)
			}
			continue
		}
		msgs, _ := up.Body["messages"].([]any)
		var roles []string
		for _, m := range msgs {
			roles = append(roles, m.(map[string]any)["role"].(string))
		}
		if strings.Join(roles, ",") != strings.Join(c.want, ",") {
			t.Errorf("case %d: roles %v, want %v (%s)", i, roles, c.want, up.Raw)
		}
		if i <= 1 && msgs[0].(map[string]any)["content"] != "You are a careful Go developer." {
			t.Errorf("case %d: system message %v, want the agent's prompt", i, msgs[0])
		}
		if i == 2 && strings.Contains(string(up.Raw), "careful Go developer") {
			t.Errorf("case %d: prompt added beside the client's system message", i)
		}
		// The gateway never injects sampling parameters.
		for _, k := range []string{"temperature", "top_p", "top_k", "max_tokens"} {
			if _, ok := up.Body[k]; ok {
				t.Errorf("case %d: gateway injected %s", i, k)
			}
		}
	}
}

func TestMultipartModelRewrite(t *testing.T) {
	e := newEnv(t, envOpts{modify: func(c *config.Config) { c.Agent("a").ServedNames = []string{"whisper-large"} }})
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	mw.WriteField("model", "a")
	fw, _ := mw.CreateFormFile("file", "x.wav")
	fw.Write([]byte("RIFF...."))
	mw.Close()
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/v1/audio/transcriptions", &buf)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	reqs := e.engines["a"].requests()
	if len(reqs) != 1 {
		t.Fatalf("engine got %d requests (status %d)", len(reqs), resp.StatusCode)
	}
	mr := multipart.NewReader(bytes.NewReader(reqs[0].Raw), mw.Boundary())
	form, err := mr.ReadForm(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	if got := form.Value["model"]; len(got) != 1 || got[0] != "whisper-large" {
		t.Errorf("model field upstream: %v", got)
	}
	if len(form.File["file"]) != 1 {
		t.Errorf("file part lost")
	}
}

func TestModelsList(t *testing.T) {
	e := newEnv(t, envOpts{agents: []string{"architect", "dev", "po"}, modify: func(c *config.Config) {
		c.Agent("dev").Aliases = []string{"coder"}
	}})
	if st, b := e.chat("dev"); st != 200 {
		t.Fatalf("%d %s", st, b)
	}
	resp, err := http.Get(e.srv.URL + "/v1/models")
	if err != nil {
		t.Fatal(err)
	}
	var list modelList
	json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if list.Object != "list" || len(list.Data) != 3 {
		t.Fatalf("list %+v", list)
	}
	states := map[string]string{}
	for _, m := range list.Data {
		states[m.ID] = m.State
		if m.Object != "model" {
			t.Errorf("%s: object %q", m.ID, m.Object)
		}
	}
	if states["dev"] != StateRunning || states["po"] != StateStopped || states["architect"] != StateStopped {
		t.Errorf("states %v", states)
	}
	resp, err = http.Get(e.srv.URL + "/v1/models/coder")
	if err != nil {
		t.Fatal(err)
	}
	var one modelEntry
	json.NewDecoder(resp.Body).Decode(&one)
	resp.Body.Close()
	if one.ID != "dev" {
		t.Errorf("/v1/models/coder: %+v", one)
	}
}

func TestHealthz(t *testing.T) {
	e := newEnv(t, envOpts{})
	resp, err := http.Get(e.srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.TrimSpace(string(b)) != "ok" {
		t.Fatalf("%d %q", resp.StatusCode, b)
	}
}

func TestOneLogLinePerRequest(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.chat("a")
	e.chat("nope")
	resp, err := e.post(context.Background(), "/v1/chat/completions", chatBody("a", true))
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	waitFor(t, "three request log lines", func() bool { return len(e.logLines("request")) == 3 })
	lines := e.logLines("request")
	want := []struct {
		agent  string
		status float64
		stream bool
	}{{"a", 200, false}, {"", 404, false}, {"a", 200, true}}
	for i, w := range want {
		l := lines[i]
		if l["agent"] != w.agent || l["status"] != w.status || l["stream"] != w.stream || l["duration"] == nil {
			t.Errorf("line %d: %v, want agent %q status %v stream %v", i, l, w.agent, w.status, w.stream)
		}
	}
}

// An engine that refuses vagentd's key is vagentd's problem, not the
// client's: 502, not the engine's 401.
func TestEngineRefusingEngineKeyIs502(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.engines["a"].setHandler(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, `{"error":"Unauthorized"}`)
	})
	st, b := e.chat("a")
	if st != 502 || !strings.Contains(errorOf(t, b).Message, "engine key") {
		t.Fatalf("%d %s", st, b)
	}
}

// `curl -d` labels JSON as a form; the engine gets it as JSON.
func TestJSONContentTypeNormalized(t *testing.T) {
	e := newEnv(t, envOpts{})
	resp, err := e.post(context.Background(), "/v1/completions", `{"model":"a","prompt":"x"}`, "Content-Type", "application/x-www-form-urlencoded")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	reqs := e.engines["a"].requests()
	if len(reqs) != 1 || reqs[0].Header.Get("Content-Type") != "application/json" {
		t.Fatalf("engine saw %v", reqs)
	}
}

// TestSamplingMaxTokensIsADefault: an agent's [sampling] max_tokens is put
// into chat and completion requests that set no length of their own, and
// never overrides a client's value (vLLM would cap every client at a
// server-side max_new_tokens instead).
func TestSamplingMaxTokensIsADefault(t *testing.T) {
	e := newEnv(t, envOpts{modify: func(c *config.Config) {
		n := 512
		c.Agent("a").Sampling.MaxTokens = &n
		c.Agent("a").SystemPrompt = "Be brief."
	}})
	cases := []struct {
		path, body string
		want       map[string]any // upstream values; nil: the key must be absent
	}{
		{"/v1/chat/completions", `{"model":"a","messages":[{"role":"user","content":"hi"}]}`,
			map[string]any{"max_tokens": 512.0, "max_completion_tokens": nil}},
		{"/v1/chat/completions", ` { "model" : "a","messages":[],"max_tokens":4096}`,
			map[string]any{"max_tokens": 4096.0}},
		{"/v1/chat/completions", `{"model":"a","messages":[],"max_tokens":3}`,
			map[string]any{"max_tokens": 3.0}},
		{"/v1/chat/completions", `{"model":"a","messages":[],"max_completion_tokens":2000}`,
			map[string]any{"max_completion_tokens": 2000.0, "max_tokens": nil}},
		{"/v1/chat/completions", `{"model":"a","messages":[],"max_tokens":null}`,
			map[string]any{"max_tokens": 512.0}},
		{"/v1/completions", `{"model":"a","prompt":"hi"}`,
			map[string]any{"max_tokens": 512.0}},
		{"/v1/completions", `{"model":"a","prompt":"hi","max_tokens":1000}`,
			map[string]any{"max_tokens": 1000.0}},
		// max_completion_tokens is not a completions field.
		{"/v1/completions", `{"model":"a","prompt":"hi","max_completion_tokens":9}`,
			map[string]any{"max_tokens": 512.0}},
		{"/v1/embeddings", `{"model":"a","input":"hi"}`,
			map[string]any{"max_tokens": nil}},
	}
	for i, c := range cases {
		resp, err := e.post(context.Background(), c.path, c.body)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		reqs := e.engines["a"].requests()
		up := reqs[len(reqs)-1]
		if up.Body == nil {
			t.Fatalf("case %d: upstream body is not JSON: %s", i, up.Raw)
		}
		for k, want := range c.want {
			got, ok := up.Body[k]
			if want == nil && ok {
				t.Errorf("case %d: %s %v upstream, want none (%s)", i, k, got, up.Raw)
			}
			if want != nil && got != want {
				t.Errorf("case %d: %s %v upstream, want %v (%s)", i, k, got, want, up.Raw)
			}
		}
		if up.Body["model"] != "org/a-7b" {
			t.Errorf("case %d: model %v upstream (%s)", i, up.Body["model"], up.Raw)
		}
		if strings.Count(string(up.Raw), `"max_tokens"`) > 1 {
			t.Errorf("case %d: max_tokens twice: %s", i, up.Raw)
		}
	}
}
