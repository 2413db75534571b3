package engine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"syscall"
	"time"
)

// Endpoint is where one engine serves its HTTP API: a TCP address on the
// loopback, or a unix socket (vLLM's --uds). Every caller dials through it,
// so that an engine moving from a port to a socket changes this type and
// nothing that talks to the engine.
type Endpoint struct {
	network string // "tcp" or "unix"
	address string // host:port, or the socket's path
}

// TCP is the endpoint of an engine listening on host:port.
func TCP(host string, port int) Endpoint {
	return Endpoint{network: "tcp", address: net.JoinHostPort(host, strconv.Itoa(port))}
}

// Unix is the endpoint of an engine listening on the unix socket at path.
func Unix(path string) Endpoint { return Endpoint{network: "unix", address: path} }

// Network is the network to dial: "tcp" or "unix".
func (e Endpoint) Network() string { return e.network }

// Address is the address to dial: host:port, or the socket's path.
func (e Endpoint) Address() string { return e.address }

// Host is the Host header of requests to the engine: the address for TCP,
// "localhost" for a socket (HTTP needs a host; the socket has none).
func (e Endpoint) Host() string {
	if e.network == "unix" {
		return "localhost"
	}
	return e.address
}

// URL is the URL of path on the engine, for an http.Client whose transport
// is Transport (a socket's URL names no place a default transport could dial).
func (e Endpoint) URL(path string) string { return "http://" + e.Host() + path }

// String names the endpoint in messages: host:port, or unix:PATH.
func (e Endpoint) String() string {
	if e.network == "unix" {
		return "unix:" + e.address
	}
	return e.address
}

// Dial connects to the engine with d.
func (e Endpoint) Dial(ctx context.Context, d *net.Dialer) (net.Conn, error) {
	return d.DialContext(ctx, e.network, e.address)
}

// Transport is an HTTP transport that dials the engine whatever a request's
// URL says, with its own pool of connections. Otherwise it is net/http's
// default: idle connections are kept (an engine that closes one is noticed
// by the transport), so a wake's calls after seconds of quiet need no new
// connection; with a 3 s idle timeout the wake switch measured ~25 ms
// slower on a loaded host. No proxy: engines are local.
func (e Endpoint) Transport() *http.Transport {
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	t.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) { return e.Dial(ctx, d) }
	return t
}

// ErrInUse is returned, wrapped, by CheckFree when something listens where
// the engine should.
var ErrInUse = errors.New("in use")

// CheckFree reports whether the engine could listen at e now: an error
// wrapping ErrInUse when something already listens there. vLLM binds with
// SO_REUSEPORT and so starts without complaint beside another listener on
// its port, after which the kernel splits connections between the two: a
// start must be refused before it happens. The test binds without
// SO_REUSEPORT, so any listener, one that set it included, makes it fail.
func (e Endpoint) CheckFree() error {
	switch e.network {
	case "unix":
		// A socket file nobody answers on is left from a dead engine: the
		// unit removes it before the start (vLLM's bind would fail on it).
		// One that answers is in use.
		if _, err := os.Stat(e.address); err != nil {
			return nil
		}
		c, err := net.DialTimeout("unix", e.address, time.Second)
		if err != nil {
			return nil
		}
		c.Close()
		return fmt.Errorf("%s: %w", e, ErrInUse)
	default:
		l, err := net.Listen(e.network, e.address)
		if err != nil {
			if errors.Is(err, syscall.EADDRINUSE) {
				return fmt.Errorf("%s: %w", e, ErrInUse)
			}
			return fmt.Errorf("listen %s: %w", e, err)
		}
		return l.Close()
	}
}
