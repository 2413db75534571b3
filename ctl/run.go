package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/controlapi"
	"github.com/vagent-dev/vagent/pipeline"
)

// runCmd is `vagentctl run`: submit a pipeline run to vagentd and follow
// it, and the subcommands that look after runs.
func runCmd() *cli.Command {
	return &cli.Command{
		Name:      "run",
		Usage:     "run a pipeline (configs/pipelines/NAME.toml) over one input or a file of inputs, through vagentd",
		ArgsUsage: "PIPELINE [INPUT]",
		Description: "PIPELINE is a pipeline's name in the pipelines directory beside the main configuration\n" +
			"file (/etc/vagent/pipelines/NAME.toml), or the path of a pipeline file. vagentd runs every\n" +
			"input through one stage before it switches to the next stage's agent, so N inputs cost about\n" +
			"one switch per stage. vagentctl follows the run: each answer streams under a header\n" +
			"(## STAGE (AGENT)); with several inputs a progress line (stage, item i/N, tokens/s) goes to\n" +
			"stderr. At the end it prints the run directory: one Markdown file per input and stage, and\n" +
			"run.jsonl. Ctrl-C stops following; the run goes on (vagentctl run follow ID).\n" +
			"Exit status: 0 when every item completed, 1 when the run failed or was cancelled, 2 on usage errors.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "inputs", Aliases: []string{"i"}, Usage: "read the inputs from `FILE`, one a line (# comments and blank lines skipped; a line starting with '\"' is a JSON string); - reads stdin"},
			&cli.BoolFlag{Name: "detach", Aliases: []string{"d"}, Usage: "submit the run, print its id and return"},
			&cli.BoolFlag{Name: "json", Usage: "print the run as JSON for scripts (when it has ended, or at once with --detach), no answers"},
		},
		OnUsageError: subUsageError,
		Action:       runSubmit,
		Commands: []*cli.Command{
			{
				Name: "list", Usage: "list pipeline runs, newest first",
				Flags:        []cli.Flag{jsonFlag, &cli.IntFlag{Name: "limit", Value: 20, Usage: "at most `N` runs"}},
				OnUsageError: subUsageError,
				Action:       runList,
			},
			runIDCmd("show", "show a run: its status, items by state and run directory", runShow),
			runIDCmd("follow", "follow a run again: its answers stream as they come", runFollowCmd),
			runIDCmd("cancel", "cancel a run: pending items are cancelled, running ones finish", runOp("cancel")),
			runIDCmd("pause", "pause a run: no new item starts until resume", runOp("pause")),
			runIDCmd("resume", "resume a paused run", runOp("resume")),
		},
	}
}

func runIDCmd(name, usage string, action func(context.Context, *cli.Command, *controlapi.Client, string) error) *cli.Command {
	return &cli.Command{
		Name: name, Usage: usage, ArgsUsage: "ID",
		Flags:        []cli.Flag{jsonFlag},
		OnUsageError: subUsageError,
		Action: func(ctx context.Context, cmd *cli.Command) error {
			if cmd.Args().Len() != 1 {
				return &usageError{msg: fmt.Sprintf("run %s takes exactly one run ID, got %d arguments", name, cmd.Args().Len()), cmd: cmd.FullName()}
			}
			_, dc, err := reachRuns(ctx, cmd)
			if err != nil {
				return err
			}
			return action(ctx, cmd, dc, cmd.Args().First())
		},
	}
}

