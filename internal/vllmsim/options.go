package vllmsim

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// defaultModel is what `vllm serve` serves with no model at all.
const defaultModel = "Qwen/Qwen3-0.6B"

// options are the flags the simulator models; every other accepted flag is
// ignored.
type options struct {
	model           string
	servedNames     []string
	host            string
	uds             string // --uds: listen on this unix socket, not host:port
	port            int
	apiKeys         []string
	gpuUtil         float64
	kvCacheBytes    int64
	maxModelLen     int // 0: derived from the model; -1: auto (fit memory)
	quantization    string
	dtype           string
	kvCacheDtype    string
	tp, pp          int
	maxNumSeqs      int
	blockSize       int
	enforceEager    bool
	sleepMode       bool
	overrideGen     map[string]any
	generationCfg   string
	logRequests     bool
	disableStats    bool
	disableAccess   bool
	quietEndpoints  map[string]bool
	loadTracking    bool
	prefixCaching   bool
	shutdownTimeout int
	autoToolChoice  bool
	toolCallParser  string
	reasoningParser string
	seed            int64
}

// optionsFrom reads the modelled flags of a parsed command line. Values were
// type-checked by the parser already.
func optionsFrom(c *cmdline, env func(string) string) *options {
	o := &options{
		model:         c.str("--model", ""),
		host:          c.str("--host", ""),
		port:          8000,
		gpuUtil:       0.9,
		dtype:         c.str("--dtype", "auto"),
		kvCacheDtype:  c.str("--kv-cache-dtype", "auto"),
		quantization:  c.str("--quantization", ""),
		tp:            1,
		pp:            1,
		maxNumSeqs:    256,
		blockSize:     16,
		generationCfg: c.str("--generation-config", "auto"),
		overrideGen:   map[string]any{},
	}
	if c.modelTag != "" {
		o.model = c.modelTag
	}
	if o.model == "" {
		o.model = defaultModel
	}
	o.servedNames = c.list("--served-model-name")
	if len(o.servedNames) == 0 {
		o.servedNames = []string{o.model}
	}
	atoi := func(flag string, def int) int {
		if !c.has(flag) {
			return def
		}
		n, _ := pyInt(c.str(flag, ""))
		return int(n)
	}
	o.port = atoi("--port", 8000)
	o.uds = c.str("--uds", "")
	o.tp = atoi("--tensor-parallel-size", 1)
	o.pp = atoi("--pipeline-parallel-size", 1)
	o.maxNumSeqs = atoi("--max-num-seqs", 256)
	o.blockSize = atoi("--block-size", 16)
	o.shutdownTimeout = atoi("--shutdown-timeout", 0)
	o.seed = int64(atoi("--seed", 0))
	if c.has("--gpu-memory-utilization") {
		o.gpuUtil, _ = strconv.ParseFloat(strings.TrimSpace(c.str("--gpu-memory-utilization", "")), 64)
	}
	if c.has("--kv-cache-memory-bytes") {
		o.kvCacheBytes, _ = humanReadableInt(c.str("--kv-cache-memory-bytes", ""))
	}
	if c.has("--max-model-len") {
		v := c.str("--max-model-len", "")
		if strings.EqualFold(strings.TrimSpace(v), "auto") {
			o.maxModelLen = -1
		} else {
			n, _ := humanReadableInt(v)
			o.maxModelLen = int(n)
		}
	}
	o.apiKeys = c.list("--api-key")
	if len(o.apiKeys) == 0 && env("VLLM_API_KEY") != "" {
		o.apiKeys = []string{env("VLLM_API_KEY")}
	}
	if s := c.str("--override-generation-config", ""); s != "" {
		_ = json.Unmarshal([]byte(s), &o.overrideGen)
		if o.overrideGen == nil {
			o.overrideGen = map[string]any{}
		}
	}
	o.enforceEager = c.boolean("--enforce-eager", false)
	o.sleepMode = c.boolean("--enable-sleep-mode", false)
	o.logRequests = c.boolean("--enable-log-requests", false)
	o.disableStats = c.has("--disable-log-stats")
	o.disableAccess = c.boolean("--disable-uvicorn-access-log", false)
	o.loadTracking = c.boolean("--enable-server-load-tracking", false)
	o.prefixCaching = c.boolean("--enable-prefix-caching", true)
	o.autoToolChoice = c.boolean("--enable-auto-tool-choice", false)
	o.toolCallParser = c.str("--tool-call-parser", "")
	o.reasoningParser = c.str("--reasoning-parser", "")
	o.quietEndpoints = map[string]bool{}
	for _, p := range strings.Split(c.str("--disable-access-log-for-endpoints", ""), ",") {
		if p = strings.TrimSpace(p); p != "" {
			o.quietEndpoints[p] = true
		}
	}
	return o
}

