package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/vagent-dev/vagent/engine"
	"github.com/vagent-dev/vagent/internal/mediatype"
)

// maxParsedBody is the largest non-streamed response read whole (to count
// its usage) before it is sent; larger ones are copied through.
const maxParsedBody = 4 << 20

// hopHeaders are per-connection headers a proxy must not forward.
var hopHeaders = map[string]bool{
	"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
}

// readerPool holds the line readers of streams. Lines longer than one are
// relayed in pieces; only usage parsing needs a whole line, and usage
// chunks are a few hundred bytes. Small buffers keep hundreds of open
// streams cheap.
var readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 1024) }}

var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// exchange is one inference request's record, for its log line and metrics.
type exchange struct {
	g      *Gateway
	r      *http.Request
	t0     time.Time
	ag     *agentRT
	model  string
	key    *keyEntry
	status int
	stream bool
	waited time.Duration
	ttft   time.Duration
	errMsg string
	// slot is the key whose request slot this request holds, when admitted.
	slot     string
	admitted bool
}

func (x *exchange) fail(w http.ResponseWriter, err error) {
	ae := asAPIError(err)
	ae.write(w)
	x.status, x.errMsg = ae.Status, ae.Message
}

// done writes the request's log line and counts it.
func (x *exchange) done() {
	if x.admitted {
		x.g.keyLimits.release(x.slot)
	}
	d := time.Since(x.t0)
	m := x.g.noAgent
	agent := ""
	if x.ag != nil {
		m = x.ag.m
		agent = x.ag.name
		m.reqSeconds.Observe(d.Seconds())
	}
	m.request(x.status)
	attrs := make([]slog.Attr, 0, 10)
	attrs = append(attrs,
		slog.String("agent", agent),
		slog.String("model", x.model),
		slog.String("path", x.r.URL.Path),
		slog.Int("status", x.status),
		slog.Duration("duration", d),
		slog.Bool("stream", x.stream),
	)
	if x.waited > 0 {
		attrs = append(attrs, slog.Duration("queued", x.waited))
	}
	if x.ttft > 0 {
		attrs = append(attrs, slog.Duration("ttft", x.ttft))
	}
	if x.key != nil {
		attrs = append(attrs, slog.String("key", x.key.name))
	}
	if x.errMsg != "" {
		attrs = append(attrs, slog.String("error", x.errMsg))
	}
	level := slog.LevelInfo
	if x.status >= 500 {
		level = slog.LevelWarn
	}
	x.g.log.LogAttrs(context.Background(), level, "request", attrs...)
}

// serveInference routes one OpenAI API request to its agent.
func (g *Gateway) serveInference(w http.ResponseWriter, r *http.Request) {
	x := &exchange{g: g, r: r, t0: time.Now()}
	defer x.done()
	ag, body, jsonBody, err := g.prepare(w, r, x)
	if err != nil {
		x.fail(w, err)
		return
	}
	g.proxy(w, r, x, ag, body, jsonBody)
}

