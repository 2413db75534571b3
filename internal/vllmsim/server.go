package vllmsim

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vagent-dev/vagent/internal/ledger"
)

// engine is the running server: the loaded model and its HTTP front.
type engine struct {
	*sim
	tok       *tokenizer
	met       *metrics
	loadTime  time.Duration
	defaults  map[string]any // default sampling params (generation config + override)
	capTokens int            // server-wide max_tokens cap (0.18: override's max_new_tokens); 0: none
	slots     chan struct{}
	reqCtx    context.Context
	abortAll  context.CancelFunc
	routes    map[string]map[string]http.HandlerFunc
	cacheInfo map[string]string

	mu sync.Mutex
	// The executor's sleep (vllm/v1/executor/abstract.py): asleep with the
	// tags still to wake.
	execAsleep   bool
	sleepingTags map[string]bool
	weightsStale bool // woken from a discarding sleep without reload_weights
	// The scheduler's pause (0.18's EngineCore.pause_scheduler): non-nil
	// while paused, closed on resume; requests that arrive meanwhile wait.
	paused   chan struct{}
	pauseAll bool // mode=keep: running requests freeze too
	// Cancelling abortCtx ends every request scheduled so far with
	// finish_reason "abort" (a pause in mode abort, a 0.18 shutdown).
	abortCtx   context.Context
	abortNow   context.CancelFunc
	stopping   bool          // 0.18: shutdown requested; new requests end at once
	stopCh     chan struct{} // closed when stopping is set
	inflight   int           // requests inside a handler
	scheduled  int           // requests past the pause gate, not finished
	serverLoad int
	idle       *sync.Cond
}

