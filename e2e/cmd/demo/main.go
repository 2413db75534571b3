// Command demo shows vagent's main job without a GPU: it boots a throwaway
// systemd (package e2e/sandbox), installs the shipped configs/ with the
// simulator engine and the packaged vagentd.service, and sends one streamed
// chat completion to each agent through vagentd's OpenAI endpoint, so that
// vagentd switches the one simulated GPU from agent to agent; vagentctl
// status and vagentd's journal show the switches. With -keep it then stays
// up, serving any OpenAI client, until interrupted. It needs root. Run it
// with "make demo" (or "make demo-keep").
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/vagent-dev/vagent/e2e/sandbox"
)

// prompt is what every agent is asked.
const prompt = "Say hello in one short sentence."

func main() {
	configs := flag.String("configs", "configs", "configuration tree to install (vagent.toml and agents/)")
	unit := flag.String("unit", "packaging/vagentd.service", "vagentd's unit file, as packaged")
	load := flag.Float64("sim-load-seconds", 2, "simulated model load time per agent (0: the simulator's size-based default)")
	listen := flag.String("listen", "127.0.0.1:8080", "address of vagentd's OpenAI endpoint (the host shares the sandbox's network)")
	keep := flag.Bool("keep", false, "after the demo, keep vagentd serving at -listen until interrupted (Ctrl-C)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "demo: unexpected arguments %q\nhint: demo -h lists the options\n", flag.Args())
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *configs, *unit, *load, *listen, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) { fmt.Fprintf(os.Stderr, "# "+format+"\n", args...) }

func run(ctx context.Context, configs, unit string, load float64, listen string, keep bool) error {
	// Fail before booting anything when the endpoint's port is taken.
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("the gateway's address %s: %w (choose another with -listen)", listen, err)
	}
	l.Close()
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

	logf("building vagentctl, vagentd and vllm-sim")
	defer sandbox.CleanBuildCache()
	if err := s.Build(ctx, "./cmd/vagentctl", "./cmd/vagentd", "./cmd/vllm-sim"); err != nil {
		return err
	}
	set := map[string]any{
		"gateway.listen":         listen,
		"gateway.control_socket": s.Path("run/vagent/vagentd.sock"),
	}
	if load > 0 {
		set["gpu.sim_load_seconds"] = load
	}
	cfg, err := s.InstallConfig(configs, set)
	if err != nil {
		return err
	}
	agents, err := agentNames(filepath.Join(configs, "agents"))
	if err != nil {
		return err
	}
	// The agents' own listeners are on the host's network too: free
	// ports, not the shipped ones, which something on this host may hold.
	// (The engines listen on unix sockets.)
	for _, a := range agents {
		port, err := sandbox.FreePort()
		if err != nil {
			return err
		}
		if err := s.EditConfig("agents/"+a+".toml", map[string]any{"listen": fmt.Sprintf("127.0.0.1:%d", port)}); err != nil {
			return err
		}
	}
	logf("config %s (VAGENT_CONFIG inside the sandbox)", cfg)

	// What the package's postinst does: apply, then enable and start vagentd.
	if err := step(ctx, s, "vagentctl", "apply"); err != nil {
		return err
	}
	if err := s.InstallGateway(ctx, unit, cfg); err != nil {
		return err
	}
	if err := step(ctx, s, "systemctl", "enable", "--now", sandbox.GatewayUnit); err != nil {
		return fmt.Errorf("%w\n%s", err, s.Journal(ctx, sandbox.GatewayUnit, "-n", "30"))
	}
	base := "http://" + listen
	if err := waitHealthy(ctx, base+"/healthz", time.Minute); err != nil {
		return fmt.Errorf("%w\n%s", err, s.Journal(ctx, sandbox.GatewayUnit, "-n", "30"))
	}
	if err := step(ctx, s, "vagentctl", "status"); err != nil {
		return err
	}

	// One streamed answer from each agent through the one endpoint; each
	// request makes vagentd switch the GPU to the agent it names.
	client := openai.NewClient(option.WithBaseURL(base+"/v1/"), option.WithAPIKey("none"), option.WithMaxRetries(0))
	for _, a := range streamOrder(agents) {
		fmt.Printf("\n$ %s\n", curlLine(base, a))
		if err := stream(ctx, client, a, os.Stdout); err != nil {
			return fmt.Errorf("streamed answer from %s: %w\n%s", a, err, s.Journal(ctx, sandbox.GatewayUnit, "-n", "30"))
		}
		if err := step(ctx, s, "vagentctl", "status"); err != nil {
			return err
		}
	}

	// The switches as vagentd logged them, and one agent's records picked
	// out by the journal field vagentd gives them.
	const switches = `journalctl -u vagentd -o cat | grep 'msg="switching to agent"'`
	out, err := stepShown(ctx, s, switches, "bash", "-o", "pipefail", "-c", switches)
	if err != nil {
		return err
	}
	if n := strings.Count(out, `msg="switching to agent"`); n < 2 {
		return fmt.Errorf("vagentd's journal shows %d switches, want at least 2", n)
	}
	if err := step(ctx, s, "journalctl", "-u", "vagentd", "-o", "cat", "--no-pager", "AGENT="+streamOrder(agents)[0]); err != nil {
		return err
	}

	if keep {
		printKeep(base, agents, s.PID(), cfg, s.BinDir())
		<-ctx.Done()
		fmt.Println()
	}
	return nil
}

