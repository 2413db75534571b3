package ctl

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/models"
)

func pullCmd() *cli.Command {
	return &cli.Command{
		Name:      "pull",
		Usage:     "download agents' models into vagent's Hugging Face cache, so that engines start offline",
		ArgsUsage: "[AGENT...]",
		Description: "Downloads each named agent's model (every agent's when none is named) at its revision into " +
			"paths.hf_home, in the Hugging Face cache layout (hub/models--ORG--NAME/{blobs,snapshots,refs}) that " +
			"vLLM reads with HF_HUB_OFFLINE=1. Files come in parallel, resume after an interruption, are checked " +
			"against the Hub's sha256 and placed atomically; files already complete are skipped. Only the weights " +
			"vLLM loads are fetched (*.safetensors, else *.bin; never original/), unless --all-files. A model that " +
			"is a local directory (starting with / or ./) is only checked for a config.json.\n\n" +
			"The Hub is $HF_ENDPOINT (default " + models.DefaultEndpoint + "); gated and private repositories need " +
			"$HF_TOKEN (or $HUGGING_FACE_HUB_TOKEN, or the file $HF_TOKEN_PATH, default the token file in paths.hf_home). " +
			"With $HF_HUB_OFFLINE=1 nothing is downloaded: a model fully in the cache passes, any other fails. " +
			"Each model goes to the cache its agent's engine reads: $HF_HUB_CACHE of the agent's env or engine.env, else paths.hf_home/hub.\n\n" +
			"--source URL --dest NAME fetches a model that is not on the Hub through go-getter instead: an archive " +
			"(https://host/m.tar.gz?checksum=sha256:HEX), a git repository (git::https://host/repo.git?ref=TAG) or a " +
			"local directory, into paths.hf_home/local/NAME (or the absolute path given); set the agent's model to " +
			"that directory.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print one JSON object per event (start, progress, done, error, summary) for scripts"},
			&cli.IntFlag{Name: "jobs", Aliases: []string{"j"}, Value: 4, Usage: "files to download at once"},
			&cli.BoolFlag{Name: "verify", Usage: "re-hash files already in the cache instead of trusting their size"},
			&cli.BoolFlag{Name: "all-files", Usage: "fetch every file of the repository, not only the weights vLLM loads"},
			&cli.StringFlag{Name: "source", Usage: "fetch a model from a go-getter source (archive URL with ?checksum=, git::URL, directory) instead of the Hub"},
			&cli.StringFlag{Name: "dest", Usage: "with --source: a NAME under paths.hf_home/local, or an absolute directory"},
		},
		OnUsageError: subUsageError,
		Action:       runPull,
	}
}

func runPull(ctx context.Context, cmd *cli.Command) error {
	jobs := int(cmd.Int("jobs"))
	if jobs < 1 || jobs > 64 {
		return usagef("--jobs must be between 1 and 64, got %d", jobs)
	}
	src, dest := cmd.String("source"), cmd.String("dest")
	switch {
	case src != "" && cmd.Args().Len() > 0:
		return usagef("pull --source takes no AGENT arguments")
	case src != "" && dest == "":
		return usagef("pull --source needs --dest NAME (a directory under paths.hf_home/local) or an absolute path")
	case src == "" && dest != "":
		return usagef("pull --dest goes with --source")
	}
	cfg, err := loadConfig(cmd)
	if err != nil {
		return err
	}
	var agents []*config.Agent
	if cmd.Args().Len() == 0 {
		agents = cfg.Agents
	}
	for _, name := range cmd.Args().Slice() {
		if err := agentErr(cfg, name); err != nil {
			return err
		}
		agents = append(agents, cfg.Agent(name))
	}

	out := cmd.Root().Writer
	var progress func(models.Event)
	var text *models.TextProgress
	// Progress events: often enough for a bar to move smoothly, rarely
	// enough for a log or a script reading JSON lines.
	interval := time.Second
	if cmd.Bool("json") {
		progress = models.JSONProgress(out)
	} else {
		text = models.NewTerminalProgress(out)
		defer text.Close()
		progress = text.Event
		if text.TTY() {
			interval = 100 * time.Millisecond
		}
	}
	// Each agent's model goes to the cache its engine will read (its unit's
	// HF_HOME and [env]); pullers are shared by agents with the same Hub
	// settings.
	pullers := map[models.Env]*models.Puller{}
	puller := func(e models.Env) (*models.Puller, error) {
		if p, ok := pullers[e]; ok {
			return p, nil
		}
		p, err := models.New(models.Options{
			HFHome:    cfg.Paths.HFHome,
			HubCache:  e.HubCache,
			Endpoint:  e.Endpoint,
			Token:     e.Token,
			Offline:   e.Offline,
			UserAgent: "vagent/" + Version,
			Jobs:      jobs,
			Verify:    cmd.Bool("verify"),
			AllFiles:  cmd.Bool("all-files"),
			Durable:   true,
			Progress:  progress,

			ProgressInterval: interval,
		})
		pullers[e] = p
		return p, err
	}
	p, err := puller(models.ForAgent(cfg, nil, os.Getenv))
	if err != nil {
		return err
	}
	if src != "" {
		res, err := p.PullSource(ctx, "", src, dest)
		if err != nil {
			return interrupted(ctx, err)
		}
		if text != nil {
			fmt.Fprintf(out, "set model = %q in an agent's file to serve it\n", res.Dir)
		}
		return nil
	}

	// Agents that share a model and revision pull it once.
	type target struct {
		names           []string
		model, revision string
		env             models.Env
	}
	var targets []*target
	seen := map[string]*target{}
	for _, a := range agents {
		rev := a.Revision
		if rev == "" {
			rev = models.DefaultRevision
		}
		env := models.ForAgent(cfg, a, os.Getenv)
		key := env.HubCache + "\x00" + a.Model + "@" + rev
		if t, ok := seen[key]; ok {
			t.names = append(t.names, a.Name)
			continue
		}
		t := &target{names: []string{a.Name}, model: a.Model, revision: rev, env: env}
		seen[key] = t
		targets = append(targets, t)
	}
	var errs []error
	for _, t := range targets {
		if ctx.Err() != nil {
			break
		}
		p, err := puller(t.env)
		if err == nil {
			_, err = p.Pull(ctx, strings.Join(t.names, ","), t.model, t.revision)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("agent %s: %w", strings.Join(t.names, ","), interrupted(ctx, err)))
		}
	}
	return errors.Join(errs...)
}

// interrupted explains an error caused by Ctrl-C or SIGTERM.
func interrupted(ctx context.Context, err error) error {
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return fmt.Errorf("interrupted: partial downloads are kept and resume on the next pull")
	}
	return err
}
