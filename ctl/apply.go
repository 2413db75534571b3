package ctl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/urfave/cli/v3"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/gpu"
	"github.com/vagent-dev/vagent/internal/enginekey"
	"github.com/vagent-dev/vagent/plan"
	"github.com/vagent-dev/vagent/units"
)

func renderCmd() *cli.Command {
	return &cli.Command{
		Name:  "render",
		Usage: "write the units for the configuration into a directory, without touching systemd",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "out", Aliases: []string{"o"}, Required: true, Usage: "directory to write into (created if missing)"},
		},
		OnUsageError: subUsageError,
		Action: func(ctx context.Context, cmd *cli.Command) error {
			cfg, err := configNoArgs(cmd)
			if err != nil {
				return err
			}
			files, err := units.Render(cfg, gpuTotals(ctx, cfg, cmd.Root().ErrWriter))
			if err != nil {
				return err
			}
			out := cmd.String("out")
			if err := os.MkdirAll(out, 0o755); err != nil {
				return fmt.Errorf("render: %w", err)
			}
			if _, err := units.Write(out, files); err != nil {
				return err
			}
			for _, name := range sortedNames(files) {
				fmt.Fprintln(cmd.Root().Writer, filepath.Join(out, name))
			}
			return nil
		},
	}
}

func sortedNames(files units.Files) []string {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// gpuTotals reads each GPU's size for the Conflicts= decisions. Without a
// driver the units are still rendered, judged by utilization alone.
func gpuTotals(ctx context.Context, cfg *config.Config, warn io.Writer) map[int]uint64 {
	totals, err := gpu.Totals(ctx, cfg)
	if err != nil {
		fmt.Fprintf(warn, "vagentctl: warning: GPU sizes unknown, conflicts judged by gpu_memory_utilization alone: %v\n", err)
		return nil
	}
	return totals
}

func applyCmd() *cli.Command {
	return &cli.Command{
		Name:  "apply",
		Usage: "write the units for the configuration into the unit directory and reload systemd",
		Description: "Writes the template vagent@.service and one drop-in per agent atomically, rewriting only what " +
			"changed; removes the drop-ins of agents no longer configured (stopping them first); reloads systemd; " +
			"and names the running agents whose unit changed. A bad configuration changes nothing.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "restart", Usage: "restart running agents whose unit changed"},
			&cli.BoolFlag{Name: "force", Usage: "apply even agents that `vagentctl plan` says can never start on their GPU"},
		},
		OnUsageError: subUsageError,
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if err := noArgs(cmd); err != nil {
				return err
			}
			return apply(ctx, cmd)
		},
	}
}

