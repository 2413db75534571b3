// Command demo shows vagent end to end without a GPU: it boots a throwaway
// systemd (package e2e/sandbox), installs the shipped configs/ with the
// simulator engine, and drives vagentctl through apply, a few switches and
// status, then tears everything down. It needs root. Run it with "make demo".
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/vagent-dev/vagent/e2e/sandbox"
)

func main() {
	configs := flag.String("configs", "configs", "configuration tree to install (vagent.toml and agents/)")
	load := flag.Float64("sim-load-seconds", 2, "simulated model load time per agent (0: the simulator's size-based default)")
	keep := flag.Bool("keep", false, "keep the sandbox running after the demo until interrupted")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *configs, *load, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, configs string, load float64, keep bool) error {
	logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "# "+format+"\n", args...) }
	logf("booting a throwaway systemd")
	s, err := sandbox.Boot(ctx, sandbox.Options{Logf: logf})
	if err != nil {
		return err
	}
	defer func() {
		logf("tearing down %s", s.Dir())
		if err := s.Close(); err != nil {
			logf("teardown: %v", err)
		}
	}()
	logf("sandbox %s, systemd PID %d, bus %s", s.Dir(), s.PID(), s.BusAddress())

	logf("building vagentctl and vllm-sim")
	defer sandbox.CleanBuildCache()
	if err := s.Build(ctx, "./cmd/vagentctl", "./cmd/vllm-sim"); err != nil {
		return err
	}
	set := map[string]any{}
	if load > 0 {
		set["gpu.sim_load_seconds"] = load
	}
	cfg, err := s.InstallConfig(configs, set)
	if err != nil {
		return err
	}
	logf("config %s (VAGENT_CONFIG inside the sandbox)", cfg)

	steps := [][]string{
		{"vagentctl", "apply"},
		{"vagentctl", "status"},
		{"vagentctl", "switch", "dev"},
		{"vagentctl", "status"},
		{"vagentctl", "switch", "architect"},
		{"vagentctl", "switch", "po"},
		{"vagentctl", "status"},
		{"systemctl", "--no-pager", "list-units", "vagent@*"},
		{"vagentctl", "logs", "po", "-n", "5"},
	}
	for _, st := range steps {
		if err := step(ctx, s, st...); err != nil {
			return err
		}
	}
	if keep {
		logf("sandbox kept; enter it with: nsenter -t %d -m -p bash   (Ctrl-C here ends it)", s.PID())
		<-ctx.Done()
	}
	return nil
}

// step runs one command inside the sandbox, echoing it and its output.
func step(ctx context.Context, s *sandbox.Sandbox, argv ...string) error {
	fmt.Printf("\n$ %s\n", strings.Join(argv, " "))
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := s.Command(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w", strings.Join(argv, " "), err)
	}
	return nil
}