func (s *sim) serve(ctx context.Context, loadTime time.Duration) int {
	o, lg := s.opts, s.log
	e := &engine{sim: s, tok: newTokenizer(), met: newMetrics(time.Now()), loadTime: loadTime,
		slots: make(chan struct{}, max(o.maxNumSeqs, 1))}
	e.idle = sync.NewCond(&e.mu)
	e.reqCtx, e.abortAll = context.WithCancel(context.Background())
	defer e.abortAll()
	e.abortCtx, e.abortNow = context.WithCancel(context.Background())
	e.stopCh = make(chan struct{})
	e.defaults, e.capTokens = samplingDefaults(s.facts.genDefaults, o, se018(s))
	e.cacheInfo = map[string]string{
		"block_size": strconv.Itoa(s.plan.blockSize), "cache_dtype": o.kvCacheDtype,
		"calculate_kv_scales": "False", "cpu_offload_gb": "0", "enable_prefix_caching": pyBool(o.prefixCaching),
		"engine": "0", "gpu_memory_utilization": pyFloat(o.gpuUtil), "is_attention_free": "False",
		"num_cpu_blocks": "None", "num_gpu_blocks": strconv.Itoa(s.plan.gpuBlocks), "num_gpu_blocks_override": "None",
		"prefix_caching_hash_algo": "sha256", "sliding_window": "None",
		"kv_cache_memory_bytes": "None",
	}
	if s.plan.fixedKV {
		e.cacheInfo["kv_cache_memory_bytes"] = strconv.FormatInt(o.kvCacheBytes, 10)
	}
	e.buildRoutes()

	if len(e.defaults) > 0 {
		if s.env.v18 {
			if o.generationCfg != "vllm" {
				src := "the model's `generation_config.json`"
				if o.generationCfg != "auto" {
					src = o.generationCfg
				}
				lg.warn(procAPI, "model.py:1376", "Default vLLM sampling parameters have been overridden by %s: `%s`. If this is not intended, please relaunch vLLM instance with `--generation-config vllm`.", src, pyRepr(e.defaults))
			}
		} else {
			lg.warn(procAPI, "model.py:1576", "Default sampling parameters have been overridden by the model's Hugging Face generation config recommended from the model creator. If this is not intended, please relaunch vLLM instance with `--generation-config vllm`.")
			lg.info("serving_chat.py:134", "Using default chat sampling params from %s: %s", "model", pyRepr(e.defaults))
			lg.info("serving_completion.py:74", "Using default completion sampling params from %s: %s", "model", pyRepr(e.defaults))
		}
	}
	if s.env.v18 && s.env.devMode {
		lg.warn(procAPI, "__init__.py:15", "SECURITY WARNING: Development endpoints are enabled! This should NOT be used in production!")
	}
	if s.env.v18 {
		lg.info("api_server.py:576", "Supported tasks: ('generate',)")
		lg.info("api_server.py:580", "Starting vLLM server on %s", s.sock.address())
	} else {
		lg.info("api_server.py:1520", "Supported tasks: ['generate']")
		lg.info("api_server.py:1848", "Starting vLLM API server 0 on %s", s.sock.address())
	}
	lg.info("launcher.py:34", "Available routes are:")
	paths := make([]string, 0, len(e.routes))
	for p := range e.routes {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		var ms []string
		for m := range e.routes[p] {
			ms = append(ms, m)
		}
		sort.Strings(ms)
		lg.info("launcher.py:42", "Route: %s, Methods: %s", p, strings.Join(ms, ", "))
	}
	lg.uvicorn("Started server process [%d]", s.ident.pid)
	lg.uvicorn("Waiting for application startup.")
	lg.uvicorn("Application startup complete.")

	ln, err := s.sock.listen()
	if err != nil {
		msg := "OSError: [Errno 98] Address already in use"
		if !errors.Is(err, errAddrInUse) {
			msg = "OSError: " + err.Error()
		}
		lg.raw(s.stderr, procAPI, pyTraceback("uvicorn/server.py", 161, "startup", "server = await loop.create_server(", msg)...)
		s.releaseEntries()
		return 1
	}
	srv := &http.Server{Handler: e, ReadHeaderTimeout: 30 * time.Second, ErrorLog: log.New(s.stderr, "", 0)}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	statsDone := make(chan struct{})
	if !o.disableStats {
		go e.logStats(statsDone)
	}
	defer close(statsDone)

	select {
	case <-ctx.Done():
	case err := <-served:
		lg.raw(s.stderr, procAPI, "Traceback (most recent call last):", "OSError: "+err.Error())
		s.releaseEntries()
		return 1
	}
	if se := s.env; se.v18 {
		e.shutdownEngine018()
	}
	lg.info("launcher.py:110", "Shutting down FastAPI HTTP server.")
	// uvicorn's shutdown: stop listening, let requests in flight finish.
	// 0.12 waits for them without bound (the engine runs until they end);
	// 0.18 ended them above and waits only for their last bytes.
	sctx, cancel := context.Background(), context.CancelFunc(func() {})
	if s.env.v18 {
		sctx, cancel = context.WithTimeout(context.Background(), shutdownHTTPBudget)
	}
	lg.uvicorn("Shutting down")
	e.mu.Lock()
	busy := e.inflight > 0
	e.mu.Unlock()
	if busy {
		lg.uvicorn("Waiting for connections to close. (CTRL+C to force quit)")
	}
	_ = srv.Shutdown(sctx)
	cancel()
	e.abortAll()
	_ = srv.Close()
	lg.uvicorn("Waiting for application shutdown.")
	lg.uvicorn("Application shutdown complete.")
	time.Sleep(s.env.release)
	s.releaseEntries()
	return 0
}

// shutdownEngine018 is 0.18's engine shutdown on SIGTERM
// (EngineCoreProc._handle_shutdown), done before the HTTP server stops:
// with --shutdown-timeout 0 every request ends at once with finish_reason
// "abort" (a stream: an abort chunk, then [DONE]); otherwise requests in
// flight drain for up to the timeout and the rest are aborted. Requests
// that arrive meanwhile end at once, also with "abort". Never a 503.
func (e *engine) shutdownEngine018() {
	timeout := e.opts.shutdownTimeout
	e.mu.Lock()
	e.stopping = true
	close(e.stopCh)
	n := e.scheduled
	e.mu.Unlock()
	e.log.engine("core.py:1201", "Shutdown initiated (timeout=%d)", timeout)
	if timeout == 0 {
		if n > 0 {
			e.log.engine("core.py:1206", "Aborting %d requests", n)
		}
	} else {
		if n > 0 {
			e.log.engine("core.py:1213", "Draining %d in-flight requests (timeout=%ds)", n, timeout)
		}
		e.waitScheduled(time.Duration(timeout) * time.Second)
	}
	e.mu.Lock()
	e.abortNow()
	e.mu.Unlock()
	e.waitScheduled(shutdownHTTPBudget)
	e.log.engine("core.py:1224", "Shutdown complete")
}