func apply(ctx context.Context, cmd *cli.Command) error {
	out := cmd.Root().Writer
	cfg, err := loadConfig(cmd)
	if err != nil {
		return err
	}
	totals := gpuTotals(ctx, cfg, cmd.Root().ErrWriter)
	files, err := units.Render(cfg, totals)
	if err != nil {
		return err
	}
	if err := checkNeverFits(ctx, cfg, totals, cmd.Bool("force"), cmd.Root().ErrWriter); err != nil {
		return err
	}
	h, err := connect(ctx, cmd)
	if err != nil {
		return err
	}
	defer h.Close()

	// Agents whose files were deleted: stop them while their unit still
	// says how, then their drop-ins go.
	for _, name := range orphanedAgents(cfg) {
		st, err := h.sd.State(ctx, config.UnitName(name))
		if err != nil {
			return err
		}
		if st.Running() {
			if err := h.sd.Stop(ctx, config.UnitName(name)); err != nil {
				return err
			}
			fmt.Fprintf(out, "stopped %s: it is no longer configured\n", name)
		}
	}
	for _, dir := range []string{cfg.Paths.StateDir, cfg.Paths.RunDir, cfg.Paths.HFHome, cfg.Paths.CacheDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("apply: %w", err)
		}
	}
	if _, err := enginekey.Ensure(cfg); err != nil {
		return err
	}
	res, err := units.WriteWith(cfg.Paths.UnitDir, files, units.WriteOptions{
		TemplateElsewhere: vendorMatches(files, units.TemplateName, units.VendorTemplate),
		SocketElsewhere:   vendorMatches(files, units.SocketName, units.VendorSocket),
	})
	if err != nil {
		return err
	}
	if err := h.sd.Reload(ctx); err != nil {
		return &dbusError{err}
	}
	for _, f := range []struct {
		changed      bool
		name, vendor string
	}{
		{res.TemplateChanged, units.TemplateName, units.VendorTemplate},
		{res.SocketChanged, units.SocketName, units.VendorSocket},
	} {
		if !f.changed {
			continue
		}
		if vendorMatches(files, f.name, f.vendor) {
			fmt.Fprintf(out, "removed %s: the package's %s is the same\n", filepath.Join(cfg.Paths.UnitDir, f.name), f.vendor)
		} else {
			fmt.Fprintf(out, "wrote %s\n", filepath.Join(cfg.Paths.UnitDir, f.name))
		}
	}
	if res.SocketChanged {
		// systemd keeps a running socket's addresses across a reload.
		fmt.Fprintf(out, "%s changed: if it is running, systemctl restart %s makes it listen as configured (vagentd restarts with it)\n", units.SocketName, units.SocketName)
	}
	for _, n := range res.Added {
		fmt.Fprintf(out, "added %s\n", config.UnitName(n))
	}
	for _, n := range res.Updated {
		fmt.Fprintf(out, "updated %s\n", config.UnitName(n))
	}
	for _, n := range res.Removed {
		fmt.Fprintf(out, "removed %s\n", config.UnitName(n))
	}
	if !res.Changed() {
		fmt.Fprintln(out, "units are up to date")
	}
	// A running engine keeps the unit it started with: name the ones whose
	// unit (or the template every unit shares) changed under them.
	var stale []string
	for _, a := range cfg.Agents {
		if !res.TemplateChanged && !slices.Contains(res.Updated, a.Name) {
			continue
		}
		st, err := h.sd.State(ctx, a.Unit())
		if err != nil {
			return err
		}
		if st.Running() {
			stale = append(stale, a.Name)
		}
	}
	if len(stale) == 0 {
		return nil
	}
	if !cmd.Bool("restart") {
		fmt.Fprintf(out, "running with an old unit: %s (vagentctl apply --restart, or vagentctl restart AGENT)\n", strings.Join(stale, ", "))
		return nil
	}
	var errs []error
	for _, n := range stale {
		r, err := h.sup.Restart(ctx, n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		printResult(cmd, "restart", r)
	}
	return errors.Join(errs...)
}

// vendorMatches reports whether the package installed, at vendor, the very
// file name this configuration renders: then the unit directory must not
// shadow it with a copy.
func vendorMatches(files units.Files, name, vendor string) bool {
	data, err := os.ReadFile(vendor)
	return err == nil && bytes.Equal(data, files[name])
}

// orphanedAgents are agents with a vagent drop-in in the unit directory but
// no file in the configuration.
func orphanedAgents(cfg *config.Config) []string {
	matches, _ := filepath.Glob(filepath.Join(cfg.Paths.UnitDir, "vagent@*.service.d", units.DropInName))
	var out []string
	for _, m := range matches {
		name := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(filepath.Dir(m)), "vagent@"), ".service.d")
		if cfg.Agent(name) == nil {
			out = append(out, name)
		}
	}
	return out
}

// applyNeverFits is the plan's verdict apply checks; tests replace it.
var applyNeverFits = plan.NeverFits

// checkNeverFits refuses, before anything is written, agents that the plan
// says can never start on their GPU as configured (from the HF cache, a
// local model or the built-in table: apply never asks the Hub); with force
// it only warns. Unknown GPU sizes or model figures refuse nothing.
func checkNeverFits(ctx context.Context, cfg *config.Config, totals map[int]uint64, force bool, warn io.Writer) error {
	if totals == nil {
		return nil
	}
	check := applyNeverFits(cfg)
	var bad []string
	for _, a := range cfg.Agents {
		why := check(ctx, a, totals)
		if why == "" {
			continue
		}
		if force {
			fmt.Fprintf(warn, "vagentctl: warning: agent %s (%s) can never start on its GPU as configured: %s\n", a.Name, a.File, why)
			continue
		}
		bad = append(bad, fmt.Sprintf("agent %s (%s) can never start on its GPU as configured: %s", a.Name, a.File, why))
	}
	if len(bad) > 0 {
		return fmt.Errorf("apply: %s\nnothing was changed: fix the agent (vagentctl plan shows the estimate), or apply --force to install it anyway", strings.Join(bad, "\napply: "))
	}
	return nil
}
