// Package vllmsim is a stand-in for `vllm serve` that needs no GPU: the same
// command line (flag set of the configured vLLM version, argparse's errors
// and exit codes), the port bound at once but listening only once "loaded",
// vLLM's log lines, endpoints, response shapes, metric names and error
// texts, and a GPU memory ledger shared by every simulator on the host
// (internal/ledger) so that over-commit fails with vLLM's own errors.
// vagent's tests run every agent on it.
package vllmsim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/vagent-dev/vagent/engine/vllmflags"
	"github.com/vagent-dev/vagent/internal/ledger"
)

// Defaults of the simulator's environment.
const (
	DefaultVersion     = "0.18.0"
	DefaultLedger      = "/run/vagent/sim-ledger.json"
	DefaultTotalMiB    = 16376
	defaultTPS         = 100
	defaultTTFTms      = 20
	defaultReleaseMS   = 300
	defaultWakeFrac    = 0.02
	loadSecondsPerB    = 0.15
	weightsShare       = 0.7 // of the load time, spent loading weights
	minLoadSeconds     = 0.5
	statsLogInterval   = 10 * time.Second
	shutdownHTTPBudget = 2 * time.Second
)

// simEnv is the simulator's configuration from the environment.
type simEnv struct {
	version      string
	ledgerPath   string
	gpus         int
	totalBytes   uint64
	loadSeconds  float64 // < 0: derived from the model size
	tps          float64
	ttft         time.Duration
	release      time.Duration
	wakeFraction float64
	visible      []int
	devMode      bool
	allowLongLen bool
	cache        cacheEnv
	// completions, when set (VLLM_SIM_COMPLETIONS), is a file the
	// simulator appends one line to for every answer it wrote whole: the
	// request's X-Request-Id (or its own id) and the model. Not vLLM's:
	// tests count with it what the engines delivered, across processes.
	completions string
	// v18 selects vLLM 0.18's behaviour where it differs from 0.12's:
	// the version whose flag list the simulator follows (the newest
	// embedded list not newer than VLLM_SIM_VERSION) decides.
	v18 bool
}

// behavesAs018 reports whether a flag list's version is 0.18 or newer:
// versions between the two embedded lists take the older one's flags and
// behaviour.
func behavesAs018(flagsVersion string) bool {
	var major, minor int
	fmt.Sscanf(flagsVersion, "%d.%d", &major, &minor)
	return major > 0 || minor >= 18
}