// reachRuns loads the configuration and reaches vagentd, which runs
// pipelines: without it there is nothing to submit to.
func reachRuns(ctx context.Context, cmd *cli.Command) (*config.Config, *controlapi.Client, error) {
	cfg, err := loadConfig(cmd)
	if err != nil {
		return nil, nil, err
	}
	dc, err := controlapi.Reach(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	if dc == nil {
		return nil, nil, &daemonDownError{fmt.Errorf("vagentd is not running (no one answers on %s): pipeline runs live in vagentd", cfg.Gateway.ControlSocket)}
	}
	return cfg, dc, nil
}

// daemonDownError marks a command that needs vagentd while it is not running.
type daemonDownError struct{ error }

func (e *daemonDownError) Unwrap() error { return e.error }

// runFailedError is a run that ended failed or cancelled: exit status 1.
type runFailedError struct{ msg, id string }

func (e *runFailedError) Error() string { return e.msg }

func runSubmit(ctx context.Context, cmd *cli.Command) error {
	args := cmd.Args().Slice()
	inputsFile := cmd.String("inputs")
	switch {
	case len(args) == 0:
		return &usageError{msg: "run takes a PIPELINE (a name or a file) and an INPUT, or --inputs FILE", cmd: cmd.FullName()}
	case len(args) > 2:
		return &usageError{msg: fmt.Sprintf("run takes a PIPELINE and at most one INPUT (quote it), got %d arguments", len(args)), cmd: cmd.FullName()}
	case len(args) == 2 && inputsFile != "":
		return &usageError{msg: "run takes an INPUT or --inputs FILE, not both", cmd: cmd.FullName()}
	case len(args) == 1 && inputsFile == "":
		return &usageError{msg: "run needs an INPUT after the PIPELINE, or --inputs FILE", cmd: cmd.FullName()}
	}
	req := controlapi.RunRequest{}
	if len(args) == 2 {
		if strings.TrimSpace(args[1]) == "" {
			return &usageError{msg: "the INPUT is empty", cmd: cmd.FullName()}
		}
		req.Inputs = []string{args[1]}
	} else {
		var r io.Reader = cmd.Root().Reader
		name := "stdin"
		if inputsFile != "-" {
			f, err := os.Open(inputsFile)
			if err != nil {
				return fmt.Errorf("--inputs: %w", err)
			}
			defer f.Close()
			r, name = f, inputsFile
		} else if r == nil {
			r = os.Stdin
		}
		in, err := pipeline.ReadInputs(name, r)
		if err != nil {
			return &inputsError{err}
		}
		req.Inputs = in
	}
	cfg, err := loadConfig(cmd)
	if err != nil {
		return err
	}
	// Checked here first, so that errors name the file as this user
	// knows it; vagentd checks again against its own configuration.
	if p := args[0]; strings.ContainsRune(p, '/') || strings.HasSuffix(p, pipeline.Ext) {
		data, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("read pipeline: %w", err)
		}
		if _, err := pipeline.Parse(cfg, p, data); err != nil {
			return err
		}
		req.File, req.Contents = p, string(data)
	} else {
		if _, err := pipeline.Load(cfg, p); err != nil {
			return err
		}
		req.Pipeline = p
	}
	dc, err := controlapi.Reach(ctx, cfg)
	if err != nil {
		return err
	}
	if dc == nil {
		return &daemonDownError{fmt.Errorf("vagentd is not running (no one answers on %s): pipeline runs live in vagentd", cfg.Gateway.ControlSocket)}
	}
	run, err := dc.SubmitRun(ctx, req)
	if err != nil {
		return err
	}
	out := cmd.Root().Writer
	if cmd.Bool("detach") {
		if cmd.Bool("json") {
			return writeJSON(out, run)
		}
		fmt.Fprintf(out, "%s\n", run.ID)
		fmt.Fprintf(cmd.Root().ErrWriter, "run %s submitted: %d inputs through %s; follow it with: vagentctl run follow %s\n",
			run.ID, run.Inputs, stagesLine(run.Stages), run.ID)
		return nil
	}
	return follow(ctx, cmd, dc, run)
}

// followLostError is a follow that vagentd ended before the run did (it
// restarted): the run is stored and goes on in the next vagentd.
type followLostError struct {
	error
	id string
}

func (e *followLostError) Unwrap() error { return e.error }

// inputsError is a bad inputs file: nothing was submitted.
type inputsError struct{ error }

func (e *inputsError) Unwrap() error { return e.error }

func runFollowCmd(ctx context.Context, cmd *cli.Command, dc *controlapi.Client, id string) error {
	run, err := dc.Run(ctx, id)
	if err != nil {
		return err
	}
	return follow(ctx, cmd, dc, run)
}

