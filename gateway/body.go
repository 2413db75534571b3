package gateway

import (
	"bytes"
	"encoding/json"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/vagent-dev/vagent/internal/mediatype"
)

// request is what the gateway reads of a request body: the model it names
// and where to rewrite it. Bodies are JSON objects, except the audio routes'
// multipart forms. JSON bodies are edited in place (the model value
// replaced, a system message spliced in), so every other byte reaches the
// engine as the client sent it.
type request struct {
	model string
	// hasModel is false when the body names no model.
	hasModel bool

	// JSON bodies: the model value's span, and the messages array's span
	// (-1 when absent); hasSystem when a message has role system or developer.
	modelStart, modelEnd int
	msgsStart, msgsEnd   int
	hasSystem            bool
	// The spans of max_tokens and max_completion_tokens (-1 when absent).
	maxStart, maxEnd   int
	maxCompletionStart int

	// multipart bodies: the form's boundary.
	boundary string
}

// parseRequest reads the model from body. ct is the Content-Type header.
func parseRequest(body []byte, ct string) (*request, *APIError) {
	if strings.HasPrefix(mediatype.Of(ct), "multipart/") {
		if mt, params, err := mime.ParseMediaType(ct); err == nil && mt == "multipart/form-data" {
			return parseMultipart(body, params["boundary"])
		}
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, apiErr(http.StatusBadRequest, typeInvalidRequest, "the request has no body: send a JSON object with a \"model\" field")
	}
	if !json.Valid(body) {
		var v any
		err := json.Unmarshal(body, &v)
		return nil, apiErr(http.StatusBadRequest, typeInvalidRequest, "the request body is not valid JSON: %v", err)
	}
	p := &request{modelStart: -1, modelEnd: -1, msgsStart: -1, msgsEnd: -1, maxStart: -1, maxEnd: -1, maxCompletionStart: -1}
	ok := topLevel(body, func(key []byte, vs, ve int) {
		switch {
		case keyIs(body, key, "model"):
			p.modelStart, p.modelEnd = vs, ve
		case keyIs(body, key, "messages"):
			p.msgsStart, p.msgsEnd = vs, ve
		case keyIs(body, key, "max_tokens"):
			p.maxStart, p.maxEnd = vs, ve
		case keyIs(body, key, "max_completion_tokens"):
			p.maxCompletionStart = vs
		}
	})
	if !ok {
		return nil, apiErr(http.StatusBadRequest, typeInvalidRequest, "the request body must be a JSON object")
	}
	if p.modelStart >= 0 {
		raw := body[p.modelStart:p.modelEnd]
		if raw[0] != '"' {
			return nil, apiErr(http.StatusBadRequest, typeInvalidRequest, "\"model\" must be a string")
		}
		p.model = unquote(raw)
		p.hasModel = true
	}
	if p.msgsStart >= 0 && body[p.msgsStart] == '[' {
		p.hasSystem = hasSystemMessage(body[p.msgsStart:p.msgsEnd])
	}
	return p, nil
}

