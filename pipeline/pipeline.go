// Package pipeline is vagent's role pipelines: a file of ordered stages,
// each naming an agent and a prompt template over the input and the earlier
// stages' answers. It loads and checks such files, renders a stage's request,
// and runs pipelines as jobs of the work package, one item per input and
// stage, so that the executor can take every input through one stage (one
// agent) before it switches to the next.
package pipeline

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"text/template"
	"text/template/parse"

	"github.com/BurntSushi/toml"

	"github.com/vagent-dev/vagent/config"
)

// Ext is a pipeline file's extension: configs/pipelines/NAME.toml.
const Ext = ".toml"

// Pipeline is a checked pipeline file.
type Pipeline struct {
	// Name is the file's name without Ext.
	Name string `json:"name"`
	// File is where it was read from (as the user named it), for errors.
	File        string  `json:"file"`
	Description string  `json:"description,omitempty"`
	Stages      []Stage `json:"stages"`
}

// Stage is one step: every input's prompt for it goes to one agent.
type Stage struct {
	Name  string `toml:"name" json:"name"`
	Agent string `toml:"agent" json:"agent"`
	// Prompt is a text/template over Data.
	Prompt string `toml:"prompt" json:"prompt"`
	// System, when set, is the stage's system message (else the agent's
	// own system_prompt applies, as for any request).
	System    string `toml:"system" json:"system,omitempty"`
	MaxTokens int    `toml:"max_tokens" json:"max_tokens,omitempty"`
	// Line is the TOML line of the stage's prompt key (0 when unknown),
	// so that a template error points into the file.
	Line int `toml:"-" json:"line,omitempty"`
	// firstLine is the TOML line holding the template's first line.
	firstLine int
}

// Data is what a stage's template sees.
type Data struct {
	// Input is this input's text.
	Input string
	// Index is the input's number, from 1, and Count how many the run has.
	Index, Count int
	// Stages holds the earlier stages' answers by stage name.
	Stages map[string]string
}

// dataFields are Data's fields, the only ones a template may name.
var dataFields = []string{"Input", "Index", "Count", "Stages"}

// file is the TOML shape of a pipeline file.
type file struct {
	Description string  `toml:"description"`
	Stage       []Stage `toml:"stage"`
}

