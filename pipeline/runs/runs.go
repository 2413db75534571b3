// Package runs runs pipelines inside vagentd: a run is a work job of kind
// "pipeline" with one item per input and stage, each stage's item after the
// same input's previous one, so the executor can take every input through
// the loaded agent's stage before it switches. It builds each item's
// request from the stage's template and the earlier answers, writes the run
// directory when the run ends, and serves the runs routes of the control
// API (controlapi).
package runs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/controlapi"
	"github.com/vagent-dev/vagent/pipeline"
	"github.com/vagent-dev/vagent/work"
)

// Kind is the work job kind of pipeline runs.
const Kind = "pipeline"

// ChatPath is where every stage's request goes.
const ChatPath = "/v1/chat/completions"

// MaxInputs bounds the inputs of one run.
const MaxInputs = 10000

// Executor is what runs needs of work's executor.
type Executor interface {
	// Notify says that new work was created or a paused run resumed.
	Notify()
	// Subscribe returns the live events of job id until cancel is called.
	Subscribe(jobID string) (<-chan work.Event, func())
}

// Runs runs pipelines: the work.Kind of kind "pipeline" and the control
// routes under controlapi.PathRuns.
type Runs struct {
	cfg   *config.Config
	store *work.Store
	exec  Executor
	log   *slog.Logger
	// done ends the event streams of followers when vagentd stops.
	done <-chan struct{}
}

// Options are New's collaborators.
type Options struct {
	Config *config.Config
	Store  *work.Store
	Exec   Executor
	Log    *slog.Logger
	// Done, when closed, ends every follow (vagentd is stopping).
	Done <-chan struct{}
}

// New returns the pipeline runs of o.Store.
func New(o Options) *Runs {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Runs{cfg: o.Config, store: o.Store, exec: o.Exec, log: log, done: o.Done}
}

// meta is a run's Job.Meta: the pipeline as it was when submitted (a
// later edit of the file does not change a run under way) and its inputs.
type meta struct {
	Pipeline *pipeline.Pipeline `json:"pipeline"`
	Inputs   []string           `json:"inputs"`
	// Dir is the run directory, once written.
	Dir string `json:"dir,omitempty"`
	// Error is why the run directory could not be written (Finished
	// retries).
	Error string `json:"error,omitempty"`
}

func readMeta(j work.Job) (*meta, error) {
	var m meta
	if err := json.Unmarshal(j.Meta, &m); err != nil {
		return nil, fmt.Errorf("run %s: read its pipeline: %w", j.ID, err)
	}
	if m.Pipeline == nil || len(m.Pipeline.Stages) == 0 {
		return nil, fmt.Errorf("run %s: no pipeline stored", j.ID)
	}
	return &m, nil
}

// Submit checks req and stores the run (so that it survives a crash from
// here on) and wakes the executor. A bad pipeline or input is a *BadRequest.
func (r *Runs) Submit(ctx context.Context, req controlapi.RunRequest) (*controlapi.Run, error) {
	var (
		pl  *pipeline.Pipeline
		err error
	)
	switch {
	case req.Pipeline != "" && req.Contents != "":
		return nil, badRequest("give a pipeline's name or its file's contents, not both")
	case req.Pipeline != "":
		pl, err = pipeline.Load(r.cfg, req.Pipeline)
	case req.Contents != "":
		name := req.File
		if name == "" {
			name = "pipeline.toml"
		}
		pl, err = pipeline.Parse(r.cfg, name, []byte(req.Contents))
	default:
		return nil, badRequest("missing \"pipeline\" (a name) or \"contents\" (a pipeline file)")
	}
	if err != nil {
		return nil, &BadRequest{err}
	}
	switch {
	case len(req.Inputs) == 0:
		return nil, badRequest("missing \"inputs\": a run needs at least one input")
	case len(req.Inputs) > MaxInputs:
		return nil, badRequest("%d inputs: a run has at most %d", len(req.Inputs), MaxInputs)
	}
	for i, in := range req.Inputs {
		switch {
		case strings.TrimSpace(in) == "":
			return nil, badRequest("inputs[%d] is empty", i)
		case len(in) > pipeline.MaxInputBytes:
			return nil, badRequest("inputs[%d] is %d bytes; at most %d", i, len(in), pipeline.MaxInputBytes)
		}
	}
	// Stages name agents by any of their names; items carry the agent's
	// own, so that the executor groups a stage's items by agent.
	for i := range pl.Stages {
		if a := pipeline.AgentOf(r.cfg, pl.Stages[i].Agent); a != nil {
			pl.Stages[i].Agent = a.Name
		}
	}
	m, err := json.Marshal(meta{Pipeline: pl, Inputs: req.Inputs})
	if err != nil {
		return nil, err
	}
	items := Items(pl, len(req.Inputs))
	j, err := r.store.CreateJob(ctx, work.Job{Kind: Kind, Status: controlapi.RunQueued, Meta: m}, items)
	if err != nil {
		return nil, fmt.Errorf("store run: %w", err)
	}
	r.log.Info("pipeline run submitted", "run", j.ID, "pipeline", pl.Name, "inputs", len(req.Inputs), "items", len(items))
	r.exec.Notify()
	return r.Get(ctx, j.ID)
}

