package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v3"

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
			agent, err := oneAgent(cmd)
			if err != nil {
				return err
			}
			h, err := connect(ctx, cmd)
			if err != nil {
				return err
			}
			defer h.Close()
			if err := agentErr(h.cfg, agent); err != nil {
				return err
			}
			var res *supervisor.Result
			switch name {
			case "start":
				res, err = h.sup.Start(ctx, agent)
			case "switch":
				res, err = h.sup.Switch(ctx, agent)
			case "restart":
				res, err = h.sup.Restart(ctx, agent)
			}
			if err != nil {
				return err
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
		if len(res.Evicted) > 0 {
			msg += fmt.Sprintf(" (stopped %s)", strings.Join(res.Evicted, ", "))
		}
		fmt.Fprintln(out, msg)
	}
	return nil
}

func stopCmd() *cli.Command {
	return &cli.Command{
		Name: "stop", Usage: "stop an agent and wait until the GPU shows its memory back", ArgsUsage: "AGENT",
		OnUsageError: subUsageError,
		Action: func(ctx context.Context, cmd *cli.Command) error {
			agent, err := oneAgent(cmd)
			if err != nil {
				return err
			}
			h, err := connect(ctx, cmd)
			if err != nil {
				return err
			}
			defer h.Close()
			if err := agentErr(h.cfg, agent); err != nil {
				return err
			}
			t0 := time.Now()
			if err := h.sup.Stop(ctx, agent); err != nil {
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
			if err := noArgs(cmd); err != nil {
				return err
			}
			h, err := connect(ctx, cmd)
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
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "AGENT\tSTATE\tPID\tSINCE\tRESTARTS\tRESULT\tPORT\tHEALTH\tVRAM")
	for _, s := range st {
		pid, since, health, vram := "-", "-", "-", "-"
		if s.MainPID > 0 {
			pid = fmt.Sprint(s.MainPID)
		}
		if !s.Since.IsZero() {
			since = now.Sub(s.Since).Round(time.Second).String() + " ago"
		}
		if s.ActiveState == "active" || s.ActiveState == "activating" {
			health = "starting"
			if s.Healthy {
				health = "ok"
			}
		}
		if s.VRAMBytes > 0 {
			vram = gpu.FormatBytes(s.VRAMBytes)
		}
		state := s.ActiveState + " (" + s.SubState + ")"
		if s.LoadState != "loaded" {
			state = s.LoadState
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%d\t%s\t%s\n",
			s.Agent, state, pid, since, s.Restarts, s.Result, s.Port, health, vram)
	}
	tw.Flush()
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