func se018(s *sim) bool { return s.env.v18 }

// samplingKeys are the keys of a generation config vLLM honours
// (ModelConfig.get_diff_sampling_param, both versions); every other key of
// --override-generation-config is ignored. max_new_tokens becomes
// max_tokens.
var samplingKeys = []string{"repetition_penalty", "temperature", "top_k", "top_p", "min_p", "max_new_tokens"}

// samplingDefaults merges the model's generation config (unless
// --generation-config vllm) with --override-generation-config, keeps the
// honoured keys, and returns them with the server-wide max_tokens cap:
// 0.18 caps every request at the override's max_new_tokens (a folder
// given to --generation-config caps at its max_new_tokens) and otherwise
// uses max_tokens only as a default; 0.12 caps at the merged max_tokens.
func samplingDefaults(model map[string]any, o *options, v18 bool) (map[string]any, int) {
	cfg := map[string]any{}
	if o.generationCfg != "vllm" {
		for k, v := range model {
			cfg[k] = v
		}
	}
	for k, v := range o.overrideGen {
		cfg[k] = v
	}
	out := map[string]any{}
	for _, k := range samplingKeys {
		if v, ok := cfg[k]; ok && v != nil {
			out[k] = v
		}
	}
	if v, ok := out["max_new_tokens"]; ok {
		delete(out, "max_new_tokens")
		out["max_tokens"] = v
	}
	asInt := func(v any) int {
		if f, ok := v.(float64); ok {
			return int(f)
		}
		if n, ok := v.(int); ok {
			return n
		}
		return 0
	}
	capTokens := 0
	switch {
	case !v18:
		capTokens = asInt(out["max_tokens"])
	case o.generationCfg != "auto" && o.generationCfg != "vllm":
		capTokens = asInt(out["max_tokens"])
	default:
		capTokens = asInt(o.overrideGen["max_new_tokens"])
	}
	return out, capTokens
}

// waitScheduled waits until no scheduled request is left or d has passed.
func (e *engine) waitScheduled(d time.Duration) {
	deadline := time.Now().Add(d)
	timer := time.AfterFunc(d, func() {
		e.mu.Lock()
		e.idle.Broadcast()
		e.mu.Unlock()
	})
	defer timer.Stop()
	e.mu.Lock()
	for e.scheduled > 0 && time.Now().Before(deadline) {
		e.idle.Wait()
	}
	e.mu.Unlock()
}

// logStats logs vLLM's periodic throughput line while there is activity.
func (e *engine) logStats(done chan struct{}) {
	t := time.NewTicker(statsLogInterval)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		m := e.met
		m.mu.Lock()
		busy := m.intervalPrompt > 0 || m.intervalGen > 0 || m.running > 0 || m.waiting > 0
		if busy || m.lastLoggedBusy {
			usage := 0.0
			if e.plan.kvTokens > 0 {
				usage = 100 * float64(m.runningTokens) / float64(e.plan.kvTokens)
			}
			hit := 0.0
			if m.intervalQueries > 0 {
				hit = 100 * float64(m.intervalHits) / float64(m.intervalQueries)
			}
			sec := statsLogInterval.Seconds()
			e.log.info("loggers.py:236", "Engine 000: Avg prompt throughput: %.1f tokens/s, Avg generation throughput: %.1f tokens/s, Running: %d reqs, Waiting: %d reqs, GPU KV cache usage: %.1f%%, Prefix cache hit rate: %.1f%%",
				float64(m.intervalPrompt)/sec, float64(m.intervalGen)/sec, m.running, m.waiting, usage, hit)
		}
		m.lastLoggedBusy = busy
		m.intervalPrompt, m.intervalGen, m.intervalQueries, m.intervalHits = 0, 0, 0, 0
		m.mu.Unlock()
	}
}