// follow prints run's answers as they stream and its directory at the
// end; Ctrl-C (ctx ending) only stops following.
func follow(ctx context.Context, cmd *cli.Command, dc *controlapi.Client, run *controlapi.Run) error {
	out, errw := cmd.Root().Writer, cmd.Root().ErrWriter
	jsonOut := cmd.Bool("json")
	p := newRunPrinter(out, errw, run, jsonOut)
	final := run
	err := dc.Follow(ctx, run.ID, func(ev controlapi.RunEvent) error {
		if ev.Type == controlapi.EventRun && ev.Run != nil {
			final = ev.Run
		}
		p.event(ev)
		return nil
	})
	p.endProgress()
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintf(errw, "\nstopped following; run %s goes on.\nfollow it again: vagentctl run follow %s\ncancel it:       vagentctl run cancel %s\n", run.ID, run.ID, run.ID)
			return nil
		}
		var ce *controlapi.Error
		if errors.As(err, &ce) && ce.Lost {
			return &followLostError{err, run.ID}
		}
		return err
	}
	if jsonOut {
		if err := writeJSON(out, final); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(out, "\nrun %s %s: %s\n", final.ID, final.Status, itemsLine(final))
		if final.Dir != "" {
			fmt.Fprintf(out, "run directory: %s\n", final.Dir)
		}
	}
	if final.Status != controlapi.RunCompleted {
		msg := fmt.Sprintf("run %s %s", final.ID, final.Status)
		if final.Error != "" {
			msg += ": " + final.Error
		}
		return &runFailedError{msg: msg, id: final.ID}
	}
	return nil
}

func stagesLine(st []controlapi.RunStage) string {
	var parts []string
	for _, s := range st {
		parts = append(parts, fmt.Sprintf("%s (%s)", s.Name, s.Agent))
	}
	return strings.Join(parts, " → ")
}

func itemsLine(r *controlapi.Run) string {
	total := 0
	for _, n := range r.Items {
		total += n
	}
	parts := []string{fmt.Sprintf("%d of %d answers", r.Items["done"], total)}
	for _, s := range []string{"failed", "cancelled", "pending", "running"} {
		if n := r.Items[s]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, s))
		}
	}
	return strings.Join(parts, ", ")
}

// runPrinter turns a run's events into what a person reads: with one
// input, each stage's answer streams under its header; with several, each
// answer is printed whole when done (their streams interleave), and a
// progress line goes to errw.
type runPrinter struct {
	out, errw io.Writer
	run       *controlapi.Run
	quiet     bool // --json: no answers, no progress
	many      bool
	texts     map[[2]string]*strings.Builder // by input and stage
	streamed  map[[2]string]bool
	// progress per stage: items done, tokens and when its first item started.
	done     map[string]int
	tokens   map[string]int
	started  map[string]time.Time
	progress bool // a progress line is on screen
}

func newRunPrinter(out, errw io.Writer, run *controlapi.Run, quiet bool) *runPrinter {
	return &runPrinter{
		out: out, errw: errw, run: run, quiet: quiet, many: run.Inputs > 1,
		texts: map[[2]string]*strings.Builder{}, streamed: map[[2]string]bool{},
		done: map[string]int{}, tokens: map[string]int{}, started: map[string]time.Time{},
	}
}

func (p *runPrinter) header(ev controlapi.RunEvent) string {
	h := fmt.Sprintf("## %s (%s)", ev.Stage, ev.Agent)
	if p.many {
		h += fmt.Sprintf(" · input %d/%d", ev.Input+1, p.run.Inputs)
	}
	return h
}

func (p *runPrinter) event(ev controlapi.RunEvent) {
	if p.quiet {
		return
	}
	key := [2]string{fmt.Sprint(ev.Input), ev.Stage}
	switch ev.Type {
	case controlapi.EventStageStart:
		if _, ok := p.started[ev.Stage]; !ok {
			p.started[ev.Stage] = time.Now()
		}
		if !p.many {
			fmt.Fprintf(p.out, "%s\n\n", p.header(ev))
		}
	case controlapi.EventDelta:
		if p.many {
			b := p.texts[key]
			if b == nil {
				b = &strings.Builder{}
				p.texts[key] = b
			}
			b.WriteString(ev.Text)
			return
		}
		p.streamed[key] = true
		io.WriteString(p.out, ev.Text)
	case controlapi.EventStageDone, controlapi.EventStageFailed:
		p.done[ev.Stage]++
		p.tokens[ev.Stage] += ev.Tokens
		text := ev.Text
		if b := p.texts[key]; b != nil && text == "" {
			text = b.String()
		}
		delete(p.texts, key)
		p.endProgress()
		if p.many || !p.streamed[key] {
			if !p.many && ev.Type == controlapi.EventStageDone {
				// Followed from the middle: the header was not printed.
				fmt.Fprintf(p.out, "%s\n\n", p.header(ev))
			}
			if p.many {
				fmt.Fprintf(p.out, "%s\n\n", p.header(ev))
			}
			if ev.Type == controlapi.EventStageDone {
				io.WriteString(p.out, text)
			}
		}
		if ev.Type == controlapi.EventStageFailed {
			fmt.Fprintf(p.out, "\n(%s failed for input %d: %s)\n", ev.Stage, ev.Input+1, ev.Text)
		}
		fmt.Fprint(p.out, "\n\n")
		if p.many {
			p.showProgress(ev)
		}
	}
}

