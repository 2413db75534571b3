// Command gen writes vagent's manual pages and shell completions into a
// directory, for the packages (make deb rpm runs it):
//
//	OUT/man/vagentctl.1  OUT/man/vagentd.8  OUT/man/vllm-sim.1
//	OUT/completion/vagentctl.bash  OUT/completion/_vagentctl  OUT/completion/vagentctl.fish
//
// vagentctl's page and completions come from its command tree (ctl.App);
// vagentd's options from the flag usage the built binary prints for -h.
//
//	go run ./cmd/mandoc-gen -out build/docs -vagentd bin/vagentd -version 1.2.3
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/ctl"
	"github.com/vagent-dev/vagent/internal/mandoc"
)

func main() {
	out := flag.String("out", "", "directory to write man/ and completion/ into (required)")
	vagentd := flag.String("vagentd", "", "the built vagentd binary, run with -h for its options (required)")
	version := flag.String("version", "dev", "vagent's version, for the pages' footer")
	date := flag.String("date", "", "date in the footer, YYYY-MM-DD (default: $SOURCE_DATE_EPOCH, else today)")
	flag.Parse()
	if *out == "" || *vagentd == "" || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	if *date == "" {
		*date = buildDate()
	}
	if err := run(*out, *vagentd, *version, *date); err != nil {
		fmt.Fprintf(os.Stderr, "mandoc gen: %v\n", err)
		os.Exit(1)
	}
}

// buildDate honours SOURCE_DATE_EPOCH, so that rebuilding a release gives
// byte-identical pages.
func buildDate() string {
	t := time.Now()
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			t = time.Unix(n, 0)
		}
	}
	return t.UTC().Format("2006-01-02")
}

