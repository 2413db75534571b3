package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// streamEvents is a stream through the gateway as its client read it.
type streamEvents struct {
	status int
	events []string // the data payloads, [DONE] included
	err    error    // the read failed (a bare end of stream shows as no [DONE])
}

// errorEvent is the OpenAI-shaped error event in evs, if any.
func (s streamEvents) errorEvent() (code int, msg string, ok bool) {
	for _, ev := range s.events {
		var e struct {
			Error *struct {
				Message string `json:"message"`
				Code    int    `json:"code"`
			} `json:"error"`
		}
		if json.Unmarshal([]byte(ev), &e) == nil && e.Error != nil {
			return e.Error.Code, e.Error.Message, true
		}
	}
	return 0, "", false
}

// finishReasons are the finish reasons the stream's chunks carried.
func (s streamEvents) finishReasons() []string {
	var out []string
	for _, ev := range s.events {
		var c struct {
			Choices []struct {
				FinishReason *string `json:"finish_reason"`
			} `json:"choices"`
		}
		if json.Unmarshal([]byte(ev), &c) != nil {
			continue
		}
		for _, ch := range c.Choices {
			if ch.FinishReason != nil {
				out = append(out, *ch.FinishReason)
			}
		}
	}
	return out
}

// startStream sends a streamed chat request for agent through the gateway;
// first is closed once the first event arrived, and the result comes on
// the returned channel when the stream ends. With ignoreEOS the engine
// generates all maxTokens (vLLM's ignore_eos), so that the stream outlasts
// a cut on a loaded host; without, it ends at its natural length.
func (g *gwHost) startStream(ctx context.Context, agent string, maxTokens int, ignoreEOS bool) (first <-chan struct{}, done <-chan streamEvents) {
	f := make(chan struct{})
	d := make(chan streamEvents, 1)
	go func() {
		var res streamEvents
		defer func() { d <- res }()
		body := chatBody(agent, maxTokens, true)
		if ignoreEOS {
			body["ignore_eos"] = true
		}
		b, _ := json.Marshal(body)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, g.base+"/v1/chat/completions", strings.NewReader(string(b)))
		req.Header.Set("Content-Type", "application/json")
		resp, err := g.hc.Do(req)
		if err != nil {
			res.err = err
			close(f)
			return
		}
		defer resp.Body.Close()
		res.status = resp.StatusCode
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		closed := false
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			res.events = append(res.events, data)
			if !closed {
				close(f)
				closed = true
			}
		}
		if !closed {
			close(f)
		}
		res.err = sc.Err()
	}()
	return f, d
}

// checkCut asserts that a stream cut under its client ended as an explicit
// error: an error event with code, then [DONE]; and no chunk that finished
// as if the answer were whole, nor the engine's abort.
func checkCut(t *testing.T, what string, s streamEvents, codes ...int) {
	t.Helper()
	if s.err != nil || s.status != http.StatusOK {
		t.Fatalf("%s: status %d, err %v", what, s.status, s.err)
	}
	if len(s.events) < 3 || s.events[len(s.events)-1] != "[DONE]" {
		t.Fatalf("%s: events %q; want chunks, an error event and [DONE]", what, s.events)
	}
	code, msg, ok := s.errorEvent()
	if !ok {
		t.Fatalf("%s: no error event in %q", what, s.events)
	}
	found := false
	for _, c := range codes {
		found = found || c == code
	}
	if !found {
		t.Errorf("%s: error event code %d (%s), want one of %v", what, code, msg, codes)
	}
	if fr := s.finishReasons(); len(fr) > 0 {
		t.Errorf("%s: chunks finished with %v: a cut stream must not look finished", what, fr)
	}
}

