package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/packages/ssestream"
)

// TestE2ERestart drives vagentd through the ends a start or a stream can
// meet: an engine killed while it loads, and a planned restart of vagentd
// with a stream in flight. The steps share one host and run in order.
func TestE2ERestart(t *testing.T) {
	t.Parallel()
	g := newGatewayHost(t, map[string]any{
		"gateway.max_wait": "120s",
	})
	// po loads for a minute: long enough to be killed while it does.
	if err := g.s.EditConfig("agents/po.toml", map[string]any{"env.VLLM_SIM_LOAD_SECONDS": "60"}); err != nil {
		t.Fatal(err)
	}
	g.mustCtl("apply")

	t.Run("engine killed during load: the client's error names the signal", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
		defer cancel()
		type result struct {
			status int
			body   []byte
			err    error
		}
		done := make(chan result, 1)
		go func() {
			resp, body, err := g.post(ctx, "/v1/chat/completions", "", chatBody("po", 4, false))
			r := result{body: body, err: err}
			if resp != nil {
				r.status = resp.StatusCode
			}
			done <- r
		}()
		waitJournal(ctx, t, g.s, "vagent@po.service", "Loading safetensors checkpoint shards")
		pid := g.status()["po"].MainPID
		if pid == 0 {
			t.Fatal("po has no main PID while it loads")
		}
		if _, errOut, code, err := g.s.Exec(ctx, "kill", "-9", strconv.Itoa(pid)); err != nil || code != 0 {
			t.Fatalf("kill -9 %d: %v %s", pid, err, errOut)
		}
		r := <-done
		if r.err != nil {
			t.Fatalf("request to po: %v", r.err)
		}
		msg := string(r.body)
		if r.status < 500 || !strings.Contains(msg, "agent po failed to start: the engine was killed by SIGKILL during load") {
			t.Fatalf("request to po after its engine was killed while loading: %d %s", r.status, msg)
		}
		if strings.Contains(msg, "Loading safetensors") {
			t.Errorf("the error quotes a progress bar: %s", msg)
		}
		checkErrorShape(t, r.body)
		t.Logf("client saw %d %s", r.status, msg)
	})

	t.Run("streams that delivered [DONE] count as 200, whatever the client does next", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
		defer cancel()
		counted := func(status string) float64 {
			code, body := g.get("/metrics", "")
			if code != http.StatusOK {
				t.Fatalf("/metrics: %d", code)
			}
			var sum float64
			for _, line := range strings.Split(string(body), "\n") {
				if strings.HasPrefix(line, "vagent_requests_total{") && strings.Contains(line, `status="`+status+`"`) {
					f := strings.Fields(line)
					v, _ := strconv.ParseFloat(f[len(f)-1], 64)
					sum += v
				}
			}
			return sum
		}
		ok0, gone0 := counted("200"), counted("499")
		// Each client hangs up the moment it has read [DONE], as scripts do.
		const n = 300
		hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		body, _ := json.Marshal(chatBody("dev", 4, true))
		for i := range n {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, g.base+"/v1/chat/completions", bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatalf("stream %d: %v", i, err)
			}
			br := bufio.NewReader(resp.Body)
			for {
				line, err := br.ReadString('\n')
				if line == "data: [DONE]\n" {
					break
				}
				if err != nil {
					t.Fatalf("stream %d ended before [DONE]: %v", i, err)
				}
			}
			resp.Body.Close()
		}
		eventually(t, 10*time.Second, "every stream counted", func() bool {
			return counted("200")-ok0+counted("499")-gone0 >= n
		})
		ok, gone := counted("200")-ok0, counted("499")-gone0
		t.Logf("%d streams read to [DONE] and closed: %v counted 200, %v counted 499", n, ok, gone)
		if ok != n || gone != 0 {
			t.Errorf("%d streams delivered [DONE]: vagent_requests_total counts %v as 200 and %v as 499; want all 200", n, ok, gone)
		}
	})

	// restartDuring streams tokens from dev and runs `systemctl restart
	// vagentd` once the first chunks have arrived; it returns the content
	// chunks, the last finish reason and the stream's error, after the
	// restart has completed and the new vagentd serves.
	restartDuring := func(t *testing.T, tokens int64) (chunks int, finish string, err error) {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		defer cancel()
		c := g.sdk("")
		stream := c.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
			Model:     "dev",
			Messages:  []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Write a long story.")},
			MaxTokens: openai.Int(tokens),
			// Past the answer's natural end: the stream must outlast the
			// restart's start.
		}, option.WithJSONSet("ignore_eos", true))
		var restarted chan error
		for stream.Next() {
			ch := stream.Current()
			if len(ch.Choices) > 0 {
				if ch.Choices[0].Delta.Content != "" {
					chunks++
				}
				if ch.Choices[0].FinishReason != "" {
					finish = ch.Choices[0].FinishReason
				}
			}
			if chunks == 5 && restarted == nil {
				restarted = make(chan error, 1)
				go func() {
					_, err := g.s.Systemctl(ctx, "restart", gatewayUnit)
					restarted <- err
				}()
			}
		}
		err = stream.Err()
		if restarted == nil {
			t.Fatalf("the stream ended after %d chunks, before the restart: %v", chunks, err)
		}
		if rerr := <-restarted; rerr != nil {
			t.Fatalf("systemctl restart vagentd: %v", rerr)
		}
		g.waitHealthy(10 * time.Second)
		return chunks, finish, err
	}

	t.Run("systemctl restart vagentd: a stream in flight completes", func(t *testing.T) {
		const tokens = 300
		chunks, finish, err := restartDuring(t, tokens)
		if err != nil {
			t.Fatalf("stream in flight during the restart: %v after %d chunks", err, chunks)
		}
		if chunks != tokens || finish != "length" {
			t.Errorf("stream in flight during the restart: %d of %d chunks, finish_reason %q", chunks, tokens, finish)
		}
		if j := g.gatewayJournal(); !strings.Contains(j, "stopping: agents keep running") || strings.Contains(j, "cutting them with an error") {
			t.Errorf("vagentd's journal does not show a drained stop:\n%s", j)
		}
	})

	t.Run("past gateway.shutdown_timeout the stream ends with an error event", func(t *testing.T) {
		if err := g.s.EditConfig("vagent.toml", map[string]any{"gateway.shutdown_timeout": "1s"}); err != nil {
			t.Fatal(err)
		}
		g.restartGateway()
		chunks, _, err := restartDuring(t, 3000)
		var se *ssestream.StreamError
		if !errors.As(err, &se) || !strings.Contains(se.Message, "did not finish within gateway.shutdown_timeout (1s)") {
			t.Fatalf("stream past the bound: err %v (%T) after %d chunks; want an error event naming gateway.shutdown_timeout", err, err, chunks)
		}
		t.Logf("client saw %q after %d chunks", se.Message, chunks)
	})
}
