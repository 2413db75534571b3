package batchapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vagent-dev/vagent/work"
)

// batchKind is the work.Kind of batches: items carry their bodies, and
// Finished writes the output and error files.
type batchKind struct {
	now func() time.Time
	mu  sync.Mutex // one Finished at a time: a second must not write the files again
}

// Kind returns the work.Kind the executor runs batches with.
func (a *API) Kind() work.Kind { return &batchKind{now: a.o.Now} }

// Prepare sends a line's body as it was uploaded.
func (k *batchKind) Prepare(ctx context.Context, s *work.Store, j work.Job, it work.Item) ([]byte, error) {
	return it.Body, nil
}

// Finished writes the batch's output file (requests answered 2xx, in
// input order) and error file (the others: refused lines, failed
// requests, answers that are not 2xx, requests cancelled), each
// atomically through the store, then sets the final status and counts. It
// is idempotent: once the files are recorded a second call changes
// nothing. A crash between storing a file and recording it leaves that
// file unreferenced (the next call writes it again, and the store's
// retention sweep deletes the orphan).
func (k *batchKind) Finished(ctx context.Context, s *work.Store, j work.Job) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	j, err := s.Job(ctx, j.ID)
	if err != nil {
		return err
	}
	m, err := readMeta(j)
	if err != nil {
		return err
	}
	if m.Counts != nil {
		return nil // already finished
	}
	now := k.now().Unix()
	// Decided inside the transaction: a cancel may have come since.
	if err := updateMeta(ctx, s, j.ID, func(j *work.Job, m *meta) {
		if j.Status == StatusInProgress || j.Status == StatusValidating {
			j.Status, m.FinalizingAt = StatusFinalizing, now
		}
	}); err != nil {
		return err
	}
	items, err := s.Items(ctx, j.ID)
	if err != nil {
		return err
	}
	sort.SliceStable(items, func(a, b int) bool { return items[a].Seq < items[b].Seq })
	var out, errs bytes.Buffer
	counts := RequestCounts{Total: len(items)}
	usage := &Usage{}
	for _, it := range items {
		line, ok := outputOf(j.ID, it)
		if ok {
			usage.add(it.Response)
		}
		b, err := json.Marshal(line)
		if err != nil {
			return fmt.Errorf("batch %s: line %d: %w", j.ID, it.Seq, err)
		}
		b = append(b, '\n')
		switch {
		case ok:
			counts.Completed++
			out.Write(b)
		case it.State == work.Cancelled:
			errs.Write(b)
		default:
			counts.Failed++
			errs.Write(b)
		}
	}
	var outID, errID string
	if out.Len() > 0 {
		f, err := putFile(ctx, s, m.Owner, PurposeBatchOutput, j.ID+"_output.jsonl", &out, 0)
		if err != nil {
			return fmt.Errorf("batch %s: output file: %w", j.ID, err)
		}
		outID = f.ID
	}
	if errs.Len() > 0 {
		f, err := putFile(ctx, s, m.Owner, PurposeBatchOutput, j.ID+"_error.jsonl", &errs, 0)
		if err != nil {
			return fmt.Errorf("batch %s: error file: %w", j.ID, err)
		}
		errID = f.ID
	}
	return updateMeta(ctx, s, j.ID, func(j *work.Job, m *meta) {
		m.OutputFileID, m.ErrorFileID, m.Counts, m.Usage = outID, errID, &counts, usage
		for _, id := range []string{outID, errID} {
			if id != "" {
				j.Files = append(j.Files, id)
			}
		}
		switch j.Status {
		case StatusCancelling:
			j.Status, m.CancelledAt = StatusCancelled, now
		case StatusFailed:
		default:
			j.Status, m.CompletedAt = StatusCompleted, now
		}
	})
}

// updateMeta changes a batch's job and meta in one transaction.
func updateMeta(ctx context.Context, s *work.Store, id string, f func(*work.Job, *meta)) error {
	return s.UpdateJob(ctx, id, func(j *work.Job) error {
		m, err := readMeta(*j)
		if err != nil {
			return err
		}
		f(j, &m)
		b, err := json.Marshal(m)
		if err != nil {
			return err
		}
		j.Meta = b
		return nil
	})
}

// outputOf is item it as a line of the output file (ok) or the error file.
func outputOf(jobID string, it work.Item) (line outputLine, ok bool) {
	line = outputLine{ID: fmt.Sprintf("batch_req_%s_%d", strings.TrimPrefix(jobID, "batch_"), it.Seq)}
	if it.CustomID != "" {
		line.CustomID = &it.CustomID
	}
	if it.Status != 0 && len(it.Response) > 0 {
		body := json.RawMessage(it.Response)
		if !json.Valid(body) {
			body, _ = json.Marshal(string(it.Response))
		}
		line.Response = &outputResponse{StatusCode: it.Status, RequestID: fmt.Sprintf("req_%s_%d", strings.TrimPrefix(jobID, "batch_"), it.Seq), Body: body}
		// An answer that is not 2xx goes to the error file as it is: its
		// body says why.
		return line, it.State == work.Done && it.Status/100 == 2
	}
	switch {
	case it.State == work.Cancelled:
		line.Error = &outputError{Code: codeBatchCancelled, Message: "the batch was cancelled before this request ran"}
	case strings.HasPrefix(it.Error, "{"):
		var e outputError
		if json.Unmarshal([]byte(it.Error), &e) == nil && e.Code != "" {
			line.Error = &e
			break
		}
		fallthrough
	default:
		msg := it.Error
		if msg == "" {
			msg = fmt.Sprintf("the request ended in state %s without an answer", it.State)
		}
		line.Error = &outputError{Code: codeRequestFailed, Message: msg}
	}
	return line, false
}

// add counts one answer's usage (OpenAI's chat and text completion
// usage). vLLM sends prompt_tokens_details.cached_tokens only when it runs
// with --enable-prompt-tokens-details (vllm/entrypoints/openai/
// chat_completion/serving.py, v0.18.0rc2), and no reasoning tokens.
func (u *Usage) add(answer []byte) {
	var a struct {
		Usage *struct {
			Prompt        int64 `json:"prompt_tokens"`
			Completion    int64 `json:"completion_tokens"`
			Total         int64 `json:"total_tokens"`
			PromptDetails *struct {
				Cached int64 `json:"cached_tokens"`
			} `json:"prompt_tokens_details"`
			CompletionDetails *struct {
				Reasoning int64 `json:"reasoning_tokens"`
			} `json:"completion_tokens_details"`
		} `json:"usage"`
	}
	if json.Unmarshal(answer, &a) != nil || a.Usage == nil {
		return
	}
	u.InputTokens += a.Usage.Prompt
	u.OutputTokens += a.Usage.Completion
	u.TotalTokens += a.Usage.Total
	if d := a.Usage.PromptDetails; d != nil {
		u.InputTokensDetails.CachedTokens += d.Cached
	}
	if d := a.Usage.CompletionDetails; d != nil {
		u.OutputTokensDetails.ReasoningTokens += d.Reasoning
	}
}
