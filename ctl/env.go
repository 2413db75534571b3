package ctl

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/urfave/cli/v3"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/engine"
	"github.com/vagent-dev/vagent/gpu"
	"github.com/vagent-dev/vagent/journal"
	"github.com/vagent-dev/vagent/plan"
	"github.com/vagent-dev/vagent/supervisor"
)

func loadConfig(cmd *cli.Command) (*config.Config, error) {
	cfg, err := config.Load(config.Path(cmd.Root().String("config")))
	if err != nil {
		return nil, err
	}
	// Every command sees the backend "auto" stands for on this host.
	gpu.ResolveBackend(context.Background(), cfg)
	return cfg, nil
}

// agentArg loads the configuration and returns the command's single AGENT
// argument, checked against it.
func agentArg(cmd *cli.Command) (*config.Config, string, error) {
	agent, err := oneAgent(cmd)
	if err != nil {
		return nil, "", err
	}
	cfg, err := loadConfig(cmd)
	if err != nil {
		return nil, "", err
	}
	if err := agentErr(cfg, agent); err != nil {
		return nil, "", err
	}
	return cfg, agent, nil
}

// configNoArgs loads the configuration for a command that takes no arguments.
func configNoArgs(cmd *cli.Command) (*config.Config, error) {
	if err := noArgs(cmd); err != nil {
		return nil, err
	}
	return loadConfig(cmd)
}

// host is what a command that touches the running system needs.
type host struct {
	cfg *config.Config
	sd  *supervisor.DBus
	gpu gpu.Backend
	sup *supervisor.Supervisor
}

func (h *host) Close() {
	if h.sd != nil {
		h.sd.Close()
	}
	if h.gpu != nil {
		h.gpu.Close()
	}
}

// connect loads the configuration and reaches systemd and the GPU.
func connect(ctx context.Context, cmd *cli.Command) (*host, error) {
	cfg, err := loadConfig(cmd)
	if err != nil {
		return nil, err
	}
	return connectConfig(ctx, cfg)
}

// connectConfig reaches systemd and the GPU for cfg.
func connectConfig(ctx context.Context, cfg *config.Config) (*host, error) {
	var err error
	h := &host{cfg: cfg}
	h.sd, err = supervisor.NewDBus(ctx, cfg.Supervisor.DBusTimeout.Duration)
	if err != nil {
		return nil, &dbusError{err}
	}
	h.gpu, err = gpu.Open(cfg)
	if err != nil {
		h.Close()
		return nil, err
	}
	h.sup = supervisor.New(cfg, supervisor.Options{
		Systemd:   h.sd,
		GPU:       supervisor.FromBackend(h.gpu),
		RootCause: journal.StartCause(engine.Of(cfg).Log()),
		Log:       slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		// The engine key is read from its file when a wake needs it.
		HostWeights:   plan.HostWeights(cfg),
		SleepResidual: plan.SleepResidual,
		NeverFits:     plan.NeverFits(cfg),
	})
	return h, nil
}

// agentErr wraps an unknown-agent error so that it gets its hint.
func agentErr(cfg *config.Config, name string) error {
	if cfg.Agent(name) != nil {
		return nil
	}
	names := ""
	for i, a := range cfg.Agents {
		if i > 0 {
			names += ", "
		}
		names += a.Name
	}
	return &agentError{fmt.Errorf("unknown agent %q (configured: %s)", name, names)}
}
