package work

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeGateway serves background requests like the gateway with agents
// that cannot run together: one agent loaded at a time, a switch only when
// the loaded one is idle. It counts switches and, per request id, answers
// delivered whole.
type fakeGateway struct {
	mu          sync.Mutex
	cond        *sync.Cond
	agents      []string
	loaded      string
	inflight    int
	switches    int
	interactive map[string]int
	delivered   map[string]int // by item id
	sent        []string       // agents in the order requests were sent
	delay       time.Duration
	// answer, when set, answers a request instead of the default.
	answer func(w http.ResponseWriter, body map[string]any, item string) bool
}

func newFakeGateway(agents ...string) *fakeGateway {
	g := &fakeGateway{agents: agents, interactive: map[string]int{}, delivered: map[string]int{}}
	g.cond = sync.NewCond(&g.mu)
	return g
}

func (g *fakeGateway) target() Target {
	return Target{Handler: g, Load: g.load}
}

func (g *fakeGateway) load() []AgentLoad {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []AgentLoad
	for _, a := range g.agents {
		l := AgentLoad{Agent: a, Running: a == g.loaded, Interactive: g.interactive[a]}
		for _, b := range g.agents {
			if b != a {
				l.Conflicts = append(l.Conflicts, b)
			}
		}
		out = append(out, l)
	}
	return out
}

// itemOf is the item id in the executor's request id (JOB-ITEM-ATTEMPT).
func itemOf(r *http.Request) string {
	parts := strings.Split(r.Header.Get("X-Request-Id"), "-")
	if len(parts) < 3 {
		return ""
	}
	return parts[len(parts)-2]
}

