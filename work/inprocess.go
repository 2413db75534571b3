package work

import (
	"io"
	"net/http"
	"sync"
)

// serveInProcess runs h for req in a goroutine and returns its response as
// it is written: the status and headers once the handler writes them, the
// body through a pipe, so that a stream's events arrive as they are
// flushed. Closing the body makes the handler's writes fail (as a client
// that went away does) and req's context ends the handler's work.
func serveInProcess(h http.Handler, req *http.Request) *http.Response {
	pr, pw := io.Pipe()
	w := &pipeWriter{header: http.Header{}, pw: pw, ready: make(chan struct{})}
	go func() {
		defer func() {
			// A handler that wrote nothing gave no answer: the gateway
			// does that for a client that went away.
			if w.WriteHeader(http.StatusBadGateway); w.status == http.StatusBadGateway && !w.wrote {
				io.WriteString(pw, `{"error":{"message":"the gateway gave no answer","code":502}}`)
			}
			pw.Close()
		}()
		h.ServeHTTP(w, req)
	}()
	<-w.ready
	return &http.Response{
		StatusCode: w.status, Status: http.StatusText(w.status), Header: w.sent,
		Body: pr, ContentLength: -1, Request: req, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
	}
}

// pipeWriter is an http.ResponseWriter that hands the status and headers
// over once, then writes the body into a pipe.
type pipeWriter struct {
	header http.Header
	sent   http.Header
	pw     *io.PipeWriter
	status int
	wrote  bool // the handler wrote body bytes
	once   sync.Once
	ready  chan struct{}
}

func (w *pipeWriter) Header() http.Header { return w.header }

func (w *pipeWriter) WriteHeader(status int) {
	w.once.Do(func() {
		w.status = status
		w.sent = w.header.Clone()
		close(w.ready)
	})
}

func (w *pipeWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	w.wrote = true
	return w.pw.Write(p)
}

// FlushError does nothing: the pipe has no buffer (http.ResponseController
// looks for it).
func (w *pipeWriter) FlushError() error { return nil }

// Flush does nothing either (http.Flusher, for handlers that assert it).
func (w *pipeWriter) Flush() {}
