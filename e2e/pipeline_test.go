package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/controlapi"
)

// pipelineLoadSeconds is the simulator's load time for the pipeline tests:
// long enough that a switch costs what it costs, short enough for ten
// inputs taken the naive way (thirty switches) to end in about a minute.
const pipelineLoadSeconds = 2

// pipelineIdeas are the inputs of the pipeline tests and bench.
var pipelineIdeas = []string{
	"a shared shopping list for a family",
	"a chess clock for the terminal",
	"a tool that renames photos by the date they were taken",
	"a habit tracker that runs in the browser without a server",
	"a command that tells how long ago a git branch was last merged",
	"a kitchen timer with several named timers at once",
	"a static site generator for one page of links",
	"a flashcard trainer with spaced repetition",
	"a budget that splits shared costs between flatmates",
	"a bot that answers questions about a project's README",
}

func newPipelineHost(tb testing.TB) *gwHost {
	tb.Helper()
	return newGatewayHost(tb, map[string]any{"gpu.sim_load_seconds": pipelineLoadSeconds})
}

// switches is vagent_switches_total, every reason together.
func (g *gwHost) switches() int {
	v, _ := g.metric("vagent_switches_total")
	return int(v)
}

// runPipeline runs the shipped pipeline over inputs with vagentctl run and
// returns the run and the switches it cost.
func (g *gwHost) runPipeline(tb testing.TB, inputs []string) (*controlapi.Run, int, time.Duration) {
	tb.Helper()
	file := g.s.Path("ideas.txt")
	if err := os.WriteFile(file, []byte("# ideas\n"+strings.Join(inputs, "\n")+"\n"), 0o644); err != nil {
		tb.Fatal(err)
	}
	before := g.switches()
	ctx, cancel := context.WithTimeout(tb.Context(), 5*time.Minute)
	defer cancel()
	t0 := time.Now()
	stdout, stderr, code, err := g.s.Exec(ctx, "vagentctl", "run", "idea-to-code", "--inputs", file, "--json")
	wall := time.Since(t0)
	if err != nil || code != 0 {
		tb.Fatalf("vagentctl run: exit %d %v\nstdout: %s\nstderr: %s", code, err, stdout, stderr)
	}
	var run controlapi.Run
	if err := json.Unmarshal([]byte(stdout), &run); err != nil {
		tb.Fatalf("vagentctl run --json: %v\n%s", err, stdout)
	}
	return &run, g.switches() - before, wall
}

// runNaive takes each input through the three stages one after another,
// each stage's answer in the next one's prompt, as a script calling the
// gateway would: the naive sequential client.
func (g *gwHost) runNaive(tb testing.TB, inputs []string) (int, time.Duration) {
	tb.Helper()
	before := g.switches()
	t0 := time.Now()
	for _, in := range inputs {
		prev := in
		for _, agent := range []string{"po", "architect", "dev"} {
			ctx, cancel := context.WithTimeout(tb.Context(), time.Minute)
			resp, body, err := g.post(ctx, "/v1/chat/completions", "", map[string]any{
				"model":      agent,
				"messages":   []map[string]string{{"role": "user", "content": "Next step for:\n" + prev}},
				"max_tokens": 64,
			})
			cancel()
			if err != nil || resp.StatusCode != http.StatusOK {
				tb.Fatalf("naive client, %s: %v %s", agent, err, body)
			}
			var c struct {
				Choices []struct {
					Message struct{ Content string } `json:"message"`
				} `json:"choices"`
			}
			if err := json.Unmarshal(body, &c); err != nil || len(c.Choices) == 0 {
				tb.Fatalf("naive client, %s: %v %s", agent, err, body)
			}
			prev = c.Choices[0].Message.Content
		}
	}
	return g.switches() - before, time.Since(t0)
}

