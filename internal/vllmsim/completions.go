package vllmsim

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"
)

// completionRequest is the part of an OpenAI chat or completion request the
// simulator reads.
type completionRequest struct {
	Model               string          `json:"model"`
	Messages            []chatMessage   `json:"messages"`
	Prompt              json.RawMessage `json:"prompt"`
	MaxTokens           *int            `json:"max_tokens"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	Stream              bool            `json:"stream"`
	StreamOptions       *struct {
		IncludeUsage         bool `json:"include_usage"`
		ContinuousUsageStats bool `json:"continuous_usage_stats"`
	} `json:"stream_options"`
	N                   *int            `json:"n"`
	Stop                json.RawMessage `json:"stop"`
	Temperature         *float64        `json:"temperature"`
	TopP                *float64        `json:"top_p"`
	TopK                *int            `json:"top_k"`
	MinP                *float64        `json:"min_p"`
	RepetitionPenalty   *float64        `json:"repetition_penalty"`
	PresencePenalty     *float64        `json:"presence_penalty"`
	FrequencyPenalty    *float64        `json:"frequency_penalty"`
	Seed                *int64          `json:"seed"`
	Tools               json.RawMessage `json:"tools"`
	ToolChoice          json.RawMessage `json:"tool_choice"`
	Echo                bool            `json:"echo"`
	AddGenerationPrompt *bool           `json:"add_generation_prompt"`
	// IgnoreEOS is vLLM's extra sampling parameter: generate until the
	// length limit, past end-of-sequence (chat_completion/protocol.py and
	// completion/protocol.py, v0.18.0rc2).
	IgnoreEOS bool `json:"ignore_eos"`
}

type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	TotalTokens      int `json:"total_tokens"`
	CompletionTokens int `json:"completion_tokens"`
}

// job is one request's planned output.
type job struct {
	id, model       string
	chat            bool
	created         int64
	prompt          []string
	promptTokens    int
	choices         []choicePlan
	stream          bool
	includeUsage    bool
	continuousUsage bool
	echoText        string
	sampling        map[string]any
	garbage         bool
}

type choicePlan struct {
	gen        generation
	count      int // tokens generated
	text       []string
	finish     string
	stopReason *string
}

func (e *engine) handleChat(w http.ResponseWriter, r *http.Request) { e.handleGenerate(w, r, true) }

func (e *engine) handleCompletion(w http.ResponseWriter, r *http.Request) {
	e.handleGenerate(w, r, false)
}

func (e *engine) handleGenerate(w http.ResponseWriter, r *http.Request, chat bool) {
	if !requireJSON(w, r) {
		return
	}
	var req completionRequest
	dec := json.NewDecoder(r.Body)
	if err := dec.Decode(&req); err != nil {
		badRequest(w, fmt.Sprintf("[{'type': 'json_invalid', 'loc': ('body', 0), 'msg': 'JSON decode error', 'ctx': {'error': %s}}]", pyStr(err.Error())))
		return
	}
	model, ok := e.checkModel(w, req.Model)
	if !ok {
		return
	}
	j, msg, param := e.prepare(req, chat, model)
	if msg != "" {
		// 0.18 raises VLLMValidationError for lengths, naming the
		// parameter; 0.12 a plain ValueError.
		var pp *string
		if param != "" && e.env.v18 {
			pp = &param
		}
		apiError(w, http.StatusBadRequest, "BadRequestError", msg, pp)
		return
	}
	e.run(w, r, j)
}

// prepare validates a request and plans its output; msg is a 400 message.
func (e *engine) prepare(req completionRequest, chat bool, model string) (*job, string, string) {
	j := &job{model: model, chat: chat, created: time.Now().Unix(), stream: req.Stream}
	if chat {
		j.id = "chatcmpl-" + randomHex()
		if req.Messages == nil {
			return nil, "[{'type': 'missing', 'loc': ('body', 'messages'), 'msg': 'Field required', 'input': None}]", ""
		}
		if len(req.Tools) > 0 && string(req.Tools) != "null" {
			choice := "auto"
			var s string
			if len(req.ToolChoice) > 0 && json.Unmarshal(req.ToolChoice, &s) == nil {
				choice = s
			}
			if choice == "auto" && !(e.opts.autoToolChoice && e.opts.toolCallParser != "") {
				return nil, "\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set", ""
			}
		}
		j.prompt = chatPieces(req.Messages, req.AddGenerationPrompt == nil || *req.AddGenerationPrompt)
	} else {
		j.id = "cmpl-" + randomHex()
		var s string
		var list []string
		switch {
		case len(req.Prompt) == 0 || string(req.Prompt) == "null":
			return nil, "[{'type': 'missing', 'loc': ('body', 'prompt'), 'msg': 'Field required', 'input': None}]", ""
		case json.Unmarshal(req.Prompt, &s) == nil:
		case json.Unmarshal(req.Prompt, &list) == nil && len(list) > 0:
			s = list[0]
		default:
			var ids []int
			if json.Unmarshal(req.Prompt, &ids) != nil {
				return nil, "prompt must be a string, a list of strings or a list of token ids", ""
			}
			s = e.tok.decode(ids)
		}
		j.prompt = strings.Fields(s)
		if req.Echo {
			j.echoText = s
		}
	}
	j.promptTokens = len(j.prompt)
	if req.StreamOptions != nil {
		if !req.Stream {
			return nil, "Stream options can only be defined when `stream=True`.", ""
		}
		j.includeUsage = req.StreamOptions.IncludeUsage
		j.continuousUsage = req.StreamOptions.IncludeUsage && req.StreamOptions.ContinuousUsageStats
	}
	n := 1
	if req.N != nil {
		n = *req.N
		if n < 1 {
			return nil, "n must be at least 1, got " + fmt.Sprint(n) + ".", ""
		}
	}
	maxLen := e.maxLen
	if j.promptTokens >= maxLen {
		return nil, fmt.Sprintf("This model's maximum context length is %d tokens. However, your request has %d input tokens. Please reduce the length of the input messages.", maxLen, j.promptTokens), "input_tokens"
	}
	// The request's max_tokens: the chat API has none by default, the
	// completions API 16 (CompletionRequest.max_tokens = 16). 0.12 reads
	// `max_completion_tokens or max_tokens` (a 0 falls through); 0.18
	// takes max_completion_tokens when set.
	limit := -1
	switch {
	case !chat && req.MaxTokens == nil:
		limit = 16
	case req.MaxCompletionTokens != nil && (e.env.v18 || *req.MaxCompletionTokens != 0):
		limit = *req.MaxCompletionTokens
	case req.MaxTokens != nil:
		limit = *req.MaxTokens
	}
	if limit != -1 && limit < 1 {
		return nil, fmt.Sprintf("max_tokens must be at least 1, got %d.", limit), ""
	}
	// _validate_input checks the request's value, the completions
	// default of 16 included.
	if limit > maxLen-j.promptTokens {
		if e.env.v18 {
			return nil, fmt.Sprintf("This model's maximum context length is %d tokens. However, you requested %d output tokens and your prompt contains %d input tokens, for a total of %d tokens (%d + %d = %d > %d). Please reduce the length of the input prompt or the number of requested output tokens.",
				maxLen, limit, j.promptTokens, j.promptTokens+limit, j.promptTokens, limit, j.promptTokens+limit, maxLen), "max_tokens"
		}
		return nil, fmt.Sprintf("'max_tokens' or 'max_completion_tokens' is too large: %d. This model's maximum context length is %d tokens and your request has %d input tokens (%d > %d - %d).", limit, maxLen, j.promptTokens, limit, maxLen, j.promptTokens), ""
	}
	// get_max_tokens: the least of the room left in the context, the
	// request's value (0.18: else the default max_tokens) and the cap.
	room := maxLen - j.promptTokens
	limit = min(limit, room)
	if limit == -1 {
		limit = room
		if d, ok := e.defaults["max_tokens"].(float64); ok && d >= 1 && e.env.v18 {
			limit = min(limit, int(d))
		}
	}
	if e.capTokens > 0 {
		limit = min(limit, e.capTokens)
	}
	// Effective sampling: request wins over the defaults.
	j.sampling = map[string]any{}
	for k, v := range e.defaults {
		if k == "max_tokens" {
			continue
		}
		j.sampling[k] = v
	}
	for k, v := range map[string]*float64{"temperature": req.Temperature, "top_p": req.TopP, "min_p": req.MinP,
		"repetition_penalty": req.RepetitionPenalty, "presence_penalty": req.PresencePenalty, "frequency_penalty": req.FrequencyPenalty} {
		if v != nil {
			j.sampling[k] = *v
		}
	}
	if req.TopK != nil {
		j.sampling["top_k"] = *req.TopK
	}
	if req.Seed != nil {
		j.sampling["seed"] = *req.Seed
	}
	j.sampling["max_tokens"] = limit
	j.sampling["n"] = n
	stops := parseStops(req.Stop)
	for i := 0; i < n; i++ {
		g := newGeneration(j.prompt, i)
		if req.IgnoreEOS {
			g.natural = limit
		}
		j.choices = append(j.choices, planChoice(g, limit, stops))
	}
	return j, "", ""
}

func deref(p *float64) float64 { return *p }
func derefInt(p *int) int      { return *p }

func parseStops(raw json.RawMessage) []string {
	if len(raw) == 0 {
		return nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		if s == "" {
			return nil
		}
		return []string{s}
	}
	var l []string
	json.Unmarshal(raw, &l)
	return l
}

// planChoice decides a choice's tokens: up to limit, or fewer when the
// "model" ends its answer (natural EOS) or a stop string appears.
func planChoice(g generation, limit int, stops []string) choicePlan {
	c := choicePlan{gen: g, count: min(limit, g.natural), finish: "length"}
	if g.natural < limit {
		c.finish = "stop"
	}
	text := ""
	for i := 0; i < c.count; i++ {
		p := g.piece(i, false)
		for _, s := range stops {
			if k := strings.Index(text+p, s); k >= 0 {
				cut := (text + p)[:k]
				c.text = append(c.text, cut[len(text):])
				c.count = i + 1
				c.finish = "stop"
				stop := s
				c.stopReason = &stop
				return c
			}
		}
		text += p
		c.text = append(c.text, p)
	}
	return c
}

// Stream and response shapes, fields in vLLM's order.
type chatDelta struct {
	Role    string  `json:"role,omitempty"`
	Content *string `json:"content,omitempty"`
}

type chatStreamChoice struct {
	Index        int       `json:"index"`
	Delta        chatDelta `json:"delta"`
	Logprobs     any       `json:"logprobs"`
	FinishReason *string   `json:"finish_reason"`
	StopReason   *string   `json:"stop_reason,omitempty"`
}

type textStreamChoice struct {
	Index        int     `json:"index"`
	Text         string  `json:"text"`
	Logprobs     any     `json:"logprobs"`
	FinishReason *string `json:"finish_reason"`
	StopReason   *string `json:"stop_reason"`
}

type streamChunk struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices any    `json:"choices"`
	Usage   *usage `json:"usage,omitempty"`
}

// run schedules a planned request: wait while the scheduler is paused
// (0.18), queue for a slot (--max-num-seqs), first token after the TTFT,
// then tokens at the configured rate. A request aborted on the way (a
// sleep in mode abort, a 0.18 shutdown) ends with finish_reason "abort"
// and HTTP 200: a stream with an abort chunk and [DONE].
func (e *engine) run(w http.ResponseWriter, r *http.Request, j *job) {
	e.mu.Lock()
	e.inflight++
	if e.opts.loadTracking {
		e.serverLoad++
	}
	stopping := e.stopping
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		e.inflight--
		if e.opts.loadTracking {
			e.serverLoad--
		}
		e.idle.Broadcast()
		e.mu.Unlock()
	}()
	if e.opts.logRequests {
		e.log.info("logger.py:49", "Received request %s: prompt: %s, params: SamplingParams(%s), lora_request: None.", j.id, pyStr(truncate(strings.Join(j.prompt, " "), 200)), samplingRepr(j.sampling))
	}
	if b := marshal(j.sampling); len(b) > 0 {
		w.Header().Set("X-Vllm-Sim-Sampling", string(b))
	}
	// FastAPI's StreamingResponse sends its headers before the first
	// output: a stream is 200 at once, even while it waits to be scheduled.
	var flusher http.Flusher
	if j.stream {
		flusher, _ = w.(http.Flusher)
		w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		w.WriteHeader(http.StatusOK)
		if flusher != nil {
			flusher.Flush()
		}
	}
	arrived := time.Now()
	m := e.met
	m.mu.Lock()
	m.waiting++
	m.mu.Unlock()
	if stopping {
		// 0.18's _reject_add_in_shutdown: aborted before it runs.
		e.finishMetrics(j, arrived, 0, "abort", true)
		e.abortResponse(w, flusher, j, 0)
		return
	}
	// The pause gate: requests that arrive while the scheduler is paused
	// wait for the resume.
	for g := e.gate(); g != nil; g = e.gate() {
		select {
		case <-e.stopCh:
			// A 0.18 shutdown aborts what waits in the paused scheduler.
			e.finishMetrics(j, arrived, 0, "abort", true)
			e.abortResponse(w, flusher, j, 0)
			return
		case <-g:
		case <-r.Context().Done():
			e.finishMetrics(j, arrived, 0, "abort", true)
			return
		case <-e.reqCtx.Done():
			e.finishMetrics(j, arrived, 0, "abort", true)
			return
		}
	}
	e.mu.Lock()
	e.scheduled++
	abort := e.abortCtx
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		e.scheduled--
		e.idle.Broadcast()
		e.mu.Unlock()
	}()
	select {
	case e.slots <- struct{}{}:
	case <-r.Context().Done():
		e.finishMetrics(j, arrived, 0, "abort", true)
		return
	case <-abort.Done():
		e.finishMetrics(j, arrived, 0, "abort", true)
		e.abortResponse(w, flusher, j, 0)
		return
	case <-e.reqCtx.Done():
		e.finishMetrics(j, arrived, 0, "abort", true)
		return
	}
	defer func() { <-e.slots }()
	scheduled := time.Now()
	total := 0
	for _, c := range j.choices {
		total += c.count
	}
	m.mu.Lock()
	m.waiting--
	m.running++
	m.runningTokens += j.promptTokens + total
	m.queue.observe(scheduled.Sub(arrived).Seconds())
	e.prefixCache(j.prompt)
	m.mu.Unlock()
	if e.opts.logRequests {
		e.log.info("async_llm.py:346", "Added request %s.", j.id)
	}

	steps := 0
	for _, c := range j.choices {
		steps = max(steps, c.count)
	}
	var frozenFor time.Duration
	at := func(i int) time.Time {
		d := e.env.ttft + frozenFor
		if e.env.tps > 0 && i > 0 {
			d += time.Duration(float64(i) / e.env.tps * float64(time.Second))
		}
		return scheduled.Add(d)
	}
	var firstAt time.Time
	emitted := 0
	for i := 0; i < steps; i++ {
		if f := e.frozen(); f != nil {
			t0 := time.Now()
			select {
			case <-f:
			case <-abort.Done():
			case <-r.Context().Done():
			case <-e.reqCtx.Done():
			}
			frozenFor += time.Since(t0)
		}
		switch waitUntil(r, e, abort, at(i)) {
		case waitAborted:
			e.finishMetrics(j, arrived, emitted, "abort", false)
			e.abortResponse(w, flusher, j, emitted)
			return
		case waitGone:
			e.finishMetrics(j, arrived, emitted, "abort", false)
			return
		}
		if i == 0 {
			firstAt = time.Now()
		}
		j.garbage = e.garbage()
		if j.stream {
			var buf bytes.Buffer
			if i == 0 && j.chat {
				e.writeRoleChunk(&buf, j)
			}
			e.writeChunk(&buf, j, i)
			w.Write(buf.Bytes())
			if flusher != nil {
				flusher.Flush()
			}
		}
		emitted = i + 1
	}
	if steps == 0 {
		firstAt = time.Now()
	}
	genTotal := 0
	for _, c := range j.choices {
		genTotal += c.count
	}
	u := usage{PromptTokens: j.promptTokens, CompletionTokens: genTotal, TotalTokens: j.promptTokens + genTotal}
	if j.stream {
		if j.includeUsage {
			data := marshal(streamChunk{ID: j.id, Object: j.chunkObject(), Created: j.created, Model: j.model, Choices: []any{}, Usage: &u})
			fmt.Fprintf(w, "data: %s\n\n", data)
		}
		io.WriteString(w, "data: [DONE]\n\n")
		if flusher != nil {
			flusher.Flush()
		}
	} else {
		writeJSON(w, http.StatusOK, e.fullResponse(j, u))
	}
	e.completed(r, j)
	reasons := map[string]int{}
	for _, c := range j.choices {
		reasons[c.finish]++
	}
	e.finishMetricsDone(j, arrived, firstAt, reasons, genTotal)
}

// garbage reports whether the model computes on memory it does not have:
// weights discarded by a sleep and not reloaded, or (0.12, which keeps
// scheduling while asleep) released pools. Real vLLM answers nonsense or
// dies on an illegal memory access; the simulator answers "!!" tokens so
// that a test sees the request reached a sleeping engine.
func (e *engine) garbage() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.weightsStale || (e.execAsleep && e.opts.sleepMode)
}

func (j *job) chunkObject() string {
	if j.chat {
		return "chat.completion.chunk"
	}
	return "text_completion"
}

type waitResult int

const (
	waitDone waitResult = iota
	waitAborted
	waitGone // the client left, or the process is going away
)

func waitUntil(r *http.Request, e *engine, abort context.Context, t time.Time) waitResult {
	if abort.Err() != nil {
		return waitAborted
	}
	d := time.Until(t)
	if d <= 0 {
		if r.Context().Err() != nil || e.reqCtx.Err() != nil {
			return waitGone
		}
		return waitDone
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return waitDone
	case <-abort.Done():
		return waitAborted
	case <-r.Context().Done():
		return waitGone
	case <-e.reqCtx.Done():
		return waitGone
	}
}

// abortResponse ends a request aborted after emitted tokens: each choice
// still open finishes with "abort". A stream gets (chat: the role chunk
// if nothing was sent yet) an abort chunk per choice, the usage chunk if
// asked for, and [DONE]; a plain request a 200 with the partial text.
func (e *engine) abortResponse(w io.Writer, flusher http.Flusher, j *job, emitted int) {
	gen := 0
	for idx := range j.choices {
		c := &j.choices[idx]
		if emitted < c.count {
			c.count = emitted
			c.text = c.text[:emitted]
			c.finish = "abort"
			c.stopReason = nil
		}
		gen += c.count
	}
	u := usage{PromptTokens: j.promptTokens, CompletionTokens: gen, TotalTokens: j.promptTokens + gen}
	if !j.stream {
		writeJSON(w.(http.ResponseWriter), http.StatusOK, e.fullResponse(j, u))
		return
	}
	var buf bytes.Buffer
	if emitted == 0 && j.chat {
		e.writeRoleChunk(&buf, j)
	}
	empty := ""
	abort := "abort"
	for idx, c := range j.choices {
		if c.finish != "abort" {
			continue
		}
		var choice any
		if j.chat {
			choice = chatStreamChoice{Index: idx, Delta: chatDelta{Content: &empty}, FinishReason: &abort}
		} else {
			choice = textStreamChoice{Index: idx, Text: "", FinishReason: &abort}
		}
		ch := streamChunk{ID: j.id, Object: j.chunkObject(), Created: j.created, Model: j.model, Choices: []any{choice}}
		if j.continuousUsage {
			ch.Usage = &usage{PromptTokens: j.promptTokens, CompletionTokens: emitted, TotalTokens: j.promptTokens + emitted}
		}
		fmt.Fprintf(&buf, "data: %s\n\n", marshal(ch))
	}
	if j.includeUsage {
		fmt.Fprintf(&buf, "data: %s\n\n", marshal(streamChunk{ID: j.id, Object: j.chunkObject(), Created: j.created, Model: j.model, Choices: []any{}, Usage: &u}))
	}
	buf.WriteString("data: [DONE]\n\n")
	w.Write(buf.Bytes())
	if flusher != nil {
		flusher.Flush()
	}
}

// writeRoleChunk writes the first chat chunk (role only) for every choice.
func (e *engine) writeRoleChunk(buf *bytes.Buffer, j *job) {
	empty := ""
	var choices []chatStreamChoice
	for idx := range j.choices {
		choices = append(choices, chatStreamChoice{Index: idx, Delta: chatDelta{Role: "assistant", Content: &empty}})
	}
	ch := streamChunk{ID: j.id, Object: j.chunkObject(), Created: j.created, Model: j.model, Choices: choices}
	if j.continuousUsage {
		ch.Usage = &usage{PromptTokens: j.promptTokens, TotalTokens: j.promptTokens}
	}
	data := marshal(ch)
	fmt.Fprintf(buf, "data: %s\n\n", data)
}

// writeChunk writes token i of every choice that still generates, each in
// its own chunk as vLLM does; a choice's last token carries its finish
// reason.
func (e *engine) writeChunk(buf *bytes.Buffer, j *job, i int) {
	for idx, c := range j.choices {
		if i >= c.count {
			continue
		}
		piece := c.text[i]
		if j.garbage {
			piece = c.gen.piece(i, true)
		}
		var finish *string
		var stop *string
		if i == c.count-1 {
			f := c.finish
			finish = &f
			stop = c.stopReason
		}
		var choice any
		if j.chat {
			cc := chatStreamChoice{Index: idx, Delta: chatDelta{Content: &piece}, FinishReason: finish}
			if finish != nil {
				cc.StopReason = stop
			}
			choice = cc
		} else {
			choice = textStreamChoice{Index: idx, Text: piece, FinishReason: finish, StopReason: stop}
		}
		ch := streamChunk{ID: j.id, Object: j.chunkObject(), Created: j.created, Model: j.model, Choices: []any{choice}}
		if j.continuousUsage {
			ch.Usage = &usage{PromptTokens: j.promptTokens, CompletionTokens: i + 1, TotalTokens: j.promptTokens + i + 1}
		}
		data := marshal(ch)
		fmt.Fprintf(buf, "data: %s\n\n", data)
	}
}

func (e *engine) fullResponse(j *job, u usage) any {
	texts := make([]string, len(j.choices))
	for idx, c := range j.choices {
		var b strings.Builder
		for i := 0; i < c.count; i++ {
			if j.garbage {
				b.WriteString(c.gen.piece(i, true))
			} else {
				b.WriteString(c.text[i])
			}
		}
		texts[idx] = b.String()
	}
	if j.chat {
		type message struct {
			Role             string  `json:"role"`
			Content          string  `json:"content"`
			Refusal          *string `json:"refusal"`
			Annotations      any     `json:"annotations"`
			Audio            any     `json:"audio"`
			FunctionCall     any     `json:"function_call"`
			ToolCalls        []any   `json:"tool_calls"`
			ReasoningContent *string `json:"reasoning_content"`
		}
		type choice struct {
			Index        int     `json:"index"`
			Message      message `json:"message"`
			Logprobs     any     `json:"logprobs"`
			FinishReason string  `json:"finish_reason"`
			StopReason   *string `json:"stop_reason"`
		}
		var cs []choice
		for idx, c := range j.choices {
			cs = append(cs, choice{Index: idx, Message: message{Role: "assistant", Content: texts[idx], ToolCalls: []any{}},
				FinishReason: c.finish, StopReason: c.stopReason})
		}
		return struct {
			ID                string   `json:"id"`
			Object            string   `json:"object"`
			Created           int64    `json:"created"`
			Model             string   `json:"model"`
			Choices           []choice `json:"choices"`
			ServiceTier       any      `json:"service_tier"`
			SystemFingerprint any      `json:"system_fingerprint"`
			Usage             usage    `json:"usage"`
			PromptLogprobs    any      `json:"prompt_logprobs"`
			KVTransferParams  any      `json:"kv_transfer_params"`
		}{ID: j.id, Object: "chat.completion", Created: j.created, Model: j.model, Choices: cs, Usage: u}
	}
	type choice struct {
		Index          int     `json:"index"`
		Text           string  `json:"text"`
		Logprobs       any     `json:"logprobs"`
		FinishReason   string  `json:"finish_reason"`
		StopReason     *string `json:"stop_reason"`
		PromptLogprobs any     `json:"prompt_logprobs"`
	}
	var cs []choice
	for idx, c := range j.choices {
		cs = append(cs, choice{Index: idx, Text: j.echoText + texts[idx], FinishReason: c.finish, StopReason: c.stopReason})
	}
	return struct {
		ID               string   `json:"id"`
		Object           string   `json:"object"`
		Created          int64    `json:"created"`
		Model            string   `json:"model"`
		Choices          []choice `json:"choices"`
		ServiceTier      any      `json:"service_tier"`
		SystemFinger     any      `json:"system_fingerprint"`
		Usage            usage    `json:"usage"`
		KVTransferParams any      `json:"kv_transfer_params"`
	}{ID: j.id, Object: "text_completion", Created: j.created, Model: j.model, Choices: cs, Usage: u}
}

// prefixCache counts prefix-cache queries and hits by whole blocks of the
// prompt seen before; m.mu is held.
func (e *engine) prefixCache(prompt []string) {
	m := e.met
	m.prefixQueries += uint64(len(prompt))
	m.intervalQueries += uint64(len(prompt))
	if !e.opts.prefixCaching {
		return
	}
	h := fnv.New64a()
	hit := 0
	missed := false
	bs := e.plan.blockSize
	for i, p := range prompt {
		h.Write([]byte(p))
		h.Write([]byte{0})
		if (i+1)%bs == 0 {
			k := h.Sum64()
			if !missed && m.seenPrompts[k] {
				hit = i + 1
			} else {
				missed = true
			}
			m.seenPrompts[k] = true
		}
	}
	m.prefixHits += uint64(hit)
	m.intervalHits += uint64(hit)
}

// finishMetrics records a request that ended early (abort or error).
func (e *engine) finishMetrics(j *job, arrived time.Time, emitted int, reason string, queued bool) {
	m := e.met
	m.mu.Lock()
	defer m.mu.Unlock()
	if queued {
		m.waiting--
	} else {
		m.running--
		total := 0
		for _, c := range j.choices {
			total += c.count
		}
		m.runningTokens -= j.promptTokens + total
		m.promptTokens += uint64(j.promptTokens)
		m.intervalPrompt += uint64(j.promptTokens)
		gen := emitted * len(j.choices)
		m.genTokens += uint64(gen)
		m.intervalGen += uint64(gen)
	}
	m.success[reason]++
	m.e2e.observe(time.Since(arrived).Seconds())
}

func (e *engine) finishMetricsDone(j *job, arrived, firstAt time.Time, reasons map[string]int, gen int) {
	m := e.met
	m.mu.Lock()
	defer m.mu.Unlock()
	m.running--
	m.runningTokens -= j.promptTokens + gen
	m.promptTokens += uint64(j.promptTokens)
	m.genTokens += uint64(gen)
	m.intervalPrompt += uint64(j.promptTokens)
	m.intervalGen += uint64(gen)
	for r, n := range reasons {
		m.success[r] += uint64(n)
	}
	m.ttft.observe(firstAt.Sub(arrived).Seconds())
	now := time.Now()
	m.e2e.observe(now.Sub(arrived).Seconds())
	m.promptHist.observe(float64(j.promptTokens))
	for _, c := range j.choices {
		m.genHist.observe(float64(c.count))
		if c.count > 1 {
			itl := now.Sub(firstAt).Seconds() / float64(c.count-1)
			for i := 1; i < c.count; i++ {
				m.itl.observe(itl)
			}
		}
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// samplingRepr renders sampling params the way vLLM logs SamplingParams.
func samplingRepr(p map[string]any) string {
	base := map[string]any{"n": 1, "presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0,
		"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "seed": nil, "max_tokens": 16}
	for k, v := range p {
		base[k] = v
	}
	order := []string{"n", "presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "top_p", "top_k", "min_p", "seed", "max_tokens"}
	var extra []string
	for k := range base {
		found := false
		for _, o := range order {
			found = found || o == k
		}
		if !found {
			extra = append(extra, k)
		}
	}
	sort.Strings(extra)
	var parts []string
	for _, k := range append(order, extra...) {
		parts = append(parts, k+"="+pyAny(base[k]))
	}
	return strings.Join(parts, ", ")
}

func pyAny(v any) string {
	switch x := v.(type) {
	case nil:
		return "None"
	case int:
		return fmt.Sprint(x)
	case int64:
		return fmt.Sprint(x)
	case float64:
		return pyFloat(x)
	case string:
		return pyStr(x)
	}
	return pyRepr(v)
}

// completed appends the request to the VLLM_SIM_COMPLETIONS file, if any,
// once its whole answer was written (one short O_APPEND write per line, so
// the lines of concurrent engines never mix).
func (e *engine) completed(r *http.Request, j *job) {
	path := e.env.completions
	if path == "" || r.Context().Err() != nil {
		return // a client that went away was not delivered the answer
	}
	id := r.Header.Get("X-Request-Id")
	if id == "" {
		id = j.id
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	f.WriteString(id + " " + j.model + "\n")
}
