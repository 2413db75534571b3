package daemon

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/units"
)

// listenConfig is the shipped configuration with every address on this
// test's own sockets: the endpoint and dev's listener on api and dev, the
// control socket at ctl; the other agents listen nowhere.
func listenConfig(t *testing.T, api, dev, ctl string) *config.Config {
	t.Helper()
	cfg, _ := testConfig(t)
	cfg.Gateway.Listen = api
	cfg.Gateway.ControlSocket = ctl
	cfg.Agent("dev").Listen = dev
	return cfg
}

// systemdSocket is a listening socket as vagentd.socket holds it: open in
// this process for the whole test, whichever vagentd comes and goes.
func systemdSocket(t *testing.T, network, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// handOver is ln's descriptor as systemd passes it to vagentd: a copy,
// named as FileDescriptorName= names it.
func handOver(t *testing.T, ln net.Listener, name string) *os.File {
	t.Helper()
	f, err := ln.(interface{ File() (*os.File, error) }).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd, err := syscall.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(fd), name)
}

// startRun runs vagentd with files handed over until the returned stop is
// called; it returns once vagentd is ready, with its logs.
func startRun(t *testing.T, cfg *config.Config, files []*os.File) (stop func(), logs *bytes.Buffer) {
	t.Helper()
	logs = &bytes.Buffer{}
	ready := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, cfg, Options{
			Log:       NewLogger(&syncWriter{w: logs}, 0),
			Systemd:   &fakeSystemd{active: map[string]bool{}},
			Notify:    func(string) error { return nil },
			Ready:     func(net.Addr, net.Addr) { close(ready) },
			Inherited: files,
		})
	}()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("Run: %v\n%s", err, logs)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("not ready after 10s")
	}
	var stopped bool
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run after stop: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return after its context ended")
		}
	}
	t.Cleanup(stop)
	return stop, logs
}

func get(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// vagentd serves on the sockets systemd hands over, each by the address it
// is bound to; a socket no configuration names is answered with an error
// instead of left to hang; and a connection made while no vagentd runs
// waits in the socket's backlog and is served by the next one.
func TestRunServesHandedOverSockets(t *testing.T) {
	dir := t.TempDir()
	api := systemdSocket(t, "tcp", "127.0.0.1:0")
	dev := systemdSocket(t, "tcp", "127.0.0.1:0")
	stray := systemdSocket(t, "tcp", "127.0.0.1:0")
	foreign := systemdSocket(t, "tcp", "127.0.0.1:0")
	ctlPath := filepath.Join(dir, "vagentd.sock")
	ctl := systemdSocket(t, "unix", ctlPath)
	if err := os.Chmod(ctlPath, 0o660); err != nil {
		t.Fatal(err)
	}
	cfg := listenConfig(t, api.Addr().String(), dev.Addr().String(), ctlPath)
	handed := func() []*os.File {
		// systemd passes them in the unit's order, which says nothing.
		return []*os.File{
			handOver(t, ctl, units.SocketFDName), handOver(t, stray, units.SocketFDName),
			handOver(t, dev, units.SocketFDName), handOver(t, api, units.SocketFDName),
			handOver(t, foreign, "other.socket"),
		}
	}
	stop, logs := startRun(t, cfg, handed())
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	if code, body := get(t, hc, "http://"+api.Addr().String()+"/healthz"); code != http.StatusOK {
		t.Errorf("the endpoint handed over: %d %s", code, body)
	}
	if code, body := get(t, hc, "http://"+dev.Addr().String()+"/v1/models"); code != http.StatusOK || !strings.Contains(body, `"dev"`) {
		t.Errorf("dev's listener handed over: %d %s", code, body)
	}
	code, body := get(t, hc, "http://"+stray.Addr().String()+"/v1/models")
	if code != http.StatusMisdirectedRequest || !strings.Contains(body, "vagentd no longer serves "+stray.Addr().String()) {
		t.Errorf("a socket no configuration names: %d %s; want 421 saying so", code, body)
	}
	uc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", ctlPath)
	}}}
	if code, body := get(t, uc, "http://vagentd/vagent/v1/status"); code != http.StatusOK {
		t.Errorf("control socket handed over: %d %s", code, body)
	}
	for _, want := range []string{"closing a socket handed over under another name", "holds an address no configuration names", "handed_over=4"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
	if strings.Contains(logs.String(), "did not hand") {
		t.Errorf("vagentd opened a listener of its own beside those handed over:\n%s", logs)
	}

	// Between two vagentds: a client connects and sends its request.
	stop()
	if _, err := os.Stat(ctlPath); err != nil {
		t.Errorf("vagentd removed the control socket systemd made: %v", err)
	}
	c, err := net.DialTimeout("tcp", api.Addr().String(), time.Second)
	if err != nil {
		t.Fatalf("connect while no vagentd runs: %v; want it queued in the backlog", err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	startRun(t, cfg, handed())
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("the connection made between two vagentds: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("the connection made between two vagentds: %s", resp.Status)
	}
}

// A configured address that systemd did not hand over (the configuration
// changed since vagentd.socket started) is opened by vagentd itself, with a
// warning that says what to run.
func TestRunOpensWhatWasNotHandedOver(t *testing.T) {
	dir := t.TempDir()
	api := systemdSocket(t, "tcp", "127.0.0.1:0")
	free := systemdSocket(t, "tcp", "127.0.0.1:0")
	devAddr := free.Addr().String()
	free.Close()
	ctlPath := filepath.Join(dir, "vagentd.sock")
	cfg := listenConfig(t, api.Addr().String(), devAddr, ctlPath)
	_, logs := startRun(t, cfg, []*os.File{handOver(t, api, units.SocketFDName)})
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	if code, body := get(t, hc, "http://"+devAddr+"/v1/models"); code != http.StatusOK {
		t.Errorf("dev's listener, opened by vagentd: %d %s", code, body)
	}
	if fi, err := os.Stat(ctlPath); err != nil || fi.Mode().Perm() != 0o660 {
		t.Errorf("control socket opened by vagentd: %v %v", fi, err)
	}
	for _, want := range []string{
		`vagentd.socket did not hand this address over`, `field="listen of agent dev"`, "listen=" + devAddr,
		"vagentd.socket did not hand the control socket over", "systemctl restart vagentd.socket",
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
}

func TestSameTCP(t *testing.T) {
	for _, tc := range []struct {
		listen string
		addr   *net.TCPAddr
		want   bool
	}{
		{"127.0.0.1:8080", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080}, true},
		{"127.0.0.1:8080", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8081}, false},
		{"127.0.0.2:8080", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080}, false},
		{":8080", &net.TCPAddr{IP: net.IPv6unspecified, Port: 8080}, true},
		{"0.0.0.0:8080", &net.TCPAddr{IP: net.IPv6unspecified, Port: 8080}, true},
		{":8080", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080}, false},
		{"[::1]:8080", &net.TCPAddr{IP: net.IPv6loopback, Port: 8080}, true},
		{"localhost:8080", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080}, false},
	} {
		if got := sameTCP(tc.listen, tc.addr); got != tc.want {
			t.Errorf("sameTCP(%q, %v) = %v, want %v", tc.listen, tc.addr, got, tc.want)
		}
	}
}