// TestE2EPipelineSwitches: the shipped pipeline over ten inputs, with 2 s
// loads, costs at most four switches (one per stage, and one more if
// another agent was loaded), where the naive client costs about thirty;
// every answer lands in the run directory.
func TestE2EPipelineSwitches(t *testing.T) {
	g := newPipelineHost(t)
	// Another agent than the first stage's is loaded, as on a host in use.
	g.mustCtl("switch", "dev")

	run, switches, _ := g.runPipeline(t, pipelineIdeas)
	if run.Status != controlapi.RunCompleted || run.Items["done"] != 30 || run.Inputs != 10 {
		t.Fatalf("run %+v", run)
	}
	t.Logf("pipeline: %d switches", switches)
	if switches > 4 || switches < 3 {
		t.Errorf("the pipeline cost %d switches; want 3 or 4 (one per stage, plus one from dev)", switches)
	}

	// The run directory: 30 answers and a JSONL of every item.
	// The sandbox's state directory, a path valid inside and out.
	dir := run.Dir
	if want := g.s.Path("var/lib/vagent/runs", run.ID); dir != want {
		t.Errorf("run directory %s, want %s", dir, want)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("run directory: %v", err)
	}
	var md []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".md") {
			md = append(md, e.Name())
		}
	}
	sort.Strings(md)
	if len(md) != 30 || md[0] != "01-code.md" || md[29] != "10-stories.md" {
		t.Errorf("run directory holds %d answers: %v", len(md), md)
	}
	data, err := os.ReadFile(filepath.Join(dir, "run.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != 30 {
		t.Fatalf("run.jsonl has %d lines", len(lines))
	}
	for _, l := range lines {
		var v struct{ State, Content, Stage string }
		if err := json.Unmarshal([]byte(l), &v); err != nil || v.State != "done" || v.Content == "" {
			t.Errorf("run.jsonl line %s: %v", l, err)
		}
	}

	naive, _ := g.runNaive(t, pipelineIdeas)
	t.Logf("naive sequential client: %d switches", naive)
	if naive < 28 {
		t.Errorf("the naive client cost %d switches; want about 30", naive)
	}
}

// TestE2EPipelineCLI: vagentctl run against a real vagentd. Bad input
// first: a pipeline naming an unknown agent or a stage that does not
// exist, and an inputs file with a bad line, are refused with the file and
// line, and no run is stored. Then one input streams stage by stage under
// its headers, and a detached run is paused, cancelled and followed.
func TestE2EPipelineCLI(t *testing.T) {
	// The control socket's group (here one every Debian has): those who may
	// submit runs may read their directories.
	grp, err := user.LookupGroup("daemon")
	if err != nil {
		t.Fatal(err)
	}
	g := newGatewayHost(t, map[string]any{"gateway.control_group": "daemon"})
	bad := g.s.Path("bad.toml")
	os.WriteFile(bad, []byte("[[stage]]\nname = \"stories\"\nagent = \"pm\"\nprompt = \"{{.Input}}\"\n\n"+
		"[[stage]]\nname = \"design\"\nagent = \"architect\"\nprompt = \"\"\"\n{{stage \"storys\"}}\n\"\"\"\n"), 0o644)
	ideas := g.s.Path("ideas.txt")
	os.WriteFile(ideas, []byte("a chess clock\n\"a kitchen timer\n"), 0o644)
	os.WriteFile(g.s.Path("three.txt"), []byte("one\ntwo\nthree\n"), 0o644)
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"run", bad, "an idea"}, []string{
			bad + `:3: stage.stories.agent: unknown agent "pm"; the configured agents: architect, dev, po`,
			bad + `:10: stage.design.prompt: refers to stage "storys", which does not exist; the stages before it: stories`,
		}},
		{[]string{"run", "idea-to-code", "--inputs", ideas}, []string{ideas + `:2: a line starting with '"' is one JSON string`}},
	} {
		stdout, stderr, code := g.ctl(tc.args...)
		if code != 1 {
			t.Errorf("vagentctl %q: exit %d, want 1\n%s%s", tc.args, code, stdout, stderr)
		}
		for _, w := range tc.want {
			if !strings.Contains(stderr, w) {
				t.Errorf("vagentctl %q: stderr lacks %q:\n%s", tc.args, w, stderr)
			}
		}
	}
	// vagentd checks too, against its own configuration: a client that
	// skips vagentctl's check gets the same lines.
	contents, _ := os.ReadFile(bad)
	out := g.controlPost(t, controlapi.PathRuns, controlapi.RunRequest{File: "bad.toml", Contents: string(contents), Inputs: []string{"x"}})
	if !strings.Contains(out, `bad.toml:10: stage.design.prompt: refers to stage \"storys\"`) || !strings.Contains(out, `"code":400`) {
		t.Errorf("vagentd accepted or misreported a bad pipeline: %s", out)
	}
	stdout := g.mustCtl("run", "list", "--json")
	var l controlapi.RunList
	if err := json.Unmarshal([]byte(stdout), &l); err != nil || len(l.Runs) != 0 {
		t.Errorf("runs stored after bad input: %v %s", err, stdout)
	}

	// One input: each stage's answer under its header, in order, then the
	// run directory.
	stdout = g.mustCtl("run", "idea-to-code", "a todo app")
	last := -1
	for _, h := range []string{"## stories (po)\n\n", "## design (architect)\n\n", "## code (dev)\n\n", "\nrun directory: " + g.s.Path("var/lib/vagent/runs/run_")} {
		i := strings.Index(stdout, h)
		if i <= last {
			t.Fatalf("output lacks %q after the previous header:\n%s", h, stdout)
		}
		if i+len(h) < len(stdout) && strings.HasPrefix(stdout[i+len(h):], "\n") && !strings.HasPrefix(h, "\nrun") {
			t.Errorf("no answer under %q:\n%s", h, stdout)
		}
		last = i
	}

	// The run directory and its files belong to the control group.
	dir := strings.TrimSpace(stdout[strings.LastIndex(stdout, "run directory: ")+len("run directory: "):])
	for _, p := range []string{dir, filepath.Join(dir, "run.jsonl"), filepath.Join(dir, "1-code.md")} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		want := os.FileMode(0o640)
		if fi.IsDir() {
			want = 0o750
		}
		if gid := fi.Sys().(*syscall.Stat_t).Gid; strconv.Itoa(int(gid)) != grp.Gid || fi.Mode().Perm() != want {
			t.Errorf("%s: group %d mode %v, want group %s (daemon) mode %v", p, gid, fi.Mode().Perm(), grp.Gid, want)
		}
	}

	// Detached, paused, cancelled: the pending items never run, the run
	// ends cancelled (exit 1) with a directory of what was answered.
	id := strings.TrimSpace(g.mustCtl("run", "idea-to-code", "--inputs", g.s.Path("three.txt"), "--detach"))
	g.mustCtl("run", "pause", id)
	var run controlapi.Run
	if err := json.Unmarshal([]byte(g.mustCtl("run", "show", id, "--json")), &run); err != nil || run.Status != controlapi.RunPaused {
		t.Fatalf("after pause: %+v %v", run, err)
	}
	g.mustCtl("run", "cancel", id)
	stdout, stderr, code := g.ctl("run", "follow", id)
	if code != 1 || !strings.Contains(stdout, "run "+id+" cancelled: ") || !strings.Contains(stderr, "vagentctl: run "+id+" cancelled") {
		t.Fatalf("follow of a cancelled run: exit %d\n%s%s", code, stdout, stderr)
	}
	run = controlapi.Run{}
	if err := json.Unmarshal([]byte(g.mustCtl("run", "show", id, "--json")), &run); err != nil || run.Items["cancelled"] == 0 || run.Items["pending"] != 0 {
		t.Fatalf("after cancel: %+v %v", run, err)
	}
	data, err := os.ReadFile(filepath.Join(run.Dir, "run.jsonl"))
	if err != nil || strings.Count(string(data), "\n") != 9 || !strings.Contains(string(data), `"state":"cancelled"`) {
		t.Errorf("run.jsonl of the cancelled run: %v\n%s", err, data)
	}
}