// agentNames lists the agents of a configuration: one file NAME.toml each.
func agentNames(dir string) ([]string, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.toml"))
	if err != nil || len(files) == 0 {
		return nil, fmt.Errorf("no agents in %s (%v)", dir, err)
	}
	var names []string
	for _, f := range files {
		names = append(names, strings.TrimSuffix(filepath.Base(f), ".toml"))
	}
	return names, nil
}

// streamOrder asks po first, as the quick start does, then the others.
func streamOrder(agents []string) []string {
	out := slices.Clone(agents)
	if i := slices.Index(out, "po"); i > 0 {
		out = append([]string{"po"}, slices.Delete(out, i, i+1)...)
	}
	return out
}

func curlLine(base, agent string) string {
	return fmt.Sprintf(`curl -N %s/v1/chat/completions -H 'Content-Type: application/json' `+
		`-d '{"model": "%s", "stream": true, "max_tokens": 16, "messages": [{"role": "user", "content": "%s"}]}'`,
		base, agent, prompt)
}

// stream asks agent through the gateway and prints the answer as it comes.
func stream(ctx context.Context, client openai.Client, agent string, w io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	start := time.Now()
	st := client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
		Model:     agent,
		Messages:  []openai.ChatCompletionMessageParamUnion{openai.UserMessage(prompt)},
		MaxTokens: openai.Int(16),
	})
	var first time.Duration
	chunks := 0
	fmt.Fprintf(w, "%s: ", agent)
	for st.Next() {
		c := st.Current()
		if c.Model != agent {
			return fmt.Errorf("a chunk from model %q", c.Model)
		}
		for _, ch := range c.Choices {
			if ch.Delta.Content != "" {
				if chunks == 0 {
					first = time.Since(start)
				}
				chunks++
				fmt.Fprint(w, ch.Delta.Content)
			}
		}
	}
	fmt.Fprintln(w)
	if err := st.Err(); err != nil {
		return err
	}
	if chunks == 0 {
		return errors.New("the stream ended without content")
	}
	fmt.Fprintf(w, "(%d chunks streamed; first after %s, the agent's start included)\n", chunks, first.Round(100*time.Millisecond))
	return nil
}

func waitHealthy(ctx context.Context, url string, bound time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	hc := &http.Client{Timeout: 2 * time.Second}
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("vagentd's %s did not answer 200 within %s (last: %v)", url, bound, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// printKeep says how to reach the demo that stays up.
func printKeep(base string, agents []string, pid int, cfg, bin string) {
	fmt.Printf(`
vagent keeps serving at %[1]s/v1 (models: %[2]s) until Ctrl-C.
Any OpenAI client works; the model names the agent, and vagentd switches to it.

  curl -N %[1]s/v1/chat/completions -H 'Content-Type: application/json' \
    -d '{"model": "dev", "stream": true, "messages": [{"role": "user", "content": "Hello"}]}'

  # Python, pip install openai
  from openai import OpenAI
  client = OpenAI(base_url="%[1]s/v1", api_key="none")
  for chunk in client.chat.completions.create(model="dev", stream=True,
          messages=[{"role": "user", "content": "Hello"}]):
      print(chunk.choices[0].delta.content or "", end="", flush=True)

Inside the sandbox (vagentctl, systemctl, journalctl see its systemd):
  sudo nsenter -t %[3]d -m -p env VAGENT_CONFIG=%[4]s PATH=%[5]s:$PATH bash
`, base, strings.Join(agents, ", "), pid, cfg, bin)
}

// step runs one command inside the sandbox, echoing it and its output.
func step(ctx context.Context, s *sandbox.Sandbox, argv ...string) error {
	_, err := stepShown(ctx, s, strings.Join(argv, " "), argv...)
	return err
}

// stepShown is step with the command shown as shown, and returns what it
// printed on stdout.
func stepShown(ctx context.Context, s *sandbox.Sandbox, shown string, argv ...string) (string, error) {
	fmt.Printf("\n$ %s\n", shown)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	var out strings.Builder
	cmd := s.Command(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = io.MultiWriter(os.Stdout, &out), os.Stderr
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: %w", shown, err)
	}
	return out.String(), nil
}
