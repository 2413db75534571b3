package gateway

import (
	"bytes"
	"encoding/json"
	"mime"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// FuzzParseRequest feeds the request parser any body and Content-Type. It
// must not panic; what it accepts as JSON must be a JSON object whose
// "model" is what it read; and the rewrite for an engine must be JSON
// again, with the model replaced, the system prompt first when one was
// missing, the default max_tokens when the request sets no length, and
// every other member as the client sent it. Multipart forms
// must rewrite to a form naming the served model. Seeds: f.Add below and
// testdata/fuzz/FuzzParseRequest.
func FuzzParseRequest(f *testing.F) {
	const js = "application/json"
	for _, s := range []struct{ body, ct string }{
		{`{"model":"dev","messages":[{"role":"user","content":"hi"}]}`, js},
		{`{"model":"dev","messages":[{"role":"system","content":"s"},{"role":"user","content":"hi"}],"stream":true}`, js},
		{`{"messages":[],"model":"d\u0065v"}`, js},
		{`{"mod\u0065l":"dev","messages":[{"role":"developer","content":"x"}]}`, js},
		{`{"model":"a","model":"b","messages":[1,"x",null,{"role":"system"}]}`, js},
		{` { "model" : "dev" , "messages" : [ ] } `, js},
		{`{"model":7}`, js},
		{`[1,2]`, js},
		{`{"model":"dev","messages":{"role":"user"}}`, ""},
		{`{"model":"dev","max_tokens":null,"max_completion_tokens":5,"messages":[{"role":"system","role":"user"}]}`, js},
		{`{"model":"dev","max_tokens":12,"prompt":"x"}`, js},
		{`{"a":{"model":"x"},"b":["model"],"model":"\"\\"}`, "text/plain"},
		{"", js},
		{"{", js},
		{"--XX\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF\r\n--XX--\r\n",
			"multipart/form-data; boundary=XX"},
		{"--XX\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nx\r\n--XX--\r\n", "multipart/form-data; boundary=XX"},
		{"--XX\r\n\r\n", "multipart/form-data"},
	} {
		f.Add([]byte(s.body), s.ct)
	}
	f.Fuzz(func(t *testing.T, body []byte, ct string) {
		p, aerr := parseRequest(body, ct)
		if aerr != nil {
			if p != nil || aerr.Status != 400 || aerr.Message == "" {
				t.Fatalf("refusal %+v with request %+v", aerr, p)
			}
			return
		}
		const served, prompt, maxTokens = "served/model", "be brief", 64
		if p.boundary != "" {
			checkMultipart(t, p, body, ct, served)
			return
		}
		var doc map[string]json.RawMessage
		if err := json.Unmarshal(body, &doc); err != nil {
			t.Fatalf("accepted a body that is not a JSON object: %v", err)
		}
		raw, has := doc["model"]
		if has != p.hasModel {
			t.Fatalf("hasModel %v, but the body has model: %v", p.hasModel, has)
		}
		if !has {
			return
		}
		var model string
		if err := json.Unmarshal(raw, &model); err != nil || model != p.model {
			t.Fatalf("read model %q, the body says %s", p.model, raw)
		}
		// Chat or plain completion, from the input, so that both kinds of
		// length default are fuzzed without a third argument.
		chat := len(body)%2 == 0
		out, err := p.rewrite(body, served, prompt, maxTokens, chat)
		if err != nil {
			t.Fatalf("rewrite: %v", err)
		}
		var got map[string]json.RawMessage
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("rewrite is not a JSON object: %v\n%s", err, out)
		}
		if m, _ := got["model"]; string(m) != `"`+served+`"` {
			t.Fatalf("rewritten model %s", m)
		}
		setsLength := func(k string) bool { v, ok := doc[k]; return ok && string(v) != "null" }
		addMax := !setsLength("max_tokens") && !(chat && setsLength("max_completion_tokens"))
		if m := got["max_tokens"]; addMax && string(m) != strconv.Itoa(maxTokens) {
			t.Fatalf("a request that sets no length got max_tokens %s, want %d", m, maxTokens)
		}
		var msgs []json.RawMessage
		isArray := json.Unmarshal(doc["messages"], &msgs) == nil && msgs != nil
		for k, v := range doc {
			switch {
			case k == "model", k == "max_tokens" && addMax:
			case k == "messages" && isArray && !hasSystem(msgs):
				var gm []json.RawMessage
				if err := json.Unmarshal(got[k], &gm); err != nil || len(gm) != len(msgs)+1 {
					t.Fatalf("messages %s became %s", v, got[k])
				}
				var first struct{ Role, Content string }
				if json.Unmarshal(gm[0], &first) != nil || first.Role != "system" || first.Content != prompt {
					t.Fatalf("first message %s, want the system prompt", gm[0])
				}
				for i := range msgs {
					if !jsonEqual(gm[i+1], msgs[i]) {
						t.Fatalf("message %d %s became %s", i, msgs[i], gm[i+1])
					}
				}
			default:
				if !jsonEqual(got[k], v) {
					t.Fatalf("member %q %s became %s", k, v, got[k])
				}
			}
		}
		if _, had := doc["max_tokens"]; addMax && !had {
			delete(got, "max_tokens")
		}
		if len(got) != len(doc) {
			t.Fatalf("%d members became %d", len(doc), len(got))
		}
	})
}

// hasSystem is the fuzz test's own reading of whether a messages array has
// a system or developer message.
func hasSystem(msgs []json.RawMessage) bool {
	for _, m := range msgs {
		var v map[string]json.RawMessage
		if json.Unmarshal(m, &v) != nil {
			continue
		}
		var role string
		if json.Unmarshal(v["role"], &role) == nil && (role == "system" || role == "developer") {
			return true
		}
	}
	return false
}

func jsonEqual(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return bytes.Equal(a, b)
	}
	return reflect.DeepEqual(x, y)
}

// checkMultipart: the rewritten form parses again and names served.
func checkMultipart(t *testing.T, p *request, body []byte, ct, served string) {
	t.Helper()
	if _, params, err := mime.ParseMediaType(ct); err != nil || params["boundary"] != p.boundary {
		t.Fatalf("boundary %q from Content-Type %q", p.boundary, ct)
	}
	out, err := p.rewrite(body, served, "", 64, false)
	if err != nil {
		return // a form the parser could skim but not copy: the client gets 400
	}
	q, aerr := parseRequest(out, ct)
	if aerr != nil {
		t.Fatalf("rewritten form does not parse: %v\n%q", aerr, out)
	}
	if !q.hasModel || strings.TrimSpace(q.model) != served {
		t.Fatalf("rewritten form names model %q (has %v)", q.model, q.hasModel)
	}
}
