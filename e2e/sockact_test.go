package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/e2e/sandbox"
)

// probe is one request of a client that keeps connecting.
type probe struct {
	start, end time.Time
	status     int
	err        error
}

func (p probe) refused() bool { return errors.Is(p.err, syscall.ECONNREFUSED) }

// prober keeps sending small chat completions, each on a new connection,
// to the URLs it is given, one client per URL, and records every outcome.
type prober struct {
	mu     sync.Mutex
	probes []probe
	stop   context.CancelFunc
	done   sync.WaitGroup
}

func startProber(ctx context.Context, urls ...string) *prober {
	ctx, cancel := context.WithCancel(ctx)
	p := &prober{stop: cancel}
	body, _ := json.Marshal(chatBody("dev", 2, false))
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 60 * time.Second}
	for _, url := range urls {
		p.done.Add(1)
		go func() {
			defer p.done.Done()
			for ctx.Err() == nil {
				r := probe{start: time.Now()}
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/chat/completions", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				resp, err := hc.Do(req)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					r.status = resp.StatusCode
				}
				r.end, r.err = time.Now(), err
				if ctx.Err() != nil {
					return // the prober's own stop, not an outcome
				}
				p.mu.Lock()
				p.probes = append(p.probes, r)
				p.mu.Unlock()
			}
		}()
	}
	return p
}

// since returns the outcomes of the requests that had not ended by t:
// those in flight at t and those begun later.
func (p *prober) since(t time.Time) []probe {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []probe
	for _, r := range p.probes {
		if !r.end.Before(t) {
			out = append(out, r)
		}
	}
	return out
}

// tally counts outcomes: served (200), refused connections, other failures
// (with a few of their errors), how long a request took, and from the
// first refused connection to the last.
type tally struct {
	n, ok, refused, failed int
	errs                   []string
	longest, median        time.Duration
	refusing               time.Duration
}

func count(ps []probe) tally {
	var t tally
	var waits []time.Duration
	var first, last time.Time
	for _, p := range ps {
		t.n++
		waits = append(waits, p.end.Sub(p.start))
		switch {
		case p.refused():
			t.refused++
			if first.IsZero() || p.start.Before(first) {
				first = p.start
			}
			if p.end.After(last) {
				last = p.end
			}
		case p.err != nil || p.status != http.StatusOK:
			t.failed++
			if len(t.errs) < 5 {
				t.errs = append(t.errs, fmt.Sprintf("status %d, err %v", p.status, p.err))
			}
		default:
			t.ok++
		}
	}
	t.refusing = last.Sub(first)
	if len(waits) > 0 {
		slices.Sort(waits)
		t.longest, t.median = waits[len(waits)-1], waits[len(waits)/2]
	}
	return t
}

func (t tally) String() string {
	return fmt.Sprintf("%d requests: %d served, %d refused (over %s), %d failed; request time median %s, longest %s",
		t.n, t.ok, t.refused, t.refusing.Round(time.Millisecond), t.failed, t.median.Round(time.Millisecond), t.longest.Round(time.Millisecond))
}

