package ctl

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/plan"
	"github.com/vagent-dev/vagent/supervisor"
	"github.com/vagent-dev/vagent/units"
)

// setupStep is one step of vagentctl setup. run does the work and returns a
// one-line summary ("" to use the last line it printed); a nil run is a step
// this build does not have.
type setupStep struct {
	name string
	run  func(ctx context.Context, cmd *cli.Command, cfg *config.Config) (string, error)
}

// setupSteps are setup's steps in order. install and pull run vagentctl's
// own commands of those names with their defaults; in a build without them
// setup says they are not available.
// (Set in init: the steps run App, which lists setup, which lists the steps.)
var setupSteps []setupStep

func init() {
	setupSteps = []setupStep{
		{"install", setupSubcommand("install")},
		{"pull", setupSubcommand("pull")},
		{"apply", runApply},
		{"vagentd", startVagentd},
	}
}

// errSetupUnavailable marks a step whose command this build does not have.
var errSetupUnavailable = errors.New("not available in this build")

// setupSubcommand runs `vagentctl NAME` (with the same --config and output)
// as a step, so that setup does exactly what the command does.
func setupSubcommand(name string) func(context.Context, *cli.Command, *config.Config) (string, error) {
	return func(ctx context.Context, cmd *cli.Command, cfg *config.Config) (string, error) {
		root := cmd.Root()
		app := App(root.Writer, root.ErrWriter)
		if app.Command(name) == nil {
			return "", errSetupUnavailable
		}
		return "", app.Run(ctx, []string{"vagentctl", "--config", cfg.Path, name})
	}
}

// setupStateFile is where setup records its finished steps, in state_dir.
const setupStateFile = "setup.json"

// setupState is setup.json: each finished step with a digest of what it was
// done for, so that a rerun skips it unless that changed.
type setupState struct {
	Steps map[string]setupDone `json:"steps"`
}

type setupDone struct {
	Inputs  string    `json:"inputs"`
	At      time.Time `json:"at"`
	Summary string    `json:"summary"`
}

// Step outcomes.
const (
	setupRan         = "done"
	setupUpToDate    = "up-to-date"
	setupSkipped     = "skipped"
	setupUnavailable = "unavailable"
	setupFailed      = "failed"
	setupNotRun      = "not-run"
)

type setupOutcome struct {
	Step    string `json:"step"`
	Status  string `json:"status"`
	Summary string `json:"summary"`
}

type setupReport struct {
	Steps []setupOutcome `json:"steps"`
	State string         `json:"state_file"`
	OK    bool           `json:"ok"`
	// Switching is the advice on sleep mode (setupSwitching), Advice its
	// figures when known.
	Switching string       `json:"switching"`
	Advice    *plan.Advice `json:"switching_advice,omitempty"`
}

func setupCmd() *cli.Command {
	var names []string
	for _, s := range setupSteps {
		names = append(names, s.name)
	}
	return &cli.Command{
		Name:  "setup",
		Usage: "from a bare host to running agents: install vLLM, pull the models, apply the units, start vagentd",
		Description: "Runs the steps " + strings.Join(names, ", ") + " in order and says what each did. Finished steps are " +
			"recorded in STATE_DIR/" + setupStateFile + " with a digest of their inputs (the [engine] section for install, " +
			"the agents' models and revisions for pull, the rendered units for apply): a rerun after an interruption or a " +
			"failure skips what is done and unchanged and goes on from there; --from STEP redoes STEP and every step after " +
			"it. vagentd is checked on every run and started when it is not running. With engine.kind = \"sim\" the " +
			"install step is skipped: the simulator needs no vLLM.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "skip-install", Usage: "do not install vLLM"},
			&cli.BoolFlag{Name: "skip-pull", Usage: "do not download models"},
			&cli.StringFlag{Name: "from", Usage: "redo the steps from this one on (" + strings.Join(names, ", ") + ")"},
			jsonFlag,
		},
		OnUsageError: subUsageError,
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if err := noArgs(cmd); err != nil {
				return err
			}
			from := -1
			if f := cmd.String("from"); f != "" {
				for i, s := range setupSteps {
					if s.name == f {
						from = i
					}
				}
				if from < 0 {
					return usagef("--from %q is not a step (steps: %s)", f, strings.Join(names, ", "))
				}
			}
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			return runSetup(ctx, cmd, cfg, from)
		},
	}
}

