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
	slots     chan struct{}
	reqCtx    context.Context
	abortAll  context.CancelFunc
	routes    map[string]map[string]http.HandlerFunc
	cacheInfo map[string]string

	mu           sync.Mutex
	weightsAwake bool
	kvAwake      bool
	weightsStale bool // woken from level 2 without reload_weights
	draining     bool
	inflight     int
	serverLoad   int
	idle         *sync.Cond
}

func (s *sim) serve(ctx context.Context, loadTime time.Duration) int {
	o, lg := s.opts, s.log
	e := &engine{sim: s, tok: newTokenizer(), met: newMetrics(time.Now()), loadTime: loadTime,
		slots: make(chan struct{}, max(o.maxNumSeqs, 1)), weightsAwake: true, kvAwake: true}
	e.idle = sync.NewCond(&e.mu)
	e.reqCtx, e.abortAll = context.WithCancel(context.Background())
	defer e.abortAll()
	e.defaults = map[string]any{}
	if o.generationCfg == "auto" {
		for k, v := range s.facts.genDefaults {
			e.defaults[k] = v
		}
	}
	for k, v := range o.overrideGen {
		e.defaults[k] = v
	}
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
		if o.generationCfg == "auto" && len(s.facts.genDefaults) > 0 {
			lg.warn(procAPI, "model.py:1679", "Default sampling parameters have been overridden by the model's Hugging Face generation config recommended from the model creator. If this is not intended, please relaunch vLLM instance with `--generation-config vllm`.")
		}
		lg.info("serving_chat.py:139", "Using default chat sampling params from model: %s", pyRepr(e.defaults))
		lg.info("serving_completion.py:76", "Using default completion sampling params from model: %s", pyRepr(e.defaults))
	}
	lg.info("api_server.py:1912", "Supported tasks: ['generate']")
	lg.info("api_server.py:1912", "Starting vLLM API server 0 on http://%s:%d", s.sock.host, s.sock.port)
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
	lg.info("launcher.py:110", "Shutting down FastAPI HTTP server.")
	e.mu.Lock()
	e.draining = true
	e.mu.Unlock()
	if o.shutdownTimeout > 0 {
		e.waitIdle(time.Duration(o.shutdownTimeout) * time.Second)
	}
	e.abortAll()
	sctx, cancel := context.WithTimeout(context.Background(), shutdownHTTPBudget)
	_ = srv.Shutdown(sctx)
	cancel()
	_ = srv.Close()
	lg.uvicorn("Shutting down")
	lg.uvicorn("Waiting for application shutdown.")
	lg.uvicorn("Application shutdown complete.")
	time.Sleep(s.env.release)
	s.releaseEntries()
	return 0
}

