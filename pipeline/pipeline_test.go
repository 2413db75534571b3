package pipeline

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vagent-dev/vagent/config"
)

// shipped loads the shipped configuration, whose agents the pipelines name.
func shipped(t *testing.T) *config.Config {
	t.Helper()
	cfg, err := config.Load("../configs/vagent.toml")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestShippedPipeline(t *testing.T) {
	cfg := shipped(t)
	p, err := Load(cfg, "idea-to-code")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range p.Stages {
		got = append(got, s.Name+"("+s.Agent+")")
	}
	if want := "stories(po) design(architect) code(dev)"; strings.Join(got, " ") != want {
		t.Fatalf("stages %q, want %q", got, want)
	}
	out, err := p.Render(2, Data{Input: "a todo app", Index: 1, Count: 1,
		Stages: map[string]string{"stories": "STORIES-ANSWER", "design": "DESIGN-ANSWER"}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "STORIES-ANSWER") || !strings.Contains(out, "DESIGN-ANSWER") {
		t.Fatalf("code prompt lacks the earlier answers:\n%s", out)
	}
	out, err = p.Render(0, Data{Input: "a todo app", Index: 1, Count: 1})
	if err != nil || !strings.Contains(out, "Idea: a todo app") {
		t.Fatalf("stories prompt %q, %v", out, err)
	}
}

// TestEveryShippedPipelineParses keeps configs/pipelines honest.
func TestEveryShippedPipelineParses(t *testing.T) {
	cfg := shipped(t)
	files, _ := filepath.Glob("../configs/pipelines/*.toml")
	if len(files) == 0 {
		t.Fatal("no shipped pipelines")
	}
	for _, f := range files {
		if _, err := Load(cfg, strings.TrimSuffix(filepath.Base(f), ".toml")); err != nil {
			t.Error(err)
		}
	}
}

func TestBadPipelines(t *testing.T) {
	cfg := shipped(t)
	for _, tc := range []struct {
		name, file string
		want       []string // each a whole line of the error
	}{
		{"missing stage", `
[[stage]]
name = "stories"
agent = "po"
prompt = "{{.Input}}"

[[stage]]
name = "design"
agent = "architect"
prompt = """
Stories:
{{stage "storys"}}
"""
`, []string{`p.toml:12: stage.design.prompt: refers to stage "storys", which does not exist; the stages before it: stories`}},
		{"later stage", `
[[stage]]
name = "stories"
agent = "po"
prompt = "{{.Input}} {{.Stages.design}}"

[[stage]]
name = "design"
agent = "architect"
prompt = "{{stage \"stories\"}}"
`, []string{`p.toml:5: stage.stories.prompt: refers to stage "design", which runs later: a stage sees only the stages before it (it is the first stage: only .Input, .Index and .Count are known here)`}},
		{"own stage via index", `
[[stage]]
name = "a"
agent = "po"
prompt = '''
x
{{index .Stages "a"}}'''
`, []string{`p.toml:7: stage.a.prompt: refers to its own stage "a": a stage sees only the stages before it (it is the first stage: only .Input, .Index and .Count are known here)`}},
		{"unknown agent", `
[[stage]]
name = "stories"
agent = "pm"
prompt = "{{.Input}}"
`, []string{`p.toml:4: stage.stories.agent: unknown agent "pm"; the configured agents: architect, dev, po`}},
		{"template syntax", `
[[stage]]
name = "stories"
agent = "po"
prompt = """
line one
{{.Input | shout}}
"""
`, []string{`p.toml:7: stage.stories.prompt: template: function "shout" not defined`}},
		{"unknown field", `
[[stage]]
name = "stories"
agent = "po"
prompt = """
{{.Idea}}"""
`, []string{`p.toml:6: stage.stories.prompt: unknown field .Idea: a template knows .Input, .Index, .Count, .Stages`}},
		{"dynamic stage", `
[[stage]]
name = "s"
agent = "po"
prompt = "{{stage .Input}}"
`, []string{`p.toml:5: stage.s.prompt: stage takes a quoted stage name, so that it can be checked before the run: {{stage "NAME"}}`}},
		{"unknown key and duplicate", `
description = "d"
[[stage]]
name = "s"
agent = "po"
prompt = "{{.Input}}"
[[stage]]
name = "s"
agent = "dev"
promt = "x"
`, []string{
			`p.toml:10: stage.promt: unknown key (a pipeline has description and [[stage]] tables of name, agent, prompt, system, max_tokens)`,
			`p.toml:8: stage.s.name: stage "s" is defined twice (stages 1 and 2)`,
			`p.toml:7: stage.s.prompt: missing: every stage needs a prompt template`,
		}},
		{"no stages", `description = "d"`, []string{`p.toml: stage: a pipeline needs at least one [[stage]]`}},
		{"toml syntax", "[[stage]]\nname = \"s\nagent = \"po\"\n", []string{`p.toml:2: stage.name: strings cannot contain newlines`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(cfg, "p.toml", []byte(tc.file))
			if err == nil {
				t.Fatal("accepted")
			}
			lines := strings.Split(err.Error(), "\n")
			for _, w := range tc.want {
				found := false
				for _, l := range lines {
					found = found || strings.HasPrefix(l, w)
				}
				if !found {
					t.Errorf("no error line %q in:\n%v", w, err)
				}
			}
			if len(lines) != len(tc.want) {
				t.Errorf("%d error lines, want %d:\n%v", len(lines), len(tc.want), err)
			}
		})
	}
}

func TestLoadNames(t *testing.T) {
	cfg := shipped(t)
	if _, err := Load(cfg, "../agents/po"); err == nil || !strings.Contains(err.Error(), "not a pipeline name") {
		t.Fatalf("a path as name: %v", err)
	}
	if _, err := Load(cfg, "nope"); err == nil || !strings.Contains(err.Error(), "no file") {
		t.Fatalf("a missing pipeline: %v", err)
	}
}

func TestReadInputs(t *testing.T) {
	in := "# ideas\n\na todo app\n\"two\\nlines\"\n  spaced idea  \n"
	got, err := ReadInputs("ideas.txt", strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"a todo app", "two\nlines", "spaced idea"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("inputs %q, want %q", got, want)
	}
	for _, tc := range []struct{ in, want string }{
		{"ok\n\"unterminated\n", `ideas.txt:2: a line starting with '"' is one JSON string: unexpected end of JSON input`},
		{"ok\nbad \xff byte\n", `ideas.txt:2: not valid UTF-8`},
		{"# nothing\n\n", `ideas.txt: no inputs (one a line; blank lines and lines starting with # are skipped)`},
		{"\"\"\n", `ideas.txt:1: an empty input`},
	} {
		_, err := ReadInputs("ideas.txt", strings.NewReader(tc.in))
		if err == nil || err.Error() != tc.want {
			t.Errorf("%q: %v, want %s", tc.in, err, tc.want)
		}
	}
}

// TestShippedPipelinesArePackaged: every shipped pipeline is installed
// where config.PipelinesDir looks on a packaged host.
func TestShippedPipelinesArePackaged(t *testing.T) {
	nfpm, err := os.ReadFile("../nfpm.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{Path: config.DefaultPath}
	files, _ := filepath.Glob("../configs/pipelines/*.toml")
	for _, f := range files {
		base := filepath.Base(f)
		want := "src: dist/stage/etc/pipelines/" + base + "\n    dst: " + filepath.Join(cfg.PipelinesDir(), base) + "\n"
		if !strings.Contains(string(nfpm), want) {
			t.Errorf("nfpm.yaml does not install %s: want %q", f, want)
		}
	}
}
