package gateway

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestCallerAndAgentFor: the Batch API's view of keys and models is the
// inference routes': the same 401s, names resolved in any case, 403 for
// an agent the key may not use, 404 listing only the key's models.
func TestCallerAndAgentFor(t *testing.T) {
	e := newEnv(t, envOpts{keys: testKeys(t), noRun: true})
	req := func(auth string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/v1/batches", nil)
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		return r
	}
	if c, err := e.g.Caller(req("Bearer " + aliceKey)); err != nil || c != "alice" {
		t.Errorf("alice's key: %q %v", c, err)
	}
	for _, auth := range []string{"", "Basic x", "Bearer sk-wrong-0123456789abcdef"} {
		var ae *APIError
		if _, err := e.g.Caller(req(auth)); !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
			t.Errorf("Authorization %q: %v, want 401", auth, err)
		}
	}
	for _, tc := range []struct {
		caller, model, agent string
		status               int
		text                 string
	}{
		{"alice", "A", "a", 0, ""},
		{"alice", "org/a-7b", "a", 0, ""},
		{"bob", "b", "b", 0, ""},
		{"alice", "b", "", http.StatusForbidden, "key alice may not use agent b"},
		{"alice", "gpt-4o", "", http.StatusNotFound, "Available models: a"},
		{"mallory", "a", "", http.StatusForbidden, "key mallory is no longer in the keys file"},
	} {
		got, err := e.g.AgentFor(tc.caller, tc.model)
		var ae *APIError
		switch {
		case tc.status == 0 && (err != nil || got != tc.agent):
			t.Errorf("%s %s: %q %v, want %s", tc.caller, tc.model, got, err, tc.agent)
		case tc.status != 0 && (!errors.As(err, &ae) || ae.Status != tc.status || !strings.Contains(ae.Message, tc.text)):
			t.Errorf("%s %s: %v, want %d %q", tc.caller, tc.model, err, tc.status, tc.text)
		}
	}
	// Without a keys file every client is the anonymous caller.
	open := newEnv(t, envOpts{noRun: true})
	if c, err := open.g.Caller(req("")); err != nil || c != "" {
		t.Errorf("no keys file: %q %v", c, err)
	}
	if got, err := open.g.AgentFor("", "b"); err != nil || got != "b" {
		t.Errorf("no keys file, model b: %q %v", got, err)
	}
}

// TestErrorParam: Error picks OpenAI's type for the status and sends the
// field at fault as param.
func TestErrorParam(t *testing.T) {
	w := httptest.NewRecorder()
	WriteError(w, Error(http.StatusBadRequest, "input_file_id", "no such file %s", "x"))
	if w.Code != 400 || w.Body.String() != `{"error":{"message":"no such file x","type":"invalid_request_error","param":"input_file_id","code":400}}` {
		t.Errorf("%d %s", w.Code, w.Body)
	}
}