func (e *engine) buildRoutes() {
	r := map[string]map[string]http.HandlerFunc{}
	add := func(path string, h http.HandlerFunc, methods ...string) {
		if r[path] == nil {
			r[path] = map[string]http.HandlerFunc{}
		}
		for _, m := range methods {
			r[path][m] = h
		}
	}
	empty := func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }
	add("/health", empty, "GET")
	add("/ping", empty, "GET", "POST")
	add("/version", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"version": e.env.version})
	}, "GET")
	add("/load", func(w http.ResponseWriter, _ *http.Request) {
		e.mu.Lock()
		n := e.serverLoad
		e.mu.Unlock()
		writeJSON(w, http.StatusOK, map[string]int{"server_load": n})
	}, "GET")
	add("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		io.WriteString(w, e.met.render(e.opts.servedNames[0], e.plan.kvTokens, e.cacheInfo))
	}, "GET")
	add("/v1/models", e.handleModels, "GET")
	add("/v1/chat/completions", e.handleChat, "POST")
	add("/v1/completions", e.handleCompletion, "POST")
	add("/tokenize", e.handleTokenize, "POST")
	add("/detokenize", e.handleDetokenize, "POST")
	// Development routes exist whenever VLLM_SERVER_DEV_MODE=1, with or
	// without --enable-sleep-mode (0.12: api_server.py; 0.18:
	// entrypoints/serve/*/api_router.py).
	if e.env.devMode {
		add("/reset_prefix_cache", e.handleResetPrefixCache, "POST")
		add("/reset_mm_cache", empty, "POST")
		add("/collective_rpc", e.handleCollectiveRPC, "POST")
		add("/is_sleeping", e.handleIsSleeping, "GET")
		add("/server_info", func(w http.ResponseWriter, _ *http.Request) {
			writeJSON(w, http.StatusOK, map[string]string{"vllm_config": fmt.Sprintf("model=%s, max_seq_len=%d, served_model_name=%s", pyStr(e.opts.model), e.maxLen, e.opts.servedNames[0])})
		}, "GET")
		add("/sleep", e.handleSleep, "POST")
		add("/wake_up", e.handleWakeUp, "POST")
	}
	e.routes = r
}

// statusRecorder keeps the status for the access log.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// ServeHTTP is the FastAPI app: the API-key middleware (for /v1 only), the
// routes, FastAPI's 404/405, and uvicorn's access log.
func (e *engine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &statusRecorder{ResponseWriter: w}
	defer func() {
		if !e.opts.disableAccess && !e.opts.quietEndpoints[r.URL.Path] {
			st := rec.status
			if st == 0 {
				st = http.StatusOK
			}
			e.log.uvicorn(`%s - "%s %s HTTP/%d.%d" %d %s`, r.RemoteAddr, r.Method, r.URL.RequestURI(), r.ProtoMajor, r.ProtoMinor, st, http.StatusText(st))
		}
	}()
	if len(e.opts.apiKeys) > 0 && r.Method != http.MethodOptions && strings.HasPrefix(r.URL.Path, "/v1") {
		// AuthenticationMiddleware.verify_token: "<scheme> <key>", the
		// scheme "bearer" in any case.
		scheme, key, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		ok := false
		for _, k := range e.opts.apiKeys {
			if strings.EqualFold(scheme, "bearer") && key == k {
				ok = true
			}
		}
		if !ok {
			writeJSON(rec, http.StatusUnauthorized, map[string]string{"error": "Unauthorized"})
			return
		}
	}
	methods, ok := e.routes[r.URL.Path]
	if !ok {
		writeJSON(rec, http.StatusNotFound, map[string]string{"detail": "Not Found"})
		return
	}
	h, ok := methods[r.Method]
	if !ok && r.Method == http.MethodHead {
		h, ok = methods[http.MethodGet]
	}
	if !ok {
		var allow []string
		for m := range methods {
			allow = append(allow, m)
		}
		sort.Strings(allow)
		rec.Header().Set("Allow", strings.Join(allow, ", "))
		writeJSON(rec, http.StatusMethodNotAllowed, map[string]string{"detail": "Method Not Allowed"})
		return
	}
	h(rec, r)
}

// marshal encodes v as Python's json.dumps would: no HTML escaping.
func marshal(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
	return bytes.TrimRight(b.Bytes(), "\n")
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	data := marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(data)
}

// errorBody is vLLM's error response (since 0.10.1).
type errorBody struct {
	Error errorInfo `json:"error"`
}

type errorInfo struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    int     `json:"code"`
}

