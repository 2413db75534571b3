package work

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vagent-dev/vagent/internal/mediatype"
)

// Target is where the executor sends its items: the gateway, in process.
type Target struct {
	// Handler serves background requests (gateway.BackgroundHandler).
	Handler http.Handler
	// Load reports the agents' states and the clients' requests waiting
	// (gateway.Load).
	Load func() []AgentLoad
	// Yielded reports whether an answer's header says the request gave
	// way to a client's without reaching an engine (gateway.Yielded); it
	// is sent again without counting an attempt. Nil: never.
	Yielded func(http.Header) bool
	// TakeTurn marks a request's context as work that has given way long
	// enough (ExecOptions.MaxYield): the target does not cancel its start
	// for a client (gateway.TakeTurn). Nil: no mark.
	TakeTurn func(context.Context) context.Context
}

// ExecOptions tune the executor; zero values take the defaults.
type ExecOptions struct {
	// Concurrency bounds the background requests in flight, all agents
	// together (default 4): a client's request for another agent waits
	// for at most these to finish before its switch.
	Concurrency int
	// MaxAttempts bounds how often an item is sent when it fails in a way
	// worth retrying (5xx, 429, a cut or aborted request; default 3).
	MaxAttempts int
	// RetryDelay is the wait before the first retry; it doubles each time
	// (default 1s, at most 30s).
	RetryDelay time.Duration
	// Poll is how often the executor looks at the gateway again while its
	// work waits for clients to be served (default 100ms); with no work it
	// looks at the store ten times less often (work stored by another
	// program without Notify).
	Poll time.Duration
	// FinishRetry is how long a job whose Finished hook failed waits for
	// its next try (default 30s).
	FinishRetry time.Duration
	// MaxYield bounds how long an agent's work gives way to clients of
	// agents that cannot run beside it (see view.yields); past it the work
	// takes its turn, so a steady stream of clients cannot starve it. Zero:
	// it always gives way.
	MaxYield time.Duration
	// SweepInterval is how often Store.Sweep runs (default 1h).
	SweepInterval time.Duration
	Log           *slog.Logger
	// Registry receives the vagent_batch_* and vagent_pipeline_* metrics.
	Registry prometheus.Registerer
}

// Executor runs the store's pending items through the gateway as
// background work, grouped by agent (see pick), and calls each job's kind
// when the job ends.
type Executor struct {
	s     *Store
	t     Target
	o     ExecOptions
	log   *slog.Logger
	kinds map[string]Kind
	m     *execMetrics

	notify chan struct{}

	finishMu sync.Mutex

	mu       sync.Mutex
	inflight map[string]int
	total    int
	current  string
	// lastSent is when an item of each agent was last sent: with its
	// oldest eligible item, it says how long the agent's work has waited.
	lastSent map[string]time.Time
	subs     map[string]map[chan Event]struct{}
	// finishAfter holds jobs whose Finished hook failed until their next
	// try.
	finishAfter map[string]time.Time
}

// NewExecutor returns an executor for s that sends to t.
func NewExecutor(s *Store, t Target, o ExecOptions) *Executor {
	if o.Concurrency <= 0 {
		o.Concurrency = 4
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 3
	}
	if o.RetryDelay <= 0 {
		o.RetryDelay = time.Second
	}
	if o.Poll <= 0 {
		o.Poll = 100 * time.Millisecond
	}
	if o.FinishRetry <= 0 {
		o.FinishRetry = 30 * time.Second
	}
	if o.SweepInterval <= 0 {
		o.SweepInterval = time.Hour
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	e := &Executor{
		s: s, t: t, o: o, log: o.Log, kinds: map[string]Kind{},
		notify: make(chan struct{}, 1), inflight: map[string]int{}, lastSent: map[string]time.Time{}, subs: map[string]map[chan Event]struct{}{},
		finishAfter: map[string]time.Time{},
	}
	e.m = newExecMetrics(s)
	if o.Registry != nil {
		o.Registry.MustRegister(e.m)
	}
	return e
}

// Register sets the hooks of jobs of kind; call it before Run.
func (e *Executor) Register(kind string, k Kind) { e.kinds[kind] = k }

// Notify tells the executor that there is new work (a job created,
// resumed or cancelled).
func (e *Executor) Notify() {
	select {
	case e.notify <- struct{}{}:
	default:
	}
}

// Subscribe returns the live events of job id until cancel is called.
// Events that find the channel full are dropped (a follower that does not
// read loses text, never blocks the executor); the store has the answers.
func (e *Executor) Subscribe(jobID string) (<-chan Event, func()) {
	ch := make(chan Event, 1024)
	e.mu.Lock()
	if e.subs[jobID] == nil {
		e.subs[jobID] = map[chan Event]struct{}{}
	}
	e.subs[jobID][ch] = struct{}{}
	e.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			e.mu.Lock()
			delete(e.subs[jobID], ch)
			if len(e.subs[jobID]) == 0 {
				delete(e.subs, jobID)
			}
			e.mu.Unlock()
		})
	}
}