// rewrite returns the body to send to the engine: the model replaced by
// served; for chat requests without a system message, prompt prepended as
// one; and when maxTokens > 0 and the request sets no length of its own
// (see needsMaxTokens), "max_tokens": maxTokens added. It returns body
// itself when nothing changes. The body must name a model.
func (p *request) rewrite(body []byte, served, prompt string, maxTokens int, chat bool) ([]byte, error) {
	if p.boundary != "" {
		return rewriteMultipart(body, p.boundary, served)
	}
	needModel := p.model != served
	needPrompt := prompt != "" && p.msgsStart >= 0 && body[p.msgsStart] == '[' && !p.hasSystem
	needMax := maxTokens > 0 && p.needsMaxTokens(body, chat)
	if !needModel && !needPrompt && !needMax {
		return body, nil
	}
	// Edits in the order they appear in the body.
	type edit struct {
		at, end int
		text    []byte
	}
	var edits [3]edit
	n := 0
	size := len(body)
	if needModel {
		qs, _ := json.Marshal(served)
		edits[n] = edit{p.modelStart, p.modelEnd, qs}
		n++
		size += len(qs)
	}
	if needPrompt {
		qp, _ := json.Marshal(prompt)
		sys := append(append([]byte(`{"role":"system","content":`), qp...), '}')
		if !emptyArray(body[p.msgsStart:p.msgsEnd]) {
			sys = append(sys, ',')
		}
		at := p.msgsStart + 1
		edits[n] = edit{at, at, sys}
		n++
		size += len(sys)
	}
	if needMax {
		num := strconv.AppendInt(nil, int64(maxTokens), 10)
		if p.maxStart >= 0 {
			// "max_tokens": null: the value is replaced.
			edits[n] = edit{p.maxStart, p.maxEnd, num}
		} else {
			// A new first member; the body is an object with a model, so
			// another member follows.
			at := skipWS(body, 0) + 1
			text := append(append([]byte(`"max_tokens":`), num...), ',')
			edits[n] = edit{at, at, text}
		}
		size += len(edits[n].text)
		n++
	}
	slices.SortFunc(edits[:n], func(a, b edit) int { return a.at - b.at })
	out := make([]byte, 0, size)
	last := 0
	for _, e := range edits[:n] {
		out = append(out, body[last:e.at]...)
		out = append(out, e.text...)
		last = e.end
	}
	return append(out, body[last:]...), nil
}

// needsMaxTokens reports whether the request leaves its length to the
// server: a chat request with neither max_tokens nor max_completion_tokens
// (or only nulls), a completion without max_tokens. The agent's
// [sampling] max_tokens is then its default; a client's own value always
// wins.
func (p *request) needsMaxTokens(body []byte, chat bool) bool {
	if p.maxStart >= 0 && !isNull(body[p.maxStart:p.maxEnd]) {
		return false
	}
	if chat && p.maxCompletionStart >= 0 && !bytes.HasPrefix(body[p.maxCompletionStart:], nullToken) {
		return false
	}
	return true
}

var nullToken = []byte("null")

func isNull(v []byte) bool { return bytes.Equal(v, nullToken) }

func emptyArray(b []byte) bool { return len(bytes.TrimSpace(b[1:len(b)-1])) == 0 }

// hasSystemMessage reports whether a messages array holds a message with
// role "system" or "developer" (OpenAI's newer name for it).
func hasSystemMessage(arr []byte) bool {
	found := false
	arrayElems(arr, func(es, ee int) {
		if found || arr[es] != '{' {
			return
		}
		el := arr[es:ee]
		// The last "role" wins, as in every JSON reader (vLLM's too).
		role := ""
		topLevel(el, func(key []byte, vs, ve int) {
			if keyIs(el, key, "role") {
				role = ""
				if el[vs] == '"' {
					role = unquote(el[vs:ve])
				}
			}
		})
		if role == "system" || role == "developer" {
			found = true
		}
	})
	return found
}

// keyIs compares a member name as written (between its quotes) with want.
func keyIs(_ []byte, key []byte, want string) bool {
	if bytes.IndexByte(key, '\\') < 0 {
		return string(key) == want
	}
	var s string
	quoted := append(append([]byte{'"'}, key...), '"')
	if json.Unmarshal(quoted, &s) != nil {
		return false
	}
	return s == want
}

// unquote decodes a JSON string token.
func unquote(raw []byte) string {
	// Invalid UTF-8 is decoded (to U+FFFD) as every JSON reader does.
	if bytes.IndexByte(raw, '\\') < 0 && utf8.Valid(raw) {
		return string(raw[1 : len(raw)-1])
	}
	var s string
	json.Unmarshal(raw, &s)
	return s
}

// The scanners below walk JSON already checked by json.Valid.

func skipWS(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// skipString returns the index just past the string starting at b[i] == '"'.
func skipString(b []byte, i int) int {
	i++
	for i < len(b) {
		switch b[i] {
		case '\\':
			i += 2
		case '"':
			return i + 1
		default:
			i++
		}
	}
	return i
}

// skipValue returns the index just past the value starting at b[i].
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return i
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = skipString(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return i
	default:
		for i < len(b) {
			switch b[i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return i
			}
			i++
		}
		return i
	}
}

