package gateway

import (
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"
)

// The gateway's own bounds: what one client can make vagentd hold. Memory
// follows the bytes a client has sent, never what it declares; every phase
// of a request that waits on the client has a deadline; connections and
// each key's open requests are capped. Responses are not bounded here:
// request_timeout bounds the exchange with the engine, and a stream may
// run as long as that.

// Server returns the http.Server for a listener of g's OpenAI-compatible
// endpoint: its header and keep-alive deadlines are gateway.header_timeout
// and gateway.keepalive_timeout; the body deadline is set per request
// (readBody), so that long responses are not cut.
func (g *Gateway) Server(errLog *log.Logger) *http.Server {
	gw := g.cfg.Gateway
	return &http.Server{
		Handler:           g.Handler(),
		ReadHeaderTimeout: gw.HeaderTimeout.Duration,
		IdleTimeout:       gw.KeepaliveTimeout.Duration,
		ErrorLog:          errLog,
	}
}

// AgentServer is the HTTP server of agent name's own listener (its listen
// key): every request there goes to that agent whatever its model says,
// with the keys, limits, queueing and metrics of Server.
func (g *Gateway) AgentServer(name string, errLog *log.Logger) *http.Server {
	srv := g.Server(errLog)
	h := srv.Handler
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), listenerAgent{}, name)))
	})
	return srv
}

// UnservedServer answers every request on a listening socket that systemd
// handed vagentd but that no configuration names any more (the
// configuration changed and vagentd restarted before vagentctl apply
// rendered vagentd.socket again): a 421 whose message says what to run. Closing the socket instead would leave its
// connections waiting in the kernel's backlog, where nothing answers them.
func (g *Gateway) UnservedServer(addr string, errLog *log.Logger) *http.Server {
	srv := g.Server(errLog)
	e := &APIError{Status: http.StatusMisdirectedRequest, Type: typeInvalidRequest,
		Message: "vagentd no longer serves " + addr + ": no gateway.listen or agent listen names it; " +
			"vagentd.socket still holds it until `vagentctl apply` and `systemctl restart vagentd.socket`"}
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { e.write(w) })
	return srv
}

// listenerAgent is the context key of the agent a per-agent listener
// serves.
type listenerAgent struct{}

// Listener wraps ln so that it hands out a connection only while fewer
// than gateway.max_connections are open on all of g's listeners together.
// Past the cap Accept waits: new connections queue in the kernel's
// backlog, and a client sees a slow connect rather than a reset.
func (g *Gateway) Listener(ln net.Listener) net.Listener {
	return &limitListener{Listener: ln, sem: g.conns, done: make(chan struct{})}
}

type limitListener struct {
	net.Listener
	sem       chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &limitConn{Conn: c, sem: l.sem}, nil
}

func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

type limitConn struct {
	net.Conn
	sem  chan struct{}
	once sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { <-c.sem })
	return err
}

// anonymousKey names the one key all clients share without a keys file:
// vagentd then listens on loopback only, and a TCP connection does not say
// which local user opened it without a walk of /proc per connection, so
// the per-key cap bounds all local clients together.
const anonymousKey = ""

// keyLimits counts each key's open inference requests.
type keyLimits struct {
	max  int
	mu   sync.Mutex
	open map[string]int
}

func newKeyLimits(max int) *keyLimits { return &keyLimits{max: max, open: map[string]int{}} }

// acquire takes one of key's request slots; false when it has none left.
func (l *keyLimits) acquire(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[key] >= l.max {
		return false
	}
	l.open[key]++
	return true
}

func (l *keyLimits) release(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[key]--; l.open[key] <= 0 {
		delete(l.open, key)
	}
}

