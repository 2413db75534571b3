package e2e

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/work"
)

// workHost is a gateway host whose engines load in 2 s and log every answer
// they deliver whole to one file (VLLM_SIM_COMPLETIONS), with a work store
// the test writes jobs into (vagentd's executor picks them up).
type workHost struct {
	*gwHost
	store       *work.Store
	completions string
}

func newWorkHost(t testing.TB, set map[string]any) *workHost {
	t.Helper()
	h := newHost(t)
	// Under paths.run_dir: the engines' units may write only their own
	// directories.
	completions := h.s.Path("run/vagent/completions.log")
	for _, a := range []string{"architect", "dev", "po"} {
		if err := h.s.EditConfig("agents/"+a+".toml", map[string]any{"env.VLLM_SIM_COMPLETIONS": completions}); err != nil {
			t.Fatal(err)
		}
	}
	all := map[string]any{"gpu.sim_load_seconds": 2.0}
	for k, v := range set {
		all[k] = v
	}
	// The store is opened before vagentd starts: one Open cleans the
	// files directory, which must not race with a running vagentd.
	st, err := work.Open(t.Context(), h.s.Path("var/lib/vagent/work"), work.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	g := newGatewayHostOn(t, h, all)
	return &workHost{gwHost: g, store: st, completions: completions}
}

// items is n chat requests per agent, agents alternating line by line,
// each generating tokens (ignore_eos: the whole max_tokens).
func workItems(n, maxTokens int, agents ...string) []work.Item {
	var out []work.Item
	for i := 0; i < n*len(agents); i++ {
		a := agents[i%len(agents)]
		body, _ := json.Marshal(map[string]any{
			"model":      a,
			"messages":   []map[string]string{{"role": "user", "content": fmt.Sprintf("Item %d.", i)}},
			"max_tokens": maxTokens, "ignore_eos": true,
		})
		out = append(out, work.Item{Seq: i, CustomID: fmt.Sprint("item-", i), Agent: a, Path: "/v1/chat/completions", Body: body})
	}
	return out
}

// delivered counts, per item id of job, the answers the engines wrote whole
// (the executor's X-Request-Id is JOB-ITEM-ATTEMPT).
func (w *workHost) delivered(t testing.TB, job string) map[int64]int {
	t.Helper()
	out := map[int64]int{}
	f, err := os.Open(w.completions)
	if os.IsNotExist(err) {
		return out
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		id, _, _ := strings.Cut(sc.Text(), " ")
		rest, ok := strings.CutPrefix(id, job+"-")
		if !ok {
			continue
		}
		item, _, _ := strings.Cut(rest, "-")
		n, err := strconv.ParseInt(item, 10, 64)
		if err != nil {
			t.Fatalf("completions line %q", sc.Text())
		}
		out[n]++
	}
	return out
}

// tornReader reads the database read-only, as another program would,
// while vagentd writes it, and records every state no transaction could
// have left: a job without all its items, a done item without its answer,
// an item in a state the job cannot reach, done items going back.
type tornReader struct {
	mu       sync.Mutex
	problems []string
	reads    int
}

func (r *tornReader) run(ctx context.Context, t *testing.T, path, job string, items int) {
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		t.Error(err)
		return
	}
	defer db.Close()
	lastDone := 0
	for ctx.Err() == nil {
		func() {
			tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
			if err != nil {
				return
			}
			defer tx.Rollback()
			var total, done, bad, odd int
			tx.QueryRow(`SELECT count(*) FROM items WHERE job_id = ?`, job).Scan(&total)
			tx.QueryRow(`SELECT count(*) FROM items WHERE job_id = ? AND state = 'done'`, job).Scan(&done)
			tx.QueryRow(`SELECT count(*) FROM items WHERE job_id = ? AND state = 'done' AND (status != 200 OR response IS NULL OR length(response) = 0)`, job).Scan(&bad)
			tx.QueryRow(`SELECT count(*) FROM items WHERE job_id = ? AND state NOT IN ('pending', 'running', 'done')`, job).Scan(&odd)
			r.mu.Lock()
			defer r.mu.Unlock()
			r.reads++
			switch {
			case total != items:
				r.problems = append(r.problems, fmt.Sprintf("the job has %d items, not %d", total, items))
			case bad > 0:
				r.problems = append(r.problems, fmt.Sprintf("%d done items without their answer", bad))
			case odd > 0:
				r.problems = append(r.problems, fmt.Sprintf("%d items failed or cancelled", odd))
			case done < lastDone:
				r.problems = append(r.problems, fmt.Sprintf("done items went from %d back to %d", lastDone, done))
			}
			lastDone = done
		}()
		time.Sleep(5 * time.Millisecond)
	}
}

