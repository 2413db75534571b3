package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/controlapi"
	"github.com/vagent-dev/vagent/gpu"
	"github.com/vagent-dev/vagent/supervisor"
)

var jsonFlag = &cli.BoolFlag{Name: "json", Usage: "print JSON for scripts"}

func lifecycleCmd(name, usage string) *cli.Command {
	return &cli.Command{
		Name: name, Usage: usage, ArgsUsage: "AGENT",
		Flags:        []cli.Flag{jsonFlag},
		OnUsageError: subUsageError,
		Action: func(ctx context.Context, cmd *cli.Command) error {
			cfg, agent, err := agentArg(cmd)
			if err != nil {
				return err
			}
			// Through vagentd when it runs (see daemon.go for what goes where).
			dc, err := controlapi.Reach(ctx, cfg)
			if err != nil {
				return err
			}
			t0 := time.Now()
			if dc != nil && name == "switch" {
				res, err := dc.Switch(ctx, agent)
				if err != nil {
					return err
				}
				return printResult(cmd, name, res)
			}
			if dc != nil && name == "restart" {
				if err := dc.Stop(ctx, agent); err != nil {
					return err
				}
			}
			h, err := connectConfig(ctx, cfg)
			if err != nil {
				return err
			}
			defer h.Close()
			var res *supervisor.Result
			switch {
			case name == "start" || dc != nil:
				res, err = h.sup.Start(ctx, agent)
			case name == "switch":
				res, err = h.sup.Switch(ctx, agent)
			case name == "restart":
				res, err = h.sup.Restart(ctx, agent)
			}
			if err != nil {
				return err
			}
			if name == "restart" {
				res.Duration = time.Since(t0)
			}
			return printResult(cmd, name, res)
		},
	}
}

func printResult(cmd *cli.Command, verb string, res *supervisor.Result) error {
	out := cmd.Root().Writer
	if cmd.Bool("json") {
		return writeJSON(out, res)
	}
	switch {
	case res.AlreadyRunning:
		fmt.Fprintf(out, "%s is already running\n", res.Agent)
	default:
		msg := fmt.Sprintf("%s: %s is healthy after %s", verb, res.Agent, res.Duration.Round(time.Millisecond))
		if res.Woken {
			msg = fmt.Sprintf("%s: %s is awake after %s (woken in %s)", verb, res.Agent,
				res.Duration.Round(time.Millisecond), res.WakeDuration.Round(time.Millisecond))
		}
		var slept []string
		for _, s := range res.Slept {
			slept = append(slept, fmt.Sprintf("%s (level %d)", s.Agent, s.Level))
		}
		if len(slept) > 0 {
			msg += fmt.Sprintf(" (put to sleep %s)", strings.Join(slept, ", "))
		}
		if len(res.Evicted) > 0 {
			msg += fmt.Sprintf(" (stopped %s)", strings.Join(res.Evicted, ", "))
		}
		fmt.Fprintln(out, msg)
		if res.WakeError != "" {
			fmt.Fprintf(out, "the wake failed, so %s was restarted cold: %s\n", res.Agent, res.WakeError)
		}
	}
	return nil
}

func stopCmd() *cli.Command {
	return &cli.Command{
		Name: "stop", Usage: "stop an agent and wait until the GPU shows its memory back", ArgsUsage: "AGENT",
		OnUsageError: subUsageError,
		Action: func(ctx context.Context, cmd *cli.Command) error {
			cfg, agent, err := agentArg(cmd)
			if err != nil {
				return err
			}
			dc, err := controlapi.Reach(ctx, cfg)
			if err != nil {
				return err
			}
			t0 := time.Now()
			if dc != nil {
				err = dc.Stop(ctx, agent)
			} else {
				var h *host
				if h, err = connectConfig(ctx, cfg); err != nil {
					return err
				}
				defer h.Close()
				err = h.sup.Stop(ctx, agent)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.Root().Writer, "stop: %s stopped after %s\n", agent, time.Since(t0).Round(time.Millisecond))
			return nil
		},
	}
}

func statusCmd() *cli.Command {
	return &cli.Command{
		Name: "status", Usage: "show every agent as systemd and the GPU see it now",
		Flags:        []cli.Flag{jsonFlag},
		OnUsageError: subUsageError,
		Action: func(ctx context.Context, cmd *cli.Command) error {
			cfg, err := configNoArgs(cmd)
			if err != nil {
				return err
			}
			dc, err := controlapi.Reach(ctx, cfg)
			if err != nil {
				return err
			}
			if dc != nil {
				ds, raw, err := dc.Status(ctx)
				if err != nil {
					return err
				}
				if cmd.Bool("json") {
					var b bytes.Buffer
					if err := json.Indent(&b, raw, "", "  "); err != nil {
						return err
					}
					b.WriteByte('\n')
					_, err := b.WriteTo(cmd.Root().Writer)
					return err
				}
				st := make([]supervisor.AgentStatus, len(ds))
				for i, d := range ds {
					st[i] = d.AgentStatus
				}
				printStatusWith(cmd.Root().Writer, st, ds, time.Now())
				return nil
			}
			h, err := connectConfig(ctx, cfg)
			if err != nil {
				return err
			}
			defer h.Close()
			st, err := h.sup.Status(ctx)
			if err != nil {
				return err
			}
			if cmd.Bool("json") {
				return writeJSON(cmd.Root().Writer, st)
			}
			printStatus(cmd.Root().Writer, st, time.Now())
			return nil
		},
	}
}

