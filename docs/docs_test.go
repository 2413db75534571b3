package docs

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/urfave/cli/v3"

	"github.com/vagent-dev/vagent/ctl"
)

// pages are the documents these tests read: every page here and the
// README.
func pages(t *testing.T) []string {
	t.Helper()
	files, err := Files(".")
	if err != nil {
		t.Fatal(err)
	}
	return append(files, filepath.Join(root, "README.md"))
}

func read(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestMatch(t *testing.T) {
	out := "a  line\n\nPASS  driver  ok (ledger /run/x.json)\nsome\nmore\nlast 12 done\n"
	for _, tc := range []struct {
		doc string
		ok  bool
	}{
		{"a line", true},
		{"PASS driver ok (ledger <path>)", true},
		{"a line\nPASS driver ok (ledger <path>)", true},
		{"a line\n...\nlast <n> done", true},
		{"a line\nlast <n> done", false}, // not consecutive
		{"last <n> done\na line", false}, // not in order
		{"PASS driver", false},           // lines match whole
		{"PASS driver<...>", true},
		{"last 12 done<...>", true},
	} {
		if err := Match(tc.doc, out); (err == nil) != tc.ok {
			t.Errorf("Match(%q) = %v, want ok %v", tc.doc, err, tc.ok)
		}
	}
}

// TestShellBlocksParse runs `bash -n` on every ```sh block: each must be
// valid shell as written.
func TestShellBlocksParse(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	for _, p := range pages(t) {
		blocks, err := ReadBlocks(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range blocks {
			if b.Lang != "sh" && b.Lang != "bash" {
				continue
			}
			cmd := exec.Command(bash, "-n")
			cmd.Stdin = strings.NewReader(b.Text)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("%s: not valid shell: %v\n%s", b.Where(), err, out)
			}
		}
	}
}

var (
	inlineCodeRE = regexp.MustCompile("`([^`\n]+)`")
	vagentctlRE  = regexp.MustCompile(`(?:^|[\s(;&|'"])vagentctl((?:\s+[^\s;&|)'"` + "`" + `#]+)*)`)
)

// code returns the code of a page: its fenced blocks and inline code
// spans, where commands are written.
func code(t *testing.T, path string) []string {
	t.Helper()
	blocks, err := ReadBlocks(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, b := range blocks {
		out = append(out, strings.Split(b.Text, "\n")...)
	}
	// Inline spans, outside the fenced blocks.
	inFence := false
	for _, line := range strings.Split(read(t, path), "\n") {
		if fenceOf(strings.TrimLeft(line, " ")) != "" {
			inFence = !inFence
			continue
		}
		if inFence {
			continue
		}
		for _, m := range inlineCodeRE.FindAllStringSubmatch(line, -1) {
			out = append(out, m[1])
		}
	}
	return out
}

// TestCommandsExist checks that every vagentctl command the documents
// write names a command vagentctl has, with flags it has.
func TestCommandsExist(t *testing.T) {
	app := ctl.App(io.Discard, io.Discard)
	rootFlags := flagNames(app.Flags)
	for _, p := range pages(t) {
		for _, line := range code(t, p) {
			for _, m := range vagentctlRE.FindAllStringSubmatch(line, -1) {
				words := strings.Fields(m[1])
				var cmd *cli.Command
				for i := 0; i < len(words); i++ {
					w := words[i]
					if strings.HasPrefix(w, "-") {
						name, _, hasValue := strings.Cut(strings.TrimLeft(w, "-"), "=")
						switch {
						case cmd == nil && rootFlags[name]:
							if (name == "config" || name == "c") && !hasValue {
								i++
							}
						case cmd != nil && (flagNames(cmd.Flags)[name] || rootFlags[name] || name == "help" || name == "h"):
						case cmd == nil && (name == "help" || name == "h" || name == "version" || name == "v"):
						default:
							t.Errorf("%s: %q: vagentctl %s has no flag %s", p, strings.TrimSpace(line), cmdName(cmd), w)
						}
						continue
					}
					if cmd != nil {
						continue // an argument
					}
					if cmd = app.Command(w); cmd == nil {
						if strings.ToUpper(w) == w {
							break // a placeholder: vagentctl COMMAND
						}
						t.Errorf("%s: %q: vagentctl has no command %q", p, strings.TrimSpace(line), w)
						break
					}
				}
			}
		}
	}
}

func cmdName(c *cli.Command) string {
	if c == nil {
		return "(no command)"
	}
	return c.Name
}

func flagNames(fs []cli.Flag) map[string]bool {
	out := map[string]bool{}
	for _, f := range fs {
		for _, n := range f.Names() {
			out[n] = true
		}
	}
	return out
}

// TestMakeTargetsExist checks every make command of the documents (a code
// line or span that starts with make) against the Makefile's targets.
func TestMakeTargetsExist(t *testing.T) {
	mk := read(t, filepath.Join(root, "Makefile"))
	for _, p := range pages(t) {
		for _, line := range code(t, p) {
			words := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "sudo "))
			if len(words) < 2 || words[0] != "make" {
				continue
			}
			for _, target := range words[1:] {
				if strings.HasPrefix(target, "#") || strings.ContainsAny(target, ";&|") {
					break
				}
				if strings.HasPrefix(target, "-") || strings.Contains(target, "=") {
					continue
				}
				if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(target) + `:`).MatchString(mk) {
					t.Errorf("%s: %q: the Makefile has no target %s", p, strings.TrimSpace(line), target)
				}
			}
		}
	}
}

