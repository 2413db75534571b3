package ctl

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/urfave/cli/v3"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/internal/mandoc"
)

// CompletionShells are the shells "vagentctl completion" and the packages
// have a script for.
var CompletionShells = []string{"bash", "zsh", "fish"}

// WriteCompletion writes vagentctl's completion script for shell: the same
// bytes the packages install (cmd/mandoc-gen calls it), generated from
// the command tree.
func WriteCompletion(w io.Writer, shell string) error {
	c := mandoc.FromCommand(App(io.Discard, io.Discard), config.DefaultPath)
	switch shell {
	case "bash":
		return c.Bash(w)
	case "zsh":
		return c.Zsh(w)
	case "fish":
		return c.Fish(w)
	}
	return fmt.Errorf("completion %q: no such shell (shells: %s)", shell, strings.Join(CompletionShells, ", "))
}

func completionCmd() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print the shell completion script for bash, zsh or fish (the one the package installs)",
		ArgsUsage: "SHELL",
		Description: "Load it into the running shell, e.g. source <(vagentctl completion bash), or write it where " +
			"the shell looks: bash-completion's completions/vagentctl, zsh's _vagentctl in $fpath, " +
			"fish's vendor_completions.d/vagentctl.fish. Agent names are completed from the agents/ directory " +
			"beside the configuration file named by --config, else $" + config.EnvPath + ".",
		OnUsageError: subUsageError,
		Action: func(_ context.Context, cmd *cli.Command) error {
			if cmd.Args().Len() != 1 || !slices.Contains(CompletionShells, cmd.Args().First()) {
				return &usageError{
					msg: fmt.Sprintf("completion takes one SHELL (%s), got %q", strings.Join(CompletionShells, ", "), cmd.Args().Slice()),
					cmd: cmd.FullName(),
				}
			}
			return WriteCompletion(cmd.Root().Writer, cmd.Args().First())
		},
	}
}
