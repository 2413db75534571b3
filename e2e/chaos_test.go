package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/e2e/sandbox"
)

// The chaos suite's knobs. Without them TestE2EChaos runs its default
// schedule, about 90 seconds of load; a soak is the same test run longer:
//
//	go test ./e2e -run '^TestE2EChaos$' -count=1 -v -chaos.soak=10m
var (
	chaosSoak = flag.Duration("chaos.soak", 0, "run TestE2EChaos this long (0: its default 90s schedule of 3 SIGKILLs and 3 restarts of vagentd)")
	chaosSeed = flag.Uint64("chaos.seed", 0, "seed of TestE2EChaos's schedule and clients (0: a new one, printed)")
)

const (
	chaosClients         = 8
	chaosDefaultDuration = 90 * time.Second
	// chaosEventEvery is the mean gap between two events of a soak: vagentd
	// must stay under its unit's start limit (10 starts in 60s) with a
	// SIGKILL or a restart every other event.
	chaosEventEvery = 10 * time.Second
)

// chaosKind is what the chaos test does to the host.
type chaosKind string

const (
	killGateway    chaosKind = "SIGKILL vagentd"
	restartGateway chaosKind = "systemctl restart vagentd"
	killEngine     chaosKind = "SIGKILL engine"
)

// chaosEvent is one entry of the timeline: when the test began and
// finished doing it (the kill or restart itself lies in between).
type chaosEvent struct {
	kind   chaosKind
	at     time.Duration // planned, from the start of the load
	agent  string        // killEngine: whose engine
	pid    int           // the process killed
	issued time.Time
	done   time.Time
	err    error
}

func (e *chaosEvent) String() string {
	s := string(e.kind)
	if e.agent != "" {
		s += " " + e.agent
	}
	if e.pid != 0 {
		s += fmt.Sprintf(" (pid %d)", e.pid)
	}
	return s
}

// Outcomes of one request as its client saw it.
const (
	outCompleted  = "completed"   // data: [DONE] and no error event
	outRefused    = "refused"     // the connection was refused
	outErrorEvent = "error event" // an OpenAI error event in the stream
	outCut        = "cut"         // the connection ended without a word
	outStatus     = "HTTP status" // an answer other than 200
	outTimeout    = "timeout"     // no end within the client's bound
)

// chaosRequest is one request's record.
type chaosRequest struct {
	client  int
	agent   string
	start   time.Time
	end     time.Time
	outcome string
	status  int    // the HTTP status, or the error event's code
	detail  string // the error's message or the transport error
	chunks  int
	cause   string // for a failure: the event it is put down to
}

func (r *chaosRequest) failed() bool { return r.outcome != outCompleted }

// overlaps reports whether e happened while r was open: r started before
// the test finished doing e and ended after it began.
func (r *chaosRequest) overlaps(e *chaosEvent) bool {
	return r.start.Before(e.done) && r.end.After(e.issued)
}