func apiError(w http.ResponseWriter, status int, typ, msg string, param *string) {
	writeJSON(w, status, errorBody{errorInfo{Message: msg, Type: typ, Param: param, Code: status}})
}

func badRequest(w http.ResponseWriter, msg string) {
	apiError(w, http.StatusBadRequest, "BadRequestError", msg, nil)
}

// requireJSON is vLLM's validate_json_request (openai/utils.py, 0.12 and
// 0.18): the media type must be exactly application/json.
func requireJSON(w http.ResponseWriter, r *http.Request) bool {
	ct := strings.ToLower(r.Header.Get("Content-Type"))
	mt, _, _ := strings.Cut(ct, ";")
	if mt != "application/json" {
		// RequestValidationError(errors=[...]) through vLLM's handler: a
		// 400 whose message is str() of the error list.
		apiError(w, http.StatusBadRequest, "Bad Request", `["Unsupported Media Type: Only 'application/json' is allowed"]`, nil)
		return false
	}
	return true
}

// checkModel accepts an empty name (the first served name is used) or any
// served name; anything else is vLLM's 404.
func (e *engine) checkModel(w http.ResponseWriter, name string) (string, bool) {
	if name == "" {
		return e.opts.servedNames[0], true
	}
	for _, n := range e.opts.servedNames {
		if n == name {
			return name, true
		}
	}
	// 0.18 names the parameter; 0.12 leaves it null.
	var param *string
	if e.env.v18 {
		m := "model"
		param = &m
	}
	apiError(w, http.StatusNotFound, "NotFoundError", fmt.Sprintf("The model `%s` does not exist.", name), param)
	return "", false
}

func randomHex() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (e *engine) handleModels(w http.ResponseWriter, _ *http.Request) {
	now := time.Now().Unix()
	type perm struct {
		ID                 string  `json:"id"`
		Object             string  `json:"object"`
		Created            int64   `json:"created"`
		AllowCreateEngine  bool    `json:"allow_create_engine"`
		AllowSampling      bool    `json:"allow_sampling"`
		AllowLogprobs      bool    `json:"allow_logprobs"`
		AllowSearchIndices bool    `json:"allow_search_indices"`
		AllowView          bool    `json:"allow_view"`
		AllowFineTuning    bool    `json:"allow_fine_tuning"`
		Organization       string  `json:"organization"`
		Group              *string `json:"group"`
		IsBlocking         bool    `json:"is_blocking"`
	}
	type model struct {
		ID          string  `json:"id"`
		Object      string  `json:"object"`
		Created     int64   `json:"created"`
		OwnedBy     string  `json:"owned_by"`
		Root        string  `json:"root"`
		Parent      *string `json:"parent"`
		MaxModelLen int     `json:"max_model_len"`
		Permission  []perm  `json:"permission"`
	}
	var data []model
	for _, n := range e.opts.servedNames {
		data = append(data, model{ID: n, Object: "model", Created: now, OwnedBy: "vllm", Root: e.opts.model,
			MaxModelLen: e.maxLen, Permission: []perm{{ID: "modelperm-" + randomHex(), Object: "model_permission",
				Created: now, AllowSampling: true, AllowLogprobs: true, AllowView: true, Organization: "*"}}})
	}
	writeJSON(w, http.StatusOK, struct {
		Object string  `json:"object"`
		Data   []model `json:"data"`
	}{"list", data})
}

