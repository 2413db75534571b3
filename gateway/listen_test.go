package gateway

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestAgentServerTakesEverything: on an agent's own listener every request
// goes to that agent, whatever model it names or none, rewritten to the
// agent's served name.
func TestAgentServerTakesEverything(t *testing.T) {
	e := newEnv(t, envOpts{})
	own := httptest.NewServer(e.g.AgentServer("b", nil).Handler)
	defer own.Close()
	main := e.srv.URL
	e.srv.URL = own.URL
	for _, model := range []string{"Qwen2.5-7B-Instruct", "a", ""} {
		if code, body := e.chat(model); code != http.StatusOK {
			t.Fatalf("model %q on b's listener: %d %s", model, code, body)
		}
	}
	e.srv.URL = main
	b := e.engines["b"]
	b.mu.Lock()
	n := len(b.reqs)
	last := b.reqs[n-1]
	b.mu.Unlock()
	if n != 3 || last.Body["model"] != e.cfg.Agent("b").ServedName() {
		t.Errorf("b's engine got %d requests, the last for %v", n, last.Body["model"])
	}
	e.engines["a"].mu.Lock()
	defer e.engines["a"].mu.Unlock()
	if len(e.engines["a"].reqs) != 0 {
		t.Errorf("a's engine got a request from b's listener")
	}
}

// TestResolveFolded: on the main endpoint names match in any case, and a
// model's repository id routes to its agent; an exact name wins.
func TestResolveFolded(t *testing.T) {
	e := newEnv(t, envOpts{noRun: true})
	for model, want := range map[string]string{"A": "a", "b": "b", "ORG/B-7B": "b", "org/a-7b": "a"} {
		ag, err := e.g.resolve(model, nil)
		if err != nil || ag.name != want {
			t.Errorf("resolve(%q) = %v, %v; want %s", model, ag, err, want)
		}
	}
	if _, err := e.g.resolve("org/c-7b", nil); err == nil {
		t.Error("resolve of an unknown repository id")
	}
}

// TestAgentListenerListsItsAgentOnly: GET /v1/models on b's own listener
// offers b alone (clients often take the first model listed), while the main
// endpoint lists every agent.
func TestAgentListenerListsItsAgentOnly(t *testing.T) {
	e := newEnv(t, envOpts{})
	own := httptest.NewServer(e.g.AgentServer("b", nil).Handler)
	defer own.Close()
	ids := func(url string) []string {
		t.Helper()
		resp, err := http.Get(url + "/v1/models")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var list modelList
		if err := json.Unmarshal(body, &list); err != nil {
			t.Fatalf("%s/v1/models: %v: %s", url, err, body)
		}
		var out []string
		for _, m := range list.Data {
			out = append(out, m.ID)
		}
		return out
	}
	if got := ids(own.URL); len(got) != 1 || got[0] != "b" {
		t.Errorf("b's listener lists %v, want [b]", got)
	}
	if got := ids(e.srv.URL); len(got) < 2 {
		t.Errorf("the main endpoint lists %v, want every agent", got)
	}
	resp, err := http.Get(own.URL + "/v1/models/a")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /v1/models/a on b's listener: %d, want 404", resp.StatusCode)
	}
}
