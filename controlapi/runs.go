package controlapi

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/vagent-dev/vagent/internal/jsonreq"
)

// Pipeline runs, on the control socket:
//
//	POST /vagent/v1/runs                 RunRequest → Run (stored before it answers)
//	GET  /vagent/v1/runs?after=ID&limit=N → RunList, newest first
//	GET  /vagent/v1/runs/ID              → Run
//	GET  /vagent/v1/runs/ID/events       → RunEvent per line (NDJSON) until the run ends
//	POST /vagent/v1/runs/ID/cancel|pause|resume → Run
const (
	PathRuns = Prefix + "runs"
)

// Run statuses.
const (
	RunQueued    = "queued"
	RunRunning   = "running"
	RunPaused    = "paused"
	RunCompleted = "completed"
	RunFailed    = "failed"
	RunCancelled = "cancelled"
)

// RunEnded reports whether a run in status s is over.
func RunEnded(s string) bool {
	return s == RunCompleted || s == RunFailed || s == RunCancelled
}

// RunRequest submits a pipeline run: a pipeline of vagentd's pipelines
// directory by name, or a pipeline file's contents (File names it in
// errors), and the inputs.
type RunRequest struct {
	Pipeline string   `json:"pipeline,omitempty"`
	File     string   `json:"file,omitempty"`
	Contents string   `json:"contents,omitempty"`
	Inputs   []string `json:"inputs"`
}

// RunStage is one stage of a run, as the run shows it.
type RunStage struct {
	Name  string `json:"name"`
	Agent string `json:"agent"`
}

// Run is a pipeline run.
type Run struct {
	ID       string     `json:"id"`
	Pipeline string     `json:"pipeline"`
	Status   string     `json:"status"`
	Stages   []RunStage `json:"stages"`
	Inputs   int        `json:"inputs"`
	// Items counts the run's items (one per input and stage) by state:
	// pending, running, done, failed, cancelled.
	Items     map[string]int `json:"items"`
	CreatedAt time.Time      `json:"created_at"`
	// Dir is the run directory, once the run has ended: one Markdown file
	// per input and stage, and run.jsonl.
	Dir   string `json:"dir,omitempty"`
	Error string `json:"error,omitempty"`
}

// RunList is a page of runs, newest first.
type RunList struct {
	Runs    []Run `json:"runs"`
	HasMore bool  `json:"has_more"`
}

// Run event types, in the order a follower sees them for one item.
const (
	EventStageStart  = "stage_start"
	EventDelta       = "delta"
	EventStageDone   = "stage_done"
	EventStageFailed = "stage_failed"
	// EventRun carries the run (Run) when the follow starts, on each
	// status change and last, when it has ended.
	EventRun = "run"
	// EventPing keeps a quiet follow alive, so that a follower can tell a
	// long stage from a vagentd that is gone.
	EventPing = "ping"
)

// PingInterval is how often a follow with nothing else to say pings.
const PingInterval = 10 * time.Second

// RunEvent is one line of a run's event stream.
type RunEvent struct {
	Type string `json:"type"`
	// Input is the input's index (from 0), Stage and Agent the stage's.
	Input int    `json:"input"`
	Stage string `json:"stage,omitempty"`
	Agent string `json:"agent,omitempty"`
	// Text is a delta's text; on stage_done the whole answer when the
	// follower did not see it stream (it started following later); on
	// stage_failed the error.
	Text string `json:"text,omitempty"`
	// Tokens is the answer's completion tokens, on stage_done.
	Tokens int  `json:"tokens,omitempty"`
	Run    *Run `json:"run,omitempty"`
}

// callTimeout bounds the run calls that answer at once.
const callTimeout = 30 * time.Second

// SubmitRun stores a run in vagentd and returns it; vagentd has checked the
// pipeline and the inputs first.
func (c *Client) SubmitRun(ctx context.Context, req RunRequest) (*Run, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	var r Run
	if err := c.call(ctx, http.MethodPost, PathRuns, req, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Run returns the run id.
func (c *Client) Run(ctx context.Context, id string) (*Run, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	var r Run
	if err := c.call(ctx, http.MethodGet, PathRuns+"/"+url.PathEscape(id), nil, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Runs lists runs, newest first: at most limit, older than after when set.
func (c *Client) Runs(ctx context.Context, after string, limit int) (*RunList, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	q := url.Values{}
	if after != "" {
		q.Set("after", after)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	p := PathRuns
	if len(q) > 0 {
		p += "?" + q.Encode()
	}
	var l RunList
	if err := c.call(ctx, http.MethodGet, p, nil, &l); err != nil {
		return nil, err
	}
	return &l, nil
}

// RunOp is cancel, pause or resume, applied to run id.
func (c *Client) RunOp(ctx context.Context, id, op string) (*Run, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	var r Run
	if err := c.call(ctx, http.MethodPost, PathRuns+"/"+url.PathEscape(id)+"/"+op, nil, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// errQuiet ends a follow whose vagentd stopped talking.
var errQuiet = fmt.Errorf("no event or ping for %s", 3*PingInterval)

// Follow streams run id's events to f until the run has ended (nil), f
// returns an error, ctx ends or vagentd goes quiet: it pings every
// PingInterval, so nothing for three of them means it is gone.
func (c *Client) Follow(ctx context.Context, id string, f func(RunEvent) error) error {
	parent := ctx
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	path := PathRuns + "/" + url.PathEscape(id) + "/events"
	req, err := jsonreq.New(ctx, http.MethodGet, "http://vagentd"+path, nil)
	if err != nil {
		return err
	}
	quiet := time.AfterFunc(3*PingInterval, func() { cancel(errQuiet) })
	defer quiet.Stop()
	lost := func() error {
		if parent.Err() != nil {
			return parent.Err()
		}
		if context.Cause(ctx) == errQuiet {
			return &Error{Lost: true, Message: fmt.Sprintf("GET %s over %s: %v; see journalctl -u vagentd", path, c.socket, errQuiet)}
		}
		return nil
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if e := lost(); e != nil {
			return e
		}
		return &Error{Message: fmt.Sprintf("GET %s over %s: %v", path, c.socket, err)}
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return decodeError(http.MethodGet, path, resp, data)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		quiet.Reset(3 * PingInterval)
		var ev RunEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return &Error{Message: fmt.Sprintf("GET %s: malformed event: %v", path, err)}
		}
		if ev.Type == EventPing {
			continue
		}
		if err := f(ev); err != nil {
			return err
		}
		if ev.Type == EventRun && ev.Run != nil && RunEnded(ev.Run.Status) {
			return nil
		}
	}
	if e := lost(); e != nil {
		return e
	}
	return &Error{Lost: true, Message: fmt.Sprintf("GET %s over %s: the event stream ended before the run did; see journalctl -u vagentd", path, c.socket)}
}
