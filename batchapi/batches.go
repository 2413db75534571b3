package batchapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/vagent-dev/vagent/gateway"
	"github.com/vagent-dev/vagent/work"
)

// meta is what a batch's job keeps besides its status and items: the
// Batch object's own fields.
type meta struct {
	Owner            string            `json:"owner"`
	Endpoint         string            `json:"endpoint"`
	InputFileID      string            `json:"input_file_id"`
	CompletionWindow string            `json:"completion_window"`
	Metadata         map[string]string `json:"metadata,omitempty"`
	Errors           []BatchError      `json:"errors,omitempty"`
	OutputFileID     string            `json:"output_file_id,omitempty"`
	ErrorFileID      string            `json:"error_file_id,omitempty"`
	// Counts are the final request counts and Usage the answers' token
	// usage, set by Finished.
	Counts *RequestCounts `json:"counts,omitempty"`
	Usage  *Usage         `json:"usage,omitempty"`
	// Unix seconds of each state reached; 0 until then.
	InProgressAt int64 `json:"in_progress_at,omitempty"`
	ExpiresAt    int64 `json:"expires_at,omitempty"`
	FinalizingAt int64 `json:"finalizing_at,omitempty"`
	CompletedAt  int64 `json:"completed_at,omitempty"`
	FailedAt     int64 `json:"failed_at,omitempty"`
	CancellingAt int64 `json:"cancelling_at,omitempty"`
	CancelledAt  int64 `json:"cancelled_at,omitempty"`
}

func readMeta(j work.Job) (meta, error) {
	var m meta
	if err := json.Unmarshal(j.Meta, &m); err != nil {
		return m, fmt.Errorf("batch %s: meta: %w", j.ID, err)
	}
	return m, nil
}

func unix(v int64) *int64 {
	if v == 0 {
		return nil
	}
	return &v
}

