package gateway

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/vagent-dev/vagent/engine"
)

// engineClient talks HTTP/1.1 to the engines at their endpoints over pooled
// connections, on the calling goroutine. net/http's Transport would spend
// two goroutines and a write buffer on every connection and hand each
// request and response between goroutines; with hundreds of streams open,
// that is most of vagentd's memory and a good part of its added latency.
type engineClient struct {
	dialer      net.Dialer
	maxIdle     int           // idle connections kept per engine
	idleTimeout time.Duration // below the engines' keep-alive (uvicorn: 5s)

	mu   sync.Mutex
	idle map[engine.Endpoint][]*engineConn
}

type engineConn struct {
	nc     net.Conn
	br     *bufio.Reader
	idleAt time.Time
	reused bool
}

// aLongTimeAgo is a deadline that makes blocked reads and writes return.
var aLongTimeAgo = time.Unix(1, 0)

var writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4096) }}

func newEngineClient() *engineClient {
	return &engineClient{
		dialer:      net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second},
		maxIdle:     1024,
		idleTimeout: 3 * time.Second,
		idle:        map[engine.Endpoint][]*engineConn{},
	}
}

// do sends req to the engine at ep and returns its response. Ending ctx
// aborts the exchange, the body's reads included; the connection then is
// not reused. A failure on a reused connection before any answer (the
// engine closed it meanwhile) is retried once on a new one: completions
// have no side effects besides their compute. Dial failures are returned
// as *net.OpError with Op "dial".
func (ec *engineClient) do(ctx context.Context, ep engine.Endpoint, req *outRequest, body []byte) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		c, err := ec.get(ctx, ep)
		if err != nil {
			return nil, err
		}
		stop := context.AfterFunc(ctx, func() { c.nc.SetDeadline(aLongTimeAgo) })
		resp, err := c.roundTrip(req, body)
		if err != nil {
			stop()
			c.nc.Close()
			if c.reused && attempt == 0 && ctx.Err() == nil {
				continue
			}
			if ctx.Err() != nil {
				return nil, context.Cause(ctx)
			}
			return nil, err
		}
		resp.Body = &engineBody{rc: resp.Body, c: c, ec: ec, ep: ep, stop: stop,
			eof: resp.ContentLength == 0, keep: !resp.Close}
		return resp, nil
	}
}

func (c *engineConn) roundTrip(req *outRequest, body []byte) (*http.Response, error) {
	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(c.nc)
	err := writeRequest(bw, req, body)
	bw.Reset(nil)
	writerPool.Put(bw)
	if err != nil {
		return nil, err
	}
	for {
		resp, err := http.ReadResponse(c.br, req.orig)
		if err != nil {
			return nil, err
		}
		// Skip interim responses (100 Continue, 103 Early Hints).
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue
		}
		return resp, nil
	}
}

// outRequest is a request to an engine.
type outRequest struct {
	method string
	uri    string // path and query
	host   string
	header http.Header
	// orig is the client's request; http.ReadResponse reads its method.
	orig *http.Request
}

// writeRequest writes req and body as HTTP/1.1. The headers come from a
// request net/http parsed, so they are valid as they are.
func writeRequest(bw *bufio.Writer, req *outRequest, body []byte) error {
	bw.WriteString(req.method)
	bw.WriteByte(' ')
	bw.WriteString(req.uri)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(req.host)
	bw.WriteString("\r\n")
	for k, vs := range req.header {
		if k == "Host" || k == "Content-Length" || k == "Transfer-Encoding" {
			continue
		}
		for _, v := range vs {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	var n [20]byte
	bw.WriteString("Content-Length: ")
	bw.Write(strconv.AppendInt(n[:0], int64(len(body)), 10))
	bw.WriteString("\r\n\r\n")
	bw.Write(body)
	return bw.Flush()
}

// get takes an idle connection to ep that is still open, or dials one.
func (ec *engineClient) get(ctx context.Context, ep engine.Endpoint) (*engineConn, error) {
	now := time.Now()
	for {
		ec.mu.Lock()
		list := ec.idle[ep]
		if len(list) == 0 {
			ec.mu.Unlock()
			break
		}
		c := list[len(list)-1]
		list[len(list)-1] = nil
		ec.idle[ep] = list[:len(list)-1]
		ec.mu.Unlock()
		if now.Sub(c.idleAt) < ec.idleTimeout && c.open() {
			c.reused = true
			return c, nil
		}
		c.nc.Close()
	}
	nc, err := ep.Dial(ctx, &ec.dialer)
	if err != nil {
		return nil, err
	}
	return &engineConn{nc: nc, br: bufio.NewReaderSize(nc, 2048)}, nil
}

// open reports whether an idle connection is still usable: the engine has
// not closed it and sent nothing unasked.
func (c *engineConn) open() bool {
	if c.br.Buffered() > 0 {
		return false
	}
	sc, ok := c.nc.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := false
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		// EAGAIN: nothing to read and not closed. A byte or EOF (no
		// error) means the connection cannot carry a new request.
		_, _, rerr := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		alive = errors.Is(rerr, syscall.EAGAIN) || errors.Is(rerr, syscall.EWOULDBLOCK)
		return true
	})
	return err == nil && alive
}

func (ec *engineClient) put(ep engine.Endpoint, c *engineConn) {
	c.idleAt = time.Now()
	ec.mu.Lock()
	if len(ec.idle[ep]) < ec.maxIdle {
		ec.idle[ep] = append(ec.idle[ep], c)
		c = nil
	}
	ec.mu.Unlock()
	if c != nil {
		c.nc.Close()
	}
}

// closeIdle closes every idle connection.
func (ec *engineClient) closeIdle() {
	ec.mu.Lock()
	idle := ec.idle
	ec.idle = map[engine.Endpoint][]*engineConn{}
	ec.mu.Unlock()
	for _, list := range idle {
		for _, c := range list {
			c.nc.Close()
		}
	}
}

// engineBody is a response body that gives its connection back to the
// pool once read to the end, or closes it otherwise.
type engineBody struct {
	rc   io.ReadCloser
	c    *engineConn
	ec   *engineClient
	ep   engine.Endpoint
	stop func() bool
	eof  bool
	keep bool
	done bool
}

func (b *engineBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *engineBody) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	// stop is false when ctx ended: the deadline may be poisoned.
	reusable := b.stop() && b.eof && b.keep
	if reusable {
		b.ec.put(b.ep, b.c)
		return nil
	}
	return b.c.nc.Close()
}
