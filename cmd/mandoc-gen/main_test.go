package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vagent-dev/vagent/ctl"
)

// TestMain lets the test binary stand in for vagentd -h: Go's flag usage.
func TestMain(m *testing.M) {
	if os.Getenv("MANDOC_FAKE_VAGENTD") == "1" {
		fs := flag.NewFlagSet("vagentd", flag.ContinueOnError)
		fs.String("config", "", "main configuration file")
		fs.Bool("version", false, "print the version and exit")
		_ = fs.Parse(os.Args[1:])
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestRun(t *testing.T) {
	t.Setenv("MANDOC_FAKE_VAGENTD", "1")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	if err := run(out, self, "1.2.3", "2026-01-02"); err != nil {
		t.Fatal(err)
	}
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	page := read("man/vagentctl.1")
	bash := read("completion/vagentctl.bash")
	zsh := read("completion/_vagentctl")
	fish := read("completion/vagentctl.fish")
	// Every command vagentctl has is documented and completed.
	for _, c := range ctl.App(io.Discard, io.Discard).Commands {
		if c.Hidden {
			continue
		}
		if !strings.Contains(page, `.SS "\fB`+strings.ReplaceAll(c.Name, "-", `\-`)+`\fR`) {
			t.Errorf("vagentctl.1 lacks command %s", c.Name)
		}
		// And its own commands (vagentctl run list).
		for _, sc := range c.Commands {
			if !sc.Hidden && !strings.Contains(page, `.SS "\fB`+c.Name+" "+sc.Name+`\fR`) {
				t.Errorf("vagentctl.1 lacks command %s %s", c.Name, sc.Name)
			}
		}
		if !strings.Contains(bash, "\t"+c.Name+")\n") || !strings.Contains(zsh, "'"+c.Name+":") || !strings.Contains(fish, "-a "+c.Name+" ") {
			t.Errorf("completions lack command %s", c.Name)
		}
	}
	// The packaged completions are what vagentctl completion prints.
	for shell, text := range map[string]string{"bash": bash, "zsh": zsh, "fish": fish} {
		var o, e bytes.Buffer
		if code := ctl.Main(context.Background(), []string{"vagentctl", "completion", shell}, &o, &e); code != 0 || o.String() != text {
			t.Errorf("vagentctl completion %s (exit %d, %s) differs from the packaged file", shell, code, e.String())
		}
	}
	if d := read("man/vagentd.8"); !strings.Contains(d, `\fB\-\-config\fR \fIFILE\fR`) || !strings.Contains(d, `"vagent 1.2.3"`) {
		t.Errorf("vagentd.8 lacks its options or version:\n%s", d)
	}
	if s := read("man/vllm-sim.1"); !strings.Contains(s, "VLLM_SIM_LEDGER") {
		t.Errorf("vllm-sim.1 lacks its environment:\n%s", s)
	}
}
