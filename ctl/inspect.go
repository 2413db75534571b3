package ctl

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/engine"
	"github.com/vagent-dev/vagent/gpu"
	"github.com/vagent-dev/vagent/internal/enginekey"
	"github.com/vagent-dev/vagent/journal"
)

func logsCmd() *cli.Command {
	return &cli.Command{
		Name: "logs", Usage: "show an agent's engine log from journald", ArgsUsage: "AGENT",
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "lines", Aliases: []string{"n"}, Value: 50, Usage: "how many recent lines"},
			&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "keep printing new lines"},
		},
		OnUsageError: subUsageError,
		Action: func(ctx context.Context, cmd *cli.Command) error {
			_, agent, err := agentArg(cmd)
			if err != nil {
				return err
			}
			n := int(cmd.Int("lines"))
			if n < 0 {
				return usagef("--lines must not be negative")
			}
			out := cmd.Root().Writer
			unit := config.UnitName(agent)
			if cmd.Bool("follow") {
				return journal.Follow(ctx, unit, n, func(e journal.Entry) { printEntry(out, e) })
			}
			entries, err := journal.Read(ctx, unit, journal.Options{Lines: n})
			if err != nil {
				return err
			}
			for _, e := range entries {
				printEntry(out, e)
			}
			return nil
		},
	}
}

func printEntry(w io.Writer, e journal.Entry) {
	id := e.Identifier
	if e.PID > 0 {
		id = fmt.Sprintf("%s[%d]", id, e.PID)
	}
	fmt.Fprintf(w, "%s %s: %s\n", e.Time.Local().Format("Jan 02 15:04:05"), id, e.Message)
}

// gpuOpen opens the GPU backend for vagentctl gpu; tests replace it.
var gpuOpen = gpu.Open

func gpuCmd() *cli.Command {
	return &cli.Command{
		Name: "gpu", Usage: "show the driver, each GPU's memory and which agent holds it",
		Flags:        []cli.Flag{jsonFlag},
		OnUsageError: subUsageError,
		Action: func(ctx context.Context, cmd *cli.Command) error {
			cfg, err := configNoArgs(cmd)
			if err != nil {
				return err
			}
			b, err := gpuOpen(cfg)
			if err != nil {
				return err
			}
			defer b.Close()
			info, err := b.Info(ctx)
			if err != nil {
				return err
			}
			procs, err := b.Processes(ctx)
			if err != nil {
				return err
			}
			cards := gpuCards(cfg, info, procs)
			out := cmd.Root().Writer
			if cmd.Bool("json") {
				return writeJSON(out, struct {
					gpu.Info
					Processes []gpu.Process `json:"processes"`
					Cards     []gpuCard     `json:"cards"`
				}{info, procs, cards})
			}
			fmt.Fprintf(out, "backend %s, driver %s, CUDA %s\n", info.Backend, info.Driver, info.CUDA)
			tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "GPU\tNAME\tCC\tTOTAL\tUSED\tFREE\tUTIL\tTEMP\tPOWER")
			for _, d := range info.Devices {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%d%%\t%dC\t%.0fW\n", d.Index, d.Name, d.ComputeCapability(),
					gpu.FormatBytes(d.TotalBytes), gpu.FormatBytes(d.UsedBytes), gpu.FormatBytes(d.FreeBytes),
					d.UtilizationPercent, d.TemperatureC, d.PowerWatts)
			}
			tw.Flush()
			if len(procs) > 0 {
				fmt.Fprintln(out)
				tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "GPU\tPID\tAGENT\tUSED")
				for _, p := range procs {
					agent := p.Agent
					if agent == "" {
						agent = "(not vagent)"
					}
					fmt.Fprintf(tw, "%d\t%d\t%s\t%s\n", p.GPU, p.PID, agent, gpu.FormatBytes(p.UsedBytes))
				}
				tw.Flush()
			}
			fmt.Fprintln(out)
			tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "GPU\tUSABLE\tAGENTS")
			for _, c := range cards {
				var agents []string
				for _, a := range c.Agents {
					s := fmt.Sprintf("%s (budget %s", a.Agent, gpu.FormatBytes(a.BudgetBytes))
					if a.UsedBytes > 0 {
						s += ", holds " + gpu.FormatBytes(a.UsedBytes)
					}
					agents = append(agents, s+")")
				}
				list := strings.Join(agents, ", ")
				if list == "" {
					list = "-"
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\n", c.Index, gpu.FormatBytes(c.UsableBytes), list)
			}
			tw.Flush()
			return nil
		},
	}
}

// gpuCard is one GPU as vagent plans it: what it may use of it (its
// memory less gpu.reserve_mib) and the agents configured on it, each with
// its budget of this card and what its processes hold here now.
type gpuCard struct {
	Index       int            `json:"index"`
	TotalBytes  uint64         `json:"total_bytes"`
	UsedBytes   uint64         `json:"used_bytes"`
	UsableBytes uint64         `json:"usable_bytes"`
	Agents      []gpuCardAgent `json:"agents"`
}

// gpuCardAgent is one agent's part of a card.
type gpuCardAgent struct {
	Agent       string `json:"agent"`
	BudgetBytes uint64 `json:"budget_bytes"`
	UsedBytes   uint64 `json:"used_bytes"`
}

