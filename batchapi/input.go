package batchapi

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// maxLineErrors bounds errors.data: a file of garbage must not make a
// batch object of megabytes. The last entry says how many more there were.
const maxLineErrors = 100

// request is one valid line of an input file.
type request struct {
	Line     int
	CustomID string
	Agent    string
	Body     []byte
}

// rejected is one line that cannot run, for the error file: its custom_id
// when it has one, and the first thing wrong with it.
type rejected struct {
	Line     int
	CustomID *string
	Err      BatchError
}

// parsed is what parseInput found in an input file.
type parsed struct {
	Requests []request
	Rejected []rejected
	// Errors is every problem, by line (at most maxLineErrors, then one
	// "too_many_errors" entry), for the batch's errors.data.
	Errors []BatchError
	Lines  int // non-blank lines
}

// parseInput reads a batch input file (JSONL: one request a line, blank
// lines skipped) for a batch on endpoint. agentFor resolves a line's
// body.model as the gateway resolves it for the batch's caller. A line
// that fails a check does not stop the others: each problem is reported
// with its line and field, and the valid lines run.
func parseInput(r io.Reader, endpoint string, agentFor func(model string) (string, error)) (*parsed, error) {
	p := &parsed{}
	seen := map[string]int{}
	var extra int
	report := func(line int, code, param, format string, a ...any) BatchError {
		e := BatchError{Code: code, Message: fmt.Sprintf("line %d: ", line) + fmt.Sprintf(format, a...), Line: &line}
		if param != "" {
			e.Param = &param
		}
		if len(p.Errors) < maxLineErrors {
			p.Errors = append(p.Errors, e)
		} else {
			extra++
		}
		return e
	}
	br := bufio.NewReaderSize(r, 64<<10)
	for n := 1; ; n++ {
		raw, err := br.ReadBytes('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("read input line %d: %w", n, err)
		}
		if line := bytes.TrimSpace(raw); len(line) > 0 {
			p.Lines++
			p.check(n, line, endpoint, agentFor, seen, report)
		}
		if err != nil {
			break
		}
	}
	if extra > 0 {
		p.Errors = append(p.Errors, BatchError{Code: codeTooManyErrors,
			Message: fmt.Sprintf("%d more problems not listed (the first %d are)", extra, maxLineErrors)})
	}
	return p, nil
}

// check validates one line and files it as a request or a rejected line.
func (p *parsed) check(n int, line []byte, endpoint string, agentFor func(string) (string, error),
	seen map[string]int, report func(int, string, string, string, ...any) BatchError) {
	var obj map[string]json.RawMessage
	var errs []BatchError
	if err := json.Unmarshal(line, &obj); err != nil || obj == nil {
		msg := "not a JSON object"
		var se *json.SyntaxError
		if errors.As(err, &se) {
			msg = fmt.Sprintf("not valid JSON: %v (at byte %d)", se, se.Offset)
		}
		errs = append(errs, report(n, codeInvalidJSON, "", "%s: each line must be one request object", msg))
		p.Rejected = append(p.Rejected, rejected{Line: n, Err: errs[0]})
		return
	}
	// str reads a string field: nil when absent, and whether it is
	// present with another type.
	str := func(k string) (*string, string) {
		v, ok := obj[k]
		if !ok || string(v) == "null" {
			return nil, "missing"
		}
		var s string
		if json.Unmarshal(v, &s) != nil {
			return nil, "not a string"
		}
		return &s, fmt.Sprintf("%q", s)
	}
	var customID *string
	id, idGot := str("custom_id")
	switch {
	case id == nil || *id == "":
		errs = append(errs, report(n, codeMissingField, "custom_id", "custom_id is %s: every line needs a unique custom_id (a string)", idGot))
	case seen[*id] > 0:
		customID = id
		errs = append(errs, report(n, codeDuplicateID, "custom_id", "custom_id %q is also the custom_id of line %d: each must be unique", *id, seen[*id]))
	default:
		customID = id
		seen[*id] = n
	}
	if m, got := str("method"); m == nil || *m != "POST" {
		errs = append(errs, report(n, codeInvalidMethod, "method", "method is %s: want \"POST\"", got))
	}
	if u, got := str("url"); u == nil || *u != endpoint {
		errs = append(errs, report(n, codeInvalidURL, "url", "url is %s: this batch's endpoint is %s", got, endpoint))
	}
	rawBody := obj["body"]
	var body map[string]json.RawMessage
	var agent string
	if len(rawBody) == 0 || string(rawBody) == "null" {
		errs = append(errs, report(n, codeMissingField, "body", "body is missing: the request to send, a JSON object"))
	} else if err := json.Unmarshal(rawBody, &body); err != nil {
		errs = append(errs, report(n, codeInvalidBody, "body", "body is not a JSON object"))
	} else {
		var model string
		if m, ok := body["model"]; !ok || json.Unmarshal(m, &model) != nil || model == "" {
			errs = append(errs, report(n, codeMissingField, "body.model", "body.model is missing or not a string: name the agent to run the request"))
		} else if a, err := agentFor(model); err != nil {
			errs = append(errs, report(n, codeModelNotFound, "body.model", "%s", err.Error()))
		} else {
			agent = a
		}
		var stream bool
		if s, ok := body["stream"]; ok && json.Unmarshal(s, &stream) == nil && stream {
			errs = append(errs, report(n, codeInvalidBody, "body.stream", "body.stream is true: batch requests are answered whole; drop it"))
		}
	}
	if len(errs) > 0 {
		p.Rejected = append(p.Rejected, rejected{Line: n, CustomID: customID, Err: errs[0]})
		return
	}
	p.Requests = append(p.Requests, request{Line: n, CustomID: *customID, Agent: agent, Body: bytes.Clone(rawBody)})
}

// validEndpoint says whether a batch may run endpoint, or why not.
func validEndpoint(endpoint string) error {
	for _, e := range endpoints {
		if endpoint == e {
			return nil
		}
	}
	return fmt.Errorf("endpoint %q is not supported: want one of %s", endpoint, strings.Join(endpoints, ", "))
}
