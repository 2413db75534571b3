package config

import (
	"strings"
	"testing"
)

func TestIsOption(t *testing.T) {
	for w, want := range map[string]bool{
		"--seed": true, "-tp": true, "--seed=-1e5": true,
		"-1": false, "-42": false, "-": false, "8192": false, "": false, "x": false,
		// argparse up to 3.13 reads these as options; 3.14 as numbers, and
		// vLLM's parser turns "-0.5" into a dotted option: never values.
		"-1e5": true, "-inf": true, "-nan": true, "-0.5": true, "-.5": true, "-1_000": true,
	} {
		if got := IsOption(w); got != want {
			t.Errorf("IsOption(%q) = %v, want %v", w, got, want)
		}
	}
}

// A negative number that argparse (or vLLM's own parser) would take for an
// option is refused at load, with the form that works.
func TestNegativeNumbersInExtraArgs(t *testing.T) {
	for arg, want := range map[string]string{
		"-1e5":   `"--seed=-1e5"`,
		"-inf":   `"--seed=-inf"`,
		"-0.5":   `"--seed=-0.5"`,
		"-1_000": `"--seed=-1_000"`,
	} {
		path := writeConfig(t, "", map[string]string{"po": goodAgent + "extra_args = [\"--seed\", \"" + arg + "\"]\n"})
		_, err := Load(path)
		if err == nil || !strings.Contains(err.Error(), "agents/po.toml:3:") ||
			!strings.Contains(err.Error(), `extra_args: entry 2 "`+arg+`": vllm serve reads a value that starts with '-' as an option`) ||
			!strings.Contains(err.Error(), "attach it to its flag instead: "+want) {
			t.Errorf("%s: %v", arg, err)
		}
	}
	for _, ok := range []string{`"--seed", "-1"`, `"--seed=-1e5"`, `"--max-logprobs=-0.5"`} {
		if _, err := Load(writeConfig(t, "", map[string]string{"po": goodAgent + "extra_args = [" + ok + "]\n"})); err != nil {
			t.Errorf("%s refused: %v", ok, err)
		}
	}
}
