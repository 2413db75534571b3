package vllmsim

import (
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"

	"github.com/vagent-dev/vagent/engine/vllmflags"
)

// usageLine is what argparse prints before an error of `vllm serve`.
const usageLine = "usage: vllm serve [model_tag] [options]"

// usageError is an argparse error of the serve subcommand: usage line,
// "vllm serve: error: MSG" (the subparser's prog), exit 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// arg is one parsed flag as given on the command line.
type arg struct {
	flag   string // canonical long name, "--port"
	given  string // as written, for messages
	values []string
	on     bool // for boolean flags: true, or false for a --no- form
}

// cmdline is a parsed `vllm serve` command line.
type cmdline struct {
	modelTag string
	args     map[string]*arg
	order    []string // canonical flags in first-seen order
}

func (c *cmdline) has(flag string) bool { _, ok := c.args[flag]; return ok }

func (c *cmdline) str(flag, def string) string {
	if a, ok := c.args[flag]; ok && len(a.values) > 0 {
		return a.values[len(a.values)-1]
	}
	return def
}

func (c *cmdline) list(flag string) []string {
	if a, ok := c.args[flag]; ok {
		return a.values
	}
	return nil
}

// boolean is the state of a boolean flag pair (--x / --no-x), def if neither
// is given; the last one given wins.
func (c *cmdline) boolean(flag string, def bool) bool {
	v := def
	var lastIdx = -1
	for i, f := range c.order {
		if f == flag || f == "--no-"+strings.TrimPrefix(flag, "--") {
			if i > lastIdx {
				lastIdx = i
				v = c.args[f].on
			}
		}
	}
	return v
}

// looksLikeFlag is argparse's test for an option string: it starts with '-'
// and is not a negative number.
func looksLikeFlag(s string) bool {
	if !strings.HasPrefix(s, "-") || s == "-" {
		return false
	}
	if _, err := strconv.ParseFloat(s, 64); err == nil {
		return false
	}
	return true
}

// parseCmdline parses the arguments after "serve" the way vLLM's
// FlexibleArgumentParser does: --flag value, --flag=value, boolean flags
// without value, nargs='+' flags, underscores accepted for dashes, no
// abbreviations. Unknown flags and extra positionals are collected and
// reported together, after type errors.
func parseCmdline(set *vllmflags.Set, argv []string) (*cmdline, error) {
	c := &cmdline{args: map[string]*arg{}}
	var positionals, unknown []string
	record := func(a *arg) {
		if old, ok := c.args[a.flag]; ok {
			// Repeated: the last wins, except that its position moves.
			*old = *a
			for i, f := range c.order {
				if f == a.flag {
					c.order = append(c.order[:i], c.order[i+1:]...)
					break
				}
			}
		} else {
			c.args[a.flag] = a
		}
		c.order = append(c.order, a.flag)
	}
	for i := 0; i < len(argv); {
		a := argv[i]
		if a == "--" {
			positionals = append(positionals, argv[i+1:]...)
			break
		}
		if !looksLikeFlag(a) {
			positionals = append(positionals, a)
			i++
			continue
		}
		name, val, hasVal := strings.Cut(a, "=")
		if strings.HasPrefix(name, "--") {
			name = "--" + strings.ReplaceAll(name[2:], "_", "-")
		}
		if !set.Has(name) {
			unknown = append(unknown, a)
			i++
			continue
		}
		flag := set.Canonical(name)
		display := argName(set, flag)
		switch {
		case set.Boolean(flag):
			if hasVal {
				return nil, &usageError{fmt.Sprintf("argument %s: ignored explicit argument '%s'", display, val)}
			}
			on := !strings.HasPrefix(flag, "--no-")
			record(&arg{flag: flag, given: name, on: on})
			i++
		case set.Multi(flag):
			var vals []string
			j := i + 1
			if hasVal {
				vals = []string{val}
			} else {
				for j < len(argv) && !looksLikeFlag(argv[j]) && argv[j] != "--" {
					vals = append(vals, argv[j])
					j++
				}
			}
			if len(vals) == 0 {
				return nil, &usageError{fmt.Sprintf("argument %s: expected at least one argument", display)}
			}
			record(&arg{flag: flag, given: name, values: vals})
			i = j
		default:
			if hasVal {
				record(&arg{flag: flag, given: name, values: []string{val}})
				i++
				continue
			}
			if i+1 >= len(argv) || looksLikeFlag(argv[i+1]) {
				return nil, &usageError{fmt.Sprintf("argument %s: expected one argument", display)}
			}
			record(&arg{flag: flag, given: name, values: []string{argv[i+1]}})
			i += 2
		}
	}
	if err := checkTypes(set, c); err != nil {
		return nil, err
	}
	if len(positionals) > 0 {
		c.modelTag = positionals[0]
		unknown = append(unknown, positionals[1:]...)
	}
	if len(unknown) > 0 {
		return nil, &usageError{"unrecognized arguments: " + strings.Join(unknown, " ")}
	}
	return c, nil
}