func (e *Executor) emit(ev Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for ch := range e.subs[ev.JobID] {
		select {
		case ch <- ev:
		default:
		}
	}
}

// Run runs items until ctx ends. At start it puts back to pending the
// items a crash left running (their answers were not recorded, so not
// delivered) and finishes the jobs that ended without being finalised.
// When ctx ends, the items in flight are cut and go back to pending; Run
// returns once they have.
func (e *Executor) Run(ctx context.Context) error {
	n, err := e.s.ResetRunning(ctx)
	if err != nil {
		return err
	}
	if n > 0 {
		e.log.Info("background items cut by a restart go back to the queue", "items", n)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	done := make(chan struct{}, 1)
	poll := time.NewTimer(0)
	defer poll.Stop()
	sweep := time.NewTicker(e.o.SweepInterval)
	defer sweep.Stop()
	e.sweep(ctx)
	for {
		e.finishEnded(ctx)
		waiting := false
		for {
			started, w, err := e.dispatch(ctx, &wg, done)
			if err != nil && ctx.Err() == nil {
				e.log.Warn("background work: dispatch failed", "err", err)
			}
			waiting = w
			if !started {
				break
			}
		}
		if !poll.Stop() {
			select {
			case <-poll.C:
			default:
			}
		}
		// Work that waits for its turn looks at the gateway again soon;
		// without any, the store is looked at now and then only, for work
		// another program stored without Notify.
		if waiting {
			poll.Reset(e.o.Poll)
		} else {
			poll.Reset(10 * e.o.Poll)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-e.notify:
		case <-done:
		case <-poll.C:
		case <-sweep.C:
			e.sweep(ctx)
		}
	}
}

func (e *Executor) sweep(ctx context.Context) {
	jobs, files, err := e.s.Sweep(ctx, time.Now())
	if err != nil {
		e.log.Warn("retention sweep failed", "err", err)
		return
	}
	if jobs+files > 0 {
		e.log.Info("retention: deleted old jobs and files", "jobs", jobs, "files", files)
	}
}

// finishEnded runs the Finished hook of every job that ended and was not
// finalised (after a crash, a cancel, or a hook that failed before).
func (e *Executor) finishEnded(ctx context.Context) {
	jobs, err := e.s.unfinalized(ctx)
	if err != nil {
		e.log.Warn("background work: reading ended jobs", "err", err)
		return
	}
	for _, j := range jobs {
		e.mu.Lock()
		later := time.Now().Before(e.finishAfter[j.ID])
		e.mu.Unlock()
		if !later {
			e.finish(ctx, j.ID)
		}
	}
}

// finish runs job id's Finished hook and marks it finalised. One job is
// finished at a time, from its stored state: a worker that ended the job
// and the loop that looks for ended jobs never run the hook together.
func (e *Executor) finish(ctx context.Context, id string) {
	e.finishMu.Lock()
	defer e.finishMu.Unlock()
	j, err := e.s.Job(ctx, id)
	if err != nil || j.Finalized || j.EndedAt.IsZero() {
		return
	}
	if k := e.kinds[j.Kind]; k != nil {
		if err := k.Finished(ctx, e.s, j); err != nil {
			if ctx.Err() == nil {
				e.log.Warn("finishing a job failed: trying again later", "job", j.ID, "kind", j.Kind, "err", err, "retry_in", e.o.FinishRetry)
				e.mu.Lock()
				e.finishAfter[j.ID] = time.Now().Add(e.o.FinishRetry)
				e.mu.Unlock()
			}
			return
		}
	}
	if err := e.s.finalize(ctx, j.ID); err != nil {
		e.log.Warn("finishing a job failed: trying again later", "job", j.ID, "err", err)
		return
	}
	e.mu.Lock()
	delete(e.finishAfter, j.ID)
	e.mu.Unlock()
	e.log.Info("job finished", "job", j.ID, "kind", j.Kind, "done", j.Counts[Done], "failed", j.Counts[Failed], "cancelled", j.Counts[Cancelled])
	e.emit(Event{JobID: j.ID, Type: EventJob})
}

// dispatch starts one item if the policy allows; it reports whether it
// did, and whether eligible work is left waiting.
func (e *Executor) dispatch(ctx context.Context, wg *sync.WaitGroup, done chan struct{}) (started, waiting bool, err error) {
	if ctx.Err() != nil {
		return false, false, nil
	}
	queues, err := e.s.Queues(ctx)
	if err != nil || len(queues) == 0 {
		return false, false, err
	}
	loads := map[string]AgentLoad{}
	for _, l := range e.t.Load() {
		loads[l.Agent] = l
	}
	now := time.Now()
	e.mu.Lock()
	v := &view{queues: queues, loads: loads, inflight: cloneMap(e.inflight), total: e.total,
		concurrency: e.o.Concurrency, current: e.current, due: e.dueLocked(queues, now)}
	e.mu.Unlock()
	d, ok := pick(v)
	if !ok {
		return false, true, nil
	}
	it, j, ok, err := e.s.claim(ctx, d.agent)
	if err != nil || !ok {
		return false, true, err
	}
	if d.cold && loads[d.agent].Interactive == 0 {
		e.m.switched(j.Kind)
		e.log.Info("background work switches agents", "agent", d.agent, "job", j.ID, "kind", j.Kind)
	}
	e.mu.Lock()
	e.inflight[d.agent]++
	e.total++
	e.current = d.agent
	e.lastSent[d.agent] = now
	e.mu.Unlock()
	turn := v.due[d.agent]
	if turn {
		e.log.Info("background work has given way for work.max_yield: it takes its turn", "agent", d.agent, "job", j.ID, "max_yield", e.o.MaxYield)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		e.run(ctx, j, it, turn)
		e.mu.Lock()
		if e.inflight[d.agent]--; e.inflight[d.agent] == 0 {
			delete(e.inflight, d.agent)
		}
		e.total--
		e.mu.Unlock()
		select {
		case done <- struct{}{}:
		default:
		}
	}()
	return true, true, nil
}

// dueLocked returns the agents whose work has waited at least MaxYield:
// since its oldest eligible item was made, and since an item of the agent
// was last sent.
func (e *Executor) dueLocked(queues []Queue, now time.Time) map[string]bool {
	if e.o.MaxYield <= 0 {
		return nil
	}
	due := map[string]bool{}
	for _, q := range queues {
		since := q.Oldest
		if t := e.lastSent[q.Agent]; t.After(since) {
			since = t
		}
		if q.Items > 0 && !since.IsZero() && now.Sub(since) >= e.o.MaxYield {
			due[q.Agent] = true
		}
	}
	return due
}

func cloneMap(m map[string]int) map[string]int {
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// run sends one claimed item and records how it ended.
func (e *Executor) run(ctx context.Context, j Job, it Item, turn bool) {
	body := it.Body
	if k := e.kinds[j.Kind]; k != nil {
		b, err := k.Prepare(ctx, e.s, j, it)
		if err != nil {
			if ctx.Err() != nil {
				e.putBack(it, "vagentd stopped", false)
				return
			}
			e.record(ctx, j, it, Outcome{State: Failed, Error: "prepare: " + err.Error()}, 0)
			return
		}
		body = b
	}
	e.emit(Event{JobID: j.ID, ItemID: it.ID, Seq: it.Seq, Stage: it.Stage, Agent: it.Agent, Type: EventStart})
	sendCtx := ctx
	if turn && e.t.TakeTurn != nil {
		sendCtx = e.t.TakeTurn(ctx)
	}
	res := e.send(sendCtx, j, it, body)
	if res.out.State == Done {
		// A whole answer is recorded even when vagentd is stopping: it
		// was delivered, and must not be asked for again.
		e.record(context.WithoutCancel(ctx), j, it, res.out, res.tokens)
		return
	}
	if ctx.Err() != nil {
		e.putBack(it, "vagentd stopped", false)
		return
	}
	if res.yielded {
		e.log.Info("background item gave way to a client: it waits for its turn", "job", j.ID, "item", it.ID, "agent", it.Agent)
		e.putBack(it, res.out.Error, true)
		return
	}
	if res.retry && it.Attempts < e.o.MaxAttempts {
		delay := min(e.o.RetryDelay<<(it.Attempts-1), 30*time.Second)
		e.log.Warn("background item failed: sending it again", "job", j.ID, "item", it.ID, "agent", it.Agent,
			"attempt", it.Attempts, "status", res.out.Status, "err", res.out.Error, "retry_in", delay)
		select {
		case <-time.After(delay):
		case <-ctx.Done():
		}
		e.putBack(it, res.out.Error, false)
		return
	}
	e.record(ctx, j, it, res.out, res.tokens)
}

// putBack returns a running item to pending, whatever ctx says: it must
// not stay running.
func (e *Executor) putBack(it Item, why string, uncount bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.s.release(ctx, it.ID, why, uncount); err != nil {
		e.log.Warn("background item: putting it back failed (it goes back at the next start)", "item", it.ID, "err", err)
	}
}

// record stores the item's outcome and, when that ended the job, finishes
// the job.
func (e *Executor) record(ctx context.Context, j Job, it Item, o Outcome, tokens int) {
	// The answer is in hand: a write that fails (a full disk) is tried
	// again for a while rather than the request sent again.
	var ended bool
	var err error
	for try, wait := 0, time.Second; ; try, wait = try+1, min(2*wait, 30*time.Second) {
		if ended, err = e.s.complete(ctx, it.ID, o); err == nil {
			break
		}
		e.log.Error("background item: recording its answer failed", "job", j.ID, "item", it.ID, "try", try+1, "err", err)
		if try == 5 || ctx.Err() != nil {
			// Not recorded: the item stays running in the database and
			// goes back to pending at the next start.
			return
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
		}
	}
	ev := Event{JobID: j.ID, ItemID: it.ID, Seq: it.Seq, Stage: it.Stage, Agent: it.Agent, Type: EventDone, Tokens: tokens}
	if o.State != Done {
		ev.Type, ev.Text = EventFailed, o.Error
	}
	e.emit(ev)
	if ended {
		e.finish(ctx, j.ID)
	}
	e.Notify() // items after this one may now run
}

// result is what came of sending an item.
type result struct {
	out     Outcome
	retry   bool
	yielded bool // gave way to a client before reaching an engine
	tokens  int
}

// send sends the item's request through the target and reads the answer.
func (e *Executor) send(ctx context.Context, j Job, it Item, body []byte) result {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, it.Path, bytes.NewReader(body))
	if err != nil {
		return result{out: Outcome{State: Failed, Error: "build request: " + err.Error()}}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Request-Id", fmt.Sprintf("%s-%d-%d", j.ID, it.ID, it.Attempts))
	resp := serveInProcess(e.t.Handler, req)
	defer resp.Body.Close()
	if mediatype.IsEventStream(resp.Header.Get("Content-Type")) && resp.StatusCode/100 == 2 {
		return e.readStream(j, it, resp)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return result{out: Outcome{State: Failed, Error: "read answer: " + err.Error()}, retry: true}
	}
	out := Outcome{Status: resp.StatusCode, Response: b}
	switch {
	case resp.StatusCode/100 == 2 && json.Valid(b):
		out.State = Done
		return result{out: out, tokens: completionTokens(b)}
	case resp.StatusCode/100 == 2:
		out.State, out.Error = Failed, "the answer is not JSON"
		return result{out: out, retry: true}
	default:
		out.State, out.Error = Failed, errorMessage(b, resp.StatusCode)
		yielded := e.t.Yielded != nil && e.t.Yielded(resp.Header)
		return result{out: out, retry: retryable(resp.StatusCode), yielded: yielded}
	}
}

// retryable: the gateway or engine could not serve it now (5xx, 429, a
// request timeout), as opposed to a request that is wrong (4xx).
func retryable(status int) bool {
	return status >= 500 || status == http.StatusTooManyRequests || status == http.StatusRequestTimeout
}

// errorMessage is the message of an OpenAI-shaped error body, else a
// generic one.
func errorMessage(b []byte, status int) string {
	var e struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
		Message string `json:"message"`
	}
	if json.Unmarshal(b, &e) == nil {
		if e.Error.Message != "" {
			return e.Error.Message
		}
		if e.Message != "" {
			return e.Message
		}
	}
	return fmt.Sprintf("HTTP %d", status)
}

func completionTokens(b []byte) int {
	var v struct {
		Usage struct {
			CompletionTokens int `json:"completion_tokens"`
		} `json:"usage"`
	}
	json.Unmarshal(b, &v)
	return v.Usage.CompletionTokens
}