// gpuCards lays the configured agents over the host's devices: per card,
// each agent whose gpus name it, with its budget of that card (a
// tensor-parallel agent's is per card) and what it holds there.
func gpuCards(cfg *config.Config, info gpu.Info, procs []gpu.Process) []gpuCard {
	reserve := cfg.GPU.ReserveMiB << 20
	cards := make([]gpuCard, 0, len(info.Devices))
	for _, d := range info.Devices {
		c := gpuCard{Index: d.Index, TotalBytes: d.TotalBytes, UsedBytes: d.UsedBytes, Agents: []gpuCardAgent{}}
		if d.TotalBytes > reserve {
			c.UsableBytes = d.TotalBytes - reserve
		}
		held := gpu.HeldByAgent(procs, d.Index)
		for _, a := range cfg.Agents {
			if slices.Contains(a.GPUs, d.Index) {
				c.Agents = append(c.Agents, gpuCardAgent{Agent: a.Name, BudgetBytes: a.Budget(d.TotalBytes, 0), UsedBytes: held[a.Name]})
			}
		}
		cards = append(cards, c)
	}
	return cards
}

func testCmd() *cli.Command {
	return &cli.Command{
		Name: "test", Usage: "send one streamed chat completion to a running agent; print time to first token and tokens/s", ArgsUsage: "AGENT",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "prompt", Value: "Say hello in one short sentence.", Usage: "the user message"},
			&cli.IntFlag{Name: "max-tokens", Value: 64, Usage: "most tokens to generate"},
			&cli.DurationFlag{Name: "timeout", Value: 2 * time.Minute, Usage: "give up after this long"},
			jsonFlag,
		},
		OnUsageError: subUsageError,
		Action: func(ctx context.Context, cmd *cli.Command) error {
			cfg, name, err := agentArg(cmd)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(ctx, cmd.Duration("timeout"))
			defer cancel()
			r, err := chatOnce(ctx, cfg, cfg.Agent(name), cmd.String("prompt"), int(cmd.Int("max-tokens")))
			if err != nil {
				return err
			}
			out := cmd.Root().Writer
			if cmd.Bool("json") {
				return writeJSON(out, r)
			}
			fmt.Fprintf(out, "%s\n\n%s: %d tokens, time to first token %s, %.1f tokens/s\n",
				strings.TrimSpace(r.Text), name, r.Tokens, time.Duration(r.TTFTMillis*float64(time.Millisecond)).Round(time.Millisecond), r.TokensPerSecond)
			return nil
		},
	}
}

type chatResult struct {
	Agent           string  `json:"agent"`
	Text            string  `json:"text"`
	Tokens          int     `json:"tokens"`
	TTFTMillis      float64 `json:"ttft_ms"`
	TokensPerSecond float64 `json:"tokens_per_second"`
}

// chatOnce streams one chat completion straight from the agent's engine,
// with the engine key, so that it tests the engine and nothing in front of it.
func chatOnce(ctx context.Context, cfg *config.Config, a *config.Agent, prompt string, maxTokens int) (*chatResult, error) {
	body, _ := json.Marshal(map[string]any{
		"model":          a.ServedName(),
		"messages":       []map[string]string{{"role": "user", "content": prompt}},
		"max_tokens":     maxTokens,
		"stream":         true,
		"stream_options": map[string]bool{"include_usage": true},
	})
	ep := engine.Of(cfg).Endpoint(cfg, a)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ep.URL("/v1/chat/completions"), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if key, err := enginekey.Read(cfg.EngineKeyFile()); err == nil {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	t0 := time.Now()
	resp, err := (&http.Client{Transport: ep.Transport()}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("agent %s is not answering on %s (start it with vagentctl switch %s): %w", a.Name, ep, a.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("agent %s answered %s: %s", a.Name, resp.Status, strings.TrimSpace(string(msg)))
	}
	r := &chatResult{Agent: a.Name}
	var first, last time.Time
	var text strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	done := false
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			done = true
			break
		}
		var chunk struct {
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
			Usage *struct {
				CompletionTokens int `json:"completion_tokens"`
			} `json:"usage"`
			Error *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal([]byte(data), &chunk); err != nil {
			return nil, fmt.Errorf("agent %s sent a malformed event: %w", a.Name, err)
		}
		if chunk.Error != nil {
			return nil, fmt.Errorf("agent %s: %s", a.Name, chunk.Error.Message)
		}
		for _, c := range chunk.Choices {
			if c.Delta.Content == "" {
				continue
			}
			if first.IsZero() {
				first = time.Now()
			}
			last = time.Now()
			text.WriteString(c.Delta.Content)
			r.Tokens++
		}
		if chunk.Usage != nil {
			r.Tokens = chunk.Usage.CompletionTokens
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("agent %s: stream broke: %w", a.Name, err)
	}
	if !done {
		return nil, fmt.Errorf("agent %s: stream ended without [DONE]", a.Name)
	}
	r.Text = text.String()
	if !first.IsZero() {
		r.TTFTMillis = float64(first.Sub(t0)) / float64(time.Millisecond)
		if gen := last.Sub(first); gen > 0 && r.Tokens > 1 {
			r.TokensPerSecond = float64(r.Tokens-1) / gen.Seconds()
		}
	}
	return r, nil
}