// controlPost posts body to path on vagentd's control socket and returns
// the answer's body.
func (g *gwHost) controlPost(tb testing.TB, path string, body any) string {
	tb.Helper()
	b, _ := json.Marshal(body)
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", g.sock)
		},
	}}
	resp, err := hc.Post("http://vagentd"+path, "application/json", bytes.NewReader(b))
	if err != nil {
		tb.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return string(out)
}

// BenchmarkPipelineVsNaive prints the shipped pipeline's switches and wall
// time over ten inputs next to the naive sequential client's, with 2 s
// loads, on one host.
func BenchmarkPipelineVsNaive(b *testing.B) {
	g := newPipelineHost(b)
	b.ResetTimer()
	for range b.N {
		g.mustCtl("switch", "dev")
		run, ps, pw := g.runPipeline(b, pipelineIdeas)
		if run.Status != controlapi.RunCompleted {
			b.Fatalf("run %+v", run)
		}
		g.mustCtl("switch", "dev")
		ns, nw := g.runNaive(b, pipelineIdeas)
		b.ReportMetric(float64(ps), "pipeline-switches")
		b.ReportMetric(float64(ns), "naive-switches")
		b.ReportMetric(nw.Seconds()/pw.Seconds(), "naive/pipeline-wall")
		fmt.Printf("10 ideas x 3 stages, %d s loads:\n", pipelineLoadSeconds)
		fmt.Printf("  %-24s %8s %10s\n", "", "switches", "wall")
		fmt.Printf("  %-24s %8d %9.1fs\n", "pipeline (vagentctl run)", ps, pw.Seconds())
		fmt.Printf("  %-24s %8d %9.1fs\n", "naive sequential client", ns, nw.Seconds())
	}
}