// TestE2ESleepNeverMeetsASleepingEngine runs sleep agents against the
// simulator of vLLM 0.12 and of 0.18, whose sleeps treat requests
// differently (0.18 aborts what runs and queues new requests until the
// wake; 0.12 stops nothing), as they do a stop: a request for a sleeping
// agent is served after its wake; a stream cut by a sleep switch, or by a
// stop of 0.18, ends as an explicit error (0.12 finishes it whole);
// sleepers are counted with the residual the GPU shows, and the ledger is
// never exceeded.
func TestE2ESleepNeverMeetsASleepingEngine(t *testing.T) {
	t.Parallel()
	for _, version := range []string{"0.12.0", "0.18.0"} {
		t.Run("vllm "+version, func(t *testing.T) {
			t.Parallel()
			g := newGatewayHost(t, map[string]any{
				"engine.vllm_version":            version,
				"gateway.fairness_window":        "0s",
				"gateway.drain_timeout":          "1s",
				"gateway.max_wait":               "60s",
				"supervisor.switch_mode":         "sleep",
				"supervisor.host_ram_budget_mib": sleepBudgetMiB,
			})
			// dev streams slowly, so that its streams are still running
			// when they are cut.
			if err := g.s.EditConfig("agents/dev.toml", map[string]any{"env.VLLM_SIM_TOKENS_PER_SECOND": "10"}); err != nil {
				t.Fatal(err)
			}
			g.mustCtl("apply")
			stop := make(chan struct{})
			gpuPeak, gpuTotal, _ := g.ledgerPeaks(stop)
			chat := func(t *testing.T, agent string) {
				t.Helper()
				ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
				defer cancel()
				resp, body, err := g.post(ctx, "/v1/chat/completions", "", chatBody(agent, 4, false))
				if err != nil {
					t.Fatalf("chat %s: %v", agent, err)
				}
				if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"finish_reason":"length"`) {
					t.Fatalf("chat %s: %d %s; want a whole answer of 4 tokens", agent, resp.StatusCode, body)
				}
			}

			t.Run("a request for a sleeping agent is served after its wake", func(t *testing.T) {
				chat(t, "dev")
				pid := g.status()["dev"].MainPID
				chat(t, "po")
				if st := g.status()["dev"]; !st.Sleeping {
					t.Fatalf("dev after the switch to po: %+v; want it asleep", st)
				}
				chat(t, "dev")
				st := g.status()
				if st["dev"].Sleeping || st["dev"].MainPID != pid || !st["po"].Sleeping {
					t.Errorf("after the request for dev: dev %+v (PID was %d), po %+v; want dev woken, po asleep", st["dev"], pid, st["po"])
				}
			})

			t.Run("sleepers count the residual the GPU shows", func(t *testing.T) {
				// dev runs; the switch to po puts it to sleep.
				out := g.mustCtl("switch", "po", "--json")
				var res struct {
					Slept []struct {
						Agent         string `json:"agent"`
						ResidualBytes uint64 `json:"residual_bytes"`
					} `json:"slept"`
				}
				if err := json.Unmarshal([]byte(out), &res); err != nil {
					t.Fatalf("switch --json: %v\n%s", err, out)
				}
				if len(res.Slept) != 1 || res.Slept[0].Agent != "dev" {
					t.Fatalf("switch to po: %s; want dev put to sleep", out)
				}
				st, err := g.ledger().Read()
				if err != nil {
					t.Fatal(err)
				}
				var held uint64
				for _, e := range st.Entries {
					if strings.Contains(e.Unit, "vagent@dev.service") {
						held += e.Bytes
					}
				}
				if held == 0 || res.Slept[0].ResidualBytes != held {
					t.Errorf("dev's residual: %d in the switch's result, %d in the ledger; want the ledger's figure", res.Slept[0].ResidualBytes, held)
				}
				if vram := g.status()["dev"].VRAMBytes; vram != held {
					t.Errorf("status counts %d for sleeping dev, the ledger %d", vram, held)
				}
			})

			t.Run("a stream cut by a sleep switch is an explicit error", func(t *testing.T) {
				chat(t, "dev")
				first, done := g.startStream(t.Context(), "dev", 400, true)
				<-first
				chat(t, "po") // drains dev for drain_timeout, cuts the stream, puts dev to sleep
				s := <-done
				checkCut(t, "stream on dev", s, http.StatusServiceUnavailable)
				if _, msg, _ := s.errorEvent(); !strings.Contains(msg, "drain_timeout") {
					t.Errorf("error event %q; want the drain's", msg)
				}
				if st := g.status()["dev"]; !st.Sleeping {
					t.Errorf("dev: %+v; want it asleep", st)
				}
			})

			// Behind vagent's back, systemd stops the engine (SIGTERM):
			// 0.18 aborts what runs; 0.12 stops uvicorn, which lets
			// requests in flight finish.
			name := "a stream cut by a stop is an explicit error"
			if version == "0.12.0" {
				name = "a stream in flight at a stop is finished whole"
			}
			t.Run(name, func(t *testing.T) {
				chat(t, "dev")
				// 0.12 lets the stream end at its natural length first.
				first, done := g.startStream(t.Context(), "dev", 400, version != "0.12.0")
				<-first
				if _, err := g.s.Systemctl(t.Context(), "stop", "vagent@dev.service"); err != nil {
					t.Fatal(err)
				}
				s := <-done
				if version == "0.12.0" {
					_, msg, isErr := s.errorEvent()
					fr := s.finishReasons()
					if isErr || len(fr) != 1 || (fr[0] != "stop" && fr[0] != "length") || s.events[len(s.events)-1] != "[DONE]" {
						t.Fatalf("stream on dev: finish reasons %v, error %q; want a whole answer", fr, msg)
					}
				} else {
					checkCut(t, "stream on dev", s, http.StatusServiceUnavailable)
					if _, msg, _ := s.errorEvent(); !strings.Contains(msg, "abort") {
						t.Errorf("error event %q; want it to say the engine aborted the request", msg)
					}
				}
				chat(t, "dev") // started again
			})

			close(stop)
			if gpuPeak() == 0 || gpuPeak() > gpuTotal() {
				t.Errorf("ledger GPU peak %d, GPU total %d", gpuPeak(), gpuTotal())
			}
		})
	}
}