// TestE2EChaos: clients stream chat completions through vagentd to three
// agents while, on a seeded random schedule printed in the log, engines are
// SIGKILLed, vagentd is SIGKILLed three times and restarted with `systemctl
// restart` three times. Every request's outcome is recorded and each
// failure is put down to the event that caused it on the timeline.
// vagentd runs from vagentd.socket. It asserts: no connection refused;
// cuts only for requests in flight at a SIGKILL of vagentd;
// explicit errors only for requests whose engine was killed under them;
// nothing lost across planned restarts; vagentd's counted 200s equal the
// clients' completed streams; the GPU ledger never over-committed; and,
// after a settle, no unit failed or stuck.
func TestE2EChaos(t *testing.T) {
	t.Parallel()
	seed := *chaosSeed
	if seed == 0 {
		seed = rand.Uint64()
	}
	duration := chaosDefaultDuration
	if *chaosSoak > 0 {
		duration = *chaosSoak
	}
	rng := rand.New(rand.NewPCG(seed, 0))
	events := chaosSchedule(rng, duration)
	var plan strings.Builder
	for _, e := range events {
		fmt.Fprintf(&plan, "\n  %8s  %s", e.at.Round(100*time.Millisecond), e.kind)
	}
	t.Logf("chaos: seed %d (rerun with -chaos.seed=%d), %d clients for %s; schedule:%s", seed, seed, chaosClients, duration, plan.String())

	g := newGatewayHost(t, map[string]any{
		"gateway.fairness_window": "2s",
		"gateway.drain_timeout":   "5s",
		"gateway.max_wait":        "30s",
	})
	ctx := t.Context()
	// vagentd runs from the sockets vagentd.socket holds (vagentctl apply
	// renders it; vagentd.service requires it).
	if out, err := g.s.Systemctl(ctx, "is-active", "vagentd.socket"); err != nil || strings.TrimSpace(out) != "active" {
		t.Fatalf("vagentd.socket is not active (%q, %v)", out, err)
	}

	stop := make(chan struct{})
	samples := sampleLedgerStorm(g.ledger(), stop)

	// Each client opens a new connection per request: a pooled connection
	// to a vagentd that has just gone would fail the next request on it
	// before it reached anyone, which is the client's pool talking, not
	// the gateway; and a new connection is what meets a restart's gap.
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	var (
		mu   sync.Mutex
		reqs []*chaosRequest
	)
	t0 := time.Now()
	deadline := t0.Add(duration)
	var wg sync.WaitGroup
	for c := range chaosClients {
		crng := rand.New(rand.NewPCG(seed, uint64(c)+1))
		wg.Go(func() {
			for time.Now().Before(deadline) && ctx.Err() == nil {
				agent := agentNames[crng.IntN(len(agentNames))]
				r := g.chaosStream(ctx, hc, c, agent, 8+crng.IntN(33))
				mu.Lock()
				reqs = append(reqs, r)
				mu.Unlock()
				switch {
				case r.outcome == outRefused:
					time.Sleep(20 * time.Millisecond) // a client's retry loop
				case r.failed():
					time.Sleep(100 * time.Millisecond)
				}
			}
		})
	}

	for _, e := range events {
		if d := time.Until(t0.Add(e.at)); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			break
		}
		g.chaosDo(ctx, rng, e)
		t.Logf("chaos: %6.1fs  %s  (took %s)%s", e.issued.Sub(t0).Seconds(), e,
			e.done.Sub(e.issued).Round(time.Millisecond), errSuffix(e.err))
	}
	wg.Wait()
	close(stop)
	peak, total, maxLoading, loadingAt := samples()

	for _, e := range events {
		if e.err != nil {
			t.Errorf("chaos: %s at %s: %v", e, e.issued.Sub(t0).Round(time.Millisecond), e.err)
		}
	}

	// After a settle, every unit is either running or cleanly stopped.
	settled := g.chaosSettle(ctx)

	// vagentd's count of 200s across its lifetimes: its metrics die with
	// each process (a SIGKILL loses whatever was counted since the last
	// scrape, and a planned restart what finished while it drained), but
	// each request's log line goes to the journal as it ends, and the
	// journal outlives every vagentd.
	journal := g.gatewayJournal()
	counted := 0
	warnings := map[string]int{} // vagentd's warnings and errors by message, for the log
	for _, line := range strings.Split(journal, "\n") {
		if strings.Contains(line, "msg=request ") && logField(line, "status") == "200" {
			counted++
		}
		if lvl := logField(" "+line, "level"); lvl == "WARN" || lvl == "ERROR" {
			warnings[lvl+" "+logField(line, "msg")]++
		}
	}
	suppressed := journalSuppressed(ctx, g)

	// Classify, print, assert.
	sort.Slice(reqs, func(i, j int) bool { return reqs[i].start.Before(reqs[j].start) })
	tab := chaosClassify(reqs, events)
	var failures []string
	for _, r := range reqs {
		if r.failed() && r.outcome != outRefused {
			failures = append(failures, fmt.Sprintf("\n  %6.1fs-%6.1fs  %s  [cause: %s]", r.start.Sub(t0).Seconds(), r.end.Sub(t0).Seconds(), r, or(r.cause, "none")))
		}
	}
	if len(failures) > 200 {
		failures = append(failures[:200], fmt.Sprintf("\n  ... and %d more", len(failures)-200))
	}
	t.Logf("chaos: failures other than refusals:%s", strings.Join(failures, ""))
	fmt.Printf("chaos: seed %d, %d clients for %s: %d requests; events: %s\n", seed, chaosClients, duration, len(reqs), tab.eventCounts(events))
	fmt.Print(tab.String())
	fmt.Printf("chaos: vagentd counted %d streams 200 (journal, all its lifetimes); clients completed %d\n", counted, tab.completed)
	fmt.Printf("chaos: vagentd's warnings and errors by message: %v\n", warnings)
	fmt.Printf("chaos: ledger peak %.2f GiB of %.2f GiB; most engines loading at once: %d\n",
		float64(peak)/(1<<30), float64(total)/(1<<30), maxLoading)

	if tab.completed == 0 {
		t.Errorf("no stream completed")
	}
	if n := tab.byOutcome[outRefused]; n > 0 {
		t.Errorf("%d connections refused; want 0: vagentd.socket holds them while vagentd restarts", n)
	}
	for i, r := range tab.unexplained {
		if i == 15 {
			t.Errorf("... and %d more unexplained failures", len(tab.unexplained)-15)
			break
		}
		t.Errorf("failure with no SIGKILL under it: %s", r)
	}
	if len(tab.unexplained) > 0 {
		// What vagentd and the engines did around the first one.
		r := tab.unexplained[0]
		out, _, _, _ := g.s.Exec(ctx, "journalctl", "--no-pager", "-q", "-o", "short-precise",
			"-u", gatewayUnit, "-u", "vagent@*",
			"--since", fmt.Sprintf("@%d", r.start.Add(-3*time.Second).Unix()), "--until", fmt.Sprintf("@%d", r.end.Add(2*time.Second).Unix()))
		t.Logf("journal around the first unexplained failure (%.1fs-%.1fs):\n%s", r.start.Sub(t0).Seconds(), r.end.Sub(t0).Seconds(), out)
	}
	if counted != tab.completed {
		t.Errorf("vagentd counted %d streams 200, clients completed %d", counted, tab.completed)
	}
	if suppressed != "" {
		t.Errorf("journald suppressed vagentd's records, so its count is short: %s", suppressed)
	}
	if total == 0 || peak > total {
		t.Errorf("ledger peak %d bytes, GPU total %d: over-committed", peak, total)
	}
	if maxLoading > 1 {
		t.Errorf("%d engines were loading on GPU 0 at once (%s)", maxLoading, loadingAt)
	}
	for _, a := range agentNames {
		for _, l := range strings.Split(g.s.Journal(ctx, "vagent@"+a+".service"), "\n") {
			if strings.Contains(l, "Free memory on device") || strings.Contains(l, "CUDA out of memory") {
				t.Errorf("agent %s's engine found the GPU over-committed: %s", a, l)
				break
			}
		}
	}
	for _, s := range settled {
		t.Error(s)
	}
	// And the host still serves every agent.
	for _, a := range agentNames {
		if r := g.chaosStream(ctx, hc, -1, a, 8); r.failed() {
			t.Errorf("after the chaos, a stream from %s: %s", a, r)
		}
	}
	// The journal's count is the metric's: within the last vagentd's
	// lifetime, its log lines with status 200 are its
	// vagent_requests_total{status="200"}.
	p, err := g.unitProps(ctx, gatewayUnit)
	if err != nil || p.MainPID == 0 {
		t.Fatalf("vagentd's PID: %+v %v", p, err)
	}
	var lines, metric int
	eventually(t, 10*time.Second, "the last vagentd's 200s in its journal and in its metrics agree", func() bool {
		lines = 0
		for _, l := range strings.Split(g.s.Journal(ctx, gatewayUnit, "_PID="+strconv.Itoa(p.MainPID)), "\n") {
			if strings.Contains(l, "msg=request ") && logField(l, "status") == "200" {
				lines++
			}
		}
		code, body := g.get("/metrics", "")
		metric = -1
		if code == http.StatusOK {
			metric = 0
			for _, l := range strings.Split(string(body), "\n") {
				if strings.HasPrefix(l, "vagent_requests_total{") && strings.Contains(l, `status="200"`) {
					f := strings.Fields(l)
					v, _ := strconv.ParseFloat(f[len(f)-1], 64)
					metric += int(v)
				}
			}
		}
		return lines > 0 && lines == metric
	})
	t.Logf("the last vagentd (PID %d): %d requests 200 in its journal, %d in vagent_requests_total", p.MainPID, lines, metric)
}