func (g *fakeGateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body map[string]any
	b, _ := io.ReadAll(r.Body)
	json.Unmarshal(b, &body)
	model, _ := body["model"].(string)
	g.mu.Lock()
	for g.loaded != model && g.inflight > 0 {
		g.cond.Wait()
	}
	if g.loaded != model {
		g.loaded = model
		g.switches++
	}
	g.inflight++
	g.sent = append(g.sent, model)
	answer := g.answer
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		g.inflight--
		g.cond.Broadcast()
		g.mu.Unlock()
	}()
	select {
	case <-time.After(g.delay):
	case <-r.Context().Done():
		return
	}
	item := itemOf(r)
	if answer != nil && answer(w, body, item) {
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"id":"x","object":"chat.completion","model":%q,"choices":[{"index":0,"message":{"role":"assistant","content":"answer to %s"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}`, model, item)
	g.mu.Lock()
	g.delivered[item]++
	g.mu.Unlock()
}

// recKind records the hooks' calls.
type recKind struct {
	mu       sync.Mutex
	finished map[string]int
	failOnce bool
	prepare  func(it Item) ([]byte, error)
}

func (k *recKind) Prepare(ctx context.Context, s *Store, j Job, it Item) ([]byte, error) {
	if k.prepare != nil {
		return k.prepare(it)
	}
	return it.Body, nil
}

func (k *recKind) Finished(ctx context.Context, s *Store, j Job) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.failOnce {
		k.failOnce = false
		return errors.New("disk full")
	}
	if k.finished == nil {
		k.finished = map[string]int{}
	}
	k.finished[j.ID]++
	return nil
}

func (k *recKind) count(id string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.finished[id]
}

// interleaved is a batch of n lines per agent, agents alternating line by
// line: the worst order for a client that sends them one by one.
func interleaved(n int, agents ...string) []Item {
	var items []Item
	for i := 0; i < n*len(agents); i++ {
		a := agents[i%len(agents)]
		items = append(items, Item{Seq: i, CustomID: fmt.Sprint("line-", i), Agent: a, Path: "/v1/chat/completions",
			Body: []byte(`{"model":"` + a + `","messages":[{"role":"user","content":"hi"}]}`)})
	}
	return items
}

func startExecutor(t *testing.T, s *Store, g *fakeGateway, o ExecOptions, k Kind) (*Executor, func()) {
	t.Helper()
	if o.RetryDelay == 0 {
		o.RetryDelay = time.Millisecond
	}
	if o.Poll == 0 {
		o.Poll = 5 * time.Millisecond
	}
	if o.FinishRetry == 0 {
		o.FinishRetry = 10 * time.Millisecond
	}
	e := NewExecutor(s, g.target(), o)
	if k != nil {
		e.Register("batch", k)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	return e, stop
}

func waitJob(t *testing.T, s *Store, id string, cond func(Job) bool) Job {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		j, err := s.Job(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if cond(j) {
			return j
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s did not get there: %+v", id, j)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// 3 agents × 10 items, interleaved line by line, cost 3 switches, not 30.
func TestExecutorGroupsByAgent(t *testing.T) {
	s := openTest(t, Options{})
	g := newFakeGateway("po", "architect", "dev")
	g.delay = 2 * time.Millisecond
	k := &recKind{}
	reg := prometheus.NewRegistry()
	_, stop := startExecutor(t, s, g, ExecOptions{Concurrency: 3, Registry: reg}, k)
	defer stop()
	j, err := s.CreateJob(context.Background(), Job{Kind: "batch"}, interleaved(10, "po", "architect", "dev"))
	if err != nil {
		t.Fatal(err)
	}
	j = waitJob(t, s, j.ID, func(j Job) bool { return j.Finalized })
	if j.Counts[Done] != 30 {
		t.Fatalf("counts %v", j.Counts)
	}
	g.mu.Lock()
	switches := g.switches
	g.mu.Unlock()
	if switches != 3 {
		t.Fatalf("%d switches for 3 agents × 10 items, want 3 (order %v)", switches, g.sent)
	}
	if got := testutil.ToFloat64(prometheusCounter(t, reg, "vagent_batch_switches_total")); got != 3 {
		t.Errorf("vagent_batch_switches_total = %v, want 3", got)
	}
	if k.count(j.ID) != 1 {
		t.Errorf("Finished ran %d times", k.count(j.ID))
	}
	items, _ := s.Items(context.Background(), j.ID)
	for _, it := range items {
		if it.State != Done || it.Status != 200 || !strings.Contains(string(it.Response), fmt.Sprintf("answer to %d", it.ID)) || it.Attempts != 1 {
			t.Fatalf("item %+v", it)
		}
	}
}

// prometheusCounter finds a registered counter by name.
func prometheusCounter(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	return collectorFunc(func(ch chan<- prometheus.Metric) {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == name {
				ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(name, "h", nil, nil), prometheus.CounterValue, mf.GetMetric()[0].GetCounter().GetValue())
			}
		}
	})
}

type collectorFunc func(chan<- prometheus.Metric)

func (f collectorFunc) Describe(chan<- *prometheus.Desc)    {}
func (f collectorFunc) Collect(ch chan<- prometheus.Metric) { f(ch) }

// While a client waits for an agent that conflicts with the one background
// work feeds, the executor sends nothing new; when the client is served
// it goes on.
func TestExecutorYieldsToInteractive(t *testing.T) {
	s := openTest(t, Options{})
	g := newFakeGateway("po", "dev")
	g.interactive["dev"] = 1
	_, stop := startExecutor(t, s, g, ExecOptions{Concurrency: 2}, nil)
	defer stop()
	j, _ := s.CreateJob(context.Background(), Job{Kind: "batch"}, interleaved(3, "po"))
	time.Sleep(50 * time.Millisecond) // ten polls
	g.mu.Lock()
	sent := len(g.sent)
	g.interactive["dev"] = 0
	g.mu.Unlock()
	if sent != 0 {
		t.Fatalf("sent %d background requests while a client waited for a conflicting agent", sent)
	}
	waitJob(t, s, j.ID, func(j Job) bool { return j.Counts[Done] == 3 })
}

// 5xx and cut requests are retried (bounded); 4xx fails the item with the
// answer kept; prepare errors fail the item without sending it.
func TestExecutorRetries(t *testing.T) {
	s := openTest(t, Options{})
	g := newFakeGateway("dev")
	var mu sync.Mutex
	tries := map[string]int{}
	g.answer = func(w http.ResponseWriter, body map[string]any, item string) bool {
		mu.Lock()
		tries[item]++
		n := tries[item]
		mu.Unlock()
		msgs, _ := body["messages"].([]any)
		text := fmt.Sprint(msgs)
		switch {
		case strings.Contains(text, "flaky") && n == 1:
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `{"error":{"message":"agent dev did not become available","code":503}}`)
			return true
		case strings.Contains(text, "down"):
			w.WriteHeader(http.StatusBadGateway)
			io.WriteString(w, `{"error":{"message":"engine gone","code":502}}`)
			return true
		case strings.Contains(text, "bad"):
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"error":{"message":"max_tokens too large","code":400}}`)
			return true
		}
		return false
	}
	k := &recKind{prepare: func(it Item) ([]byte, error) {
		if it.Body == nil {
			return nil, errors.New(`template: stage "design" does not exist`)
		}
		return it.Body, nil
	}}
	_, stop := startExecutor(t, s, g, ExecOptions{Concurrency: 1, MaxAttempts: 3}, k)
	defer stop()
	mk := func(content string) Item {
		return Item{Agent: "dev", Path: "/v1/chat/completions", Body: []byte(`{"model":"dev","messages":[{"role":"user","content":"` + content + `"}]}`)}
	}
	items := []Item{mk("flaky"), mk("down"), mk("bad"), {Agent: "dev", Path: "/v1/chat/completions"}}
	j, _ := s.CreateJob(context.Background(), Job{Kind: "batch"}, items)
	waitJob(t, s, j.ID, func(j Job) bool { return j.Finalized })
	got, _ := s.Items(context.Background(), j.ID)
	if got[0].State != Done || got[0].Attempts != 2 {
		t.Errorf("flaky: %+v", got[0])
	}
	if got[1].State != Failed || got[1].Attempts != 3 || got[1].Status != 502 || got[1].Error != "engine gone" {
		t.Errorf("down: %+v", got[1])
	}
	if got[2].State != Failed || got[2].Attempts != 1 || got[2].Status != 400 || !strings.Contains(string(got[2].Response), "max_tokens") {
		t.Errorf("bad: %+v", got[2])
	}
	if got[3].State != Failed || got[3].Status != 0 || !strings.Contains(got[3].Error, `stage "design"`) {
		t.Errorf("prepare error: %+v", got[3])
	}
}