func runSetup(ctx context.Context, cmd *cli.Command, cfg *config.Config, from int) error {
	root := cmd.Root()
	stdout := root.Writer
	jsonOut := cmd.Bool("json")
	statePath := filepath.Join(cfg.Paths.StateDir, setupStateFile)
	state, warn := loadSetupState(statePath)
	if warn != "" {
		fmt.Fprintf(root.ErrWriter, "vagentctl: warning: %s\n", warn)
	}
	rep := &setupReport{State: statePath, OK: true}
	var failure error
	for i, step := range setupSteps {
		o := setupOutcome{Step: step.name}
		switch {
		case failure != nil:
			o.Status, o.Summary = setupNotRun, "an earlier step failed"
		case step.name == "install" && cmd.Bool("skip-install"):
			o.Status, o.Summary = setupSkipped, "--skip-install"
		case step.name == "pull" && cmd.Bool("skip-pull"):
			o.Status, o.Summary = setupSkipped, "--skip-pull"
		case step.name == "install" && cfg.Engine.Kind == config.EngineSim:
			o.Status, o.Summary = setupSkipped, fmt.Sprintf("engine.kind is %q: the simulator needs no vLLM (set kind = \"vllm\" in %s, then rerun setup)", cfg.Engine.Kind, cfg.Path)
		case step.run == nil:
			o.Status = setupUnavailable
			o.Summary = fmt.Sprintf("not available in this build: vagentctl has no %q command, do this step by hand", step.name)
		default:
			inputs, err := setupInputs(ctx, step.name, cfg)
			if err != nil {
				o.Status, o.Summary, failure = setupFailed, err.Error(), fmt.Errorf("setup: %s: %w", step.name, err)
				break
			}
			done, ok := state.Steps[step.name]
			if ok && inputs != "" && done.Inputs == inputs && (from < 0 || i < from) {
				o.Status = setupUpToDate
				o.Summary = fmt.Sprintf("done %s: %s", done.At.Local().Format("2006-01-02 15:04"), done.Summary)
				break
			}
			if !jsonOut {
				fmt.Fprintf(stdout, "setup: %s ...\n", step.name)
			}
			summary, err := runSetupStep(ctx, cmd, cfg, step, jsonOut)
			if errors.Is(err, errSetupUnavailable) {
				o.Status = setupUnavailable
				o.Summary = fmt.Sprintf("not available in this build: vagentctl has no %q command, do this step by hand", step.name)
				break
			}
			if err != nil {
				o.Status, o.Summary = setupFailed, err.Error()
				failure = fmt.Errorf("setup: %s: %w (rerun vagentctl setup to resume from here)", step.name, err)
				break
			}
			o.Status, o.Summary = setupRan, summary
			if inputs != "" {
				state.Steps[step.name] = setupDone{Inputs: inputs, At: time.Now(), Summary: summary}
				if err := saveSetupState(statePath, state); err != nil {
					failure = fmt.Errorf("setup: record %s: %w", step.name, err)
				}
			}
		}
		if o.Status == setupFailed || o.Status == setupNotRun {
			rep.OK = false
		}
		rep.Steps = append(rep.Steps, o)
	}
	rep.Advice, rep.Switching = setupSwitching(ctx, cfg)
	if jsonOut {
		if err := writeJSON(stdout, rep); err != nil {
			return err
		}
	} else {
		writeSetupReport(stdout, rep)
	}
	return failure
}

// runSetupStep runs one step with its printed output going to the terminal
// (stderr under --json, so that stdout stays one JSON document), keeping the
// end of it for the summary.
func runSetupStep(ctx context.Context, cmd *cli.Command, cfg *config.Config, step setupStep, jsonOut bool) (string, error) {
	root := cmd.Root()
	out := root.Writer
	if jsonOut {
		out = root.ErrWriter
	}
	tail := &setupTail{max: 4096}
	saved := root.Writer
	root.Writer = io.MultiWriter(out, tail)
	defer func() { root.Writer = saved }()
	summary, err := step.run(ctx, cmd, cfg)
	if err == nil && summary == "" {
		summary = tail.lastLines(3)
	}
	if summary == "" {
		summary = "done"
	}
	return summary, err
}

// setupTail keeps the last max bytes written to it; progress may be written
// from several goroutines.
type setupTail struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *setupTail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = t.buf[len(t.buf)-t.max:]
	}
	return len(p), nil
}

// lastLines joins the last n non-empty lines with "; ".
func (t *setupTail) lastLines(n int) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var lines []string
	for _, l := range strings.Split(string(bytes.TrimSpace(t.buf)), "\n") {
		// Progress bars redraw with \r: keep what was drawn last.
		if i := strings.LastIndexByte(l, '\r'); i >= 0 {
			l = l[i+1:]
		}
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "; ")
}

