package ctl

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/urfave/cli/v3"

	"github.com/vagent-dev/vagent/export"
)

func exportCmd() *cli.Command {
	return &cli.Command{
		Name:      "export",
		Usage:     "write the agents as objects for a cluster (" + strings.Join(export.Targets, ", ") + ")",
		ArgsUsage: "TARGET",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "out", Aliases: []string{"o"}, Value: "-", Usage: "directory to write one file per object into (created if missing), or - for one YAML stream on stdout"},
			&cli.StringFlag{Name: "agents", Usage: "comma-separated agents to export (default: all)"},
			&cli.StringFlag{Name: "resource-profile", Value: export.DefaultResourceProfile, Usage: "KubeAI resource profile the Models ask for (kubeai)"},
		},
		OnUsageError: subUsageError,
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if cmd.Args().Len() != 1 {
				return &usageError{msg: fmt.Sprintf("export takes exactly one TARGET (%s), got %d arguments",
					strings.Join(export.Targets, ", "), cmd.Args().Len()), cmd: cmd.FullName()}
			}
			if !slices.Contains(export.Targets, cmd.Args().First()) {
				return &usageError{msg: fmt.Sprintf("export target %q: want one of %s",
					cmd.Args().First(), strings.Join(export.Targets, ", ")), cmd: cmd.FullName()}
			}
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			var agents []string
			if s := cmd.String("agents"); s != "" {
				agents = strings.Split(s, ",")
			}
			res, err := export.Export(cfg, cmd.Args().First(), export.Options{Agents: agents, ResourceProfile: cmd.String("resource-profile")})
			if err != nil {
				return err
			}
			stdout, stderr := cmd.Root().Writer, cmd.Root().ErrWriter
			for _, n := range res.NotCarried {
				fmt.Fprintf(stderr, "vagentctl export: not carried: %s\n", n)
			}
			out := cmd.String("out")
			if out == "-" || out == "" {
				for i, o := range res.Objects {
					if i > 0 {
						fmt.Fprintln(stdout, "---")
					}
					if _, err := stdout.Write(o.Data); err != nil {
						return fmt.Errorf("export: %w", err)
					}
				}
				return nil
			}
			if err := os.MkdirAll(out, 0o755); err != nil {
				return fmt.Errorf("export: %w", err)
			}
			for _, o := range res.Objects {
				p := filepath.Join(out, o.Name)
				if err := os.WriteFile(p, o.Data, 0o644); err != nil {
					return fmt.Errorf("export: %w", err)
				}
				fmt.Fprintln(stdout, p)
			}
			return nil
		},
	}
}