func (e *engine) handleTokenize(w http.ResponseWriter, r *http.Request) {
	if !requireJSON(w, r) {
		return
	}
	var req struct {
		Model               string        `json:"model"`
		Prompt              *string       `json:"prompt"`
		Messages            []chatMessage `json:"messages"`
		AddGenerationPrompt *bool         `json:"add_generation_prompt"`
		ReturnTokenStrs     bool          `json:"return_token_strs"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		badRequest(w, "JSON decode error: "+err.Error())
		return
	}
	if _, ok := e.checkModel(w, req.Model); !ok {
		return
	}
	var pieces []string
	switch {
	case req.Messages != nil:
		pieces = chatPieces(req.Messages, req.AddGenerationPrompt == nil || *req.AddGenerationPrompt)
	case req.Prompt != nil:
		pieces = strings.Fields(*req.Prompt)
	default:
		badRequest(w, "Either `prompt` or `messages` must be given.")
		return
	}
	ids := e.tok.encode(pieces)
	resp := struct {
		Count       int      `json:"count"`
		MaxModelLen int      `json:"max_model_len"`
		Tokens      []int    `json:"tokens"`
		TokenStrs   []string `json:"token_strs"`
	}{len(ids), e.maxLen, ids, nil}
	if req.ReturnTokenStrs {
		resp.TokenStrs = pieces
	}
	writeJSON(w, http.StatusOK, resp)
}

func (e *engine) handleDetokenize(w http.ResponseWriter, r *http.Request) {
	if !requireJSON(w, r) {
		return
	}
	var req struct {
		Model  string `json:"model"`
		Tokens []int  `json:"tokens"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		badRequest(w, "JSON decode error: "+err.Error())
		return
	}
	if _, ok := e.checkModel(w, req.Model); !ok {
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"prompt": e.tok.decode(req.Tokens)})
}

// Sleep mode.

// internalError is Starlette's answer to an exception in a route: a plain
// 500 (vLLM's sleep routes parse their query with int() and let it raise).
func internalError(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusInternalServerError)
	io.WriteString(w, "Internal Server Error")
}

// sleepingLocked is EngineCore.is_sleeping: the executor sleeps, or (0.18)
// the scheduler is paused.
func (e *engine) sleepingLocked() bool {
	return e.execAsleep || (e.env.v18 && e.paused != nil)
}

func (e *engine) handleIsSleeping(w http.ResponseWriter, _ *http.Request) {
	if !e.env.v18 {
		e.log.info("api_server.py:924", "check whether the engine is sleeping")
	}
	e.mu.Lock()
	sl := e.sleepingLocked()
	e.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]bool{"is_sleeping": sl})
}

// handleSleep is POST /sleep?level=N[&mode=M]. 0.12 only tells the
// executor to sleep: requests keep being scheduled. 0.18 first pauses the
// scheduler (EngineCore.sleep → pause_scheduler): mode abort (the default)
// ends every scheduled request with finish_reason "abort", wait lets them
// finish, keep freezes them; requests that arrive later wait for
// /wake_up. Level 0 is the pause alone.
func (e *engine) handleSleep(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	lv := q.Get("level")
	if lv == "" {
		lv = "1"
	}
	level, err := pyInt(lv)
	if err != nil {
		internalError(w)
		return
	}
	e.handleResetPrefixCacheQuiet()
	if e.env.v18 {
		mode := q.Get("mode")
		if mode == "" {
			mode = "abort"
		}
		if mode != "abort" && mode != "wait" && mode != "keep" {
			internalError(w)
			return
		}
		e.pause(mode)
		if level < 1 {
			w.WriteHeader(http.StatusOK)
			return
		}
	}
	if err := e.executorSleep(int(level)); err != nil {
		apiError(w, http.StatusInternalServerError, "InternalServerError", err.Error(), nil)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// pause is 0.18's pause_scheduler.
func (e *engine) pause(mode string) {
	e.mu.Lock()
	if e.paused == nil {
		e.paused = make(chan struct{})
	}
	e.pauseAll = mode == "keep"
	if mode == "abort" {
		e.abortNow()
		e.abortCtx, e.abortNow = context.WithCancel(context.Background())
	}
	e.mu.Unlock()
	if mode == "wait" {
		e.mu.Lock()
		for e.scheduled > 0 {
			e.idle.Wait()
		}
		e.mu.Unlock()
	}
	// AsyncLLM.pause_generation's small sleep lets the aborted requests'
	// last outputs go out first.
	time.Sleep(20 * time.Millisecond)
}

// resume is 0.18's resume_scheduler: requests queued meanwhile run.
func (e *engine) resume() {
	e.mu.Lock()
	if e.paused != nil {
		close(e.paused)
		e.paused = nil
	}
	e.pauseAll = false
	e.mu.Unlock()
}

// gate returns the channel a request waits on before it is scheduled, nil
// when the scheduler runs; frozen the one a running request waits on
// (mode keep).
func (e *engine) gate() chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.paused
}

func (e *engine) frozen() chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.pauseAll {
		return e.paused
	}
	return nil
}

