package mandoc

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/urfave/cli/v3"
)

func TestEscape(t *testing.T) {
	for in, want := range map[string]string{
		`--config`:     `\-\-config`,
		`C:\dir`:       `C:\edir`,
		".TH x\n'quot": "\\&.TH x\n\\&'quot",
		"plain text":   "plain text",
	} {
		if got := Escape(in); got != want {
			t.Errorf("Escape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestFlagOptions(t *testing.T) {
	usage := "Usage of vagentd:\n" +
		"  -config string\n" +
		"    \tmain configuration file (default $VAGENT_CONFIG or /etc/vagent/vagent.toml)\n" +
		"  -log-level string\n" +
		"    \tleast severe log level: debug, info, warn or error (default \"info\")\n" +
		"  -version\n" +
		"    \tprint the version and exit\n"
	want := []Option{
		{Names: []string{"config"}, Arg: "FILE", Usage: "main configuration file", Default: "$VAGENT_CONFIG or /etc/vagent/vagent.toml"},
		{Names: []string{"log-level"}, Arg: "VALUE", Usage: "least severe log level: debug, info, warn or error", Default: "info"},
		{Names: []string{"version"}, Usage: "print the version and exit"},
	}
	if got := FlagOptions(usage); !reflect.DeepEqual(got, want) {
		t.Errorf("FlagOptions:\n got %+v\nwant %+v", got, want)
	}
}

// testApp is a small command tree with what vagentctl's has: a global
// option with a file value, a command with a required directory, one that
// takes an AGENT, one that takes several.
func testApp() *cli.Command {
	return &cli.Command{
		Name:  "vagentctl",
		Usage: "run agents",
		Flags: []cli.Flag{&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "main configuration file"}},
		Commands: []*cli.Command{
			{Name: "render", Usage: "write units", Flags: []cli.Flag{&cli.StringFlag{Name: "out", Aliases: []string{"o"}, Required: true, Usage: "directory"}}},
			{Name: "logs", Usage: "show an agent's log", ArgsUsage: "AGENT", Flags: []cli.Flag{&cli.IntFlag{Name: "lines", Aliases: []string{"n"}, Value: 50, Usage: "how many lines"}}},
			{Name: "pull", Usage: "download models", ArgsUsage: "[AGENT...]"},
			{Name: "secret", Hidden: true},
		},
	}
}

func TestPage(t *testing.T) {
	app := testApp()
	p := &Page{Name: "vagentctl", Section: "1", Summary: app.Usage, Date: "2026-01-02", Source: "vagent 1.0",
		Synopsis:    []string{Bold("vagentctl") + " " + Italic("COMMAND")},
		Description: []string{"First.", ".Second starts with a dot."},
		Options:     Options(app.Flags), Commands: Commands(app),
		Sections: []Section{{Title: "exit status", Items: []Item{{Tag: "0", Text: "Success."}}}},
		SeeAlso:  []string{"vagentd(8)"}}
	var b bytes.Buffer
	if err := p.WriteRoff(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		`.TH "VAGENTCTL" 1 "2026-01-02" "vagent 1.0" "vagent manual"`,
		`vagentctl \- run agents`,
		`\fB\-c\fR, \fB\-\-config\fR \fIFILE\fR`,
		`.SS "\fBrender\fR"`,
		`\fB\-o\fR, \fB\-\-out\fR \fIDIR\fR`,
		"Directory. Required.",
		`.SS "\fBlogs\fR \fIAGENT\fR"`,
		"How many lines (default: 50).",
		`\&.Second starts with a dot.`,
		".SH \"EXIT STATUS\"",
		`\fBvagentd\fR(8)`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("page lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "secret") {
		t.Errorf("page shows a hidden command:\n%s", out)
	}
	// groff, where installed (man-db's), must have nothing to say.
	if groff, err := exec.LookPath("groff"); err == nil {
		cmd := exec.Command(groff, "-man", "-ww", "-z", "-Tutf8")
		cmd.Stdin = strings.NewReader(out)
		if msg, err := cmd.CombinedOutput(); err != nil || len(msg) > 0 {
			t.Errorf("groff: %v: %s", err, msg)
		}
	}
}

func TestBashCompletion(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	var b bytes.Buffer
	if err := FromCommand(testApp(), "/etc/vagent/vagent.toml").Bash(&b); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	script := filepath.Join(dir, "vagentctl.bash")
	if err := os.WriteFile(script, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "agents"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"dev", "po"} {
		if err := os.WriteFile(filepath.Join(dir, "agents", a+".toml"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	other := t.TempDir()
	if err := os.MkdirAll(filepath.Join(other, "agents"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(other, "agents", "alpha.toml"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for words, want := range map[string]string{
		"vagentctl ''":                   "render logs pull -h --help -v --version -c --config",
		"vagentctl l":                    "logs",
		"vagentctl -c /x l":              "logs",
		"vagentctl logs ''":              "dev po",
		"vagentctl logs p":               "po",
		"vagentctl logs -":               "-h --help -n --lines",
		"vagentctl pull dev ''":          "dev po",
		"vagentctl render --o":           "--out",
		"vagentctl logs -n ''":           "",
		"vagentctl secret ''":            "",
		"vagentctl render -o " + dir[:4]: dir[:4],
		// --config wins over $VAGENT_CONFIG, in each spelling.
		"vagentctl --config " + other + "/vagent.toml logs ''":       "alpha",
		"vagentctl -c " + other + "/vagent.toml pull dev ''":         "alpha",
		"vagentctl --config = " + other + "/vagent.toml logs ''":     "alpha",
		"vagentctl logs --config " + other + "/vagent.toml ''":       "alpha",
		"vagentctl --config " + other + "/vagent.toml -c /nope l ''": "",
	} {
		cmd := exec.Command(bash, "-c", `source "$1"; COMP_WORDS=(`+words+`); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _vagentctl; echo "${COMPREPLY[*]}"`, "bash", script)
		cmd.Env = append(os.Environ(), "VAGENT_CONFIG="+filepath.Join(dir, "vagent.toml"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v: %s", words, err, out)
		}
		got := strings.TrimSpace(string(out))
		if strings.HasPrefix(words, "vagentctl render -o ") {
			// compgen -d lists directories starting so; the first is enough.
			if !strings.HasPrefix(got, want) {
				t.Errorf("completing %s: got %q, want directories", words, got)
			}
			continue
		}
		if got != want {
			t.Errorf("completing %s: got %q, want %q", words, got, want)
		}
	}
}

// TestShellSyntax checks the zsh and fish scripts with their shells' own
// parsers where those shells are installed.
func TestShellSyntax(t *testing.T) {
	c := FromCommand(testApp(), "/etc/vagent/vagent.toml")
	for shell, write := range map[string]func(*bytes.Buffer) error{
		"bash": func(b *bytes.Buffer) error { return c.Bash(b) },
		"zsh":  func(b *bytes.Buffer) error { return c.Zsh(b) },
		"fish": func(b *bytes.Buffer) error { return c.Fish(b) },
	} {
		var b bytes.Buffer
		if err := write(&b); err != nil {
			t.Fatal(err)
		}
		path, err := exec.LookPath(shell)
		if err != nil {
			t.Logf("%s not installed: syntax not checked", shell)
			continue
		}
		f := filepath.Join(t.TempDir(), "script")
		if err := os.WriteFile(f, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(path, "-n", f).CombinedOutput(); err != nil {
			t.Errorf("%s -n: %v: %s\n%s", shell, err, out, b.String())
		}
	}
}
