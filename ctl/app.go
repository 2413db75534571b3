// Package ctl is vagentctl: its commands, declared as data, and the wiring
// from flags to the config, units, supervisor, gpu and journal packages.
package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v3"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/supervisor"
)

// Version is set at build time with -ldflags "-X .../ctl.Version=...".
var Version = "dev"

// Exit statuses: 0 success, 1 failure, 2 usage.
const (
	ExitOK      = 0
	ExitFailure = 1
	ExitUsage   = 2
)

// usageError is a command used wrongly: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

// Main runs vagentctl with args (args[0] is the program name) and returns
// the exit status. Errors are printed on stderr as one line per problem plus
// a hint.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	app := App(stdout, stderr)
	err := app.Run(ctx, args)
	if err == nil {
		return ExitOK
	}
	var ue *usageError
	code := ExitFailure
	if errors.As(err, &ue) {
		code = ExitUsage
	}
	fmt.Fprintf(stderr, "vagentctl: %s\n", strings.ReplaceAll(err.Error(), "\n", "\nvagentctl: "))
	if h := hint(err); h != "" {
		fmt.Fprintf(stderr, "hint: %s\n", h)
	}
	return code
}

func hint(err error) string {
	var (
		ce  config.Errors
		se  *supervisor.StartError
		fe  *supervisor.FitError
		ue  *usageError
		ae  *agentError
		dbe *dbusError
	)
	switch {
	case errors.As(err, &ce):
		return "fix the lines above; nothing was changed"
	case errors.As(err, &se):
		return fmt.Sprintf("the engine's full log: vagentctl logs %s -n 50", se.Agent)
	case errors.As(err, &fe):
		return fmt.Sprintf("lower gpu_memory_utilization or max_model_len of %s, or stop what holds the GPU (vagentctl gpu)", fe.Agent)
	case errors.As(err, &ae):
		return "vagentctl status lists the configured agents"
	case errors.As(err, &dbe):
		return "vagentctl drives systemd over the system D-Bus: run it on the host as root (members of group vagent go through vagentd when it runs)"
	case errors.As(err, &ue):
		return "see vagentctl --help"
	}
	return ""
}

// agentError marks an unknown agent name.
type agentError struct{ error }

func (e *agentError) Unwrap() error { return e.error }

// dbusError marks a failure to reach systemd.
type dbusError struct{ error }

func (e *dbusError) Unwrap() error { return e.error }

// App declares vagentctl's commands.
func App(stdout, stderr io.Writer) *cli.Command {
	return &cli.Command{
		Name:    "vagentctl",
		Usage:   "run local LLM agents (vLLM) as systemd units, switched to fit the GPU",
		Version: Version,
		Writer:  stdout, ErrWriter: stderr,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "main configuration file (default $" + config.EnvPath + " or " + config.DefaultPath + ")"},
		},
		// Errors are printed once, by Main, with the exit status it chooses.
		ExitErrHandler: func(context.Context, *cli.Command, error) {},
		OnUsageError: func(_ context.Context, _ *cli.Command, err error, _ bool) error {
			return &usageError{err.Error()}
		},
		CommandNotFound: func(_ context.Context, cmd *cli.Command, name string) {
			fmt.Fprintf(stderr, "vagentctl: unknown command %q\n", name)
		},
		Commands: []*cli.Command{
			renderCmd(), applyCmd(),
			lifecycleCmd("start", "start an agent if it fits beside what runs (never evicts)"),
			lifecycleCmd("switch", "make an agent run, stopping what does not fit beside it"),
			lifecycleCmd("restart", "stop an agent, wait for its memory, start it again"),
			stopCmd(), statusCmd(), logsCmd(), gpuCmd(), testCmd(), installCmd(), pullCmd(),
			planCmd(), doctorCmd(), setupCmd(),
		},
	}
}

// subUsageError makes a subcommand's flag errors usage errors too.
func subUsageError(_ context.Context, _ *cli.Command, err error, _ bool) error {
	return &usageError{err.Error()}
}

// oneAgent returns the single AGENT argument.
func oneAgent(cmd *cli.Command) (string, error) {
	if cmd.Args().Len() != 1 {
		return "", usagef("%s takes exactly one AGENT, got %d arguments", cmd.Name, cmd.Args().Len())
	}
	return cmd.Args().First(), nil
}

func noArgs(cmd *cli.Command) error {
	if cmd.Args().Len() != 0 {
		return usagef("%s takes no arguments, got %q", cmd.Name, cmd.Args().Slice())
	}
	return nil
}
