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

// usageError is a command used wrongly: exit status 2. cmd is the command
// line's command ("vagentctl switch"), for the hint; suggest a near-miss
// command name.
type usageError struct{ msg, cmd, suggest string }

func (e *usageError) Error() string { return e.msg }

// unknownCommandKey is where CommandNotFound leaves the name it was given
// (in the root's Metadata), since urfave/cli returns no error for it.
const unknownCommandKey = "vagentctl.unknown-command"

// unknownCommand is the usage error for a command name root does not have.
func unknownCommand(root *cli.Command, name string) error {
	var names []string
	for _, c := range root.VisibleCommands() {
		names = append(names, c.Name)
	}
	return &usageError{msg: fmt.Sprintf("unknown command %q", name), suggest: closest(name, names)}
}

// closest returns the candidate nearest to name, if at most one edit in
// three letters away or name is its prefix; else "".
func closest(name string, candidates []string) string {
	best, bestD := "", -1
	for _, c := range candidates {
		d := editDistance(name, c)
		if name != "" && strings.HasPrefix(c, name) {
			d = 1
		}
		if 3*d <= max(len(name), len(c)) && (bestD < 0 || d < bestD) {
			best, bestD = c, d
		}
	}
	return best
}

// editDistance is the edit distance between a and b, a swap of two
// neighbouring letters counting as one edit (optimal string alignment).
func editDistance(a, b string) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// Main runs vagentctl with args (args[0] is the program name) and returns
// the exit status. Errors are printed on stderr as one line per problem plus
// a hint.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	app := App(stdout, stderr)
	err := app.Run(ctx, args)
	if name, ok := app.Metadata[unknownCommandKey].(string); ok && err == nil {
		err = unknownCommand(app, name)
	}
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
	if h := runHint(err); h != "" {
		return h
	}
	var (
		ce  config.Errors
		se  *supervisor.StartError
		fe  *supervisor.FitError
		ne  *supervisor.NeverFitError
		be  *supervisor.BackoffError
		ue  *usageError
		ae  *agentError
		dbe *dbusError
	)
	switch {
	case errors.As(err, &ce):
		return "fix the lines above; nothing was changed"
	case errors.As(err, &be):
		return fmt.Sprintf("the engine's full log: vagentctl logs %s -n 50; fix the cause, then vagentctl restart %s", be.Agent, be.Agent)
	case errors.As(err, &se):
		return fmt.Sprintf("the engine's full log: vagentctl logs %s -n 50", se.Agent)
	case errors.As(err, &ne):
		return fmt.Sprintf("vagentctl plan shows the estimate: lower max_model_len of %s, quantize, or use a larger GPU", ne.Agent)
	case errors.As(err, &fe):
		return fmt.Sprintf("lower gpu_memory_utilization or max_model_len of %s, or stop what holds the GPU (vagentctl gpu)", fe.Agent)
	case errors.As(err, &ae):
		return "vagentctl status lists the configured agents"
	case errors.As(err, &dbe):
		return "vagentctl drives systemd over the system D-Bus: run it on the host as root (members of group vagent go through vagentd when it runs)"
	case errors.As(err, &ue):
		cmd := ue.cmd
		if cmd == "" {
			cmd = "vagentctl"
		}
		if ue.suggest != "" {
			return fmt.Sprintf("did you mean %q? %s --help lists the commands", ue.suggest, cmd)
		}
		return fmt.Sprintf("see %s --help", cmd)
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
		OnUsageError:   subUsageError,
		// Without a command vagentctl shows its help; with an unknown one
		// (urfave/cli hands it to the root's action) it is a usage error.
		Action: func(_ context.Context, cmd *cli.Command) error {
			if cmd.Args().Present() {
				return unknownCommand(cmd, cmd.Args().First())
			}
			return cli.ShowRootCommandHelp(cmd)
		},
		// "vagentctl help NAME" with an unknown NAME ends here, and
		// urfave/cli returns no error: Main makes it one.
		CommandNotFound: func(_ context.Context, cmd *cli.Command, name string) {
			root := cmd.Root()
			if root.Metadata == nil {
				root.Metadata = map[string]any{}
			}
			root.Metadata[unknownCommandKey] = name
		},
		Commands: []*cli.Command{
			renderCmd(), applyCmd(),
			lifecycleCmd("start", "start an agent if it fits beside what runs (never evicts)"),
			lifecycleCmd("switch", "make an agent run, stopping what does not fit beside it"),
			lifecycleCmd("restart", "stop an agent, wait for its memory, start it again"),
			stopCmd(), statusCmd(), logsCmd(), gpuCmd(), testCmd(), installCmd(), pullCmd(),
			planCmd(), doctorCmd(), setupCmd(), exportCmd(), runCmd(), completionCmd(),
		},
	}
}

// subUsageError makes a command's flag errors usage errors too.
func subUsageError(_ context.Context, cmd *cli.Command, err error, _ bool) error {
	return &usageError{msg: err.Error(), cmd: cmd.FullName()}
}

// oneAgent returns the single AGENT argument.
func oneAgent(cmd *cli.Command) (string, error) {
	if cmd.Args().Len() != 1 {
		return "", &usageError{msg: fmt.Sprintf("%s takes exactly one AGENT, got %d arguments", cmd.Name, cmd.Args().Len()), cmd: cmd.FullName()}
	}
	return cmd.Args().First(), nil
}

func noArgs(cmd *cli.Command) error {
	if cmd.Args().Len() != 0 {
		return &usageError{msg: fmt.Sprintf("%s takes no arguments, got %q", cmd.Name, cmd.Args().Slice()), cmd: cmd.FullName()}
	}
	return nil
}