// executorSleep is Executor.sleep and Worker.sleep: with
// --enable-sleep-mode the weights (level 1: copied to the host; other
// levels: discarded) and the KV cache live in CuMemAllocator pools and are
// released; what stays is the CUDA context and the CUDA graphs. Without
// it the pools are empty and only torch's cache (the activations) goes.
func (e *engine) executorSleep(level int) error {
	e.mu.Lock()
	if e.execAsleep {
		e.mu.Unlock()
		e.log.warn(procEngine, "abstract.py:299", "Executor is already sleeping.")
		return nil
	}
	e.mu.Unlock()
	start := time.Now()
	// Copying weights out (level 1) or discarding them takes a moment.
	time.Sleep(e.wakeTime() / 2)
	p := e.plan
	hold, host, pooled := p.held-min(p.activation, p.held), uint64(0), uint64(0)
	if e.opts.sleepMode {
		hold = p.residual
		pooled = p.held - min(p.residual+p.activation, p.held)
		if level == 1 {
			host = p.weights
		}
	}
	if err := e.setEntries(hold, host, ledger.StateSleeping); err != nil {
		return err
	}
	e.mu.Lock()
	e.execAsleep = true
	e.sleepingTags = map[string]bool{"weights": true, "kv_cache": true}
	if level != 1 && e.opts.sleepMode {
		e.weightsStale = true
	}
	e.mu.Unlock()
	freed, used := float64(p.held-hold)/gib, float64(e.usedOnGPU())/gib
	if e.env.v18 {
		e.log.engine("cumem.py:216", "CuMemAllocator: sleep freed %.2f GiB memory in total, of which %.2f GiB is backed up in CPU and the rest %.2f GiB is discarded directly.",
			float64(pooled)/gib, float64(host)/gib, float64(pooled-min(host, pooled))/gib)
		e.log.engine("gpu_worker.py:175", "Sleep mode freed %s GiB memory, %s GiB memory is still in use.", pyRound2(freed), pyRound2(used))
		e.log.engine("abstract.py:320", "It took %.6f seconds to fall asleep.", time.Since(start).Seconds())
	} else {
		e.log.engine("cumem.py:240", "CuMemAllocator: sleep freed %.2f GiB memory in total, of which %.2f GiB is backed up in CPU and the rest %.2f GiB is discarded directly.",
			float64(pooled)/gib, float64(host)/gib, float64(pooled-min(host, pooled))/gib)
		e.log.engine("gpu_worker.py:124", "Sleep mode freed %.2f GiB memory, %.2f GiB memory is still in use.", freed, used)
		e.log.engine("abstract.py:306", "It took %.6f seconds to fall asleep.", time.Since(start).Seconds())
	}
	return nil
}

// usedOnGPU is what torch.cuda.mem_get_info reports in use on this
// engine's first GPU: every process's memory, not only this engine's.
func (e *engine) usedOnGPU() uint64 {
	st, err := e.led.Read()
	if err != nil || len(e.gpus) == 0 {
		return 0
	}
	return st.Used(e.gpus[0])
}

// wakeTime is what a wake takes: VLLM_SIM_WAKE_FRACTION (default 2%) of
// the cold start, vLLM's measured ratio for level 1 (0.1-0.8 s against
// 20-100 s). Falling asleep takes half of it.
func (e *engine) wakeTime() time.Duration {
	return time.Duration(float64(e.loadTime) * e.env.wakeFraction)
}

// reloadTime is what reload_weights takes after a level-2 wake: the
// weights' share of the cold start, as at start.
func (e *engine) reloadTime() time.Duration {
	return time.Duration(float64(e.loadTime) * weightsShare)
}