// chaosSchedule draws the events of a run of duration d: the default run
// has 3 SIGKILLs and 3 restarts of vagentd and 4 engine kills; a soak has
// one event per chaosEventEvery in the same mix. Each event gets a slot of
// its own and a random moment in the slot's middle part, so that events
// never pile up and vagentd is back before the next one.
func chaosSchedule(rng *rand.Rand, d time.Duration) []*chaosEvent {
	gw, engines := 3, 4
	if d > chaosDefaultDuration {
		n := int(d / chaosEventEvery)
		gw = max(3, n*3/10)
		engines = max(4, n-2*gw)
	}
	var kinds []chaosKind
	for range gw {
		kinds = append(kinds, killGateway, restartGateway)
	}
	for range engines {
		kinds = append(kinds, killEngine)
	}
	rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	// The first and last slot stay quiet: load first, and a calm end.
	slot := d / time.Duration(len(kinds)+1)
	events := make([]*chaosEvent, len(kinds))
	for i, k := range kinds {
		at := slot/2 + time.Duration(i)*slot + slot/4 + time.Duration(rng.Int64N(int64(slot/2)))
		events[i] = &chaosEvent{kind: k, at: at}
	}
	return events
}

// chaosDo does e and records when. A SIGKILL or restart of vagentd waits
// first until vagentd is active, so that each one meets a serving process.
func (g *gwHost) chaosDo(ctx context.Context, rng *rand.Rand, e *chaosEvent) {
	c, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if e.kind != killEngine {
		for {
			p, err := g.unitProps(c, gatewayUnit)
			if err == nil && p.ActiveState == "active" && p.MainPID > 0 {
				e.pid = p.MainPID
				break
			}
			if c.Err() != nil {
				e.issued, e.done, e.err = time.Now(), time.Now(), fmt.Errorf("vagentd not active: %+v %v", p, err)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	} else {
		// An engine that has a process, loading or serving; between a stop
		// and the next start there is none for a moment.
		var live []string
		pids := map[string]int{}
		for wait := time.Now().Add(10 * time.Second); len(live) == 0 && time.Now().Before(wait) && c.Err() == nil; {
			for _, a := range agentNames {
				if p, err := g.unitProps(c, "vagent@"+a+".service"); err == nil && p.MainPID > 0 {
					live = append(live, a)
					pids[a] = p.MainPID
				}
			}
			if len(live) == 0 {
				time.Sleep(50 * time.Millisecond)
			}
		}
		if len(live) == 0 {
			e.issued, e.done = time.Now(), time.Now()
			e.agent = "(none running)"
			return
		}
		e.agent = live[rng.IntN(len(live))]
		e.pid = pids[e.agent]
	}
	e.issued = time.Now()
	switch e.kind {
	case killGateway:
		_, e.err = g.s.Systemctl(c, "kill", "-s", "KILL", gatewayUnit)
	case restartGateway:
		_, e.err = g.s.Systemctl(c, "restart", gatewayUnit)
	case killEngine:
		_, e.err = g.s.Systemctl(c, "kill", "-s", "KILL", "--kill-whom=main", "vagent@"+e.agent+".service")
		var ee *sandbox.ExitError
		if errors.As(e.err, &ee) && (strings.Contains(ee.Stderr, "No main process to kill") || strings.Contains(ee.Stderr, "not loaded")) {
			// Stopped by vagentd in the moment since its PID was read (and
			// the stopped instance unloaded): nothing was killed.
			e.err, e.pid, e.agent = nil, 0, e.agent+" (stopped before the kill)"
		}
	}
	e.done = time.Now()
}

func or(s, alt string) string {
	if s == "" {
		return alt
	}
	return s
}

func errSuffix(err error) string {
	if err == nil {
		return ""
	}
	return ": " + err.Error()
}

// chaosStream sends one streamed chat request and records how it ended.
func (g *gwHost) chaosStream(ctx context.Context, hc *http.Client, client int, agent string, tokens int) *chaosRequest {
	r := &chaosRequest{client: client, agent: agent, start: time.Now()}
	defer func() { r.end = time.Now() }()
	c, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	b, _ := json.Marshal(chatBody(agent, tokens, true))
	req, _ := http.NewRequestWithContext(c, http.MethodPost, g.base+"/v1/chat/completions", strings.NewReader(string(b)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		r.detail = err.Error()
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			r.outcome = outRefused
		case c.Err() != nil:
			r.outcome = outTimeout
		default:
			r.outcome = outCut
		}
		return r
	}
	defer resp.Body.Close()
	r.status = resp.StatusCode
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		r.outcome, r.detail = outStatus, strings.TrimSpace(string(body))
		return r
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	done := false
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			done = true
			continue
		}
		var ev struct {
			Error *struct {
				Message string `json:"message"`
				Code    int    `json:"code"`
			} `json:"error"`
		}
		if json.Unmarshal([]byte(data), &ev) == nil && ev.Error != nil && r.outcome == "" {
			r.outcome, r.status, r.detail = outErrorEvent, ev.Error.Code, ev.Error.Message
			continue
		}
		r.chunks++
	}
	switch {
	case r.outcome != "":
	case done:
		r.outcome = outCompleted
	case c.Err() != nil:
		r.outcome, r.detail = outTimeout, "no [DONE] within the client's bound"
	default:
		r.outcome = outCut
		r.detail = fmt.Sprintf("ended after %d chunks without [DONE]", r.chunks)
		if err := sc.Err(); err != nil {
			r.detail += ": " + err.Error()
		}
	}
	return r
}