// prepare checks the key, reads the body, finds the agent and rewrites the
// body for it. (A function of its own: its frame is gone while the
// response streams, which keeps the goroutines of open streams small.)
func (g *Gateway) prepare(w http.ResponseWriter, r *http.Request, x *exchange) (ag *agentRT, out []byte, jsonBody bool, err error) {
	var key *keyEntry
	bg := isBackground(r.Context())
	if g.o.Keys != nil && !bg {
		k, aerr := g.authenticate(r)
		if aerr != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="vagent"`)
			return nil, nil, false, aerr
		}
		key, x.key = k, k
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return nil, nil, false, apiErr(http.StatusMethodNotAllowed, typeInvalidRequest, "%s %s: use POST", r.Method, r.URL.Path)
	}
	if !bg {
		// Background work is bounded by the executor's own concurrency,
		// not by a client key's slots.
		slot, aerr := g.admit(key)
		if aerr != nil {
			return nil, nil, false, aerr
		}
		x.slot, x.admitted = slot, true
	}
	body, aerr := g.readBody(w, r)
	if aerr != nil {
		return nil, nil, false, aerr
	}
	req, aerr := parseRequest(body, r.Header.Get("Content-Type"))
	if aerr != nil {
		return nil, nil, false, aerr
	}
	own, _ := r.Context().Value(listenerAgent{}).(string)
	if !req.hasModel && own == "" {
		return nil, nil, false, apiErr(http.StatusBadRequest, typeInvalidRequest, "the request names no model: set \"model\" to one of: %s", g.namesFor(key))
	}
	x.model = req.model
	if own != "" {
		// The agent's own listener: its model, whatever the client named.
		ag = g.byAgent[own]
	} else {
		ag, aerr = g.resolve(req.model, key)
	}
	if aerr != nil {
		return nil, nil, false, aerr
	}
	if aerr := permit(key, ag); aerr != nil {
		return nil, nil, false, aerr
	}
	x.ag = ag
	prompt, maxTokens := "", 0
	chat := r.URL.Path == "/v1/chat/completions"
	if chat {
		prompt = ag.cfg.SystemPrompt
	}
	if chat || r.URL.Path == "/v1/completions" {
		// A default, never a cap: vLLM would take the smaller of a
		// server-side max_new_tokens and the client's value.
		maxTokens, _ = engine.DefaultMaxTokens(ag.cfg)
	}
	out, rerr := req.rewrite(body, ag.cfg.ServedName(), prompt, maxTokens, chat)
	if rerr != nil {
		return nil, nil, false, apiErr(http.StatusBadRequest, typeInvalidRequest, "bad request body: %v", rerr)
	}
	return ag, out, req.boundary == "", nil
}

func joinStrings(s []string) string {
	var b bytes.Buffer
	for i, v := range s {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(v)
	}
	return b.String()
}

// proxy waits for ag to take the request, sends it, and relays the answer.
// A non-streamed answer the engine aborted (finish_reason "abort": it was
// put to sleep or stopped under the request) was not sent to the client
// yet: the request is sent once more, after waiting for the agent as a new
// request would (a sleeping agent is woken first). A stream is relayed as it
// comes, so an abort in it ends it with an error event instead (copyStream).
func (g *Gateway) proxy(w http.ResponseWriter, r *http.Request, x *exchange, ag *agentRT, body []byte, jsonBody bool) {
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	l := &lease{cancel: cancel, background: isBackground(r.Context()), turn: hasTurn(r.Context())}
	defer l.stopTimer()
	defer g.release(l)
	for attempt := 0; ; attempt++ {
		resp, err := g.send(ctx, r, x, ag, l, body, jsonBody)
		if err != nil {
			if r.Context().Err() != nil {
				x.status, x.errMsg = 499, "the client went away"
				return
			}
			x.fail(w, err)
			return
		}
		if resp.StatusCode == http.StatusUnauthorized {
			// The engine refused vagentd's own key: not the client's fault.
			io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			x.fail(w, apiErr(http.StatusBadGateway, typeBadGateway,
				"agent %s refused vagentd's engine key: the engine runs with another --api-key; restart it (vagentctl restart %s)", ag.name, ag.name))
			return
		}
		if mediatype.IsEventStream(resp.Header.Get("Content-Type")) {
			x.stream = true
			g.copyStream(w, r, x, ag, ctx, resp)
			resp.Body.Close()
			return
		}
		if resp.ContentLength < 0 || resp.ContentLength > maxParsedBody {
			g.copyThrough(w, r, x, ag, ctx, resp)
			resp.Body.Close()
			return
		}
		buf := make([]byte, resp.ContentLength)
		_, err = io.ReadFull(resp.Body, buf)
		resp.Body.Close()
		if err != nil {
			g.upstreamFailed(w, r, x, ag, ctx, err)
			return
		}
		if resp.StatusCode/100 == 2 && resp.Header.Get("Content-Encoding") == "" && aborted(buf) {
			g.release(l)
			if ctx.Err() != nil {
				// The client left, or the gateway cut the request.
				g.upstreamFailed(w, r, x, ag, ctx, context.Cause(ctx))
				return
			}
			if attempt == 0 {
				g.log.Info("the engine aborted the request (put to sleep or stopped): sending it again", "agent", ag.name)
				// Its engine may sleep or be gone behind the gateway's back:
				// learn that first, so the request waits for a wake or a
				// start instead of going to a sleeping engine.
				g.resync(ctx)
				continue
			}
			x.fail(w, errAborted(ag))
			return
		}
		g.writeBody(w, x, ag, resp, buf)
		return
	}
}

// resync rebuilds the agents' states from the supervisor and waits for
// that (or ctx): an engine that aborts requests may have been put to sleep
// or stopped behind the gateway's back, and no request may go to it until
// the gateway knows. Callers at the same moment (every stream the sleep
// aborted) share one rebuild.
func (g *Gateway) resync(ctx context.Context) {
	g.resyncMu.Lock()
	ch := g.resyncing
	if ch == nil {
		ch = make(chan struct{})
		g.resyncing = ch
		go func() {
			g.sync(g.base)
			g.resyncMu.Lock()
			g.resyncing = nil
			g.resyncMu.Unlock()
			close(ch)
		}()
	}
	g.resyncMu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
	}
}

// errAborted is what a client gets for an answer its engine aborted
// (finish_reason "abort"), rather than the short answer.
func errAborted(ag *agentRT) *APIError {
	return &APIError{Status: http.StatusServiceUnavailable, Type: typeUnavailable, RetryAfter: retryDrained,
		Message: "agent " + ag.name + "'s engine aborted this request before it finished (finish_reason \"abort\": the engine was put to sleep or stopped); send it again"}
}

var abortValue = []byte(`"abort"`)

// aborted reports whether a completion (a whole JSON answer or one stream
// chunk) has a choice with finish_reason "abort": vLLM's answer for a
// request its engine dropped when it was put to sleep or stopped. The
// bytes are searched first; only a match is decoded.
func aborted(b []byte) bool {
	if !bytes.Contains(b, abortValue) {
		return false
	}
	var v struct {
		Choices []struct {
			FinishReason *string `json:"finish_reason"`
		} `json:"choices"`
	}
	if json.Unmarshal(b, &v) != nil {
		return false
	}
	for _, c := range v.Choices {
		if c.FinishReason != nil && *c.FinishReason == "abort" {
			return true
		}
	}
	return false
}

// send waits until ag takes the request and sends it. A refused
// connection means the engine is gone: it is started again and the
// request sent once more. On success the request holds its lease.
func (g *Gateway) send(ctx context.Context, r *http.Request, x *exchange, ag *agentRT, l *lease, body []byte, jsonBody bool) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		waited, err := g.acquire(ctx, ag, l)
		x.waited += waited
		if err != nil {
			return nil, err
		}
		if rt := g.cfg.Gateway.RequestTimeout.Duration; rt > 0 && l.timer == nil {
			// request_timeout counts from when the agent takes the request.
			// A timer, not another context: one context less per request.
			l.timer = time.AfterFunc(rt, func() { l.cancel(ag.timeoutErr) })
		}
		resp, err := g.client.do(ctx, ag.ep, g.upstreamRequest(r, ag, jsonBody), body)
		if err == nil {
			return resp, nil
		}
		g.release(l)
		if attempt == 0 && isDialError(err) && ctx.Err() == nil {
			g.lost(ag)
			continue
		}
		return nil, upstreamError(ag, ctx, "no answer from the engine", err)
	}
}

var jsonContentType = []string{"application/json"}

// upstreamRequest is r as ag's engine gets it: the same method, path,
// query and headers, but the engine key instead of the client's, and no
// hop-by-hop headers.
func (g *Gateway) upstreamRequest(r *http.Request, ag *agentRT, jsonBody bool) *outRequest {
	uri := r.RequestURI
	if !strings.HasPrefix(uri, "/") {
		uri = r.URL.RequestURI()
	}
	h := make(http.Header, len(r.Header)+1)
	for k, vs := range r.Header {
		if hopHeaders[k] || k == "Authorization" || k == "Content-Length" || k == "Expect" {
			continue
		}
		h[k] = vs
	}
	if g.engineKey != nil {
		h["Authorization"] = g.engineKey
	}
	if jsonBody && !mediatype.IsJSON(h.Get("Content-Type")) {
		// The body parsed as JSON; vLLM answers 415 to anything not labelled
		// so, which is what `curl -d` sends.
		h["Content-Type"] = jsonContentType
	}
	return &outRequest{method: r.Method, uri: uri, host: ag.ep.Host(), header: h, orig: r}
}

func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// upstreamError says why the exchange with ag's engine failed: the cause
// the gateway set (a cut by a drain, the request timeout), or 502.
func upstreamError(ag *agentRT, uctx context.Context, what string, err error) *APIError {
	var ae *APIError
	if errors.As(context.Cause(uctx), &ae) {
		return ae
	}
	return apiErr(http.StatusBadGateway, typeBadGateway, "agent %s: %s: %v", ag.name, what, err)
}

func (g *Gateway) upstreamFailed(w http.ResponseWriter, r *http.Request, x *exchange, ag *agentRT, uctx context.Context, err error) {
	if r.Context().Err() != nil {
		x.status, x.errMsg = 499, "the client went away"
		return
	}
	x.fail(w, upstreamError(ag, uctx, "no answer from the engine", err))
}

func copyHeaders(dst, src http.Header) {
	for k, vs := range src {
		if !hopHeaders[k] {
			dst[k] = vs
		}
	}
}

// writeBody sends a plain (non-SSE) response read whole, so that a failure
// before its end was still a clean 502, and counts its usage.
func (g *Gateway) writeBody(w http.ResponseWriter, x *exchange, ag *agentRT, resp *http.Response, buf []byte) {
	copyHeaders(w.Header(), resp.Header)
	w.Header().Set("X-Vagent-Agent", ag.name)
	w.WriteHeader(resp.StatusCode)
	x.status = resp.StatusCode
	if resp.StatusCode >= 400 {
		x.errMsg = "the engine answered " + http.StatusText(resp.StatusCode)
	}
	if _, err := w.Write(buf); err != nil {
		x.status, x.errMsg = 499, "the client went away"
		return
	}
	if resp.StatusCode/100 == 2 && resp.Header.Get("Content-Encoding") == "" {
		if u, ok := findUsage(buf); ok {
			ag.m.prompt.Add(float64(u.PromptTokens))
			ag.m.completion.Add(float64(u.CompletionTokens))
		}
	}
}

// copyThrough relays a plain response too large (or of unknown length) to
// read whole: a failure before its end aborts the connection, so the client
// sees an error rather than a short body.
func (g *Gateway) copyThrough(w http.ResponseWriter, r *http.Request, x *exchange, ag *agentRT, uctx context.Context, resp *http.Response) {
	copyHeaders(w.Header(), resp.Header)
	w.Header().Set("X-Vagent-Agent", ag.name)
	w.WriteHeader(resp.StatusCode)
	x.status = resp.StatusCode
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	for {
		n, rerr := resp.Body.Read(*bp)
		if n > 0 {
			if _, werr := w.Write((*bp)[:n]); werr != nil {
				x.status, x.errMsg = 499, "the client went away"
				return
			}
		}
		if rerr == io.EOF {
			return
		}
		if rerr != nil {
			if r.Context().Err() != nil {
				x.status, x.errMsg = 499, "the client went away"
				return
			}
			ae := upstreamError(ag, uctx, "the engine's answer broke off", rerr)
			x.status, x.errMsg = ae.Status, ae.Message
			// Headers are out: abort the connection so the client cannot
			// mistake the short body for a whole one.
			panic(http.ErrAbortHandler)
		}
	}
}

// errStreamAborted marks a stream that carried finish_reason "abort".
var errStreamAborted = errors.New(`the engine aborted the stream (finish_reason "abort")`)

var (
	dataPrefix = []byte("data:")
	doneMarker = []byte("[DONE]")
	eventEnd   = []byte("\n\n")
	eventEndCR = []byte("\n\r\n")
)

// copyStream relays server-sent events as they come: each event is flushed
// to the client as soon as it is complete and no other complete event is
// already buffered behind it. A stream that ends without "data: [DONE]"
// (engine died, request cut or timed out) gets an error event and [DONE],
// so clients never see a bare EOF.
func (g *Gateway) copyStream(w http.ResponseWriter, r *http.Request, x *exchange, ag *agentRT, uctx context.Context, resp *http.Response) {
	h := w.Header()
	copyHeaders(h, resp.Header)
	h.Del("Content-Length")
	h.Set("X-Vagent-Agent", ag.name)
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(resp.StatusCode)
	x.status = resp.StatusCode
	rc := http.NewResponseController(w)
	rc.Flush()

	br := readerPool.Get().(*bufio.Reader)
	br.Reset(resp.Body)
	defer func() {
		br.Reset(nil)
		readerPool.Put(br)
	}()
	var (
		usage      usageCounts
		haveUsage  bool
		sawDone    bool
		delivered  bool   // the client has been handed data: [DONE]: a success whatever comes next
		lineStart  = true // the next byte begins a line
		inEvent    bool   // a non-blank line was written since the last blank one
		firstEvent = true
		rerr       error
	)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			blank := lineStart && (len(line) == 1 || (len(line) == 2 && line[0] == '\r')) && err == nil
			if lineStart && bytes.HasPrefix(line, dataPrefix) {
				payload := bytes.TrimSpace(line[len(dataPrefix):])
				if firstEvent {
					firstEvent = false
					x.ttft = time.Since(x.t0)
					ag.m.ttft.Observe(x.ttft.Seconds())
				}
				if bytes.Equal(payload, doneMarker) {
					sawDone = true
				} else if err == nil && aborted(payload) {
					// The engine dropped the request (put to sleep or
					// stopped): never relay that as a finished answer.
					rerr = errStreamAborted
					break
				} else if err == nil && bytes.Contains(payload, usageKey) {
					if u, ok := findUsage(payload); ok {
						usage, haveUsage = u, true
					}
				}
			}
			if _, werr := w.Write(line); werr != nil {
				if delivered {
					break
				}
				x.status, x.errMsg = 499, "the client went away"
				return
			}
			lineStart = line[len(line)-1] == '\n'
			if blank {
				inEvent = false
				if !completeEventBuffered(br) {
					if rc.Flush() != nil {
						if delivered {
							break
						}
						x.status, x.errMsg = 499, "the client went away"
						return
					}
					// A client may close as soon as it reads [DONE]; that
					// cancels the exchange with the engine before its EOF.
					delivered = sawDone
				}
			} else {
				inEvent = true
			}
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			rerr = err
			break
		}
	}
	if haveUsage {
		ag.m.prompt.Add(float64(usage.PromptTokens))
		ag.m.completion.Add(float64(usage.CompletionTokens))
	}
	if delivered {
		return
	}
	if rerr == io.EOF && sawDone {
		rc.Flush()
		return
	}
	if r.Context().Err() != nil {
		x.status, x.errMsg = 499, "the client went away"
		return
	}
	var ae *APIError
	switch {
	case rerr == errStreamAborted && context.Cause(uctx) == nil:
		ae = errAborted(ag)
		// Before the client hears of it (and sends the request again).
		g.resync(r.Context())
	case rerr == io.EOF:
		rerr = errors.New("the stream ended without data: [DONE]")
		fallthrough
	default:
		ae = upstreamError(ag, uctx, "the engine's stream broke off", rerr)
	}
	x.status, x.errMsg = ae.Status, ae.Message
	var b bytes.Buffer
	if !lineStart {
		b.WriteByte('\n')
	}
	if inEvent {
		b.WriteByte('\n')
	}
	b.WriteString("data: ")
	b.Write(ae.body())
	b.WriteString("\n\ndata: [DONE]\n\n")
	w.Write(b.Bytes())
	rc.Flush()
}

// completeEventBuffered reports whether br already holds a whole event, so
// that flushing can wait until after it.
func completeEventBuffered(br *bufio.Reader) bool {
	n := br.Buffered()
	if n == 0 {
		return false
	}
	b, _ := br.Peek(n)
	return bytes.Contains(b, eventEnd) || bytes.Contains(b, eventEndCR)
}
