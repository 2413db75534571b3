package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/gpu"
	"github.com/vagent-dev/vagent/venv"
)

func installCmd() *cli.Command {
	return &cli.Command{
		Name:  "install",
		Usage: "build the pinned vLLM into a new managed venv and switch the engine to it",
		Description: "Builds vllm==VERSION (default engine.vllm_version) into STATE_DIR/engines/vllm-VERSION with uv when it is " +
			"in PATH, pip otherwise; picks PyTorch's CUDA variant from the NVIDIA driver (pip: the download.pytorch.org index " +
			"for cu126/cu128/cu129/cu130, uv: --torch-backend=auto); checks that the venv imports vllm at that version; then " +
			"points the link STATE_DIR/engines/current (engine.venv) at it atomically. Running agents keep the engine they " +
			"started with until restarted (vagentctl restart NAME). An engine that exists and verifies is reused. A failed " +
			"install leaves the current engine in place and prints the end of its log; every install's full log is kept in " +
			"STATE_DIR/engines. --rollback returns current to the previous engine. Engines beyond --keep are removed, never the " +
			"current or previous one. With only --find-links the install is offline (--no-index). Refuses GPUs below compute " +
			"capability 7.0; without a driver it warns and installs anyway (the simulator needs none).",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "version", Usage: "vLLM version to install (default engine.vllm_version)"},
			&cli.StringFlag{Name: "index-url", Usage: "package index replacing PyPI, e.g. a mirror (default engine.index_url)"},
			&cli.StringSliceFlag{Name: "extra-index-url", Usage: "more package indexes, repeatable (default engine.extra_index_urls)"},
			&cli.StringSliceFlag{Name: "find-links", Usage: "wheel directory or page, repeatable; without an index the install is offline (default engine.find_links)"},
			&cli.StringFlag{Name: "python", Usage: "interpreter for the venv (default engine.python, else python3 with pip, 3.12 with uv)"},
			&cli.StringFlag{Name: "installer", Value: venv.InstallerAuto, Usage: "auto (uv when in PATH, else pip), uv or pip"},
			&cli.BoolFlag{Name: "rollback", Usage: "make the previous engine current again instead of installing"},
			&cli.IntFlag{Name: "keep", Value: venv.DefaultKeep, Usage: "engines to keep, the current and previous ones included"},
			jsonFlag,
		},
		OnUsageError: subUsageError,
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if err := noArgs(cmd); err != nil {
				return err
			}
			if cmd.Bool("rollback") {
				for _, f := range []string{"version", "index-url", "extra-index-url", "find-links", "python", "installer"} {
					if cmd.IsSet(f) {
						return usagef("--rollback installs nothing: it does not take --%s", f)
					}
				}
			}
			if cmd.Int("keep") < 0 {
				return usagef("--keep must not be negative")
			}
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			return runInstall(ctx, cmd, cfg)
		},
	}
}