func run(out, vagentd, version, date string) error {
	source := "vagent " + version
	files := map[string]func(io.Writer) error{}

	app := ctl.App(io.Discard, io.Discard)
	files["man/vagentctl.1"] = vagentctlPage(app, source, date).WriteRoff
	// The same bytes "vagentctl completion SHELL" prints.
	for shell, name := range map[string]string{"bash": "vagentctl.bash", "zsh": "_vagentctl", "fish": "vagentctl.fish"} {
		files["completion/"+name] = func(w io.Writer) error { return ctl.WriteCompletion(w, shell) }
	}

	usage, err := flagUsage(vagentd)
	if err != nil {
		return err
	}
	files["man/vagentd.8"] = vagentdPage(mandoc.FlagOptions(usage), source, date).WriteRoff
	files["man/vllm-sim.1"] = vllmSimPage(source, date).WriteRoff

	for name, write := range files {
		path := filepath.Join(out, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		var b bytes.Buffer
		if err := write(&b); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// flagUsage runs bin -h and returns what Go's flag package printed.
func flagUsage(bin string) (string, error) {
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "-h")
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return "", fmt.Errorf("%s -h: %w", bin, err)
	}
	if !strings.Contains(stderr.String(), "\n  -") {
		return "", fmt.Errorf("%s -h printed no flag usage: %q", bin, stderr.String())
	}
	return stderr.String(), nil
}

func exitStatus() mandoc.Section {
	return mandoc.Section{Title: "EXIT STATUS", Items: []mandoc.Item{
		{Tag: strconv.Itoa(ctl.ExitOK), Text: "Success."},
		{Tag: strconv.Itoa(ctl.ExitFailure), Text: "Failure: the error is printed on standard error, one line per problem, with a hint."},
		{Tag: strconv.Itoa(ctl.ExitUsage), Text: "The command was used wrongly: an unknown command, option or agent count."},
	}}
}

func vagentctlPage(app *cli.Command, source, date string) *mandoc.Page {
	unitDir := "/etc/systemd/system"
	return &mandoc.Page{
		Name: app.Name, Section: "1", Summary: app.Usage, Date: date, Source: source,
		Synopsis: []string{
			mandoc.Bold(app.Name) + " [" + mandoc.Bold("--config") + " " + mandoc.Italic("FILE") + "] " +
				mandoc.Italic("COMMAND") + " [" + mandoc.Italic("OPTIONS") + "] [" + mandoc.Italic("AGENT") + "]",
		},
		Description: []string{
			"vagentctl runs local LLM agents, each one vLLM server with a model and tuned flags, as the systemd " +
				"units vagent@NAME.service. It renders the units from the configuration, starts and stops agents " +
				"over D-Bus so that only what fits in GPU memory runs, and shows their state and logs.",
			"While vagentd runs, switch, stop and status go through its control socket, so that vagentd can " +
				"drain an agent's requests before stopping it; otherwise vagentctl drives systemd itself. " +
				"Root and the members of group vagent may use it.",
			"systemctl start vagent@NAME and journalctl -u vagent@NAME work as well: agents that cannot share " +
				"a GPU carry Conflicts=, so systemd stops the other one itself.",
		},
		OptionsTitle: "GLOBAL OPTIONS",
		Options: append(mandoc.Options(app.Flags),
			mandoc.Option{Names: []string{"h", "help"}, Usage: "show help, for vagentctl or after a command for that command"},
			mandoc.Option{Names: []string{"v", "version"}, Usage: "print the version"}),
		Commands: mandoc.Commands(app),
		Sections: []mandoc.Section{
			exitStatus(),
			{Title: "ENVIRONMENT", Items: []mandoc.Item{
				{Tag: config.EnvPath, Text: "The main configuration file, when --config is not given."},
			}},
			{Title: "FILES", Items: []mandoc.Item{
				{Tag: config.DefaultPath, Text: "The main configuration file."},
				{Tag: filepath.Join(filepath.Dir(config.DefaultPath), "agents") + "/NAME.toml", Text: "One file per agent."},
				{Tag: "/usr/lib/systemd/system/vagent@.service", Text: "The agents' template unit, as packaged."},
				{Tag: unitDir + "/vagent@NAME.service.d/50-vagent.conf", Text: "An agent's drop-in, written by vagentctl apply."},
				{Tag: "/run/vagent/vagentd.sock", Text: "vagentd's control socket (gateway.control_socket)."},
			}},
		},
		SeeAlso: []string{"vagentd(8)", "vllm-sim(1)", "systemctl(1)", "journalctl(1)", "systemd.exec(5)"},
	}
}

func vagentdPage(opts []mandoc.Option, source, date string) *mandoc.Page {
	return &mandoc.Page{
		Name: "vagentd", Section: "8", Date: date, Source: source,
		Summary:  "vagent's gateway: one OpenAI-compatible endpoint for local LLM agents",
		Synopsis: []string{mandoc.Bold("vagentd") + " [" + mandoc.Italic("OPTIONS") + "]"},
		Description: []string{
			"vagentd puts one OpenAI-compatible endpoint (gateway.listen) in front of every agent: it routes each " +
				"request by model name to the agent that serves it, starting that agent first and stopping what " +
				"does not fit beside it in GPU memory, and queues requests while it does.",
			"It also serves the control socket vagentctl uses (gateway.control_socket, mode 0660, group vagent). " +
				"It runs as the unit vagentd.service, as user vagent, and manages the agents' units " +
				"vagent@NAME.service over D-Bus, which polkit allows user vagent for those units only.",
			"vagentd keeps no state of its own: restarting or upgrading it leaves every agent running, and it " +
				"rebuilds its view from systemd and the GPU when it starts.",
			"Its listening sockets (the endpoint, each agent's listen, the control socket) belong to vagentd.socket, " +
				"which vagentctl apply renders from the configuration: systemd holds them while vagentd restarts, so new " +
				"connections wait for the next vagentd instead of being refused. Run without them (LISTEN_FDS unset), " +
				"vagentd opens its listeners itself.",
		},
		Options: opts,
		Sections: []mandoc.Section{
			{Title: "EXIT STATUS", Items: []mandoc.Item{
				{Tag: "0", Text: "Stopped by SIGTERM or SIGINT after draining requests in flight."},
				{Tag: "1", Text: "Could not start (the configuration, a listener, D-Bus) or a listener failed."},
				{Tag: "2", Text: "Unknown option or argument."},
			}},
			{Title: "FILES", Items: []mandoc.Item{
				{Tag: config.DefaultPath, Text: "The main configuration file."},
				{Tag: "/usr/share/polkit-1/rules.d/50-vagent.rules", Text: "What user vagent may do with systemd."},
				{Tag: "/usr/lib/systemd/system/vagentd.socket", Text: "The sockets vagentd serves on, rendered from the packaged configuration; vagentctl apply writes its own into /etc/systemd/system where this host's differs."},
			}},
		},
		SeeAlso: []string{"vagentctl(1)", "vllm-sim(1)", "systemd.service(5)", "systemd.socket(5)"},
	}
}

func vllmSimPage(source, date string) *mandoc.Page {
	return &mandoc.Page{
		Name: "vllm-sim", Section: "1", Date: date, Source: source,
		Summary: "a stand-in for vllm serve that needs no GPU",
		Synopsis: []string{mandoc.Bold("vllm-sim serve") + " " + mandoc.Italic("MODEL") + " [" + mandoc.Italic("OPTIONS") + "]",
			mandoc.Bold("vllm-sim") + " " + mandoc.Bold("--version")},
		Description: []string{
			"vllm-sim behaves like vllm serve of the vLLM version in VLLM_SIM_VERSION: the same options (an unknown " +
				"one exits with status 2, like argparse), the port bound at once but answering only once the model " +
				"is \"loaded\", the same endpoints, response shapes, metric names, log lines and errors. GPU memory " +
				"is kept in a ledger file shared by every simulator on the host, so that over-commit fails with " +
				"vLLM's own out-of-memory errors.",
			"vagent runs agents on it when [engine] kind = \"sim\" (the shipped default), to try vagent without a GPU; " +
				"its tests run every agent on it. vllm-sim serve --help lists the options it accepts.",
		},
		Sections: []mandoc.Section{
			{Title: "ENVIRONMENT", Items: []mandoc.Item{
				{Tag: "VLLM_SIM_VERSION", Text: "The vLLM version whose options and behaviour to follow."},
				{Tag: "VLLM_SIM_LEDGER", Text: "The shared GPU memory ledger file."},
				{Tag: "VLLM_SIM_GPUS", Text: "How many GPUs to simulate."},
				{Tag: "VLLM_SIM_TOTAL_MIB", Text: "The memory of each simulated GPU, in MiB."},
				{Tag: "VLLM_SIM_LOAD_SECONDS", Text: "Load time, instead of one derived from the model's size."},
				{Tag: "VLLM_SIM_TOKENS_PER_SECOND", Text: "Generation speed."},
				{Tag: "VLLM_SIM_TTFT_MS", Text: "Time to the first token, in milliseconds."},
				{Tag: "VLLM_SIM_RELEASE_MS", Text: "How long the ledger keeps a stopped engine's memory, in milliseconds."},
				{Tag: "VLLM_SIM_WAKE_FRACTION", Text: "Share of the load time a wake from sleep takes."},
				{Tag: "VLLM_SIM_COMPLETIONS", Text: "A file to append one line to for every answer written whole: the request's X-Request-Id and the model (tests count deliveries with it; vLLM has no such file)."},
				{Tag: "VLLM_SIM_REQUIRE_CACHE", Text: "With 1, refuse a model missing from the Hugging Face cache when HF_HUB_OFFLINE is set, like vLLM."},
			}},
		},
		SeeAlso: []string{"vagentctl(1)", "vagentd(8)"},
	}
}