func (r *chaosRequest) String() string {
	s := fmt.Sprintf("client %d %s %s after %s", r.client, r.agent, r.outcome, r.end.Sub(r.start).Round(time.Millisecond))
	if r.status != 0 && r.status != http.StatusOK {
		s += fmt.Sprintf(" (%d)", r.status)
	}
	if r.detail != "" {
		s += ": " + r.detail
	}
	return s
}

// chaosTable is the outcome of a run: requests by outcome, failures by
// the event they are put down to, and the failures nothing explains.
type chaosTable struct {
	completed   int
	byOutcome   map[string]int
	byCause     map[string]map[string]int // cause → outcome → requests
	inFlight    map[chaosKind]int         // requests open during each kind of event (refusals aside; for an engine, its agent's)
	unexplained []*chaosRequest
}

// chaosClassify puts each failure down to the event that caused it:
//   - a cut (a connection that vagentd's death took) to a SIGKILL of
//     vagentd while the request was open;
//   - an explicit error (an error event, a 5xx answer) to a SIGKILL of the
//     engine of the request's agent while it was open, or, for an error
//     that names what such a kill leaves behind (the failed start it
//     joined, the start backoff after it), to the last such kill before
//     it ended;
//
// and anything else, a failure across a planned restart included, is
// unexplained. Refused connections are never explained: a restart of
// vagentd must not refuse anyone.
func chaosClassify(reqs []*chaosRequest, events []*chaosEvent) *chaosTable {
	tab := &chaosTable{byOutcome: map[string]int{}, byCause: map[string]map[string]int{}, inFlight: map[chaosKind]int{}}
	for _, r := range reqs {
		tab.byOutcome[r.outcome]++
		for _, e := range events {
			if r.outcome != outRefused && !e.issued.IsZero() && e.pid != 0 && r.overlaps(e) && (e.kind != killEngine || e.agent == r.agent) {
				tab.inFlight[e.kind]++
			}
		}
		if !r.failed() {
			tab.completed++
			continue
		}
		if r.outcome == outRefused {
			continue // never explained: asserted on its own
		}
		var cause *chaosEvent
		for _, e := range events {
			if e.issued.IsZero() || e.pid == 0 {
				continue
			}
			switch {
			case e.kind == killGateway && r.outcome == outCut && r.overlaps(e):
				cause = e
			case e.kind == killEngine && e.agent == r.agent && (r.outcome == outErrorEvent || r.outcome == outStatus && r.status >= 500):
				if r.overlaps(e) || (e.issued.Before(r.end) && afterEngineKill(r.detail)) {
					cause = e
				}
			}
		}
		if cause == nil {
			tab.unexplained = append(tab.unexplained, r)
			continue
		}
		r.cause = string(cause.kind)
		if tab.byCause[r.cause] == nil {
			tab.byCause[r.cause] = map[string]int{}
		}
		tab.byCause[r.cause][r.outcome]++
	}
	return tab
}

