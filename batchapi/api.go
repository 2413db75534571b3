// Package batchapi serves OpenAI's Files and Batch APIs on vagentd's main
// endpoint (/v1/files, /v1/batches), so that an official SDK's
// client.batches.create(...) works unchanged. A batch is a work.Job of
// kind "batch" whose items are its input file's lines; the work executor
// runs them through the gateway grouped by agent, and Finished (kind.go)
// writes the output and error files.
//
// Files and batches belong to the API key that made them (its name; the
// one anonymous caller without a keys file): another key neither lists nor
// reads them, and gets 404 as if they did not exist. A line's body.model
// is resolved as the gateway resolves it for that key.
package batchapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vagent-dev/vagent/gateway"
	"github.com/vagent-dev/vagent/work"
)

// Gateway is what the Batch API needs of the gateway; *gateway.Gateway
// satisfies it.
type Gateway interface {
	// Caller authenticates r: the key's name, or an error to send.
	Caller(r *http.Request) (string, error)
	// AgentFor resolves model for caller as an inference request's model.
	AgentFor(caller, model string) (string, error)
}

// Options are the API's collaborators and limits.
type Options struct {
	Store   *work.Store
	Gateway Gateway
	// Notify tells the executor that new work was stored.
	Notify func()
	// MaxFileMiB is the largest upload ([batch] max_file_mib). A batch's
	// output and error files are not bounded by it.
	MaxFileMiB int
	// BodyTimeout bounds how long a client may take to send a request's
	// body, an upload included (gateway.body_timeout); 0: no bound.
	BodyTimeout time.Duration
	Log         *slog.Logger
	// Now is the clock (tests); time.Now when nil.
	Now func() time.Time
}

// API serves /v1/files and /v1/batches.
type API struct {
	o   Options
	mux *http.ServeMux
}

// Kind is the work kind of a batch.
const Kind = "batch"

// New returns the API for o.
func New(o Options) *API {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Notify == nil {
		o.Notify = func() {}
	}
	a := &API{o: o, mux: http.NewServeMux()}
	a.route("/v1/files", map[string]handler{http.MethodPost: a.uploadFile, http.MethodGet: a.listFiles})
	a.route("/v1/files/{id}", map[string]handler{http.MethodGet: a.getFile, http.MethodDelete: a.deleteFile})
	a.route("/v1/files/{id}/content", map[string]handler{http.MethodGet: a.fileContent})
	a.route("/v1/batches", map[string]handler{http.MethodPost: a.createBatch, http.MethodGet: a.listBatches})
	a.route("/v1/batches/{id}", map[string]handler{http.MethodGet: a.getBatch})
	a.route("/v1/batches/{id}/cancel", map[string]handler{http.MethodPost: a.cancelBatch})
	notFound := func(w http.ResponseWriter, r *http.Request) {
		gateway.WriteError(w, gateway.Error(http.StatusNotFound, "", "no route %s %s", r.Method, r.URL.Path))
	}
	a.mux.HandleFunc("/v1/files/", notFound)
	a.mux.HandleFunc("/v1/batches/", notFound)
	return a
}

// handler serves one route for the authenticated caller.
type handler func(w http.ResponseWriter, r *http.Request, caller string) error