// setupInputs digests what a step's result depends on; "" means the step
// runs every time (vagentd: whether it runs is only known by asking).
func setupInputs(ctx context.Context, step string, cfg *config.Config) (string, error) {
	var v any
	switch step {
	case "install":
		v = struct {
			Engine config.Engine
			State  string
		}{cfg.Engine, cfg.Paths.StateDir}
	case "pull":
		type m struct{ Model, Revision string }
		var ms []m
		for _, a := range cfg.Agents {
			ms = append(ms, m{a.Model, a.Revision})
		}
		sort.Slice(ms, func(i, j int) bool { return ms[i].Model+"@"+ms[i].Revision < ms[j].Model+"@"+ms[j].Revision })
		v = struct {
			Models []m
			HFHome string
		}{ms, cfg.Paths.HFHome}
	case "apply":
		files, err := units.Render(cfg, gpuTotals(ctx, cfg, io.Discard))
		if err != nil {
			return "", err
		}
		v = struct {
			Files   units.Files
			UnitDir string
		}{files, cfg.Paths.UnitDir}
	default:
		return "", nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

func loadSetupState(path string) (*setupState, string) {
	st := &setupState{Steps: map[string]setupDone{}}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return st, ""
	}
	if err != nil {
		return st, fmt.Sprintf("cannot read %s, starting over: %v", path, err)
	}
	if err := json.Unmarshal(data, st); err != nil {
		return &setupState{Steps: map[string]setupDone{}}, fmt.Sprintf("%s is corrupt, starting over: %v", path, err)
	}
	if st.Steps == nil {
		st.Steps = map[string]setupDone{}
	}
	return st, ""
}

// saveSetupState writes setup.json atomically: an interruption leaves the
// old record or the new one, never half of one.
func saveSetupState(path string, st *setupState) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

func writeSetupReport(w io.Writer, rep *setupReport) {
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	counts := map[string]int{}
	for _, o := range rep.Steps {
		counts[o.Status]++
		label := map[string]string{
			setupRan: "DONE", setupUpToDate: "UP TO DATE", setupSkipped: "SKIPPED",
			setupUnavailable: "WARN", setupFailed: "FAILED", setupNotRun: "NOT RUN",
		}[o.Status]
		fmt.Fprintf(tw, "%s\t%s\t%s\n", o.Step, label, o.Summary)
	}
	tw.Flush()
	var parts []string
	for _, s := range []struct{ status, word string }{
		{setupRan, "done now"}, {setupUpToDate, "already done"}, {setupSkipped, "skipped"},
		{setupUnavailable, "not available"}, {setupFailed, "failed"}, {setupNotRun, "not run"},
	} {
		if n := counts[s.status]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, s.word))
		}
	}
	if rep.Switching != "" {
		fmt.Fprintf(w, "switching: %s\n", rep.Switching)
	}
	fmt.Fprintf(w, "setup: %s; progress kept in %s\n", strings.Join(parts, ", "), rep.State)
}

// runApply is setup's apply step: vagentctl apply.
func runApply(ctx context.Context, cmd *cli.Command, cfg *config.Config) (string, error) {
	return "", apply(ctx, cmd)
}

// setupVagentdUnit is the gateway's unit, shipped by the package.
const setupVagentdUnit = "vagentd.service"

// setupSystemd connects to systemd for the vagentd step; tests replace it.
var setupSystemd = func(ctx context.Context, cfg *config.Config) (supervisor.Systemd, error) {
	sd, err := supervisor.NewDBus(ctx, cfg.Supervisor.DBusTimeout.Duration)
	if err != nil {
		return nil, &dbusError{err}
	}
	return sd, nil
}

// startVagentd is setup's last step: start vagentd.service over D-Bus
// unless it runs already.
func startVagentd(ctx context.Context, cmd *cli.Command, cfg *config.Config) (string, error) {
	sd, err := setupSystemd(ctx, cfg)
	if err != nil {
		return "", err
	}
	defer sd.Close()
	st, err := sd.State(ctx, setupVagentdUnit)
	if err != nil {
		return "", err
	}
	switch {
	case st.LoadState != "loaded":
		return "", fmt.Errorf("%s is not installed (%s): install the vagent package, which ships it", setupVagentdUnit, st.LoadState)
	case st.Running():
		return fmt.Sprintf("%s was already running", setupVagentdUnit), nil
	case st.ActiveState == "failed":
		// A unit that hit its start limit refuses starts until reset.
		if err := sd.ResetFailed(ctx, setupVagentdUnit); err != nil {
			return "", err
		}
	}
	if err := sd.Start(ctx, setupVagentdUnit); err != nil {
		return "", fmt.Errorf("%w (journalctl -u %s says why)", err, setupVagentdUnit)
	}
	return fmt.Sprintf("started %s (enable it at boot: systemctl enable %s)", setupVagentdUnit, setupVagentdUnit), nil
}