// TestE2EWorkSurvivesKills: a job of 30 items over the three agents runs
// while vagentd is SIGKILLed three times. It completes with every item
// delivered by an engine exactly once (counted at the engines), a reader
// of the database never sees a torn state, and a second job of 3 agents ×
// 10 items, lines alternating agents, costs at most 4 switches.
func TestE2EWorkSurvivesKills(t *testing.T) {
	t.Parallel()
	w := newWorkHost(t, map[string]any{"work.concurrency": 4})
	ctx := t.Context()
	// 150 tokens at the simulator's 100/s: 1.5 s per item.
	j, err := w.store.CreateJob(ctx, work.Job{Kind: "e2e"}, workItems(10, 150, "po", "architect", "dev"))
	if err != nil {
		t.Fatal(err)
	}
	rctx, stopReader := context.WithCancel(ctx)
	reader := &tornReader{}
	readerDone := make(chan struct{})
	go func() { defer close(readerDone); reader.run(rctx, t, w.store.Path(), j.ID, 30) }()

	doneCount := func() int {
		got, err := w.store.Job(ctx, j.ID)
		if err != nil {
			t.Fatal(err)
		}
		return got.Counts[work.Done]
	}
	for _, after := range []int{3, 12, 21} {
		eventually(t, 2*time.Minute, fmt.Sprintf("%d items done", after), func() bool { return doneCount() >= after })
		// Items run four at a time and end together: kill halfway
		// through the next ones, when no answer is between an engine and
		// the database (every delivered answer is recorded).
		time.Sleep(700 * time.Millisecond)
		eventually(t, 30*time.Second, "every delivered answer recorded", func() bool {
			n := 0
			for _, c := range w.delivered(t, j.ID) {
				n += c
			}
			return n == doneCount()
		})
		props, err := w.unitProps(ctx, gatewayUnit)
		if err != nil || props.MainPID == 0 {
			t.Fatalf("vagentd's main PID: %+v %v", props, err)
		}
		done := doneCount()
		if _, errOut, code, err := w.s.Exec(ctx, "kill", "-9", strconv.Itoa(props.MainPID)); err != nil || code != 0 {
			t.Fatalf("kill -9 vagentd: %v %s", err, errOut)
		}
		t.Logf("SIGKILLed vagentd (pid %d) with %d of 30 items done", props.MainPID, done)
		if done >= 30 {
			t.Fatalf("the job ended before kill %d: make its items longer", after)
		}
		eventually(t, 30*time.Second, "vagentd restarted", func() bool {
			p, err := w.unitProps(ctx, gatewayUnit)
			return err == nil && p.ActiveState == "active" && p.MainPID != 0 && p.MainPID != props.MainPID
		})
		w.waitHealthy(10 * time.Second)
	}
	eventually(t, 3*time.Minute, "the job finished", func() bool {
		got, _ := w.store.Job(ctx, j.ID)
		return got.Finalized
	})
	stopReader()
	<-readerDone

	items, err := w.store.Items(ctx, j.ID)
	if err != nil {
		t.Fatal(err)
	}
	delivered := w.delivered(t, j.ID)
	attempts := 0
	for _, it := range items {
		attempts += it.Attempts
		if it.State != work.Done || it.Status != 200 || !strings.Contains(string(it.Response), `"chat.completion"`) {
			t.Errorf("item %d: %s %d %s", it.ID, it.State, it.Status, it.Error)
		}
		if n := delivered[it.ID]; n != 1 {
			t.Errorf("item %d (%s) was delivered by the engines %d times, want exactly once", it.ID, it.Agent, n)
		}
	}
	reader.mu.Lock()
	t.Logf("30 items, 3 SIGKILLs: %d sends in all (items cut by a kill are sent again), %d read-only reads of the database", attempts, reader.reads)
	if len(reader.problems) > 0 || reader.reads == 0 {
		t.Errorf("the reader saw torn states (%d reads): %v", reader.reads, reader.problems)
	}
	reader.mu.Unlock()
	if attempts <= 30 {
		t.Errorf("%d sends for 30 items: no kill cut an item in flight, so the test proved nothing", attempts)
	}

	// Grouping: 3 agents × 10 lines alternating agents, no kill.
	before, _ := w.metric("vagent_switches_total")
	j2, err := w.store.CreateJob(ctx, work.Job{Kind: "e2e"}, workItems(10, 4, "po", "architect", "dev"))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*time.Minute, "the second job finished", func() bool {
		got, _ := w.store.Job(ctx, j2.ID)
		return got.Finalized
	})
	after, _ := w.metric("vagent_switches_total")
	got, _ := w.store.Job(ctx, j2.ID)
	fmt.Printf("work e2e: 3 agents x 10 items, lines alternating agents: %.0f switches (a client sending them in order: up to 30)\n", after-before)
	if got.Counts[work.Done] != 30 || after-before > 4 {
		t.Errorf("second job: %v, %.0f switches; want 30 done with at most 4 switches", got.Counts, after-before)
	}
}