// nonDefaultArgs renders the "non-default args" log line's dict the way
// Python prints it: {'model_tag': 'Qwen/...', 'port': 8001, ...}. The API
// key is left out.
func nonDefaultArgs(c *cmdline) string {
	var parts []string
	if c.modelTag != "" {
		parts = append(parts, fmt.Sprintf("'model_tag': %s", pyStr(c.modelTag)))
	}
	for _, f := range c.order {
		a := c.args[f]
		key := strings.ReplaceAll(strings.TrimPrefix(f, "--"), "-", "_")
		if f == "--api-key" || f == "--help" {
			continue
		}
		var val string
		switch {
		case a.values == nil:
			if strings.HasPrefix(f, "--no-") {
				key = strings.TrimPrefix(key, "no_")
			}
			val = "True"
			if !a.on {
				val = "False"
			}
		case multiFlagKey(f):
			items := make([]string, len(a.values))
			for i, v := range a.values {
				items[i] = pyValue(f, v)
			}
			val = "[" + strings.Join(items, ", ") + "]"
		default:
			val = pyValue(f, a.values[len(a.values)-1])
		}
		parts = append(parts, fmt.Sprintf("'%s': %s", key, val))
	}
	if c.modelTag != "" && !c.has("--model") {
		parts = append(parts, fmt.Sprintf("'model': %s", pyStr(c.modelTag)))
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

func multiFlagKey(f string) bool {
	switch f {
	case "--served-model-name", "--lora-modules", "--allowed-origins", "--allowed-methods",
		"--allowed-headers", "--cudagraph-capture-sizes", "--ignore-patterns":
		return true
	}
	return false
}

func pyValue(flag, v string) string {
	switch {
	case intFlags[flag]:
		n, _ := pyInt(v)
		return strconv.FormatInt(n, 10)
	case humanIntFlags[flag]:
		if n, err := humanReadableInt(v); err == nil {
			return strconv.FormatInt(n, 10)
		}
	case floatFlags[flag]:
		f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
		return pyFloat(f)
	case jsonFlags[flag]:
		var x any
		if json.Unmarshal([]byte(v), &x) == nil {
			return pyRepr(x)
		}
	}
	return pyStr(v)
}

// pyStr is Python's repr of a str (single quotes unless the text has one).
func pyStr(s string) string {
	if strings.Contains(s, "'") && !strings.Contains(s, `"`) {
		return `"` + s + `"`
	}
	return "'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), "'", `\'`) + "'"
}

// pyFloat is Python's repr of a float: 0.9, 1.0, 14.38.
func pyFloat(f float64) string {
	a := math.Abs(f)
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return map[bool]string{true: "inf", false: "nan"}[math.IsInf(f, 0)]
	}
	if a != 0 && (a < 1e-4 || a >= 1e16) {
		return strconv.FormatFloat(f, 'e', -1, 64)
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.Contains(s, ".") {
		s += ".0"
	}
	return s
}

// pyRound2 is str(round(x, 2)), as vLLM's format_gib prints GiB.
func pyRound2(x float64) string {
	r, _ := strconv.ParseFloat(strconv.FormatFloat(x, 'f', 2, 64), 64)
	return pyFloat(r)
}

// pyRepr renders a decoded JSON value as Python prints it.
func pyRepr(x any) string {
	switch v := x.(type) {
	case nil:
		return "None"
	case bool:
		if v {
			return "True"
		}
		return "False"
	case float64:
		if v == float64(int64(v)) && !strings.ContainsAny(strconv.FormatFloat(v, 'g', -1, 64), "e.") {
			return strconv.FormatInt(int64(v), 10)
		}
		return pyFloat(v)
	case string:
		return pyStr(v)
	case []any:
		items := make([]string, len(v))
		for i, e := range v {
			items[i] = pyRepr(e)
		}
		return "[" + strings.Join(items, ", ") + "]"
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		items := make([]string, len(keys))
		for i, k := range keys {
			items[i] = pyStr(k) + ": " + pyRepr(v[k])
		}
		return "{" + strings.Join(items, ", ") + "}"
	}
	return fmt.Sprint(x)
}