// Items are a run's items: input by input, stage by stage, each after the
// same input's previous stage.
func Items(pl *pipeline.Pipeline, inputs int) []work.Item {
	items := make([]work.Item, 0, inputs*len(pl.Stages))
	for i := 0; i < inputs; i++ {
		for k, st := range pl.Stages {
			it := work.Item{Seq: i, Stage: k, Agent: st.Agent, Path: ChatPath,
				CustomID: fmt.Sprintf("input-%d-%s", i+1, st.Name)}
			if k > 0 {
				it.AfterIndex = len(items) // the previous item, 1-based
			}
			items = append(items, it)
		}
	}
	return items
}

// BadRequest is a submit the caller must fix: a bad pipeline or input.
type BadRequest struct{ Err error }

func (e *BadRequest) Error() string { return e.Err.Error() }
func (e *BadRequest) Unwrap() error { return e.Err }

func badRequest(format string, args ...any) error {
	return &BadRequest{fmt.Errorf(format, args...)}
}

// Get returns run id as the control API shows it.
func (r *Runs) Get(ctx context.Context, id string) (*controlapi.Run, error) {
	j, err := r.store.Job(ctx, id)
	if err != nil {
		return nil, err
	}
	if j.Kind != Kind {
		return nil, fmt.Errorf("run %s: %w", id, work.ErrNotFound)
	}
	return view(j), nil
}

// view is job j as a run.
func view(j work.Job) *controlapi.Run {
	run := &controlapi.Run{ID: j.ID, CreatedAt: j.CreatedAt, Items: map[string]int{}}
	for s, n := range j.Counts {
		run.Items[string(s)] = n
	}
	m, err := readMeta(j)
	if err != nil {
		run.Status = status(j, "")
		run.Error = err.Error()
		return run
	}
	run.Status = status(j, m.Dir)
	run.Pipeline = m.Pipeline.Name
	run.Inputs = len(m.Inputs)
	for _, s := range m.Pipeline.Stages {
		run.Stages = append(run.Stages, controlapi.RunStage{Name: s.Name, Agent: s.Agent})
	}
	run.Dir = m.Dir
	if run.Error == "" {
		run.Error = m.Error
	}
	if n := j.Counts[work.Failed]; n > 0 && run.Error == "" {
		run.Error = fmt.Sprintf("%d of %d answers failed", n, j.Total())
	}
	return run
}

// status is a run's status from its items: it has ended once none is
// pending or running and its directory is written (dir set).
func status(j work.Job, dir string) string {
	c := j.Counts
	switch {
	case !j.EndedAt.IsZero() && (j.Finalized || dir != ""):
		return endStatus(c)
	case j.Paused:
		return controlapi.RunPaused
	case c[work.Running] > 0 || c[work.Done] > 0 || c[work.Failed] > 0 || !j.EndedAt.IsZero():
		return controlapi.RunRunning
	}
	return controlapi.RunQueued
}

// endStatus is how a run whose items are counted c ended.
func endStatus(c map[work.ItemState]int) string {
	switch {
	case c[work.Cancelled] > 0:
		return controlapi.RunCancelled
	case c[work.Failed] > 0:
		return controlapi.RunFailed
	}
	return controlapi.RunCompleted
}

// List returns up to limit runs, newest first, older than after.
func (r *Runs) List(ctx context.Context, after string, limit int) (*controlapi.RunList, error) {
	if limit <= 0 || limit > 100 {
		limit = 100
	}
	js, err := r.store.Jobs(ctx, Kind, after, limit+1)
	if err != nil {
		return nil, err
	}
	l := &controlapi.RunList{Runs: []controlapi.Run{}}
	for i, j := range js {
		if i == limit {
			l.HasMore = true
			break
		}
		l.Runs = append(l.Runs, *view(j))
	}
	return l, nil
}

// Cancel cancels run id's pending items; running ones finish.
func (r *Runs) Cancel(ctx context.Context, id string) (*controlapi.Run, error) {
	if _, err := r.Get(ctx, id); err != nil {
		return nil, err
	}
	if err := r.store.CancelJob(ctx, id); err != nil {
		return nil, err
	}
	r.log.Info("pipeline run cancelled", "run", id)
	r.exec.Notify()
	return r.Get(ctx, id)
}

// ErrEnded is a pause or resume of a run that has ended.
var ErrEnded = errors.New("the run has ended")

// Pause keeps run id's pending items from starting (running ones finish);
// Resume (paused false) lets them start again.
func (r *Runs) Pause(ctx context.Context, id string, paused bool) (*controlapi.Run, error) {
	if _, err := r.Get(ctx, id); err != nil {
		return nil, err
	}
	err := r.store.UpdateJob(ctx, id, func(j *work.Job) error {
		if !j.EndedAt.IsZero() {
			return fmt.Errorf("run %s: %w", id, ErrEnded)
		}
		j.Paused = paused
		return nil
	})
	if err != nil {
		return nil, err
	}
	r.log.Info("pipeline run paused", "run", id, "paused", paused)
	r.exec.Notify()
	return r.Get(ctx, id)
}