func printStatus(w io.Writer, st []supervisor.AgentStatus, now time.Time) {
	printStatusWith(w, st, nil, now)
}

// printStatusWith prints the status table; with vagentd's view (gw, one
// per agent of st) it adds the gateway's columns: its state of the agent
// (STATE is systemd's), requests in flight and requests queued.
func printStatusWith(w io.Writer, st []supervisor.AgentStatus, gw []controlapi.AgentState, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	var failed []string // why, for agents vagentd reports failed
	header := "AGENT\tSTATE\tPID\tSINCE\tRESTARTS\tRESULT\tPORT\tHEALTH\tVRAM"
	if gw != nil {
		header += "\tGATEWAY\tIN-FLIGHT\tQUEUED"
	}
	fmt.Fprintln(tw, header)
	for i, s := range st {
		pid, since, health, vram := "-", "-", "-", "-"
		if s.MainPID > 0 {
			pid = fmt.Sprint(s.MainPID)
		}
		if !s.Since.IsZero() {
			since = config.FormatDuration(now.Sub(s.Since).Round(time.Second)) + " ago"
		}
		if s.ActiveState == "active" || s.ActiveState == "activating" {
			health = "starting"
			if s.Healthy {
				health = "ok"
			}
			if s.Sleeping {
				health = "sleeping"
				if s.SleepLevel > 0 {
					health += fmt.Sprintf(" (level %d)", s.SleepLevel)
				}
			}
		}
		if s.VRAMBytes > 0 {
			vram = gpu.FormatBytes(s.VRAMBytes)
		}
		state := s.ActiveState + " (" + s.SubState + ")"
		if s.LoadState != "loaded" {
			state = s.LoadState
		}
		result := s.Result
		if gw != nil && gw[i].State == controlapi.StateFailed {
			if s.ActiveState != "failed" {
				// A failed start whose unit was stopped again: systemd
				// says inactive (dead) success, vagentd knows better.
				state, result = controlapi.StateFailed, "start failed"
			}
			if gw[i].Error != "" {
				failed = append(failed, s.Agent+": "+gw[i].Error)
			}
		}
		if b := s.Backoff; b != nil {
			failed = append(failed, fmt.Sprintf("%s: start backoff: not started again for %s (%d failed start(s) in a row); `vagentctl restart %s` tries now",
				s.Agent, config.FormatDuration(max(0, b.Until.Sub(now)).Round(time.Second)), b.Failures, s.Agent))
		}
		port := "-" // an engine on its unix socket
		if s.Port != 0 {
			port = strconv.Itoa(s.Port)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s",
			s.Agent, state, pid, since, s.Restarts, result, port, health, vram)
		if gw != nil {
			g := gw[i]
			gstate := g.State
			if gstate == "" {
				gstate = "-"
			}
			if g.Pinned {
				gstate += " (pinned)"
			}
			fmt.Fprintf(tw, "\t%s\t%d\t%d", gstate, g.InFlight, g.Queued)
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	printCards(w, st)
	for _, f := range failed {
		fmt.Fprintln(w, f)
	}
}

// printCards prints, on a host whose agents use more than one GPU, one line
// per GPU: its size and each agent on it with its budget of that GPU and
// what it holds there now.
func printCards(w io.Writer, st []supervisor.AgentStatus) {
	type entry struct {
		total uint64
		parts []string
	}
	cards := map[int]*entry{}
	for _, s := range st {
		for _, c := range s.Cards {
			e := cards[c.GPU]
			if e == nil {
				e = &entry{}
				cards[c.GPU] = e
			}
			e.total = c.TotalBytes
			part := fmt.Sprintf("%s (budget %s", s.Agent, gpu.FormatBytes(c.BudgetBytes))
			if c.VRAMBytes > 0 {
				part += ", holds " + gpu.FormatBytes(c.VRAMBytes)
			}
			e.parts = append(e.parts, part+")")
		}
	}
	if len(cards) < 2 {
		return
	}
	idx := slices.Sorted(maps.Keys(cards))
	for _, i := range idx {
		fmt.Fprintf(w, "GPU %d (%s): %s\n", i, gpu.FormatBytes(cards[i].total), strings.Join(cards[i].parts, ", "))
	}
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