// admit takes a request slot of the client's key (nil: no keys file), or
// says why not: 429 with Retry-After.
func (g *Gateway) admit(key *keyEntry) (string, *APIError) {
	name := anonymousKey
	if key != nil {
		name = key.name
	}
	if g.keyLimits.acquire(name) {
		return name, nil
	}
	n := strconv.Itoa(g.keyLimits.max)
	msg := "key " + name + " has " + n + " requests open (gateway.max_requests_per_key " + n + "): try again when one ends"
	if key == nil {
		msg = "clients have " + n + " requests open (gateway.max_requests_per_key " + n + "; without a keys file all clients share one limit): try again when one ends"
	}
	return "", &APIError{Status: http.StatusTooManyRequests, Type: typeRateLimit, Message: msg, RetryAfter: retryKeyLimit}
}

// bodyChunk is the first allocation for a body, and what a client must
// have sent before the buffer grows further.
const bodyChunk = 16 << 10

// readBody reads r's body into a buffer that grows with the bytes that
// arrive (never pre-sized from Content-Length, which a client can set to
// the maximum and then send one byte), within gateway.max_body_mib (413)
// and gateway.body_timeout (408). On an error the connection is closed
// after the reply: what is left of the body must not be read as the next
// request, nor waited for.
func (g *Gateway) readBody(w http.ResponseWriter, r *http.Request) ([]byte, *APIError) {
	limit := int64(g.cfg.Gateway.MaxBodyMiB) << 20
	tooBig := func() *APIError {
		w.Header().Set("Connection", "close")
		return apiErr(http.StatusRequestEntityTooLarge, typeInvalidRequest,
			"request body larger than %d MiB (gateway.max_body_mib)", g.cfg.Gateway.MaxBodyMiB)
	}
	if r.ContentLength > limit {
		return nil, tooBig()
	}
	rc := http.NewResponseController(w)
	bound := g.cfg.Gateway.BodyTimeout.Duration
	// ErrNotSupported is the only error, for a connection that is not
	// HTTP/1 (vagentd serves nothing else); the body is then unbounded in
	// time, as before.
	deadline := bound > 0 && rc.SetReadDeadline(time.Now().Add(bound)) == nil
	buf, err := readBounded(r.Body, r.ContentLength, limit)
	switch {
	case err == nil:
		if deadline {
			// The response is not bounded by the body's deadline, and the
			// server's read that notices a client leaving must not see it.
			rc.SetReadDeadline(time.Time{})
		}
		return buf, nil
	case errors.Is(err, errBodyTooBig):
		return nil, tooBig()
	case errors.Is(err, os.ErrDeadlineExceeded):
		w.Header().Set("Connection", "close")
		return nil, apiErr(http.StatusRequestTimeout, typeTimeout,
			"the request body did not arrive within %s (gateway.body_timeout)", bound)
	default:
		// The deadline stays: the server's discard of what is left ends
		// at it rather than waiting on a client that stopped sending.
		w.Header().Set("Connection", "close")
		return nil, apiErr(http.StatusBadRequest, typeInvalidRequest, "reading the request body: %v", err)
	}
}

var errBodyTooBig = errors.New("request body too large")

// readBounded reads all of r, at most limit bytes (errBodyTooBig past it).
// declared is the Content-Length, -1 when unknown: it caps the buffer's
// growth, so that an honest body gets one buffer of its size, but never
// sizes it ahead of the bytes that came. The buffer at most doubles what
// has arrived. On an error it returns what was read.
func readBounded(r io.Reader, declared, limit int64) ([]byte, error) {
	// One byte past what may come: reading it proves the body too big (or
	// lets EOF arrive without another allocation).
	most := limit + 1
	if declared >= 0 && declared < limit {
		most = declared + 1
	}
	buf := make([]byte, 0, min(most, bodyChunk))
	for {
		if int64(len(buf)) > limit {
			return buf, errBodyTooBig
		}
		if len(buf) == cap(buf) {
			if int64(len(buf)) >= most {
				most = limit + 1 // more than declared: only the limit holds
			}
			nb := make([]byte, len(buf), min(2*int64(len(buf)), most))
			copy(nb, buf)
			buf = nb
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			if int64(len(buf)) > limit {
				return buf, errBodyTooBig
			}
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}
