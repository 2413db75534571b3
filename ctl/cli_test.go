package ctl

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// runMain runs vagentctl as the binary does, with a configuration file that
// does not exist: a command that got past its usage checks fails reading
// it (exit 1) instead of touching the host.
func runMain(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	argv := append([]string{"vagentctl", "--config", filepath.Join(t.TempDir(), "none", "vagent.toml")}, args...)
	code = Main(context.Background(), argv, &o, &e)
	return o.String(), e.String(), code
}

// TestUsageErrorsExitTwo runs every command vagentctl has with an unknown
// flag and with the wrong number of arguments: each exits 2 at once, says
// what was wrong and hints where to look.
func TestUsageErrorsExitTwo(t *testing.T) {
	type usage struct {
		args []string
		want string // in stderr
	}
	cases := []usage{
		{[]string{"bogus"}, "unknown command \"bogus\"\nhint: see vagentctl --help\n"},
		{[]string{"swtch", "dev"}, "unknown command \"swtch\"\nhint: did you mean \"switch\"? vagentctl --help lists the commands\n"},
		{[]string{"help", "bogus"}, "unknown command \"bogus\""},
		{[]string{"--bogus"}, "hint: see vagentctl --help\n"},
		{[]string{"--config"}, "hint: see vagentctl --help\n"},
	}
	commands := App(io.Discard, io.Discard).Commands
	if len(commands) < 15 {
		t.Fatalf("only %d commands", len(commands))
	}
	for _, c := range commands {
		hint := "hint: see vagentctl " + c.Name + " --help\n"
		cases = append(cases, usage{[]string{c.Name, "--no-such-flag"}, "flag provided but not defined: -no-such-flag\n" + hint})
		switch c.ArgsUsage {
		case "":
			args := []string{c.Name, "extra"}
			if c.Name == "render" { // its required --out is checked first
				args = []string{c.Name, "--out", t.TempDir(), "extra"}
			}
			cases = append(cases, usage{args, c.Name + " takes no arguments, got [\"extra\"]\n" + hint})
		case "AGENT":
			cases = append(cases,
				usage{[]string{c.Name}, c.Name + " takes exactly one AGENT, got 0 arguments\n" + hint},
				usage{[]string{c.Name, "dev", "po"}, c.Name + " takes exactly one AGENT, got 2 arguments\n" + hint})
		case "SHELL":
			cases = append(cases, usage{[]string{c.Name}, hint}, usage{[]string{c.Name, "tcsh"}, hint})
		case "TARGET":
			cases = append(cases,
				usage{[]string{c.Name}, c.Name + " takes exactly one TARGET (kubernetes, kubeai, production-stack), got 0 arguments\n" + hint},
				usage{[]string{c.Name, "nomad"}, "export target \"nomad\": want one of kubernetes, kubeai, production-stack\n" + hint})
		case "PIPELINE [INPUT]":
			cases = append(cases,
				usage{[]string{c.Name}, "run takes a PIPELINE (a name or a file) and an INPUT, or --inputs FILE\n" + hint},
				usage{[]string{c.Name, "idea-to-code"}, "run needs an INPUT after the PIPELINE, or --inputs FILE\n" + hint},
				usage{[]string{c.Name, "idea-to-code", "a", "b"}, "run takes a PIPELINE and at most one INPUT (quote it), got 3 arguments\n" + hint},
				usage{[]string{c.Name, "--inputs", "x.txt", "idea-to-code", "a"}, "run takes an INPUT or --inputs FILE, not both\n" + hint},
				usage{[]string{c.Name, "show"}, "run show takes exactly one run ID, got 0 arguments\nhint: see vagentctl run show --help\n"},
				usage{[]string{c.Name, "cancel", "a", "b"}, "run cancel takes exactly one run ID, got 2 arguments\nhint: see vagentctl run cancel --help\n"})
		case "[AGENT...]":
			// Any number of agents; a wrong flag value instead.
			cases = append(cases, usage{[]string{c.Name, "--jobs", "many"}, hint})
		default:
			t.Errorf("%s: no usage case for arguments %q", c.Name, c.ArgsUsage)
		}
	}
	for _, tc := range cases {
		stdout, stderr, code := runMain(t, tc.args...)
		if code != ExitUsage {
			t.Errorf("vagentctl %q: exit %d, want %d\nstderr: %s", tc.args, code, ExitUsage, stderr)
			continue
		}
		if !strings.Contains(stderr, tc.want) || !strings.HasPrefix(stderr, "vagentctl: ") {
			t.Errorf("vagentctl %q: stderr %q, want it to contain %q", tc.args, stderr, tc.want)
		}
		if stdout != "" {
			t.Errorf("vagentctl %q: printed on stdout: %q", tc.args, stdout)
		}
	}
	// Asking for help is no error.
	for _, args := range [][]string{nil, {"help"}, {"--help"}, {"help", "switch"}, {"switch", "--help"}} {
		if _, stderr, code := runMain(t, args...); code != ExitOK {
			t.Errorf("vagentctl %q: exit %d, want 0: %s", args, code, stderr)
		}
	}
}

// TestCompletionCommand prints the scripts the package ships:
// cmd/mandoc-gen writes the packaged files through WriteCompletion, and
// the command prints exactly that.
func TestCompletionCommand(t *testing.T) {
	for _, shell := range CompletionShells {
		stdout, stderr, code := runMain(t, "completion", shell)
		if code != ExitOK || stderr != "" {
			t.Fatalf("completion %s: exit %d: %s", shell, code, stderr)
		}
		var want bytes.Buffer
		if err := WriteCompletion(&want, shell); err != nil {
			t.Fatal(err)
		}
		if stdout != want.String() {
			t.Errorf("completion %s differs from the packaged script", shell)
		}
		if !strings.Contains(stdout, "vagentctl") || !strings.Contains(stdout, "switch") {
			t.Errorf("completion %s is no completion script:\n%s", shell, stdout)
		}
	}
	// The bash script, loaded from the command's output, completes agents
	// from the --config given on the command line.
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatalf("bash: %v", err)
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "agents"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"alpha", "beta"} {
		if err := os.WriteFile(filepath.Join(dir, "agents", a+".toml"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	script, _, _ := runMain(t, "completion", "bash")
	cmd := exec.Command(bash, "-c", `source /dev/stdin; COMP_WORDS=(vagentctl --config "$1" switch ''); COMP_CWORD=4; _vagentctl; echo "${COMPREPLY[*]}"`,
		"bash", filepath.Join(dir, "vagent.toml"))
	cmd.Stdin = strings.NewReader(script)
	cmd.Env = append(os.Environ(), "VAGENT_CONFIG=/nonexistent/vagent.toml")
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "alpha beta" {
		t.Errorf("bash completion of agents with --config: %v: %q, want \"alpha beta\"", err, out)
	}
}