var (
	linkRE    = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	headingRE = regexp.MustCompile(`(?m)^#{1,6} (.+)$`)
	slugDrop  = regexp.MustCompile(`[^\p{L}\p{N} _-]`)
)

// slug is GitHub's anchor for a heading.
func slug(heading string) string {
	return strings.ReplaceAll(slugDrop.ReplaceAllString(strings.ToLower(strings.TrimSpace(heading)), ""), " ", "-")
}

func anchors(t *testing.T, path string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	text := read(t, path)
	// Headings inside fenced blocks are not headings.
	for _, b := range ParseBlocks(path, []byte(text)) {
		text = strings.Replace(text, b.Text, "", 1)
	}
	for _, m := range headingRE.FindAllStringSubmatch(text, -1) {
		out[slug(m[1])] = true
	}
	return out
}

// TestLinksResolve checks every relative link of the documents: the file
// exists, and so does the heading an anchor names.
func TestLinksResolve(t *testing.T) {
	for _, p := range pages(t) {
		for _, m := range linkRE.FindAllStringSubmatch(read(t, p), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			file, anchor, _ := strings.Cut(target, "#")
			path := p
			if file != "" {
				path = filepath.Join(filepath.Dir(p), file)
				if _, err := os.Stat(path); err != nil {
					t.Errorf("%s: link %s: %v", p, target, err)
					continue
				}
			}
			if anchor != "" && strings.HasSuffix(path, ".md") && !anchors(t, path)[anchor] {
				t.Errorf("%s: link %s: %s has no heading #%s", p, target, path, anchor)
			}
		}
	}
}

// TestLogMessagesExist checks operations.md's table of vagentd's log
// records against the code: each msg is one vagentd logs.
func TestLogMessagesExist(t *testing.T) {
	var src strings.Builder
	for _, dir := range []string{"gateway", "daemon", "supervisor"} {
		files, _ := filepath.Glob(filepath.Join(root, dir, "*.go"))
		for _, f := range files {
			if !strings.HasSuffix(f, "_test.go") {
				src.WriteString(read(t, f))
			}
		}
	}
	rowRE := regexp.MustCompile("(?m)^\\| `([^`]+)` \\| (?:[^|]*) \\|$")
	text := read(t, "operations.md")
	start := strings.Index(text, "| `msg` | when |")
	if start < 0 {
		t.Fatal("operations.md has no table of log records (| `msg` | when |)")
	}
	end := strings.Index(text[start:], "\n\n")
	n := 0
	for _, m := range rowRE.FindAllStringSubmatch(text[start:start+end], -1) {
		if m[1] == "msg" {
			continue // the header
		}
		n++
		if !strings.Contains(src.String(), `"`+m[1]+`"`) {
			t.Errorf("operations.md: vagentd logs no record %q", m[1])
		}
	}
	if n < 10 {
		t.Errorf("operations.md: only %d log records in the table", n)
	}
}

// TestIndexListsEveryPage checks that docs/index.md links every page, and
// the README links the index. (The index is not docs/README.md: the
// packages install docs/*.md beside the top-level README.md.)
func TestIndexListsEveryPage(t *testing.T) {
	index := read(t, "index.md")
	files, err := Files(".")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		name := filepath.Base(f)
		if name == "index.md" {
			continue
		}
		if !strings.Contains(index, "]("+name+")") {
			t.Errorf("docs/index.md does not link %s", name)
		}
	}
	if !strings.Contains(read(t, filepath.Join(root, "README.md")), "](docs/index.md)") {
		t.Error("README.md does not link docs/index.md")
	}
}