// route serves path with one handler per method: 405 in OpenAI's error
// shape for the others, 401 before anything without a valid key.
func (a *API) route(path string, methods map[string]handler) {
	var allow []string
	for m := range methods {
		allow = append(allow, m)
	}
	a.mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		caller, err := a.o.Gateway.Caller(r)
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="vagent"`)
			gateway.WriteError(w, err)
			return
		}
		h, ok := methods[r.Method]
		if !ok {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			gateway.WriteError(w, gateway.Error(http.StatusMethodNotAllowed, "", "%s %s: use %s", r.Method, r.URL.Path, strings.Join(allow, " or ")))
			return
		}
		if err := h(w, r, caller); err != nil {
			status := gateway.WriteError(w, err)
			if status >= 500 {
				a.o.Log.Warn("batch api", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
			}
		}
	})
}

// Handler serves the Files and Batch APIs and passes every other request
// to next (the gateway).
func (a *API) Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if Serves(r.URL.Path) {
			a.mux.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Serves reports whether path is the Files or Batch API's.
func Serves(path string) bool {
	for _, p := range []string{"/v1/files", "/v1/batches"} {
		if path == p || strings.HasPrefix(path, p+"/") {
			return true
		}
	}
	return false
}

func writeJSON(w http.ResponseWriter, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
	return nil
}

func notFound(what, id string) error {
	return gateway.Error(http.StatusNotFound, "", "No %s found with id '%s'.", what, id)
}

func badRequest(param, format string, a ...any) error {
	return gateway.Error(http.StatusBadRequest, param, format, a...)
}

// storeError is what a client sees of a store failure.
func storeError(op string, err error) error {
	var ae *gateway.APIError
	if errors.As(err, &ae) {
		return err
	}
	if errors.Is(err, context.Canceled) {
		return gateway.Error(499, "", "%s: the client went away", op)
	}
	if errors.Is(err, syscall.ENOSPC) {
		return gateway.Error(http.StatusInsufficientStorage, "", "%s: the work store's disk is full; nothing was stored (%v)", op, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

// page is a listing's query: after (a cursor id) and limit (1-100,
// default 20), as OpenAI takes them.
type page struct {
	after string
	limit int
}

func readPage(r *http.Request) (page, error) {
	q := r.URL.Query()
	p := page{after: q.Get("after"), limit: 20}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100 {
			return p, badRequest("limit", "limit %q: want a whole number from 1 to 100", v)
		}
		p.limit = n
	}
	if o := q.Get("order"); o != "" && o != "desc" {
		return p, badRequest("order", "order %q: listings are newest first (desc) only", o)
	}
	return p, nil
}

// collect lists at most p.limit things after p.after that keep admits,
// reading fetch's pages (newest first) until it has them or there are no
// more; more says whether one more was there.
func collect[T any](p page, fetch func(after string, n int) ([]T, error), id func(T) string, keep func(T) bool) (out []T, more bool, err error) {
	after := p.after
	for {
		batch, err := fetch(after, p.limit+1)
		if err != nil {
			return nil, false, err
		}
		for _, v := range batch {
			if !keep(v) {
				continue
			}
			if len(out) == p.limit {
				return out, true, nil
			}
			out = append(out, v)
		}
		if len(batch) < p.limit+1 {
			return out, false, nil
		}
		after = id(batch[len(batch)-1])
	}
}

func listOf[T any](data []T, more bool, id func(T) string) List[T] {
	l := List[T]{Object: "list", Data: data, HasMore: more}
	if l.Data == nil {
		l.Data = []T{}
	}
	if len(data) > 0 {
		first, last := id(data[0]), id(data[len(data)-1])
		l.FirstID, l.LastID = &first, &last
	}
	return l
}

// isMultipart reports whether r's body is multipart/form-data.
func isMultipart(r *http.Request) bool {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return err == nil && mt == "multipart/form-data"
}

// bodyDeadline bounds the reading of r's body by gateway.body_timeout,
// as the gateway bounds an inference request's; done lifts the bound once
// the body is read, so that the answer is not cut by it.
func (a *API) bodyDeadline(w http.ResponseWriter) (done func()) {
	if a.o.BodyTimeout <= 0 {
		return func() {}
	}
	rc := http.NewResponseController(w)
	if rc.SetReadDeadline(time.Now().Add(a.o.BodyTimeout)) != nil {
		return func() {} // not HTTP/1: unbounded, as in the gateway
	}
	return func() { rc.SetReadDeadline(time.Time{}) }
}

// bodyError is what a client sees when its body could not be read: 408
// past gateway.body_timeout, else 400. The connection closes after it.
func (a *API) bodyError(w http.ResponseWriter, err error) error {
	w.Header().Set("Connection", "close")
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return gateway.Error(http.StatusRequestTimeout, "", "the request body did not arrive within %s (gateway.body_timeout)", a.o.BodyTimeout)
	}
	return badRequest("", "reading the request body: %v", err)
}

// readJSON decodes r's JSON body, at most 1 MiB, into v.
func (a *API) readJSON(w http.ResponseWriter, r *http.Request, v any) error {
	done := a.bodyDeadline(w)
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20+1))
	if err != nil {
		return a.bodyError(w, err)
	}
	done()
	if len(body) > 1<<20 {
		return gateway.Error(http.StatusRequestEntityTooLarge, "", "request body larger than 1 MiB")
	}
	if err := json.Unmarshal(body, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return badRequest(te.Field, "%s: want a %s, not %s", te.Field, te.Type, te.Value)
		}
		return badRequest("", "the request body is not a JSON object: %v", err)
	}
	return nil
}
