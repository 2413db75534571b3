package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/internal/ledger"
)

// multiGPUCards are the GPUs of each agent of TestE2EMultiGPU: po on card 0,
// dev on card 1, architect spread over both with tensor_parallel_size 2.
var multiGPUCards = map[string][]int{"po": {0}, "dev": {1}, "architect": {0, 1}}

// newMultiGPUHost is a gateway host with two simulated 16 GB cards and the
// shipped agents placed as multiGPUCards says.
func newMultiGPUHost(t *testing.T) *gwHost {
	t.Helper()
	h := newHost(t)
	// Loads long enough that two starts on different cards visibly overlap
	// in vagentd's log, whatever else the host runs.
	if err := h.s.EditConfig("vagent.toml", map[string]any{"gpu.sim_count": 2, "gpu.sim_load_seconds": 1.5}); err != nil {
		t.Fatal(err)
	}
	for a, cards := range multiGPUCards {
		if err := h.s.EditConfig("agents/"+a+".toml", map[string]any{"gpus": cards, "tensor_parallel_size": len(cards)}); err != nil {
			t.Fatal(err)
		}
	}
	return newGatewayHostOn(t, h, map[string]any{
		"gateway.fairness_window": "1s",
		"gateway.drain_timeout":   "5s",
		"gateway.max_wait":        "60s",
		"gateway.queue_length":    64,
	})
}

// cardSamples is what the ledger showed, sampled every few milliseconds:
// per card the most memory held and the most engines loading at once, and
// whether engines were ever loading on two cards at once.
type cardSamples struct {
	total      uint64
	peak       map[int]uint64
	maxLoading map[int]int
	loadingAt  map[int]string
	// together is a moment when engines loaded on different cards at once.
	together string
}