// Stopping the executor cuts what is in flight and puts it back; the next
// run (a restart) does every item exactly once, and Finished runs again for
// a job that ended but whose hook failed.
func TestExecutorRestartExactlyOnce(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	g := newFakeGateway("po", "dev")
	g.delay = 20 * time.Millisecond
	k := &recKind{failOnce: true}
	j, _ := s.CreateJob(ctx, Job{Kind: "batch"}, interleaved(6, "po", "dev"))
	for round := 0; round < 3; round++ {
		_, stop := startExecutor(t, s, g, ExecOptions{Concurrency: 2}, k)
		time.Sleep(30 * time.Millisecond)
		stop()
		var running int
		s.db.QueryRow(`SELECT count(*) FROM items WHERE state = 'running'`).Scan(&running)
		if running != 0 {
			t.Fatalf("round %d: %d items left running after a stop", round, running)
		}
	}
	s.Close()
	s, err = Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, stop := startExecutor(t, s, g, ExecOptions{Concurrency: 2}, k)
	// The first Finished fails (failOnce): it is run again on a later pass.
	j = waitJob(t, s, j.ID, func(j Job) bool { return j.Finalized })
	stop()
	if j.Counts[Done] != 12 {
		t.Fatalf("counts %v", j.Counts)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	items, _ := s.Items(ctx, j.ID)
	for _, it := range items {
		if n := g.delivered[fmt.Sprint(it.ID)]; n != 1 {
			t.Errorf("item %d delivered %d times: %+v", it.ID, n, it)
		}
	}
	if k.count(j.ID) != 1 {
		t.Errorf("Finished succeeded %d times", k.count(j.ID))
	}
}

// Finished runs at start for a job that ended before a crash and was not
// finalised; a cancelled job is finished once its running items end.
func TestExecutorFinishesEndedJobs(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	ended, _ := s.CreateJob(ctx, Job{Kind: "batch"}, nil)
	cancelled, _ := s.CreateJob(ctx, Job{Kind: "batch", Paused: true}, interleaved(2, "dev"))
	g := newFakeGateway("dev")
	k := &recKind{}
	e, stop := startExecutor(t, s, g, ExecOptions{}, k)
	defer stop()
	waitJob(t, s, ended.ID, func(j Job) bool { return j.Finalized })
	if err := s.CancelJob(ctx, cancelled.ID); err != nil {
		t.Fatal(err)
	}
	e.Notify()
	j := waitJob(t, s, cancelled.ID, func(j Job) bool { return j.Finalized })
	if j.Counts[Cancelled] != 2 || k.count(cancelled.ID) != 1 || k.count(ended.ID) != 1 {
		t.Fatalf("cancelled %+v, finished %v", j, k.finished)
	}
}

// A streamed item's text goes to followers as it comes, and the item
// records the assembled answer.
func TestExecutorStream(t *testing.T) {
	s := openTest(t, Options{})
	g := newFakeGateway("dev")
	tailErr := make(chan error, 1)
	g.answer = func(w http.ResponseWriter, body map[string]any, item string) bool {
		w.Header().Set("Content-Type", "text/event-stream")
		for _, piece := range []string{"Hel", "lo"} {
			fmt.Fprintf(w, "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"dev\",\"choices\":[{\"index\":0,\"delta\":{\"content\":%q}}]}\n\n", piece)
		}
		io.WriteString(w, "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"dev\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n")
		io.WriteString(w, "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"dev\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n")
		io.WriteString(w, "data: [DONE]\n")
		w.(http.Flusher).Flush()
		time.Sleep(20 * time.Millisecond) // the gateway reads the engine's EOF
		if _, err := io.WriteString(w, "\n"); err != nil {
			tailErr <- err
		}
		close(tailErr)
		return true
	}
	e := NewExecutor(s, g.target(), ExecOptions{Poll: 5 * time.Millisecond})
	j, _ := s.CreateJob(context.Background(), Job{Kind: "pipeline", Paused: true}, []Item{{Seq: 3, Stage: 1, Agent: "dev", Path: "/v1/chat/completions",
		Body: []byte(`{"model":"dev","stream":true,"messages":[]}`)}})
	events, cancelSub := e.Subscribe(j.ID)
	defer cancelSub()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() { cancel(); <-done }()
	s.UpdateJob(ctx, j.ID, func(j *Job) error { j.Paused = false; return nil })
	e.Notify()
	var got []string
	for ev := range events {
		got = append(got, fmt.Sprintf("%s:%s:%d:%d/%d", ev.Type, ev.Text, ev.Tokens, ev.Seq, ev.Stage))
		if ev.Type == EventJob {
			break
		}
	}
	if err := <-tailErr; err != nil {
		t.Errorf("the executor stopped reading before the end of the stream: %v", err)
	}
	want := "start::0:3/1 delta:Hel:1:3/1 delta:lo:2:3/1 done::2:3/1 job::0:0/0"
	if strings.Join(got, " ") != want {
		t.Fatalf("events %q\nwant   %q", strings.Join(got, " "), want)
	}
	items, _ := s.Items(ctx, j.ID)
	var resp struct {
		Object  string
		Choices []struct {
			Message      struct{ Role, Content string }
			FinishReason string `json:"finish_reason"`
		}
		Usage struct {
			CompletionTokens int `json:"completion_tokens"`
		}
	}
	if err := json.Unmarshal(items[0].Response, &resp); err != nil {
		t.Fatal(err)
	}
	if resp.Object != "chat.completion" || resp.Choices[0].Message.Content != "Hello" || resp.Choices[0].FinishReason != "stop" || resp.Usage.CompletionTokens != 2 {
		t.Fatalf("assembled %s", items[0].Response)
	}
}

func TestMetricsItemsByState(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	s.CreateJob(ctx, Job{Kind: "batch"}, interleaved(2, "dev"))
	s.CreateJob(ctx, Job{Kind: "pipeline"}, []Item{{Agent: "po", State: Failed}})
	m := newExecMetrics(s)
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	want := `
# HELP vagent_batch_items Items of batch jobs by state (pending, running, done, failed, cancelled), as stored.
# TYPE vagent_batch_items gauge
vagent_batch_items{state="cancelled"} 0
vagent_batch_items{state="done"} 0
vagent_batch_items{state="failed"} 0
vagent_batch_items{state="pending"} 2
vagent_batch_items{state="running"} 0
# HELP vagent_pipeline_items Items of pipeline jobs by state (pending, running, done, failed, cancelled), as stored.
# TYPE vagent_pipeline_items gauge
vagent_pipeline_items{state="cancelled"} 0
vagent_pipeline_items{state="done"} 0
vagent_pipeline_items{state="failed"} 1
vagent_pipeline_items{state="pending"} 0
vagent_pipeline_items{state="running"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "vagent_batch_items", "vagent_pipeline_items"); err != nil {
		t.Fatal(err)
	}
}

// A request that gave way to a client (never reached an engine) is sent
// again later without counting an attempt: with one attempt allowed, an
// item that yields twice still completes.
func TestExecutorYieldedIsNoAttempt(t *testing.T) {
	s := openTest(t, Options{})
	g := newFakeGateway("dev")
	var mu sync.Mutex
	yields := 0
	g.answer = func(w http.ResponseWriter, body map[string]any, item string) bool {
		mu.Lock()
		defer mu.Unlock()
		if yields < 2 {
			yields++
			w.Header().Set("X-Test-Yielded", "1")
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `{"error":{"message":"gave way to a client","code":503}}`)
			return true
		}
		return false
	}
	tg := g.target()
	tg.Yielded = func(h http.Header) bool { return h.Get("X-Test-Yielded") != "" }
	e := NewExecutor(s, tg, ExecOptions{MaxAttempts: 1, Poll: 5 * time.Millisecond, RetryDelay: time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() { cancel(); <-done }()
	j, _ := s.CreateJob(ctx, Job{Kind: "batch"}, interleaved(1, "dev"))
	j = waitJob(t, s, j.ID, func(j Job) bool { return j.Finalized })
	items, _ := s.Items(ctx, j.ID)
	if items[0].State != Done || items[0].Attempts != 1 {
		t.Fatalf("item after two yields: %+v", items[0])
	}
}

// An answer whose write fails (a full disk) is written again once the
// store takes writes, not asked for again.
func TestExecutorRetriesRecordingAnswer(t *testing.T) {
	s := openTest(t, Options{})
	for _, q := range []string{
		`CREATE TABLE fail_once (x INTEGER)`,
		`INSERT INTO fail_once VALUES (1)`,
		`CREATE TRIGGER full BEFORE UPDATE OF state ON items WHEN NEW.state = 'done' AND EXISTS (SELECT 1 FROM fail_once)
			BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END`,
	} {
		if _, err := s.db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	g := newFakeGateway("dev")
	_, stop := startExecutor(t, s, g, ExecOptions{}, nil)
	defer stop()
	j, _ := s.CreateJob(context.Background(), Job{Kind: "batch"}, interleaved(1, "dev"))
	waitJob(t, s, j.ID, func(Job) bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return len(g.delivered) == 1
	})
	time.Sleep(50 * time.Millisecond) // the first write fails
	if _, err := s.db.Exec(`DELETE FROM fail_once`); err != nil {
		t.Fatal(err)
	}
	j = waitJob(t, s, j.ID, func(j Job) bool { return j.Finalized })
	g.mu.Lock()
	defer g.mu.Unlock()
	items, _ := s.Items(context.Background(), j.ID)
	if items[0].State != Done || g.delivered[fmt.Sprint(items[0].ID)] != 1 || len(g.sent) != 1 {
		t.Fatalf("item %+v, delivered %v, sent %v", items[0], g.delivered, g.sent)
	}
}

type turnMark struct{}

// TestExecutorTakesItsTurnAfterMaxYield: a client always waits for a
// conflicting agent, yet after MaxYield the work is sent, marked as taking
// its turn (so the gateway keeps its start); without MaxYield it would give
// way for ever (TestExecutorYieldsToInteractive).
func TestExecutorTakesItsTurnAfterMaxYield(t *testing.T) {
	s := openTest(t, Options{})
	g := newFakeGateway("po", "dev")
	g.interactive["dev"] = 1 // for the whole test
	var mu sync.Mutex
	marked, unmarked := 0, 0
	tgt := g.target()
	tgt.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		if r.Context().Value(turnMark{}) == true {
			marked++
		} else {
			unmarked++
		}
		mu.Unlock()
		g.ServeHTTP(w, r)
	})
	tgt.TakeTurn = func(ctx context.Context) context.Context { return context.WithValue(ctx, turnMark{}, true) }
	e := NewExecutor(s, tgt, ExecOptions{Concurrency: 1, Poll: 5 * time.Millisecond, MaxYield: 20 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	j, _ := s.CreateJob(context.Background(), Job{Kind: "batch"}, interleaved(3, "po"))
	waitJob(t, s, j.ID, func(j Job) bool { return j.Counts[Done] == 3 })
	mu.Lock()
	defer mu.Unlock()
	if marked == 0 || unmarked != 0 {
		t.Errorf("requests sent while a client waited: %d marked as taking their turn, %d unmarked; want all marked", marked, unmarked)
	}
}