// handleWakeUp is POST /wake_up[?tags=T...]: the executor wakes the tags
// (all by default); 0.18 then resumes the scheduler whatever happened (the
// tag "scheduling" alone resumes only). An unknown tag or an executor that
// is not asleep is a logged warning and a 200, as in vLLM.
func (e *engine) handleWakeUp(w http.ResponseWriter, r *http.Request) {
	tags := r.URL.Query()["tags"]
	shown := "None"
	if len(tags) > 0 {
		shown = pyRepr(anySlice(tags))
	}
	if e.env.v18 {
		e.log.info("api_router.py:37", "wake up the engine with tags: %s", shown)
	} else {
		e.log.info("api_server.py:915", "wake up the engine with tags: %s", shown)
	}
	execTags := tags
	if e.env.v18 && len(tags) > 0 {
		execTags = nil
		for _, t := range tags {
			if t != "scheduling" {
				execTags = append(execTags, t)
			}
		}
	}
	if !e.env.v18 || len(tags) == 0 || len(execTags) > 0 {
		if err := e.executorWake(execTags); err != nil {
			apiError(w, http.StatusInternalServerError, "InternalServerError", err.Error(), nil)
			return
		}
	}
	if e.env.v18 {
		e.resume()
	}
	w.WriteHeader(http.StatusOK)
}

func anySlice(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

func (e *engine) executorWake(tags []string) error {
	e.mu.Lock()
	if !e.execAsleep {
		e.mu.Unlock()
		e.log.warn(procEngine, "abstract.py:326", "Executor is not sleeping.")
		return nil
	}
	left := map[string]bool{}
	for t := range e.sleepingTags {
		left[t] = true
	}
	for _, t := range tags {
		if !left[t] {
			e.mu.Unlock()
			e.log.warn(procEngine, "abstract.py:331", "Tag %s is not in sleeping tags %s", t, pySet(left))
			return nil
		}
	}
	asleepBefore := pySet(left)
	if len(tags) == 0 {
		left = map[string]bool{}
	}
	for _, t := range tags {
		delete(left, t)
	}
	e.mu.Unlock()
	start := time.Now()
	p := e.plan
	bytes, state := p.held, ledger.StateLoaded
	if len(left) > 0 {
		state = ledger.StateSleeping
		if e.opts.sleepMode {
			bytes = p.residual
			if !left["weights"] {
				bytes = min(p.residual+p.weights, p.held)
			}
		}
	}
	time.Sleep(e.wakeTime())
	if err := e.reclaim(bytes, 0, state); err != nil {
		return err
	}
	e.mu.Lock()
	e.sleepingTags = left
	e.execAsleep = len(left) > 0
	e.mu.Unlock()
	shown := asleepBefore
	if len(tags) > 0 {
		shown = pyRepr(anySlice(tags))
	}
	e.log.engine("abstract.py:338", "It took %.6f seconds to wake up tags %s.", time.Since(start).Seconds(), shown)
	return nil
}

// pySet prints a set of tags as Python does ({'weights', 'kv_cache'}).
func pySet(tags map[string]bool) string {
	var ts []string
	for _, t := range []string{"weights", "kv_cache"} {
		if tags[t] {
			ts = append(ts, "'"+t+"'")
		}
	}
	if len(ts) == 0 {
		return "set()"
	}
	return "{" + strings.Join(ts, ", ") + "}"
}

func (e *engine) handleCollectiveRPC(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Method string `json:"method"`
	}
	body, _ := io.ReadAll(r.Body)
	if err := json.Unmarshal(body, &req); err != nil {
		badRequest(w, "JSON decode error")
		return
	}
	if req.Method == "" {
		badRequest(w, "Missing 'method' in request body")
		return
	}
	if req.Method == "reload_weights" {
		// Reading the checkpoint again takes what loading it took at
		// start: the weights' share of the cold start.
		start := time.Now()
		time.Sleep(e.reloadTime())
		e.mu.Lock()
		e.weightsStale = false
		e.mu.Unlock()
		e.log.engine("default_loader.py:267", "Loading weights took %.2f seconds", time.Since(start).Seconds())
	}
	results := make([]any, e.opts.tp*e.opts.pp)
	writeJSON(w, http.StatusOK, map[string]any{"results": results})
}

func (e *engine) handleResetPrefixCache(w http.ResponseWriter, _ *http.Request) {
	e.handleResetPrefixCacheQuiet()
	w.WriteHeader(http.StatusOK)
}

// handleResetPrefixCacheQuiet empties the prefix cache, as a sleep does
// first (0.12: AsyncLLM.sleep; 0.18: pause_scheduler's clear_cache).
func (e *engine) handleResetPrefixCacheQuiet() {
	e.met.mu.Lock()
	e.met.seenPrompts = map[uint64]bool{}
	e.met.mu.Unlock()
}