// sampleCards samples the ledger until stop closes.
func sampleCards(l *ledger.Ledger, stop <-chan struct{}) func() cardSamples {
	cs := cardSamples{peak: map[int]uint64{}, maxLoading: map[int]int{}, loadingAt: map[int]string{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if st, err := l.Read(); err == nil {
				cs.total = st.TotalBytes
				loading := map[int][]string{}
				for g := 0; g < st.GPUs; g++ {
					cs.peak[g] = max(cs.peak[g], st.Used(g))
				}
				for _, e := range st.Entries {
					if e.State == ledger.StateLoading {
						loading[e.GPU] = append(loading[e.GPU], fmt.Sprintf("%s pid %d", e.Unit, e.PID))
					}
				}
				units := map[string]bool{}
				for g, l := range loading {
					if len(l) > cs.maxLoading[g] {
						cs.maxLoading[g] = len(l)
						cs.loadingAt[g] = strings.Join(l, ", ")
					}
					for _, u := range l {
						units[strings.Fields(u)[0]] = true
					}
				}
				if len(units) > 1 && cs.together == "" {
					cs.together = fmt.Sprint(loading)
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(3 * time.Millisecond):
			}
		}
	}()
	return func() cardSamples { <-done; return cs }
}

// startsPerCard reads vagentd's "starting agent" and "agent healthy" (or
// failure) lines in order, with cards saying which GPUs each agent uses.
// It reports how many starts there were, the first start that began on a
// card while another start there was still under way (overlap), and the
// first start that began while an agent on another card was still
// starting (concurrent).
func startsPerCard(journal string, cards map[string][]int) (starts int, overlap, concurrent string) {
	loading := map[int]string{} // card → agent starting there
	for _, line := range strings.Split(journal, "\n") {
		agent := logField(line, "agent")
		if agent == "" {
			continue
		}
		switch {
		case strings.Contains(line, `msg="starting agent"`):
			starts++
			for _, g := range cards[agent] {
				if o := loading[g]; o != "" && overlap == "" {
					overlap = fmt.Sprintf("%s started on GPU %d while %s was still starting there", agent, g, o)
				}
			}
			for g, o := range loading {
				if o != "" && !slices.Contains(cards[agent], g) && concurrent == "" {
					concurrent = fmt.Sprintf("%s started on GPU %v while %s was starting on GPU %d", agent, cards[agent], o, g)
				}
			}
			for _, g := range cards[agent] {
				loading[g] = agent
			}
		case strings.Contains(line, `msg="agent healthy"`) || strings.Contains(line, "level=ERROR") || strings.Contains(line, "failed"):
			for g, o := range loading {
				if o == agent {
					loading[g] = ""
				}
			}
		}
	}
	return starts, overlap, concurrent
}

// cardShare is one entry of an agent's cards in status --json.
type cardShare struct {
	GPU    int    `json:"gpu"`
	VRAM   uint64 `json:"vram_bytes"`
	Budget uint64 `json:"budget_bytes"`
	Total  uint64 `json:"total_bytes"`
}

// cardStatus is status --json with the fields of the multi-GPU test.
type cardStatus struct {
	agentStatus
	GPUs  []int       `json:"gpus"`
	Cards []cardShare `json:"cards"`
}

func (g *gwHost) cardStatus(t *testing.T) map[string]cardStatus {
	t.Helper()
	var st []cardStatus
	if err := json.Unmarshal([]byte(g.mustCtl("status", "--json")), &st); err != nil {
		t.Fatalf("status --json: %v", err)
	}
	out := map[string]cardStatus{}
	for _, s := range st {
		out[s.Agent] = s
	}
	return out
}

// TestE2EMultiGPU runs the shipped agents on two simulated GPUs through
// vagentd in a throwaway systemd: po on card 0 and dev on card 1 start at
// the same time and answer side by side; architect, tensor-parallel over
// both cards, evicts both and holds half its memory on each, through a
// worker process per card; a storm over the three keeps every card within
// its memory at every sample, and starts never overlap on one card.
func TestE2EMultiGPU(t *testing.T) {
	t.Parallel()
	g := newMultiGPUHost(t)
	stop := make(chan struct{})
	samples := sampleCards(g.ledger(), stop)
	stopped := false
	finish := func() cardSamples {
		if !stopped {
			close(stop)
			stopped = true
		}
		return samples()
	}
	defer finish()

	t.Run("po on card 0 and dev on card 1 start together and answer concurrently", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		defer cancel()
		// Two streams held open at once: each agent answers while the
		// other is mid-answer.
		var wg sync.WaitGroup
		errs := make(chan string, 2)
		for _, a := range []string{"po", "dev"} {
			wg.Go(func() {
				resp, body, err := g.post(ctx, "/v1/chat/completions", "", chatBody(a, 64, true))
				switch {
				case err != nil:
					errs <- fmt.Sprintf("%s: %v", a, err)
				case resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "data: [DONE]"):
					errs <- fmt.Sprintf("%s: %d %.300s", a, resp.StatusCode, body)
				}
			})
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Error(e)
		}
		st := g.cardStatus(t)
		for a, card := range map[string]int{"po": 0, "dev": 1} {
			s := st[a]
			if s.ActiveState != "active" || !s.Healthy {
				t.Errorf("%s is %s (healthy %v), want both running at once", a, s.ActiveState, s.Healthy)
			}
			if len(s.Cards) != 1 || s.Cards[0].GPU != card || s.Cards[0].VRAM == 0 || s.Cards[0].VRAM > s.Cards[0].Budget {
				t.Errorf("%s's cards %+v: want GPU %d holding its memory, within its budget", a, s.Cards, card)
			}
		}
		_, overlap, concurrent := startsPerCard(g.gatewayJournal(), multiGPUCards)
		if concurrent == "" {
			t.Errorf("po and dev did not start concurrently on their cards:\n%s", g.gatewayJournal())
		}
		if overlap != "" {
			t.Errorf("starts overlapped on one card: %s", overlap)
		}
		t.Logf("%s", concurrent)

		// vagentctl gpu, status and the metrics show each card.
		out := g.mustCtl("status")
		for _, want := range []string{"GPU 0 (15.99 GiB): architect (budget 14.71 GiB), po (budget 14.71 GiB, holds 14.71 GiB)",
			"GPU 1 (15.99 GiB): architect (budget 14.71 GiB), dev (budget 14.71 GiB, holds 14.71 GiB)"} {
			if !strings.Contains(out, want) {
				t.Errorf("vagentctl status lacks %q:\n%s", want, out)
			}
		}
		t.Logf("vagentctl status:\n%s", out)
		var gi struct {
			Cards []struct {
				Index  int    `json:"index"`
				Total  uint64 `json:"total_bytes"`
				Used   uint64 `json:"used_bytes"`
				Agents []struct {
					Agent  string `json:"agent"`
					Budget uint64 `json:"budget_bytes"`
					Used   uint64 `json:"used_bytes"`
				} `json:"agents"`
			} `json:"cards"`
		}
		if err := json.Unmarshal([]byte(g.mustCtl("gpu", "--json")), &gi); err != nil {
			t.Fatalf("gpu --json: %v", err)
		}
		if len(gi.Cards) != 2 {
			t.Fatalf("gpu --json: %d cards, want 2", len(gi.Cards))
		}
		for i, runs := range []string{"po", "dev"} {
			c := gi.Cards[i]
			var names []string
			for _, a := range c.Agents {
				names = append(names, a.Agent)
				if a.Agent == runs && (a.Used == 0 || a.Used > a.Budget || a.Used != c.Used) {
					t.Errorf("gpu --json: GPU %d: %s holds %d of budget %d, the card %d in use", i, runs, a.Used, a.Budget, c.Used)
				}
			}
			if want := []string{"architect", runs}; !slices.Equal(names, want) {
				t.Errorf("gpu --json: GPU %d lists %v, want %v", i, names, want)
			}
		}
		code, body := g.get("/metrics", "")
		if code != http.StatusOK {
			t.Fatalf("/metrics: %d", code)
		}
		for _, series := range []string{`vagent_gpu_vram_bytes{agent="po",gpu="0"} `, `vagent_gpu_vram_bytes{agent="dev",gpu="1"} `,
			`vagent_gpu_budget_bytes{agent="architect",gpu="1"} `, `vagent_gpu_total_bytes{gpu="1"} `} {
			found := false
			for _, line := range strings.Split(string(body), "\n") {
				if v, ok := strings.CutPrefix(line, series); ok && v != "0" {
					found = true
				}
			}
			if !found {
				t.Errorf("/metrics has no non-zero %s", series)
			}
		}
	})

	t.Run("architect with tensor_parallel_size 2 evicts both and splits across the cards", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		defer cancel()
		resp, body, err := g.post(ctx, "/v1/chat/completions", "", chatBody("architect", 8, false))
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("architect: %v %s", err, body)
		}
		st := g.cardStatus(t)
		if s := st["architect"]; s.ActiveState != "active" || !s.Healthy {
			t.Fatalf("architect is %s", s.ActiveState)
		}
		for _, a := range []string{"po", "dev"} {
			if s := st[a]; s.ActiveState == "active" {
				t.Errorf("%s still runs beside architect", a)
			}
		}
		j := g.gatewayJournal()
		for _, a := range []string{"po", "dev"} {
			if !strings.Contains(j, fmt.Sprintf(`msg="evicting agent" agent=%s for=architect`, a)) {
				t.Errorf("vagentd did not log evicting %s for architect", a)
			}
		}
		lst, err := g.ledger().Read()
		if err != nil {
			t.Fatal(err)
		}
		byCard := map[int]ledger.Entry{}
		for _, e := range lst.Entries {
			if e.Unit == "vagent@architect.service" {
				if _, dup := byCard[e.GPU]; dup {
					t.Errorf("two entries of architect on GPU %d", e.GPU)
				}
				byCard[e.GPU] = e
			}
		}
		e0, ok0 := byCard[0]
		e1, ok1 := byCard[1]
		if !ok0 || !ok1 || len(byCard) != 2 {
			t.Fatalf("architect's ledger entries by card: %+v, want one on each of GPU 0 and 1", byCard)
		}
		if e0.Bytes == 0 || e0.Bytes != e1.Bytes {
			t.Errorf("architect holds %d on GPU 0 and %d on GPU 1: want the same share on each", e0.Bytes, e1.Bytes)
		}
		if e0.PID == e1.PID || e0.PID == st["architect"].MainPID || e1.PID == st["architect"].MainPID {
			t.Errorf("architect's cards are held by PIDs %d and %d (main PID %d): want a worker per rank", e0.PID, e1.PID, st["architect"].MainPID)
		}
		a := st["architect"]
		if a.VRAMBytes != e0.Bytes+e1.Bytes || len(a.Cards) != 2 ||
			a.Cards[0].VRAM != e0.Bytes || a.Cards[1].VRAM != e1.Bytes {
			t.Errorf("status: architect vram %d, cards %+v; ledger %d + %d", a.VRAMBytes, a.Cards, e0.Bytes, e1.Bytes)
		}
		for _, c := range a.Cards {
			if c.VRAM > c.Budget || c.Budget > c.Total {
				t.Errorf("architect on GPU %d: holds %d, budget %d, card %d", c.GPU, c.VRAM, c.Budget, c.Total)
			}
		}
	})

	t.Run("a storm over the three agents keeps every card within its memory", func(t *testing.T) {
		const clients = 12
		duration := 20 * time.Second
		bound := 70 * time.Second
		deadline := time.Now().Add(duration)
		agents := []string{"po", "dev", "architect"}
		var mu sync.Mutex
		byStatus := map[int]int{}
		servedBy := map[string]int{}
		var bad []string
		var wg sync.WaitGroup
		for range clients {
			wg.Go(func() {
				for time.Now().Before(deadline) {
					a := agents[rand.IntN(len(agents))]
					ctx, cancel := context.WithTimeout(t.Context(), bound)
					t0 := time.Now()
					resp, body, err := g.post(ctx, "/v1/chat/completions", "", chatBody(a, 4, false))
					cancel()
					mu.Lock()
					switch {
					case err != nil:
						bad = append(bad, fmt.Sprintf("%s: %v", a, err))
					default:
						byStatus[resp.StatusCode]++
						if resp.StatusCode == http.StatusOK {
							servedBy[a]++
						}
						if msg := checkStormAnswer(resp, body); msg != "" {
							bad = append(bad, fmt.Sprintf("%s after %s: %s", a, time.Since(t0).Round(time.Millisecond), msg))
						}
					}
					mu.Unlock()
					if err == nil && resp.StatusCode != http.StatusOK {
						time.Sleep(100 * time.Millisecond)
					}
				}
			})
		}
		wg.Wait()
		fmt.Printf("multi-GPU storm: %d clients for %s: answers by status %v, served per agent %v, failed %d\n",
			clients, duration, byStatus, servedBy, len(bad))
		for i, b := range bad {
			if i == 10 {
				t.Errorf("... and %d more", len(bad)-10)
				break
			}
			t.Errorf("request: %s", b)
		}
		for _, a := range agents {
			if servedBy[a] == 0 {
				t.Errorf("no request for %s was served", a)
			}
		}
	})

	cs := finish()
	cards := make([]int, 0, len(cs.peak))
	for c := range cs.peak {
		cards = append(cards, c)
	}
	sort.Ints(cards)
	if len(cards) != 2 || cs.total == 0 {
		t.Fatalf("ledger sampled cards %v of %d bytes, want 2", cards, cs.total)
	}
	for _, c := range cards {
		fmt.Printf("multi-GPU: GPU %d peak %.2f GiB of %.2f GiB, most engines loading at once %d\n",
			c, float64(cs.peak[c])/(1<<30), float64(cs.total)/(1<<30), cs.maxLoading[c])
		// vagent plans within the card less gpu.reserve_mib (256 MiB in
		// the shipped vagent.toml).
		if usable := cs.total - 256<<20; cs.peak[c] > usable {
			t.Errorf("GPU %d held %d bytes at its peak, more than the %d vagent may use of it", c, cs.peak[c], usable)
		}
		if cs.maxLoading[c] > 1 {
			t.Errorf("%d engines were loading on GPU %d at once (%s)", cs.maxLoading[c], c, cs.loadingAt[c])
		}
	}
	if cs.together == "" {
		t.Error("the ledger never showed engines loading on both cards at once")
	}
	starts, overlap, _ := startsPerCard(g.gatewayJournal(), multiGPUCards)
	if overlap != "" {
		t.Errorf("starts overlapped on one card: %s", overlap)
	}
	fmt.Printf("multi-GPU: %d engine starts, none overlapping on a card; loading on both cards at once: %s\n", starts, cs.together)
}