// nameRE is what a stage or pipeline name may be: it becomes part of file
// names in the run directory and of template references.
var nameRE = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,63}$`)

// reservedNames are vagentctl run's subcommands, which a pipeline name
// would hide.
var reservedNames = map[string]bool{"list": true, "show": true, "follow": true, "cancel": true, "pause": true, "resume": true, "help": true}

// ValidName reports why name cannot name a pipeline (nil when it can).
func ValidName(name string) error {
	if reservedNames[name] {
		return fmt.Errorf("%q is not a pipeline name: vagentctl run %s is a command", name, name)
	}
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%q is not a pipeline name: a lowercase letter, then at most 63 lowercase letters, digits, '_' or '-'", name)
	}
	return nil
}

// Path is where the pipeline called name lives for cfg.
func Path(cfg *config.Config, name string) string {
	return filepath.Join(cfg.PipelinesDir(), name+Ext)
}

// Load reads and checks the pipeline called name from cfg's pipelines
// directory.
func Load(cfg *config.Config, name string) (*Pipeline, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	p := Path(cfg, name)
	data, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("pipeline %s: no file %s (pipelines live in %s)", name, p, cfg.PipelinesDir())
	}
	if err != nil {
		return nil, fmt.Errorf("read pipeline %s: %w", name, err)
	}
	return Parse(cfg, p, data)
}

// Parse decodes a pipeline file's contents strictly and checks them
// against cfg's agents: every problem comes back at once as config.Errors,
// located as file:line (the line inside a template where it is known).
// name is the file as the user knows it; the pipeline's name is its base
// name without Ext.
func Parse(cfg *config.Config, name string, data []byte) (*Pipeline, error) {
	pl := &Pipeline{Name: strings.TrimSuffix(filepath.Base(name), Ext), File: name}
	var f file
	md, err := toml.Decode(string(data), &f)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, config.Errors{{File: name, Line: pe.Position.Line, Field: pe.LastKey, Msg: pe.Message}}
		}
		return nil, config.Errors{{File: name, Msg: strings.TrimPrefix(err.Error(), "toml: ")}}
	}
	var errs config.Errors
	fail := func(line int, field, format string, args ...any) {
		errs = append(errs, &config.Error{File: name, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	lines, topLines := stageLines(data)
	for _, k := range md.Undecoded() {
		line := 0
		if len(k) == 2 && k[0] == "stage" {
			for _, l := range lines {
				if n, ok := l.keys[k[1]]; ok {
					line = n
					break
				}
			}
		} else if len(k) >= 1 {
			line = topLines[k[0]]
		}
		fail(line, k.String(), "unknown key (a pipeline has description and [[stage]] tables of name, agent, prompt, system, max_tokens)")
	}
	pl.Description = f.Description
	if len(f.Stage) == 0 {
		fail(0, "stage", "a pipeline needs at least one [[stage]]")
	}
	seen := map[string]int{}
	for i := range f.Stage {
		st := &f.Stage[i]
		var ln stageLine
		if i < len(lines) {
			ln = lines[i]
		}
		st.Line, st.firstLine = ln.prompt, ln.promptFirst
		field := fmt.Sprintf("stage[%d]", i+1)
		if st.Name != "" {
			field = "stage." + st.Name
		}
		switch j, dup := seen[st.Name]; {
		case st.Name == "":
			fail(ln.header, field+".name", "missing: every stage needs a name")
		case !nameRE.MatchString(st.Name):
			fail(ln.name, field+".name", "%q is not a stage name: a lowercase letter, then lowercase letters, digits, '_' or '-'", st.Name)
		case dup:
			fail(ln.name, field+".name", "stage %q is defined twice (stages %d and %d)", st.Name, j+1, i+1)
		default:
			seen[st.Name] = i
		}
		switch {
		case st.Agent == "":
			fail(ln.header, field+".agent", "missing: every stage names an agent")
		case AgentOf(cfg, st.Agent) == nil:
			fail(ln.agent, field+".agent", "unknown agent %q; the configured agents: %s", st.Agent, strings.Join(agentNames(cfg), ", "))
		}
		if st.MaxTokens < 0 {
			fail(ln.maxTokens, field+".max_tokens", "must be positive, not %d", st.MaxTokens)
		}
		if strings.TrimSpace(st.Prompt) == "" {
			fail(ln.header, field+".prompt", "missing: every stage needs a prompt template")
			continue
		}
		for _, e := range checkTemplate(f.Stage[:i], f.Stage[i+1:], st) {
			e.File, e.Field = name, field+".prompt"
			errs = append(errs, e)
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	pl.Stages = f.Stage
	return pl, nil
}

// AgentOf finds the agent a stage names, by any of its names (nil when
// none has it).
func AgentOf(cfg *config.Config, name string) *config.Agent {
	for _, a := range cfg.Agents {
		for _, n := range a.Names() {
			if n == name {
				return a
			}
		}
	}
	return nil
}

func agentNames(cfg *config.Config) []string {
	var out []string
	for _, a := range cfg.Agents {
		out = append(out, a.Name)
	}
	if len(out) == 0 {
		return []string{"(none)"}
	}
	return out
}

// tmplErrRE reads text/template's located errors: "template: NAME:LINE: msg"
// or "template: NAME:LINE:COL: msg".
var tmplErrRE = regexp.MustCompile(`^template: [^:]*:(\d+):(?:\d+:)? ?(.*)$`)

// newTemplate parses a stage's prompt; stage is the template function
// that returns an earlier stage's answer.
func newTemplate(st *Stage, stage func(string) (string, error)) (*template.Template, error) {
	return template.New(st.Name).
		Option("missingkey=error").
		Funcs(template.FuncMap{"stage": stage}).
		Parse(st.Prompt)
}

// checkTemplate parses st's prompt and checks what it refers to: Data's
// fields only, and earlier stages only.
func checkTemplate(earlier, later []Stage, st *Stage) config.Errors {
	at := func(tline int) int {
		if st.firstLine == 0 || tline == 0 {
			return st.Line
		}
		return st.firstLine + tline - 1
	}
	t, err := newTemplate(st, func(string) (string, error) { return "", nil })
	if err != nil {
		if m := tmplErrRE.FindStringSubmatch(err.Error()); m != nil {
			n, _ := strconv.Atoi(m[1])
			return config.Errors{{Line: at(n), Msg: "template: " + m[2]}}
		}
		return config.Errors{{Line: st.Line, Msg: err.Error()}}
	}
	var errs config.Errors
	ref := func(n parse.Node, stage string) {
		tline := lineOf(t, n)
		for _, e := range earlier {
			if e.Name == stage {
				return
			}
		}
		msg := fmt.Sprintf("refers to stage %q, which does not exist", stage)
		for _, l := range later {
			if l.Name == stage {
				msg = fmt.Sprintf("refers to stage %q, which runs later: a stage sees only the stages before it", stage)
			}
		}
		if stage == st.Name {
			msg = fmt.Sprintf("refers to its own stage %q: a stage sees only the stages before it", stage)
		}
		errs = append(errs, &config.Error{Line: at(tline), Msg: msg + earlierList(earlier)})
	}
	field := func(n parse.Node, ident []string) {
		if len(ident) == 0 {
			return
		}
		if !contains(dataFields, ident[0]) {
			errs = append(errs, &config.Error{Line: at(lineOf(t, n)), Msg: fmt.Sprintf("unknown field .%s: a template knows .%s", ident[0], strings.Join(dataFields, ", .")) + ""})
			return
		}
		if ident[0] == "Stages" && len(ident) > 1 {
			ref(n, ident[1])
		}
	}
	walk(t.Tree.Root, func(n parse.Node) {
		switch n := n.(type) {
		case *parse.FieldNode:
			field(n, n.Ident)
		case *parse.VariableNode:
			if len(n.Ident) > 1 && n.Ident[0] == "$" {
				field(n, n.Ident[1:])
			}
		case *parse.CommandNode:
			if len(n.Args) == 0 {
				return
			}
			id, ok := n.Args[0].(*parse.IdentifierNode)
			if !ok {
				return
			}
			switch id.Ident {
			case "stage":
				if len(n.Args) != 2 {
					errs = append(errs, &config.Error{Line: at(lineOf(t, n)), Msg: `stage takes one quoted stage name: {{stage "NAME"}}`})
					return
				}
				s, ok := n.Args[1].(*parse.StringNode)
				if !ok {
					errs = append(errs, &config.Error{Line: at(lineOf(t, n)), Msg: `stage takes a quoted stage name, so that it can be checked before the run: {{stage "NAME"}}`})
					return
				}
				ref(n, s.Text)
			case "index":
				// index .Stages "NAME"
				if len(n.Args) == 3 {
					if f, ok := n.Args[1].(*parse.FieldNode); ok && len(f.Ident) == 1 && f.Ident[0] == "Stages" {
						if s, ok := n.Args[2].(*parse.StringNode); ok {
							ref(n, s.Text)
						}
					}
				}
			}
		}
	})
	return errs
}

func earlierList(earlier []Stage) string {
	if len(earlier) == 0 {
		return " (it is the first stage: only .Input, .Index and .Count are known here)"
	}
	var names []string
	for _, e := range earlier {
		names = append(names, e.Name)
	}
	return "; the stages before it: " + strings.Join(names, ", ")
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if x == y {
			return true
		}
	}
	return false
}

// lineOf is the line of n inside t's text, 0 when unknown.
func lineOf(t *template.Template, n parse.Node) int {
	loc, _ := t.ErrorContext(n)
	parts := strings.Split(loc, ":")
	if len(parts) >= 2 {
		if l, err := strconv.Atoi(parts[1]); err == nil {
			return l
		}
	}
	return 0
}

// walk calls f on every node below n.
func walk(n parse.Node, f func(parse.Node)) {
	if n == nil {
		return
	}
	f(n)
	switch n := n.(type) {
	case *parse.ListNode:
		if n == nil {
			return
		}
		for _, c := range n.Nodes {
			walk(c, f)
		}
	case *parse.ActionNode:
		walk(n.Pipe, f)
	case *parse.PipeNode:
		if n == nil {
			return
		}
		for _, c := range n.Cmds {
			walk(c, f)
		}
	case *parse.CommandNode:
		for _, c := range n.Args {
			walk(c, f)
		}
	case *parse.ChainNode:
		walk(n.Node, f)
	case *parse.IfNode:
		walkBranch(&n.BranchNode, f)
	case *parse.RangeNode:
		walkBranch(&n.BranchNode, f)
	case *parse.WithNode:
		walkBranch(&n.BranchNode, f)
	case *parse.TemplateNode:
		walk(n.Pipe, f)
	}
}

func walkBranch(b *parse.BranchNode, f func(parse.Node)) {
	walk(b.Pipe, f)
	if b.List != nil {
		walk(b.List, f)
	}
	if b.ElseList != nil {
		walk(b.ElseList, f)
	}
}

// Render executes stage i's prompt for one input, given the earlier
// stages' answers by name.
func (p *Pipeline) Render(i int, d Data) (string, error) {
	st := &p.Stages[i]
	t, err := newTemplate(st, func(name string) (string, error) {
		out, ok := d.Stages[name]
		if !ok {
			return "", fmt.Errorf("no answer of stage %q", name)
		}
		return out, nil
	})
	if err != nil {
		return "", fmt.Errorf("stage %s: %w", st.Name, err)
	}
	var b bytes.Buffer
	if err := t.Execute(&b, d); err != nil {
		return "", fmt.Errorf("stage %s: %w", st.Name, err)
	}
	return b.String(), nil
}

// stageLine holds where a [[stage]] table's keys are written.
type stageLine struct {
	header, name, agent, maxTokens int
	// keys are every key's line.
	keys map[string]int
	// prompt is the line of "prompt =", promptFirst the line holding the
	// template's first line (the next one for a multi-line string that
	// opens with a newline, which TOML drops).
	prompt, promptFirst int
}

// stageLines finds, for each [[stage]] in order, the lines of its keys.
// Only keys written plainly (key = value at the start of a line) are found;
// the rest stay 0, and errors then point at the stage's header.
func stageLines(data []byte) (out []stageLine, top map[string]int) {
	top = map[string]int{}
	in := false
	var quote string // inside a multi-line string: its closing quotes
	for i, raw := range strings.Split(string(data), "\n") {
		n := i + 1
		line := strings.TrimSpace(raw)
		if quote != "" {
			if strings.Contains(line, quote) {
				quote = ""
			}
			continue
		}
		if line == "" || line[0] == '#' {
			continue
		}
		if strings.HasPrefix(line, "[") {
			h := strings.TrimSpace(strings.Trim(strings.SplitN(line, "]]", 2)[0], "[ "))
			in = strings.HasPrefix(line, "[[") && h == "stage"
			if in {
				out = append(out, stageLine{header: n, keys: map[string]int{}})
			}
			continue
		}
		key, val, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		key = strings.Trim(strings.TrimSpace(key), `"'`)
		val = strings.TrimSpace(val)
		for _, q := range []string{`"""`, `'''`} {
			if strings.HasPrefix(val, q) && !strings.Contains(val[3:], q) {
				quote = q
			}
		}
		if !in {
			if _, ok := top[key]; !ok {
				top[key] = n
			}
			continue
		}
		s := &out[len(out)-1]
		s.keys[key] = n
		switch key {
		case "name":
			s.name = n
		case "agent":
			s.agent = n
		case "max_tokens":
			s.maxTokens = n
		case "prompt":
			s.prompt, s.promptFirst = n, n
			if quote != "" && strings.TrimSpace(val[3:]) == "" {
				s.promptFirst = n + 1
			}
		}
	}
	return out, top
}