// showProgress writes the progress line: the stage, items done of the
// inputs and the stage's tokens per second so far.
func (p *runPrinter) showProgress(ev controlapi.RunEvent) {
	rate := ""
	if t0, ok := p.started[ev.Stage]; ok {
		if s := time.Since(t0).Seconds(); s > 0 {
			rate = fmt.Sprintf(" · %.0f tokens/s", float64(p.tokens[ev.Stage])/s)
		}
	}
	line := fmt.Sprintf("[%s (%s): item %d/%d%s]", ev.Stage, ev.Agent, p.done[ev.Stage], p.run.Inputs, rate)
	if isTerminal(p.errw) {
		fmt.Fprintf(p.errw, "\r\033[K%s", line)
		p.progress = true
		return
	}
	fmt.Fprintln(p.errw, line)
}

func (p *runPrinter) endProgress() {
	if p.progress {
		fmt.Fprint(p.errw, "\r\033[K")
		p.progress = false
	}
}

// isTerminal reports whether w is a terminal, where a progress line may
// rewrite itself.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func runList(ctx context.Context, cmd *cli.Command) error {
	if err := noArgs(cmd); err != nil {
		return err
	}
	_, dc, err := reachRuns(ctx, cmd)
	if err != nil {
		return err
	}
	l, err := dc.Runs(ctx, "", int(cmd.Int("limit")))
	if err != nil {
		return err
	}
	out := cmd.Root().Writer
	if cmd.Bool("json") {
		return writeJSON(out, l)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tPIPELINE\tSTATUS\tINPUTS\tANSWERS\tCREATED")
	for _, r := range l.Runs {
		total := 0
		for _, n := range r.Items {
			total += n
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d/%d\t%s\n", r.ID, r.Pipeline, r.Status, r.Inputs, r.Items["done"], total,
			r.CreatedAt.Local().Format("2006-01-02 15:04:05"))
	}
	return tw.Flush()
}

func runShow(ctx context.Context, cmd *cli.Command, dc *controlapi.Client, id string) error {
	r, err := dc.Run(ctx, id)
	if err != nil {
		return err
	}
	return printRun(cmd, r)
}

func printRun(cmd *cli.Command, r *controlapi.Run) error {
	out := cmd.Root().Writer
	if cmd.Bool("json") {
		return writeJSON(out, r)
	}
	fmt.Fprintf(out, "run %s: %s\n", r.ID, r.Status)
	fmt.Fprintf(out, "pipeline: %s: %s\n", r.Pipeline, stagesLine(r.Stages))
	fmt.Fprintf(out, "inputs: %d\nanswers: %s\n", r.Inputs, itemsLine(r))
	fmt.Fprintf(out, "created: %s\n", r.CreatedAt.Local().Format(time.RFC3339))
	if r.Error != "" {
		fmt.Fprintf(out, "error: %s\n", r.Error)
	}
	if r.Dir != "" {
		fmt.Fprintf(out, "run directory: %s\n", r.Dir)
	}
	return nil
}

func runOp(op string) func(context.Context, *cli.Command, *controlapi.Client, string) error {
	return func(ctx context.Context, cmd *cli.Command, dc *controlapi.Client, id string) error {
		r, err := dc.RunOp(ctx, id, op)
		if err != nil {
			return err
		}
		return printRun(cmd, r)
	}
}

// runHint is the hint for the errors of vagentctl run.
func runHint(err error) string {
	var (
		de *daemonDownError
		fe *runFailedError
		ie *inputsError
		le *followLostError
	)
	switch {
	case errors.As(err, &le):
		return fmt.Sprintf("run %s is stored and goes on when vagentd is back: vagentctl run follow %s", le.id, le.id)
	case errors.As(err, &de):
		return "start it: systemctl start vagentd"
	case errors.As(err, &fe):
		return fmt.Sprintf("vagentctl run show %s says what ended it; the answers so far are in its run directory", fe.id)
	case errors.As(err, &ie):
		return "fix that line; nothing was submitted"
	}
	return ""
}