func runInstall(ctx context.Context, cmd *cli.Command, cfg *config.Config) error {
	jsonOut := cmd.Bool("json")
	stdout := cmd.Root().Writer
	progress := stdout
	if jsonOut {
		// Standard output carries only the summary.
		progress = cmd.Root().ErrWriter
	}
	m := &venv.Manager{Dir: filepath.Join(cfg.Paths.StateDir, "engines"), Out: progress}
	var notes []string
	link := filepath.Join(m.Dir, venv.CurrentLink)
	if filepath.Clean(cfg.Engine.Venv) != link {
		notes = append(notes, fmt.Sprintf("engine.venv is %s, not the link install switches: set venv = %q in %s", cfg.Engine.Venv, link, cfg.Path))
	}

	var (
		res *venv.Result
		err error
	)
	if cmd.Bool("rollback") {
		res, err = m.Rollback(ctx)
	} else {
		o := venv.Options{
			Version:        cfg.Engine.VLLMVersion,
			Installer:      cmd.String("installer"),
			Python:         cfg.Engine.Python,
			IndexURL:       cfg.Engine.IndexURL,
			ExtraIndexURLs: cfg.Engine.ExtraIndexURLs,
			FindLinks:      cfg.Engine.FindLinks,
			CacheDir:       cfg.Paths.CacheDir,
			Keep:           int(cmd.Int("keep")),
		}
		if cmd.IsSet("version") {
			o.Version = cmd.String("version")
		}
		if cmd.IsSet("python") {
			o.Python = cmd.String("python")
		}
		if cmd.IsSet("index-url") {
			o.IndexURL = cmd.String("index-url")
		}
		if cmd.IsSet("extra-index-url") {
			o.ExtraIndexURLs = cmd.StringSlice("extra-index-url")
		}
		if cmd.IsSet("find-links") {
			o.FindLinks = installAbsLinks(cmd.StringSlice("find-links"))
		}
		o.GPU, o.NoGPU, o.AWQ = installGPU(ctx, cfg)
		res, err = m.Install(ctx, o)
	}
	if err == nil && res.Version != cfg.Engine.VLLMVersion {
		notes = append(notes, fmt.Sprintf("engine.vllm_version is %s in %s: set it to %q so that units get this version's flags, then vagentctl apply", cfg.Engine.VLLMVersion, cfg.Path, res.Version))
	}
	if err == nil && cfg.Engine.Kind != config.EngineVLLM {
		notes = append(notes, fmt.Sprintf("engine.kind is %q in %s: agents run the simulator until it is \"vllm\" (then vagentctl apply)", cfg.Engine.Kind, cfg.Path))
	}
	for _, n := range notes {
		fmt.Fprintf(progress, "note: %s\n", n)
	}
	if res != nil {
		res.Notes = append(res.Notes, notes...)
	}
	if jsonOut && res != nil {
		if err != nil {
			res.Error = err.Error()
		}
		if jerr := writeInstallJSON(stdout, res); jerr != nil && err == nil {
			err = jerr
		}
	}
	return err
}

func writeInstallJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// installAbsLinks makes local find-links absolute: the installer runs with
// another working directory in mind, and the log should say exactly what
// was used.
func installAbsLinks(links []string) []string {
	out := make([]string, len(links))
	for i, l := range links {
		out[i] = l
		if !strings.Contains(l, "://") {
			if a, err := filepath.Abs(l); err == nil {
				out[i] = a
			}
		}
	}
	return out
}

// installGPU asks the NVIDIA driver, whatever [gpu] backend says: the
// wheels must fit the real driver even while agents still run on the
// simulator. It returns the devices the configured agents use (all of them
// when none is configured), why there is no GPU information when there is
// none, and which devices will run AWQ models.
func installGPU(ctx context.Context, cfg *config.Config) (*gpu.Info, string, map[int]bool) {
	c := *cfg
	c.GPU.Backend = config.GPUBackendNVML
	b, err := gpu.Open(&c)
	if err != nil {
		if errors.Is(err, gpu.ErrNoDriver) {
			return nil, "no NVIDIA driver (libnvidia-ml.so.1 not found)", nil
		}
		return nil, err.Error(), nil
	}
	defer b.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	info, err := b.Info(ctx)
	if err != nil {
		return nil, err.Error(), nil
	}
	used := map[int]bool{}
	awq := map[int]bool{}
	for _, a := range cfg.Agents {
		isAWQ := strings.Contains(strings.ToLower(a.Quantization), "awq") ||
			a.Quantization == "" && strings.Contains(strings.ToLower(a.Model), "awq")
		for _, g := range a.GPUs {
			used[g] = true
			if isAWQ {
				awq[g] = true
			}
		}
	}
	if len(used) > 0 {
		var devs []gpu.Device
		for _, d := range info.Devices {
			if used[d.Index] {
				devs = append(devs, d)
			}
		}
		info.Devices = devs
	}
	return &info, "", awq
}