// waitIdle waits until no request is in flight or d has passed
// (--shutdown-timeout).
func (e *engine) waitIdle(d time.Duration) {
	deadline := time.Now().Add(d)
	timer := time.AfterFunc(d, func() {
		e.mu.Lock()
		e.idle.Broadcast()
		e.mu.Unlock()
	})
	defer timer.Stop()
	e.mu.Lock()
	for e.inflight > 0 && time.Now().Before(deadline) {
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
	if e.env.devMode {
		add("/reset_prefix_cache", e.handleResetPrefixCache, "POST")
		add("/collective_rpc", e.handleCollectiveRPC, "POST")
		add("/is_sleeping", e.handleIsSleeping, "GET")
		add("/server_info", func(w http.ResponseWriter, _ *http.Request) {
			writeJSON(w, http.StatusOK, map[string]string{"vllm_config": fmt.Sprintf("model=%s, max_seq_len=%d, served_model_name=%s", pyStr(e.opts.model), e.maxLen, e.opts.servedNames[0])})
		}, "GET")
		if e.opts.sleepMode {
			add("/sleep", e.handleSleep, "POST")
			add("/wake_up", e.handleWakeUp, "POST")
		}
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
		ok := false
		for _, k := range e.opts.apiKeys {
			if r.Header.Get("Authorization") == "Bearer "+k {
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

// requireJSON is vLLM's validate_json_request.
func requireJSON(w http.ResponseWriter, r *http.Request) bool {
	ct := strings.ToLower(r.Header.Get("Content-Type"))
	mt, _, _ := strings.Cut(ct, ";")
	if strings.TrimSpace(mt) != "application/json" {
		apiError(w, http.StatusUnsupportedMediaType, "Unsupported Media Type", "Unsupported Media Type: Only 'application/json' is allowed", nil)
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
	param := "model"
	apiError(w, http.StatusNotFound, "NotFoundError", fmt.Sprintf("The model `%s` does not exist.", name), &param)
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

func (e *engine) sleepingLocked() bool { return !(e.weightsAwake && e.kvAwake) }

func (e *engine) handleIsSleeping(w http.ResponseWriter, _ *http.Request) {
	e.mu.Lock()
	sl := e.sleepingLocked()
	e.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]bool{"is_sleeping": sl})
}

func (e *engine) handleSleep(w http.ResponseWriter, r *http.Request) {
	level := 1
	if v := r.URL.Query().Get("level"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 2 {
			badRequest(w, fmt.Sprintf("Invalid sleep level: %s", v))
			return
		}
		level = n
	}
	start := time.Now()
	e.mu.Lock()
	wasAwake := !e.sleepingLocked()
	e.weightsAwake, e.kvAwake = false, false
	e.mu.Unlock()
	// Copying weights out (level 1) or discarding them takes a moment.
	time.Sleep(e.wakeTime() / 2)
	host := uint64(0)
	if level == 1 {
		host = e.plan.weights
	}
	freed := float64(0)
	if wasAwake {
		freed = float64(e.plan.held-e.plan.residual) / gib
	}
	if err := e.setEntries(e.plan.residual, host, ledger.StateSleeping); err != nil {
		apiError(w, http.StatusInternalServerError, "InternalServerError", err.Error(), nil)
		return
	}
	e.mu.Lock()
	if level == 2 {
		e.weightsStale = true
	}
	e.mu.Unlock()
	e.log.engine("gpu_worker.py:117", "Sleep mode freed %.2f GiB memory, %.2f GiB memory is still in use.", freed, float64(e.plan.residual)/gib)
	e.log.engine("abstract.py:263", "It took %.6f seconds to fall asleep.", time.Since(start).Seconds())
	w.WriteHeader(http.StatusOK)
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

func (e *engine) handleWakeUp(w http.ResponseWriter, r *http.Request) {
	tags := r.URL.Query()["tags"]
	wantW, wantKV := len(tags) == 0, len(tags) == 0
	for _, t := range tags {
		switch t {
		case "weights":
			wantW = true
		case "kv_cache":
			wantKV = true
		default:
			badRequest(w, fmt.Sprintf("Invalid tag: %s", t))
			return
		}
	}
	start := time.Now()
	e.mu.Lock()
	wAwake, kvAwake := e.weightsAwake || wantW, e.kvAwake || wantKV
	e.mu.Unlock()
	p := e.plan
	bytes := p.residual
	if wAwake {
		bytes = min(p.residual+p.weights, p.held)
	}
	if wAwake && kvAwake {
		bytes = p.held
	}
	state := ledger.StateSleeping
	if wAwake && kvAwake {
		state = ledger.StateLoaded
	}
	time.Sleep(e.wakeTime())
	if err := e.reclaim(bytes, 0, state); err != nil {
		apiError(w, http.StatusInternalServerError, "InternalServerError", err.Error(), nil)
		return
	}
	e.mu.Lock()
	e.weightsAwake, e.kvAwake = wAwake, kvAwake
	e.mu.Unlock()
	var ts []string
	if wantW {
		ts = append(ts, "'weights'")
	}
	if wantKV {
		ts = append(ts, "'kv_cache'")
	}
	e.log.engine("abstract.py:270", "It took %.6f seconds to wake up tags {%s}.", time.Since(start).Seconds(), strings.Join(ts, ", "))
	w.WriteHeader(http.StatusOK)
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
	e.met.mu.Lock()
	e.met.seenPrompts = map[uint64]bool{}
	e.met.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}