// topLevel calls visit for each member of the object b holds, with the
// member's name (as written, without quotes) and its value's span. It
// returns false when b is not an object.
func topLevel(b []byte, visit func(key []byte, vs, ve int)) bool {
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return false
	}
	i = skipWS(b, i+1)
	for i < len(b) && b[i] == '"' {
		ke := skipString(b, i)
		key := b[i+1 : ke-1]
		i = skipWS(b, ke)
		i = skipWS(b, i+1) // ':'
		ve := skipValue(b, i)
		visit(key, i, ve)
		i = skipWS(b, ve)
		if i < len(b) && b[i] == ',' {
			i = skipWS(b, i+1)
		}
	}
	return true
}

// arrayElems calls visit with the span of each element of the array b holds.
func arrayElems(b []byte, visit func(es, ee int)) {
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '[' {
		return
	}
	i = skipWS(b, i+1)
	for i < len(b) && b[i] != ']' {
		e := skipValue(b, i)
		visit(i, e)
		i = skipWS(b, e)
		if i < len(b) && b[i] == ',' {
			i = skipWS(b, i+1)
		}
	}
}

// usageCounts is the usage object of OpenAI responses.
type usageCounts struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
}

var usageKey = []byte(`"usage"`)

// findUsage reads the last "usage" member of a JSON document cheaply: it
// looks for the key's bytes and decodes only the value that follows. ok is
// false when there is none or it is null.
func findUsage(b []byte) (u usageCounts, ok bool) {
	i := bytes.LastIndex(b, usageKey)
	if i < 0 {
		return u, false
	}
	j := skipWS(b, i+len(usageKey))
	if j >= len(b) || b[j] != ':' {
		return u, false
	}
	j = skipWS(b, j+1)
	if j >= len(b) || b[j] != '{' {
		return u, false
	}
	end := skipValue(b, j)
	if json.Unmarshal(b[j:end], &u) != nil {
		return u, false
	}
	return u, true
}

// parseMultipart reads the model field of a multipart form (the audio
// routes).
func parseMultipart(body []byte, boundary string) (*request, *APIError) {
	if boundary == "" {
		return nil, apiErr(http.StatusBadRequest, typeInvalidRequest, "multipart request without a boundary")
	}
	p := &request{boundary: boundary, modelStart: -1, msgsStart: -1}
	mr := multipart.NewReader(bytes.NewReader(body), boundary)
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			return p, nil
		}
		if err != nil {
			return nil, apiErr(http.StatusBadRequest, typeInvalidRequest, "bad multipart body: %v", err)
		}
		if part.FormName() == "model" {
			v, err := io.ReadAll(io.LimitReader(part, 4096))
			if err != nil {
				return nil, apiErr(http.StatusBadRequest, typeInvalidRequest, "bad multipart body: %v", err)
			}
			p.model, p.hasModel = strings.TrimSpace(string(v)), true
		}
		part.Close()
	}
}

// rewriteMultipart copies a multipart form with the model field replaced by
// served, keeping the boundary (and so the Content-Type header).
func rewriteMultipart(body []byte, boundary, served string) ([]byte, error) {
	var out bytes.Buffer
	out.Grow(len(body) + len(served))
	mw := multipart.NewWriter(&out)
	if err := mw.SetBoundary(boundary); err != nil {
		return nil, err
	}
	mr := multipart.NewReader(bytes.NewReader(body), boundary)
	wrote := false
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		w, err := mw.CreatePart(part.Header)
		if err != nil {
			return nil, err
		}
		if part.FormName() == "model" {
			io.WriteString(w, served)
			wrote = true
		} else if _, err := io.Copy(w, part); err != nil {
			return nil, err
		}
		part.Close()
	}
	if !wrote {
		if err := mw.WriteField("model", served); err != nil {
			return nil, err
		}
	}
	if err := mw.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}
