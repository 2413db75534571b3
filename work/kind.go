package work

import "context"

// Kind is what a kind of job (batch, pipeline) plugs into the executor.
type Kind interface {
	// Prepare builds an item's body right before it runs (pipelines render
	// their templates here from earlier stages' outputs); it returns
	// it.Body unchanged if the item has one. An error fails the item
	// (without sending anything).
	Prepare(ctx context.Context, s *Store, j Job, it Item) ([]byte, error)
	// Finished is called when a job has no pending or running item left
	// (a batch writes its output and error files and sets "completed"; a
	// pipeline writes its run directory). It must be idempotent: after a
	// crash it runs again for every job that ended but whose Finished had
	// not returned nil. An error is logged and retried later.
	Finished(ctx context.Context, s *Store, j Job) error
}

// Event is live progress of a job, for followers (vagentctl run).
type Event struct {
	JobID  string
	ItemID int64
	Seq    int
	Stage  int
	Agent  string
	// Type is "start" (an item was sent), "delta" (streamed text, in
	// Text), "done" or "failed" (an item ended; Text is the error of a
	// failed one), or "job" (the job ended and was finalised).
	Type   string
	Text   string
	Tokens int // completion tokens so far (delta) or in all (done)
}

// Event types.
const (
	EventStart  = "start"
	EventDelta  = "delta"
	EventDone   = "done"
	EventFailed = "failed"
	EventJob    = "job"
)