// afterEngineKill reports whether an error message is one a SIGKILL of an
// engine leaves behind after the kill itself: the start it killed, which
// a request may join in the moment before the gateway learns of the death,
// and the start backoff that follows.
func afterEngineKill(msg string) bool {
	return strings.Contains(msg, "killed by SIGKILL during load") || strings.Contains(msg, "start backoff")
}

func (tab *chaosTable) eventCounts(events []*chaosEvent) string {
	n := map[chaosKind]int{}
	for _, e := range events {
		if e.pid != 0 {
			n[e.kind]++
		}
	}
	return fmt.Sprintf("%d %s, %d %s, %d %s", n[killGateway], killGateway, n[restartGateway], restartGateway, n[killEngine], killEngine)
}

func (tab *chaosTable) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "  %-14s %8s\n", "outcome", "requests")
	for _, o := range []string{outCompleted, outRefused, outErrorEvent, outCut, outStatus, outTimeout} {
		fmt.Fprintf(&b, "  %-14s %8d\n", o, tab.byOutcome[o])
	}
	fmt.Fprintf(&b, "  %-28s %9s %9s\n", "failures put down to", "failures", "in flight")
	for _, k := range []chaosKind{killGateway, restartGateway, killEngine} {
		var parts []string
		sum := 0
		for _, o := range []string{outRefused, outErrorEvent, outCut, outStatus, outTimeout} {
			if n := tab.byCause[string(k)][o]; n > 0 {
				parts = append(parts, fmt.Sprintf("%s %d", o, n))
				sum += n
			}
		}
		fmt.Fprintf(&b, "  %-28s %9d %9d  %s\n", k, sum, tab.inFlight[k], strings.Join(parts, ", "))
	}
	fmt.Fprintf(&b, "  %-28s %9d\n", "nothing (unexplained)", len(tab.unexplained))
	return b.String()
}

