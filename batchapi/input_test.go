package batchapi

import (
	"fmt"
	"strings"
	"testing"
)

// agents resolves models as a gateway with agents architect, dev and po
// would, for a key that may not use po.
func agents(model string) (string, error) {
	switch strings.ToLower(model) {
	case "architect", "dev":
		return strings.ToLower(model), nil
	case "po":
		return "", fmt.Errorf("key k may not use agent po")
	}
	return "", fmt.Errorf("The model `%s` does not exist. Available models: architect, dev", model)
}

func chatLine(id, model string) string {
	return fmt.Sprintf(`{"custom_id":%q,"method":"POST","url":"/v1/chat/completions","body":{"model":%q,"messages":[{"role":"user","content":"hi"}]}}`, id, model)
}

// TestParseInputBadLines: each kind of bad line is reported with its line
// number, field and code, and every other line still runs.
func TestParseInputBadLines(t *testing.T) {
	lines := []string{
		chatLine("a", "dev"), // 1
		`{"custom_id": "b", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "dev"`, // 2: truncated
		"",                   // 3: blank, skipped
		chatLine("a", "dev"), // 4: duplicate custom_id
		`{"method":"POST","url":"/v1/chat/completions","body":{"model":"dev"}}`,                // 5: no custom_id
		`{"custom_id":"c","method":"GET","url":"/v1/chat/completions","body":{"model":"dev"}}`, // 6
		`{"custom_id":"d","method":"POST","url":"/v1/embeddings","body":{"model":"dev"}}`,      // 7
		chatLine("e", "gpt-4o"),    // 8: unknown model
		chatLine("f", "po"),        // 9: not this key's
		chatLine("g", "ARCHITECT"), // 10
		`{"custom_id":"h","method":"POST","url":"/v1/chat/completions","body":{"messages":[]}}`,               // 11: no model
		`{"custom_id":"i","method":"POST","url":"/v1/chat/completions","body":{"model":"dev","stream":true}}`, // 12
		`[1,2]`, // 13
		`{"custom_id":7,"method":"POST","url":"/v1/chat/completions","body":{"model":"dev"}}`, // 14: custom_id not a string
		`{"custom_id":"j","method":"POST","url":"/v1/chat/completions","body":"hello"}`,       // 15
	}
	p, err := parseInput(strings.NewReader(strings.Join(lines, "\n")+"\n"), "/v1/chat/completions", agents)
	if err != nil {
		t.Fatal(err)
	}
	if p.Lines != 14 {
		t.Errorf("Lines = %d, want 14 (the blank line skipped)", p.Lines)
	}
	var ok []string
	for _, r := range p.Requests {
		ok = append(ok, fmt.Sprintf("%d:%s:%s", r.Line, r.CustomID, r.Agent))
	}
	if got := strings.Join(ok, " "); got != "1:a:dev 10:g:architect" {
		t.Errorf("valid requests %q, want lines 1 and 10", got)
	}
	want := map[int]struct{ code, param, text string }{
		2:  {codeInvalidJSON, "", "not valid JSON"},
		4:  {codeDuplicateID, "custom_id", `custom_id "a" is also the custom_id of line 1`},
		5:  {codeMissingField, "custom_id", "custom_id is missing"},
		6:  {codeInvalidMethod, "method", `method is "GET": want "POST"`},
		7:  {codeInvalidURL, "url", `url is "/v1/embeddings": this batch's endpoint is /v1/chat/completions`},
		8:  {codeModelNotFound, "body.model", "The model `gpt-4o` does not exist"},
		9:  {codeModelNotFound, "body.model", "may not use agent po"},
		11: {codeMissingField, "body.model", "body.model is missing"},
		12: {codeInvalidBody, "body.stream", "body.stream is true"},
		13: {codeInvalidJSON, "", "not a JSON object"},
		14: {codeMissingField, "custom_id", "custom_id is not a string"},
		15: {codeInvalidBody, "body", "body is not a JSON object"},
	}
	if len(p.Errors) != len(want) || len(p.Rejected) != len(want) {
		t.Errorf("%d errors and %d rejected lines, want %d: %+v", len(p.Errors), len(p.Rejected), len(want), p.Errors)
	}
	for _, e := range p.Errors {
		w, found := want[*e.Line]
		param := ""
		if e.Param != nil {
			param = *e.Param
		}
		if !found || e.Code != w.code || param != w.param || !strings.Contains(e.Message, w.text) ||
			!strings.HasPrefix(e.Message, fmt.Sprintf("line %d: ", *e.Line)) {
			t.Errorf("line %d: %s %q %q, want %+v", *e.Line, e.Code, param, e.Message, w)
		}
	}
	// Lines whose custom_id is unknown go to the error file without one.
	noID := map[int]bool{2: true, 5: true, 13: true, 14: true}
	for _, r := range p.Rejected {
		if noID[r.Line] != (r.CustomID == nil) {
			t.Errorf("rejected line %d: custom_id %v", r.Line, r.CustomID)
		}
	}
}

// TestParseInputManyErrors: errors.data stays bounded however bad the
// file, and says how many more there were; every line is still rejected
// for the error file.
func TestParseInputManyErrors(t *testing.T) {
	in := strings.Repeat("garbage\n", maxLineErrors+50)
	p, err := parseInput(strings.NewReader(in), "/v1/completions", agents)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Errors) != maxLineErrors+1 || p.Errors[maxLineErrors].Code != codeTooManyErrors ||
		!strings.Contains(p.Errors[maxLineErrors].Message, "50 more") {
		t.Errorf("%d errors, last %+v", len(p.Errors), p.Errors[len(p.Errors)-1])
	}
	if len(p.Rejected) != maxLineErrors+50 {
		t.Errorf("%d rejected lines, want %d", len(p.Rejected), maxLineErrors+50)
	}
}

// TestParseInputNoTrailingNewline: the last line counts without a newline,
// and CRLF line ends are accepted.
func TestParseInputNoTrailingNewline(t *testing.T) {
	in := chatLine("a", "dev") + "\r\n" + chatLine("b", "architect")
	p, err := parseInput(strings.NewReader(in), "/v1/chat/completions", agents)
	if err != nil || len(p.Requests) != 2 || len(p.Errors) != 0 {
		t.Fatalf("%+v %v", p, err)
	}
}