func readEnv(env func(string) string) (*simEnv, error) {
	e := &simEnv{
		version:      DefaultVersion,
		ledgerPath:   DefaultLedger,
		gpus:         1,
		totalBytes:   DefaultTotalMiB * mib,
		loadSeconds:  -1,
		tps:          defaultTPS,
		ttft:         defaultTTFTms * time.Millisecond,
		release:      defaultReleaseMS * time.Millisecond,
		wakeFraction: defaultWakeFrac,
		visible:      []int{0},
	}
	if v := strings.TrimSpace(env("VLLM_SIM_VERSION")); v != "" {
		e.version = v
	}
	if v := env("VLLM_SIM_LEDGER"); v != "" {
		e.ledgerPath = v
	}
	e.completions = env("VLLM_SIM_COMPLETIONS")
	num := func(name string, set func(float64)) error {
		v := strings.TrimSpace(env(name))
		if v == "" {
			return nil
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < 0 || math.IsNaN(f) || math.IsInf(f, 0) {
			return fmt.Errorf("%s=%q: want a non-negative number", name, v)
		}
		set(f)
		return nil
	}
	errs := []error{
		num("VLLM_SIM_GPUS", func(f float64) { e.gpus = int(f) }),
		num("VLLM_SIM_TOTAL_MIB", func(f float64) { e.totalBytes = uint64(f * mib) }),
		num("VLLM_SIM_LOAD_SECONDS", func(f float64) { e.loadSeconds = f }),
		num("VLLM_SIM_TOKENS_PER_SECOND", func(f float64) { e.tps = f }),
		num("VLLM_SIM_TTFT_MS", func(f float64) { e.ttft = time.Duration(f * float64(time.Millisecond)) }),
		num("VLLM_SIM_RELEASE_MS", func(f float64) { e.release = time.Duration(f * float64(time.Millisecond)) }),
		num("VLLM_SIM_WAKE_FRACTION", func(f float64) { e.wakeFraction = f }),
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if e.gpus < 1 {
		return nil, fmt.Errorf("VLLM_SIM_GPUS=%q: want at least 1", env("VLLM_SIM_GPUS"))
	}
	if v := strings.TrimSpace(env("CUDA_VISIBLE_DEVICES")); v != "" {
		e.visible = nil
		for _, p := range strings.Split(v, ",") {
			p = strings.TrimSpace(p)
			if p == "" {
				continue
			}
			n, err := strconv.Atoi(p)
			if err != nil || n < 0 {
				return nil, fmt.Errorf("CUDA_VISIBLE_DEVICES=%q: want GPU indexes", v)
			}
			e.visible = append(e.visible, n)
		}
	}
	e.devMode = env("VLLM_SERVER_DEV_MODE") == "1"
	e.allowLongLen = env("VLLM_ALLOW_LONG_MAX_MODEL_LEN") == "1" || strings.EqualFold(env("VLLM_ALLOW_LONG_MAX_MODEL_LEN"), "true")
	e.cache = readCacheEnv(env)
	return e, nil
}

// readCgroup returns this process's cgroup membership.
var readCgroup = func() ([]byte, error) { return os.ReadFile("/proc/self/cgroup") }

// unitFromCgroup finds the vagent@NAME.service unit this process runs in.
func unitFromCgroup() string {
	data, err := readCgroup()
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(data), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		segs := strings.Split(parts[2], "/")
		for i := len(segs) - 1; i >= 0; i-- {
			if strings.HasPrefix(segs[i], "vagent@") && strings.HasSuffix(segs[i], ".service") {
				return segs[i]
			}
		}
	}
	return ""
}

// toolParsers are the registered tool-call parsers
// (ToolParserManager.list_registered: sorted names).
func toolParsers(v18 bool) []string {
	if v18 {
		return strings.Split("deepseek_v3,deepseek_v31,deepseek_v32,ernie45,functiongemma,gigachat3,glm45,glm47,granite,granite-20b-fc,granite4,hermes,hunyuan_a13b,internlm,jamba,kimi_k2,llama3_json,llama4_json,llama4_pythonic,longcat,minimax,minimax_m2,mistral,olmo3,openai,phi4_mini_json,pythonic,qwen3_coder,qwen3_xml,seed_oss,step3,step3p5,xlam", ",")
	}
	return strings.Split("deepseek_v3,deepseek_v31,ernie45,glm45,granite,granite-20b-fc,hermes,hunyuan_a13b,internlm,jamba,kimi_k2,llama3_json,llama4_json,llama4_pythonic,longcat,minimax,minimax_m2,mistral,olmo3,openai,phi4_mini_json,pythonic,qwen3_coder,qwen3_xml,seed_oss,step3,xlam", ",")
}

func knownToolParser(v18 bool, name string) bool {
	for _, p := range toolParsers(v18) {
		if p == name {
			return true
		}
	}
	return false
}

const topUsage = "usage: vllm [-h] [-v] {chat,complete,serve,bench,collect-env,run-batch} ..."

// Main runs the simulator with args (without the program name) and returns
// the exit status: 0 after a clean shutdown (ctx cancelled, as on SIGTERM),
// 1 when the engine fails to start, 2 for command-line errors.
func Main(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) int {
	if env(WorkerEnv) != "" {
		return worker(ctx, os.Stdin)
	}
	se, err := readEnv(env)
	if err != nil {
		fmt.Fprintf(stderr, "vllm-sim: %v\n", err)
		return 2
	}
	if len(args) == 0 {
		fmt.Fprintln(stderr, topUsage)
		fmt.Fprintln(stderr, "vllm: error: the following arguments are required: subparser")
		return 2
	}
	switch args[0] {
	case "-v", "--version":
		fmt.Fprintln(stdout, se.version)
		return 0
	case "-h", "--help":
		fmt.Fprintln(stdout, topUsage)
		return 0
	case "serve":
	default:
		fmt.Fprintln(stderr, topUsage)
		fmt.Fprintf(stderr, "vllm: error: argument subparser: invalid choice: '%s' (choose from 'chat', 'complete', 'serve', 'bench', 'collect-env', 'run-batch')\n", args[0])
		return 2
	}
	set, err := vllmflags.For(se.version)
	if err != nil {
		fmt.Fprintf(stderr, "vllm-sim: VLLM_SIM_VERSION: %v\n", err)
		return 2
	}
	se.v18 = behavesAs018(set.Version)
	c, err := parseCmdline(set, args[1:])
	if err != nil {
		var ue *usageError
		if errors.As(err, &ue) {
			fmt.Fprintln(stderr, usageLine)
			fmt.Fprintf(stderr, "vllm serve: error: %s\n", ue.msg)
			return 2
		}
		fmt.Fprintf(stderr, "vllm-sim: %v\n", err)
		return 1
	}
	if c.has("--help") {
		fmt.Fprintln(stdout, usageLine)
		fmt.Fprintln(stdout, "\noptions:")
		for _, f := range set.Flags() {
			fmt.Fprintf(stdout, "  %s\n", f)
		}
		return 0
	}
	o := optionsFrom(c, env)
	lg := &logger{out: stdout, pid: os.Getpid(), now: time.Now}
	// vLLM validates these before the server starts (validate_parsed_serve_args).
	if o.autoToolChoice && o.toolCallParser == "" {
		lg.raw(stderr, procAPI, pyTraceback("vllm/entrypoints/utils.py", 212, "validate_parsed_serve_args",
			`raise TypeError("Error: --enable-auto-tool-choice requires "`,
			"TypeError: Error: --enable-auto-tool-choice requires --tool-call-parser")...)
		return 1
	}
	s := &sim{env: se, opts: o, cmd: c, log: lg, stdout: stdout, stderr: stderr}
	return s.run(ctx)
}

// pyTraceback renders a short Python traceback ending in the exception line.
func pyTraceback(file string, line int, fn, code, exc string) []string {
	return []string{
		"Traceback (most recent call last):",
		`  File "/opt/venv/bin/vllm", line 10, in <module>`,
		"    sys.exit(main())",
		"             ^^^^^^",
		fmt.Sprintf(`  File "/opt/venv/lib/python3.12/site-packages/%s", line %d, in %s`, file, line, fn),
		"    " + code,
		exc,
	}
}

// sim is one simulated `vllm serve` process.
type sim struct {
	env    *simEnv
	opts   *options
	cmd    *cmdline
	log    *logger
	stdout io.Writer
	stderr io.Writer

	facts  modelFacts
	plan   memPlan
	maxLen int
	gpus   []int
	led    *ledger.Ledger
	ident  entryIdent
	sock   *boundSocket
}

// entryIdent identifies this engine's ledger entries: several engines may
// share a PID when run in one test process, never a port.
type entryIdent struct {
	pid   int
	pidns string
	port  int
	since time.Time
	// onGPU is the PID of the worker holding each GPU, by GPU index, for an
	// engine with a worker per rank; pid holds the GPU otherwise.
	onGPU map[int]int
}

// holder is the PID whose entry holds gpu.
func (id entryIdent) holder(gpu int) int {
	if p, ok := id.onGPU[gpu]; ok {
		return p
	}
	return id.pid
}

func (id entryIdent) mine(e ledger.Entry) bool {
	return e.PID == id.holder(e.GPU) && e.PIDNS == id.pidns && e.Port == id.port && e.Since.Equal(id.since)
}

func (s *sim) run(ctx context.Context) int {
	lg, o, se := s.log, s.opts, s.env
	start := time.Now()
	if se.v18 {
		// log_version_and_model: the logo, monochrome as vLLM's
		// NewLineFormatter prints it, each line prefixed.
		lg.info("utils.py:297", "\n       █     █     █▄   ▄█\n ▄▄ ▄█ █     █     █ ▀▄▀ █  version %s\n  █▄█▀ █     █     █     █  model   %s\n   ▀▀  ▀▀▀▀▀ ▀▀▀▀▀ ▀     ▀\n", se.version, o.model)
		lg.info("utils.py:233", "non-default args: %s", nonDefaultArgs(s.cmd))
	} else {
		if se.devMode {
			// api_server.py warns when the module is imported.
			lg.warn(procAPI, "api_server.py:858", "SECURITY WARNING: Development endpoints are enabled! This should NOT be used in production!")
		}
		lg.info("api_server.py:1772", "vLLM API server version %s", se.version)
		lg.info("utils.py:253", "non-default args: %s", nonDefaultArgs(s.cmd))
	}
	// validate_api_server_args: the tool-call parser must be a registered
	// one when auto tool choice is on.
	if o.autoToolChoice && !knownToolParser(se.v18, o.toolCallParser) {
		line := 1753
		if se.v18 {
			line = 498
		}
		lg.raw(s.stderr, procAPI, pyTraceback("vllm/entrypoints/openai/api_server.py", line, "validate_api_server_args",
			"raise KeyError(", fmt.Sprintf("KeyError: 'invalid tool call parser: %s (chose from { %s })'", o.toolCallParser, strings.Join(toolParsers(se.v18), ",")))...)
		return 1
	}

	var sock *boundSocket
	var err error
	if o.uds != "" {
		// vLLM ignores --host and --port beside --uds.
		sock, err = bindUnixSocket(o.uds)
	} else {
		sock, err = bindSocket(o.host, o.port)
	}
	if err != nil {
		if o.uds != "" {
			msg := "OSError: [Errno 98] Address already in use"
			if !errors.Is(err, errAddrInUse) {
				msg = "OSError: " + err.Error()
			}
			lg.raw(s.stderr, procAPI, pyTraceback("vllm/entrypoints/openai/api_server.py", 491, "create_server_unix_socket",
				"sock.bind(path)", msg)...)
			return 1
		}
		if errors.Is(err, errAddrInUse) {
			lg.raw(s.stderr, procAPI, pyTraceback("vllm/entrypoints/openai/api_server.py", 1996, "create_server_socket",
				"sock.bind(addr)", "OSError: [Errno 98] Address already in use")...)
			return 1
		}
		lg.raw(s.stderr, procAPI, pyTraceback("vllm/entrypoints/openai/api_server.py", 1990, "create_server_socket",
			"sock.bind(addr)", err.Error())...)
		return 1
	}
	defer sock.close()
	s.sock = sock

	// With HF_HUB_OFFLINE=1 vLLM resolves the model in the cache first.
	if code, bad := s.checkCache(); bad {
		return code
	}
	s.facts = factsFor(o.model, o.quantization, o.dtype)
	if code, bad := s.checkConfig(); bad {
		return code
	}
	s.plan = planMemory(s.facts, o, se.totalBytes)
	world := o.tp * o.pp
	s.gpus = se.visible[:world]

	lg.info("model.py:547", "Resolved architecture: %s", s.facts.arch)
	lg.info("model.py:1510", "Using max model len %d", s.configuredLen())
	if o.quantization == "" && (s.facts.quant == "awq" || s.facts.quant == "gptq") {
		lg.info("awq_marlin.py:162", "The model is convertible to %s_marlin during runtime. Using %s_marlin kernel.", s.facts.quant, s.facts.quant)
	}
	lg.info("scheduler.py:231", "Chunked prefill is enabled with max_num_batched_tokens=%d.", 2048)
	lg.engine("core.py:93", "Initializing a V1 LLM engine (v%s) with config: model=%s, speculative_config=None, tokenizer=%s, skip_tokenizer_init=False, tokenizer_mode=auto, revision=None, trust_remote_code=%s, dtype=%s, max_seq_len=%d, download_dir=None, load_format=auto, tensor_parallel_size=%d, pipeline_parallel_size=%d, data_parallel_size=1, disable_custom_all_reduce=False, quantization=%s, enforce_eager=%s, kv_cache_dtype=%s, device_config=cuda, seed=%d, served_model_name=%s, enable_prefix_caching=%s",
		se.version, pyStr(o.model), pyStr(o.model), pyBool(s.cmd.boolean("--trust-remote-code", false)), torchDtype(o.dtype, s.facts.quant),
		s.configuredLen(), o.tp, o.pp, quantName(s.facts.quant, o.quantization), pyBool(o.enforceEager), o.kvCacheDtype, o.seed, o.servedNames[0], pyBool(o.prefixCaching))

	s.led = ledger.Open(se.ledgerPath, se.gpus, se.totalBytes)
	s.ident = entryIdent{pid: os.Getpid(), pidns: ledger.SelfNS(), port: sock.port, since: time.Now().UTC()}
	if world > 1 {
		rs, err := startRanks(s.gpus)
		if err != nil {
			lg.raw(s.stderr, procEngine, "Traceback (most recent call last):", "RuntimeError: "+err.Error())
			s.apiFailure()
			return 1
		}
		defer rs.stop()
		s.ident.onGPU = map[int]int{}
		for rank, pid := range rs.pids() {
			s.ident.onGPU[s.gpus[rank]] = pid
		}
	}
	outcome, err := s.claim()
	if err != nil {
		var fe *startupError
		if errors.As(err, &fe) {
			s.engineFailure(fe)
			return 1
		}
		lg.raw(s.stderr, procEngine, "Traceback (most recent call last):", fmt.Sprintf("RuntimeError: GPU ledger: %v", err))
		s.apiFailure()
		return 1
	}

	loadTime := s.loadDuration()
	lg.engine("gpu_model_runner.py:2602", "Starting to load model %s...", o.model)
	if s.facts.quant == "" && !o.enforceEager {
		lg.engine("cuda.py:366", "Using Flash Attention backend on V1 engine.")
	}
	shards := s.facts.shards
	lg.raw(s.stdout, procEngine, fmt.Sprintf("Loading safetensors checkpoint shards:   0%% Completed | 0/%d [00:00<?, ?it/s]", shards))
	weightsTime := time.Duration(float64(loadTime) * weightsShare)
	for i := 1; i <= shards; i++ {
		if !s.pause(ctx, weightsTime/time.Duration(shards)) {
			return s.cancelledDuringLoad()
		}
		if outcome.oom != nil && i == shards {
			break
		}
		el := time.Since(start).Seconds()
		lg.raw(s.stdout, procEngine, fmt.Sprintf("Loading safetensors checkpoint shards: %3d%% Completed | %d/%d [%s<00:00, %.2fit/s]",
			i*100/shards, i, shards, clock(el), float64(i)/math.Max(el, 0.01)))
	}
	if outcome.oom != nil {
		s.engineFailure(outcome.oom)
		return 1
	}
	lg.engine("default_loader.py:267", "Loading weights took %.2f seconds", weightsTime.Seconds()*0.9)
	lg.engine("gpu_model_runner.py:2653", "Model loading took %.4f GiB and %.6f seconds", float64(s.plan.weights)/gib, time.Since(start).Seconds())
	if !s.pause(ctx, time.Duration(float64(loadTime)*0.1)) {
		return s.cancelledDuringLoad()
	}
	if outcome.late != nil {
		s.engineFailure(outcome.late)
		return 1
	}
	p := s.plan
	lg.engine("gpu_worker.py:298", "Available KV cache memory: %.2f GiB", float64(p.kv)/gib)
	lg.engine("kv_cache_utils.py:1087", "GPU KV cache size: %s tokens", commas(p.kvTokens))
	lg.engine("kv_cache_utils.py:1091", "Maximum concurrency for %s tokens per request: %.2fx", commas(s.maxLen), float64(p.kvTokens)/float64(s.maxLen))
	if !s.pause(ctx, time.Duration(float64(loadTime)*0.2)) {
		return s.cancelledDuringLoad()
	}
	if !o.enforceEager {
		lg.engine("gpu_model_runner.py:3480", "Graph capturing finished in %d secs, took %.2f GiB", int(loadTime.Seconds()*0.2), float64(p.graphsMemory)/gib)
	}
	lg.engine("core.py:210", "init engine (profile, create kv cache, warmup model) took %.2f seconds", loadTime.Seconds()*0.3)
	if err := s.setEntries(p.held, 0, ledger.StateLoaded); err != nil {
		lg.warn(procEngine, "core.py:220", "GPU ledger: %v", err)
	}
	return s.serve(ctx, loadTime)
}

// checkConfig validates what vLLM's config classes validate in the API
// server process, before any engine starts: it returns exit status 1 and
// true after printing the error.
func (s *sim) checkConfig() (int, bool) {
	o, lg := s.opts, s.log
	if o.gpuUtil <= 0 || o.gpuUtil > 1 {
		typ, msg := "less_than_equal", "Input should be less than or equal to 1"
		if o.gpuUtil <= 0 {
			typ, msg = "greater_than", "Input should be greater than 0"
		}
		lg.raw(s.stderr, procAPI, append(pyTraceback("vllm/engine/arg_utils.py", 1585, "create_engine_config",
			"cache_config = CacheConfig(",
			"pydantic_core._pydantic_core.ValidationError: 1 validation error for CacheConfig"),
			"gpu_memory_utilization",
			fmt.Sprintf("  %s [type=%s, input_value=%s, input_type=float]", msg, typ, pyFloat(o.gpuUtil)),
			"    For further information visit https://errors.pydantic.dev/2.12/v/"+typ)...)
		return 1, true
	}
	if o.tp < 1 || o.pp < 1 {
		lg.raw(s.stderr, procAPI, pyTraceback("vllm/config/parallel.py", 512, "__post_init__",
			"raise ValueError(", fmt.Sprintf("ValueError: tensor_parallel_size (%d) and pipeline_parallel_size (%d) must be positive.", o.tp, o.pp))...)
		return 1, true
	}
	if world := o.tp * o.pp; world > len(s.env.visible) {
		lg.raw(s.stderr, procAPI, pyTraceback("vllm/config/parallel.py", 540, "__post_init__",
			"raise ValueError(", fmt.Sprintf("ValueError: World size (%d) is larger than the number of available GPUs (%d) in this node. If this is intentional and you are using:\n- ray, set '--distributed-executor-backend ray'.\n- multiprocessing, set '--nnodes' appropriately.", world, len(s.env.visible)))...)
		return 1, true
	}
	if o.maxModelLen > s.facts.derivedLen && !s.env.allowLongLen {
		lg.raw(s.stderr, procAPI, append(pyTraceback("vllm/engine/arg_utils.py", 1190, "create_model_config",
			"return ModelConfig(",
			"pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig"),
			fmt.Sprintf("  Value error, User-specified max_model_len (%d) is greater than the derived max_model_len (max_position_embeddings=%d.0 or model_max_length=None in model's config.json). To allow overriding this maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1. VLLM_ALLOW_LONG_MAX_MODEL_LEN must be used with extreme caution. If the model uses relative position encoding (RoPE), positions exceeding derived_max_model_len lead to nan. If the model uses absolute position encoding, positions exceeding derived_max_model_len will cause a CUDA array out-of-bounds error. [type=value_error, input_value=ArgsKwargs((), {...}), input_type=ArgsKwargs]", o.maxModelLen, s.facts.derivedLen),
			"    For further information visit https://errors.pydantic.dev/2.12/v/value_error")...)
		return 1, true
	}
	if o.maxModelLen < -1 {
		lg.raw(s.stderr, procAPI, pyTraceback("vllm/config/model.py", 1620, "get_and_verify_max_len",
			"raise ValueError(", fmt.Sprintf("ValueError: max_model_len (%d) must be positive.", o.maxModelLen))...)
		return 1, true
	}
	return 0, false
}

// configuredLen is the max model length before the KV cache is sized.
func (s *sim) configuredLen() int {
	switch {
	case s.opts.maxModelLen > 0:
		return s.opts.maxModelLen
	default:
		return s.facts.derivedLen
	}
}

func (s *sim) loadDuration() time.Duration {
	sec := s.env.loadSeconds
	if sec < 0 {
		sec = math.Max(minLoadSeconds, loadSecondsPerB*s.facts.paramsB)
	}
	return time.Duration(sec * float64(time.Second))
}

// pause waits d unless ctx ends first.
func (s *sim) pause(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// cancelledDuringLoad handles SIGTERM while loading: memory goes back after
// the release delay and the process exits cleanly.
func (s *sim) cancelledDuringLoad() int {
	s.log.info("launcher.py:110", "Shutting down FastAPI HTTP server.")
	time.Sleep(s.env.release)
	s.releaseEntries()
	return 0
}

func pyBool(b bool) string {
	if b {
		return "True"
	}
	return "False"
}

func torchDtype(dtype, quant string) string {
	switch {
	case quant == "awq" || quant == "gptq":
		return "torch.float16"
	case dtype == "half" || dtype == "float16":
		return "torch.float16"
	case dtype == "float" || dtype == "float32":
		return "torch.float32"
	}
	return "torch.bfloat16"
}

func quantName(q, flag string) string {
	if flag != "" {
		return flag
	}
	switch q {
	case "awq", "gptq":
		return q + "_marlin"
	case "":
		return "None"
	}
	return q
}

// commas formats n with thousands separators, as Python's f"{n:,}".
func commas(n int) string {
	s := strconv.Itoa(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// clock is tqdm's elapsed time, MM:SS.
func clock(sec float64) string {
	n := int(sec)
	return fmt.Sprintf("%02d:%02d", n/60, n%60)
}