func optional(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// batchObject is j as OpenAI's Batch object.
func batchObject(j work.Job) (Batch, error) {
	m, err := readMeta(j)
	if err != nil {
		return Batch{}, err
	}
	b := Batch{
		ID: j.ID, Object: "batch", Endpoint: m.Endpoint, InputFileID: m.InputFileID,
		CompletionWindow: m.CompletionWindow, Status: j.Status,
		OutputFileID: optional(m.OutputFileID), ErrorFileID: optional(m.ErrorFileID),
		CreatedAt: j.CreatedAt.Unix(), InProgressAt: unix(m.InProgressAt), ExpiresAt: unix(m.ExpiresAt),
		FinalizingAt: unix(m.FinalizingAt), CompletedAt: unix(m.CompletedAt), FailedAt: unix(m.FailedAt),
		CancellingAt: unix(m.CancellingAt), CancelledAt: unix(m.CancelledAt),
		Metadata: m.Metadata, Usage: m.Usage,
	}
	if len(m.Errors) > 0 {
		b.Errors = &BatchErrors{Object: "list", Data: m.Errors}
	}
	if m.Counts != nil {
		b.RequestCounts = *m.Counts
	} else {
		// While it runs: answered items are completed, failed ones failed
		// (an answer that is not 2xx is counted when the batch ends).
		b.RequestCounts = RequestCounts{Total: j.Total(), Completed: j.Counts[work.Done], Failed: j.Counts[work.Failed]}
	}
	return b, nil
}

// createRequest is POST /v1/batches' body (openai-go BatchNewParams).
type createRequest struct {
	InputFileID      string            `json:"input_file_id"`
	Endpoint         string            `json:"endpoint"`
	CompletionWindow string            `json:"completion_window"`
	Metadata         map[string]string `json:"metadata"`
}

// validate checks the request as OpenAI does: a 400 naming the field.
func (c *createRequest) validate() error {
	switch {
	case c.InputFileID == "":
		return badRequest("input_file_id", "input_file_id is missing: upload the JSONL with POST /v1/files (purpose batch) and pass its id")
	case c.Endpoint == "":
		return badRequest("endpoint", "endpoint is missing: want one of %s", strings.Join(endpoints, ", "))
	case c.CompletionWindow == "":
		return badRequest("completion_window", "completion_window is missing: want %q", completionWindow)
	case c.CompletionWindow != completionWindow:
		return badRequest("completion_window", "completion_window %q: want %q", c.CompletionWindow, completionWindow)
	}
	if err := validEndpoint(c.Endpoint); err != nil {
		return badRequest("endpoint", "%v", err)
	}
	if len(c.Metadata) > 16 {
		return badRequest("metadata", "metadata has %d keys: at most 16", len(c.Metadata))
	}
	for k, v := range c.Metadata {
		if utf8.RuneCountInString(k) > 64 {
			return badRequest("metadata", "metadata key %q is longer than 64 characters", k)
		}
		if utf8.RuneCountInString(v) > 512 {
			return badRequest("metadata", "metadata[%q] is longer than 512 characters", k)
		}
	}
	return nil
}

// createBatch validates the input file line by line, then stores the batch
// and its items in one transaction before it answers: a batch that was
// acknowledged is never lost. Lines that fail a check are stored as failed
// items (they go to the error file, and errors.data names each line and
// field); the others run. A file with no valid line makes a failed batch.
func (a *API) createBatch(w http.ResponseWriter, r *http.Request, caller string) error {
	var req createRequest
	if err := a.readJSON(w, r, &req); err != nil {
		return err
	}
	if err := req.validate(); err != nil {
		return err
	}
	f, err := a.o.Store.File(r.Context(), req.InputFileID)
	if errors.Is(err, work.ErrNotFound) || (err == nil && !ownsFile(f, caller)) {
		return gateway.Error(http.StatusNotFound, "input_file_id", "No file found with id '%s'.", req.InputFileID)
	}
	if err != nil {
		return storeError("read file "+req.InputFileID, err)
	}
	if f.Purpose != PurposeBatch {
		return badRequest("input_file_id", "file %s has purpose %q: a batch's input needs purpose \"batch\"", f.ID, f.Purpose)
	}
	rc, err := a.o.Store.OpenFile(r.Context(), f.ID)
	if err != nil {
		return storeError("open file "+f.ID, err)
	}
	p, err := parseInput(rc, req.Endpoint, func(model string) (string, error) { return a.o.Gateway.AgentFor(caller, model) })
	rc.Close()
	if err != nil {
		return storeError("read file "+f.ID, err)
	}
	now := a.o.Now()
	m := meta{Owner: caller, Endpoint: req.Endpoint, InputFileID: f.ID, CompletionWindow: req.CompletionWindow,
		Metadata: req.Metadata, Errors: p.Errors, ExpiresAt: now.Add(24 * time.Hour).Unix()}
	status := StatusInProgress
	m.InProgressAt = now.Unix()
	if len(p.Requests) == 0 {
		status, m.InProgressAt, m.FailedAt = StatusFailed, 0, now.Unix()
		if p.Lines == 0 {
			m.Errors = []BatchError{{Code: codeEmptyFile, Message: fmt.Sprintf("file %s has no requests: want one JSON request a line", f.ID)}}
		} else {
			m.Errors = append(m.Errors, BatchError{Code: codeNoValidRequests,
				Message: fmt.Sprintf("none of the %d lines of file %s is a valid request: nothing to run", p.Lines, f.ID)})
		}
	}
	items := make([]work.Item, 0, len(p.Requests)+len(p.Rejected))
	for _, q := range p.Requests {
		items = append(items, work.Item{Seq: q.Line, CustomID: q.CustomID, Agent: q.Agent, Path: req.Endpoint, Body: q.Body})
	}
	for _, x := range p.Rejected {
		e, _ := json.Marshal(outputError{Code: x.Err.Code, Message: x.Err.Message})
		it := work.Item{Seq: x.Line, Path: req.Endpoint, State: work.Failed, Error: string(e)}
		if x.CustomID != nil {
			it.CustomID = *x.CustomID
		}
		items = append(items, it)
	}
	j, err := a.createJob(r, caller, work.Job{Kind: Kind, Status: status, Files: []string{f.ID}}, m, items)
	if err != nil {
		return storeError("store the batch", err)
	}
	a.o.Notify()
	a.o.Log.Info("batch created", "batch", j.ID, "caller", caller, "input_file", f.ID,
		"requests", len(p.Requests), "rejected", len(p.Rejected), "status", status)
	b, err := batchObject(j)
	if err != nil {
		return err
	}
	return writeJSON(w, b)
}

// batch returns the caller's batch id: 404 when it does not exist or is
// another key's.
func (a *API) batch(r *http.Request, caller, id string) (work.Job, error) {
	j, err := a.o.Store.Job(r.Context(), id)
	if errors.Is(err, work.ErrNotFound) || (err == nil && (j.Kind != Kind || !ownsJob(j, caller))) {
		return work.Job{}, notFound("batch", id)
	}
	if err != nil {
		return work.Job{}, storeError("read batch "+id, err)
	}
	return j, nil
}

func (a *API) getBatch(w http.ResponseWriter, r *http.Request, caller string) error {
	j, err := a.batch(r, caller, r.PathValue("id"))
	if err != nil {
		return err
	}
	b, err := batchObject(j)
	if err != nil {
		return err
	}
	return writeJSON(w, b)
}

func (a *API) listBatches(w http.ResponseWriter, r *http.Request, caller string) error {
	p, err := readPage(r)
	if err != nil {
		return err
	}
	if p.after != "" {
		if _, err := a.batch(r, caller, p.after); err != nil {
			return badRequest("after", "after %q: no such batch", p.after)
		}
	}
	jobs, more, err := a.listOwnJobs(r, caller, p)
	if err != nil {
		return storeError("list batches", err)
	}
	objs := make([]Batch, 0, len(jobs))
	for _, j := range jobs {
		b, err := batchObject(j)
		if err != nil {
			return err
		}
		objs = append(objs, b)
	}
	return writeJSON(w, listOf(objs, more, func(b Batch) string { return b.ID }))
}

// cancelBatch moves the batch to cancelling and its pending requests to
// cancelled; requests already running finish, then Finished writes what
// was answered and the batch becomes cancelled.
func (a *API) cancelBatch(w http.ResponseWriter, r *http.Request, caller string) error {
	id := r.PathValue("id")
	if _, err := a.batch(r, caller, id); err != nil {
		return err
	}
	now := a.o.Now().Unix()
	var conflict error
	err := a.o.Store.UpdateJob(r.Context(), id, func(j *work.Job) error {
		switch j.Status {
		case StatusValidating, StatusInProgress:
		case StatusCancelling:
			return nil
		default:
			conflict = gateway.Error(http.StatusConflict, "", "batch %s is %s: only a batch in progress can be cancelled", id, j.Status)
			return conflict
		}
		m, err := readMeta(*j)
		if err != nil {
			return err
		}
		m.CancellingAt = now
		b, err := json.Marshal(m)
		if err != nil {
			return err
		}
		j.Status, j.Meta = StatusCancelling, b
		return nil
	})
	if conflict != nil {
		return conflict
	}
	if err != nil {
		return storeError("cancel batch "+id, err)
	}
	if err := a.o.Store.CancelJob(r.Context(), id); err != nil {
		return storeError("cancel batch "+id, err)
	}
	a.o.Notify()
	a.o.Log.Info("batch cancelling", "batch", id, "caller", caller)
	j, err := a.o.Store.Job(r.Context(), id)
	if err != nil {
		return storeError("read batch "+id, err)
	}
	b, err := batchObject(j)
	if err != nil {
		return err
	}
	return writeJSON(w, b)
}