// argName names a flag the way argparse does in errors: every option string
// of the action, joined by '/'.
func argName(set *vllmflags.Set, flag string) string {
	names := append([]string{flag}, set.Aliases(flag)...)
	return strings.Join(names, "/")
}

// Flag value kinds the simulator checks as vLLM's parser would.
var (
	intFlags = map[string]bool{
		"--port": true, "--tensor-parallel-size": true, "--pipeline-parallel-size": true,
		"--data-parallel-size": true, "--max-num-seqs": true, "--seed": true,
		"--block-size": true, "--max-logprobs": true, "--api-server-count": true,
		"--num-gpu-blocks-override": true, "--shutdown-timeout": true,
		"--max-parallel-loading-workers": true, "--max-loras": true, "--max-lora-rank": true,
		"--max-cpu-loras": true, "--stream-interval": true, "--max-log-len": true,
	}
	humanIntFlags = map[string]bool{
		"--max-model-len": true, "--max-num-batched-tokens": true, "--kv-cache-memory-bytes": true,
	}
	floatFlags = map[string]bool{
		"--gpu-memory-utilization": true, "--cpu-offload-gb": true, "--swap-space": true,
		"--kv-offloading-size": true,
	}
	jsonFlags = map[string]bool{
		"--override-generation-config": true, "--hf-overrides": true,
		"--speculative-config": true, "--compilation-config": true,
		"--kv-transfer-config": true, "--limit-mm-per-prompt": true,
		"--mm-processor-kwargs": true, "--model-loader-extra-config": true,
		"--additional-config": true, "--default-chat-template-kwargs": true,
	}
	choiceFlags = map[string][]string{
		"--dtype":             {"auto", "half", "float16", "bfloat16", "float", "float32"},
		"--kv-cache-dtype":    {"auto", "bfloat16", "fp8", "fp8_ds_mla", "fp8_e4m3", "fp8_e5m2", "fp8_inc"},
		"--uvicorn-log-level": {"critical", "error", "warning", "info", "debug", "trace"},
		"--runner":            {"auto", "draft", "generate", "pooling"},
	}
)

func checkTypes(set *vllmflags.Set, c *cmdline) error {
	for _, f := range c.order {
		a := c.args[f]
		if len(a.values) == 0 {
			continue
		}
		v := a.values[len(a.values)-1]
		name := argName(set, f)
		switch {
		case intFlags[f]:
			if _, err := pyInt(v); err != nil {
				return &usageError{fmt.Sprintf("argument %s: invalid int value: '%s'", name, v)}
			}
		case humanIntFlags[f]:
			if f == "--max-model-len" && strings.EqualFold(strings.TrimSpace(v), "auto") {
				continue
			}
			if _, err := humanReadableInt(v); err != nil {
				if strings.HasPrefix(err.Error(), "Decimals") {
					return &usageError{fmt.Sprintf("argument %s: %s", name, err)}
				}
				return &usageError{fmt.Sprintf("argument %s: invalid human_readable_int value: '%s'", name, v)}
			}
		case floatFlags[f]:
			if _, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err != nil {
				return &usageError{fmt.Sprintf("argument %s: invalid float value: '%s'", name, v)}
			}
		case jsonFlags[f]:
			var x any
			if err := json.Unmarshal([]byte(v), &x); err != nil {
				return &usageError{fmt.Sprintf("argument %s: invalid loads value: '%s'", name, v)}
			}
		}
		if choices, ok := choiceFlags[f]; ok {
			found := false
			for _, ch := range choices {
				found = found || ch == v
			}
			if !found {
				quoted := make([]string, len(choices))
				for i, ch := range choices {
					quoted[i] = "'" + ch + "'"
				}
				return &usageError{fmt.Sprintf("argument %s: invalid choice: '%s' (choose from %s)", name, v, strings.Join(quoted, ", "))}
			}
		}
	}
	return nil
}

// pyInt parses an integer as Python's int() does (surrounding spaces,
// underscores between digits, a sign).
func pyInt(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "__") || strings.HasPrefix(s, "_") || strings.HasSuffix(s, "_") {
		return 0, fmt.Errorf("invalid int %q", s)
	}
	return strconv.ParseInt(strings.ReplaceAll(s, "_", ""), 10, 64)
}

var humanRe = regexp.MustCompile(`^(\d+(?:\.\d+)?)([kKmMgGtT])$`)

// humanReadableInt is vLLM's human_readable_int: "32k" = 32000, "32K" =
// 32768, "1.5m" = 1500000; decimals only with decimal (lower-case) suffixes.
func humanReadableInt(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if m := humanRe.FindStringSubmatch(s); m != nil {
		num, suffix := m[1], m[2]
		dec := map[string]float64{"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
		bin := map[string]int64{"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
		if mult, ok := dec[suffix]; ok {
			f, _ := strconv.ParseFloat(num, 64)
			return int64(math.Floor(f * mult)), nil
		}
		n, err := strconv.ParseInt(num, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("Decimals are not allowed with binary suffixes like %s. Did you mean to use %s%s instead?", suffix, num, strings.ToLower(suffix))
		}
		return n * bin[suffix], nil
	}
	return pyInt(s)
}
