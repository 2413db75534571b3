package vllmsim

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
)

// errAddrInUse is the bind or listen failure vLLM reports as
// "OSError: [Errno 98] Address already in use".
var errAddrInUse = errors.New("address already in use")

// boundSocket is a TCP socket bound to its address but not yet listening:
// vLLM binds the port before it loads the model and listens only once the
// model is loaded, so connects are refused for the whole load.
type boundSocket struct {
	fd   int
	port int
	host string // as the URL in the log shows it
	uds  string // the unix socket's path, for --uds
}

// address is where the server listens, as vLLM's "Starting vLLM server on"
// line writes it.
func (b *boundSocket) address() string {
	if b.uds != "" {
		return "unix:" + b.uds
	}
	return fmt.Sprintf("http://%s:%d", b.host, b.port)
}

// bindUnixSocket binds a unix socket at path as vLLM's
// create_server_unix_socket does (api_server.py, 0.10.1 and later): a plain
// bind, which fails with "Address already in use" while any file, a
// socket left by a dead server included, is at path.
func bindUnixSocket(path string) (*boundSocket, error) {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		syscall.Close(fd)
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, errAddrInUse
		}
		return nil, fmt.Errorf("bind: %w", err)
	}
	return &boundSocket{fd: fd, uds: path}, nil
}

// resolveHost turns --host into an address: empty means all interfaces.
func resolveHost(host string) (net.IP, error) {
	switch host {
	case "":
		return net.IPv4zero, nil
	case "localhost":
		return net.IPv4(127, 0, 0, 1), nil
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return nil, fmt.Errorf("socket.gaierror: [Errno -2] Name or service not known")
	}
	return ip, nil
}

func bindSocket(host string, port int) (*boundSocket, error) {
	ip, err := resolveHost(host)
	if err != nil {
		return nil, err
	}
	var sa syscall.Sockaddr
	family := syscall.AF_INET
	if ip4 := ip.To4(); ip4 != nil {
		s := &syscall.SockaddrInet4{Port: port}
		copy(s.Addr[:], ip4)
		sa = s
	} else {
		family = syscall.AF_INET6
		s := &syscall.SockaddrInet6{Port: port}
		copy(s.Addr[:], ip.To16())
		sa = s
	}
	fd, err := syscall.Socket(family, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	// As vLLM's create_server_socket (api_server.py, 0.12 and 0.18):
	// SO_REUSEADDR, so that connections in TIME_WAIT from a previous
	// engine do not block the port, and SO_REUSEPORT, so that a second
	// engine on a port already served starts without error and the kernel
	// splits connections between the two.
	for _, opt := range []int{syscall.SO_REUSEADDR, soReusePort} {
		if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, opt, 1); err != nil {
			syscall.Close(fd)
			return nil, fmt.Errorf("setsockopt: %w", err)
		}
	}
	if err := syscall.Bind(fd, sa); err != nil {
		syscall.Close(fd)
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, errAddrInUse
		}
		return nil, fmt.Errorf("bind: %w", err)
	}
	b := &boundSocket{fd: fd, port: port, host: host}
	if got, err := syscall.Getsockname(fd); err == nil {
		switch a := got.(type) {
		case *syscall.SockaddrInet4:
			b.port = a.Port
		case *syscall.SockaddrInet6:
			b.port = a.Port
		}
	}
	if b.host == "" {
		b.host = "0.0.0.0"
	}
	return b, nil
}

// listen starts accepting connections and hands the socket to net.
func (b *boundSocket) listen() (net.Listener, error) {
	if err := syscall.Listen(b.fd, 4096); err != nil {
		b.close()
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, errAddrInUse
		}
		return nil, fmt.Errorf("listen: %w", err)
	}
	f := os.NewFile(uintptr(b.fd), "vllm-sim-socket")
	ln, err := net.FileListener(f)
	f.Close()
	b.fd = -1
	if err != nil {
		return nil, fmt.Errorf("listener: %w", err)
	}
	return ln, nil
}

func (b *boundSocket) close() {
	if b.fd >= 0 {
		syscall.Close(b.fd)
		b.fd = -1
	}
}

// soReusePort is Linux's SO_REUSEPORT, which the syscall package lacks.
const soReusePort = 0xf