// chaosSettle waits until no vagent unit is changing state, then reports
// every unit that is failed, or stuck in a transition, and vagentd if it
// does not run.
func (g *gwHost) chaosSettle(ctx context.Context) (problems []string) {
	units := []string{gatewayUnit, "vagentd.socket"}
	for _, a := range agentNames {
		units = append(units, "vagent@"+a+".service")
	}
	states := map[string]string{}
	read := func() bool {
		calm := true
		for _, u := range units {
			out, _ := g.s.Systemctl(ctx, "show", "-p", "ActiveState", "-p", "SubState", "--value", u)
			states[u] = strings.Join(strings.Fields(out), "/")
			if st, _, _ := strings.Cut(states[u], "/"); st != "active" && st != "inactive" && st != "failed" {
				calm = false
			}
		}
		return calm
	}
	end := time.Now().Add(time.Minute)
	for !read() && time.Now().Before(end) {
		time.Sleep(200 * time.Millisecond)
	}
	for _, u := range units {
		st, _, _ := strings.Cut(states[u], "/")
		switch {
		case st == "failed":
			problems = append(problems, fmt.Sprintf("%s ended failed (%s):\n%s", u, states[u], g.s.Journal(ctx, u, "-n", "15")))
		case st != "active" && st != "inactive":
			problems = append(problems, fmt.Sprintf("%s is stuck in %s a minute after the chaos", u, states[u]))
		case u == gatewayUnit && st != "active":
			problems = append(problems, fmt.Sprintf("vagentd does not run after the chaos (%s)", states[u]))
		}
	}
	if out, _ := g.s.Systemctl(ctx, "list-units", "--failed", "--plain", "--no-legend", "vagent*"); strings.TrimSpace(out) != "" {
		problems = append(problems, "systemctl list-units --failed:\n"+out)
	}
	return problems
}

// journalSuppressed returns journald's word that it dropped records of
// vagentd's (rate limiting), or "".
func journalSuppressed(ctx context.Context, g *gwHost) string {
	out, _, _, _ := g.s.Exec(ctx, "journalctl", "--no-pager", "-q", "-o", "cat", "-t", "systemd-journald")
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "Suppressed") && strings.Contains(l, gatewayUnit) {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "; ")
}