// TestE2ESocketActivation runs vagentd from vagentd.socket, which vagentctl
// apply renders from the configuration, and restarts it twice while clients
// keep connecting to the main endpoint and to dev's own listener:
// `systemctl restart vagentd` (a planned restart, as a package upgrade does)
// and `kill -9` of vagentd (systemd restarts it). No connection is refused:
// new ones wait in the socket's backlog and the next vagentd serves them. A
// planned restart fails nothing; a SIGKILL fails only requests that the
// killed process held, and every one of them is counted. vagentctl's control
// socket is held the same way.
func TestE2ESocketActivation(t *testing.T) {
	t.Parallel()
	g := newGatewayHost(t, nil)
	ctx := t.Context()
	if out, err := g.s.Systemctl(ctx, "is-active", "vagentd.socket"); err != nil || strings.TrimSpace(out) != "active" {
		t.Fatalf("vagentd.socket is not active (%q, %v): vagentd.service should have pulled it in", out, err)
	}
	if j := g.gatewayJournal(); !strings.Contains(j, "listening on the sockets vagentd.socket handed over") || strings.Contains(j, "did not hand") {
		t.Fatalf("vagentd did not take its sockets from vagentd.socket:\n%s", j)
	}
	// dev runs before the clients start: its cold start is not what is measured.
	if resp, body, err := g.post(ctx, "/v1/chat/completions", "", chatBody("dev", 2, false)); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("first request to dev: %v %s", err, body)
	}
	devURL := "http://127.0.0.1:" + strconv.Itoa(g.listens["dev"])
	p := startProber(ctx, g.base, g.base, g.base, devURL)
	defer p.stop()

	mainPID := func() int {
		up, err := g.unitProps(ctx, gatewayUnit)
		if err != nil {
			t.Fatal(err)
		}
		return up.MainPID
	}
	// servedAfter waits until the vagentd after old serves requests, and
	// returns the outcomes of those in flight at t0 or begun later.
	servedAfter := func(t0 time.Time, old int, what string) tally {
		t.Helper()
		var seen time.Time // when the new process showed
		eventually(t, 30*time.Second, what+": a new vagentd serves", func() bool {
			if seen.IsZero() {
				if pid := mainPID(); pid == 0 || pid == old {
					return false
				}
				seen = time.Now()
			}
			for _, r := range p.since(seen) {
				if r.err == nil && r.status == http.StatusOK {
					return true
				}
			}
			return false
		})
		time.Sleep(500 * time.Millisecond) // some requests to the new one too
		return count(p.since(t0))
	}

	// down is how long vagentd was not serving at its last restart: from
	// the old one's SIGTERM or death to the new one's READY=1.
	down := func() time.Duration {
		out, err := g.s.Systemctl(ctx, "show", "--timestamp=us+utc", "-p", "ActiveExitTimestamp", "-p", "ActiveEnterTimestamp", gatewayUnit)
		if err != nil {
			t.Fatal(err)
		}
		ts := map[string]time.Time{}
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			k, v, _ := strings.Cut(l, "=")
			if ts[k], err = time.Parse("Mon 2006-01-02 15:04:05.000000 MST", v); err != nil {
				t.Fatalf("systemctl show: %q: %v", l, err)
			}
		}
		return ts["ActiveEnterTimestamp"].Sub(ts["ActiveExitTimestamp"]).Round(time.Millisecond)
	}

	time.Sleep(time.Second)
	before := count(p.since(time.Time{}))
	t.Logf("before any restart: %s", before)
	if before.ok == 0 || before.refused+before.failed > 0 {
		t.Fatalf("before any restart: %s %q", before, before.errs)
	}

	t.Run("systemctl restart vagentd", func(t *testing.T) {
		old, t0 := mainPID(), time.Now()
		if _, err := g.s.Systemctl(ctx, "restart", gatewayUnit); err != nil {
			t.Fatalf("systemctl restart vagentd: %v", err)
		}
		got := servedAfter(t0, old, "restart")
		t.Logf("systemctl restart vagentd (PID %d -> %d, not serving for %s): %s", old, mainPID(), down(), got)
		if got.refused > 0 || got.failed > 0 {
			t.Errorf("a planned restart refused %d connections and failed %d requests: %q", got.refused, got.failed, got.errs)
		}
	})

	t.Run("kill -9 vagentd", func(t *testing.T) {
		old, t0 := mainPID(), time.Now()
		if _, errOut, code, err := g.s.Exec(ctx, "kill", "-9", strconv.Itoa(old)); err != nil || code != 0 {
			t.Fatalf("kill -9 %d: %v %s", old, err, errOut)
		}
		// vagentctl's connection waits for the next vagentd as well,
		// instead of falling back to asking systemd itself (then status
		// has no vagentd state).
		if st := g.status()["dev"]; st.State == "" {
			t.Errorf("vagentctl status right after kill -9 of vagentd did not go through vagentd: %+v", st)
		}
		got := servedAfter(t0, old, "kill -9")
		t.Logf("kill -9 vagentd (PID %d -> %d, not serving for %s): %s; failures: %q", old, mainPID(), down(), got, got.errs)
		if got.refused > 0 {
			t.Errorf("%d connections refused while vagentd was restarted by systemd after SIGKILL", got.refused)
		}
		// Only what the killed process held can fail: one request per
		// client at most, as each sends one at a time.
		if got.failed > 4 {
			t.Errorf("%d requests failed across a SIGKILL of vagentd, more than the 4 clients had in flight: %q", got.failed, got.errs)
		}
	})

	p.stop()
	p.done.Wait()
	all := count(p.since(time.Time{}))
	t.Logf("all clients, whole test: %s", all)
	if all.refused > 0 {
		t.Errorf("%d connections refused in all", all.refused)
	}

	// dev's listener moves, and vagentd restarts before vagentctl apply has
	// rendered the socket unit again: vagentd listens on the new address
	// itself and answers the old one, which the socket still holds, with an
	// error that says what to run. apply and a restart of the socket set
	// both right.
	t.Run("an address changes: vagentd copes until the socket restarts", func(t *testing.T) {
		oldURL := devURL
		port, err := sandbox.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		newURL := "http://127.0.0.1:" + strconv.Itoa(port)
		if err := g.s.EditConfig("agents/dev.toml", map[string]any{"listen": "127.0.0.1:" + strconv.Itoa(port)}); err != nil {
			t.Fatal(err)
		}
		g.restartGateway()
		models := func(base string) (int, string) {
			resp, err := g.hc.Get(base + "/v1/models")
			if err != nil {
				return 0, err.Error()
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(b)
		}
		if code, body := models(newURL); code != http.StatusOK {
			t.Errorf("dev's new listener, before the socket restarts: %d %s", code, body)
		}
		if code, body := models(oldURL); code != http.StatusMisdirectedRequest || !strings.Contains(body, "systemctl restart vagentd.socket") {
			t.Errorf("dev's old listener, still held by the socket: %d %s; want 421 saying what to run", code, body)
		}
		if j := g.gatewayJournal(); !strings.Contains(j, "vagentd.socket did not hand this address over") ||
			!strings.Contains(j, "vagentd.socket holds an address no configuration names") {
			t.Errorf("vagentd's journal does not say which addresses differ from the socket's:\n%s", j)
		}

		if out := g.mustCtl("apply"); !strings.Contains(out, "vagentd.socket changed") {
			t.Errorf("vagentctl apply does not say that the running socket keeps its old addresses:\n%s", out)
		}
		old := mainPID()
		if _, err := g.s.Systemctl(ctx, "restart", "vagentd.socket"); err != nil {
			t.Fatalf("systemctl restart vagentd.socket: %v", err)
		}
		g.waitHealthy(10 * time.Second)
		if pid := mainPID(); pid == old {
			t.Errorf("restarting vagentd.socket left vagentd running (PID %d): it keeps the old sockets", pid)
		}
		if code, body := models(newURL); code != http.StatusOK {
			t.Errorf("dev's new listener, after the socket restarted: %d %s", code, body)
		}
		if code, body := models(oldURL); code != 0 || !strings.Contains(body, "connection refused") {
			t.Errorf("dev's old listener after the socket restarted: %d %s; want nothing listening", code, body)
		}
		since := time.Now().Add(-time.Minute).Format("2006-01-02 15:04:05")
		out, _, _, _ := g.s.Exec(ctx, "journalctl", "--no-pager", "-q", "-o", "cat", "-u", gatewayUnit, "_PID="+strconv.Itoa(mainPID()), "--since", since)
		if !strings.Contains(out, "listening on the sockets vagentd.socket handed over") || strings.Contains(out, "did not hand") {
			t.Errorf("the vagentd after the socket's restart did not take every socket from it:\n%s", out)
		}
	})
}
