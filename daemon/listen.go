package daemon

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/units"
)

// endpoints are vagentd's listening sockets.
type endpoints struct {
	api    net.Listener
	ctl    net.Listener
	agents map[string]net.Listener // by agent name, for agents with listen set
	// stray were handed over by systemd but no configuration names them.
	stray []net.Listener
}

// close closes every listener (on a failed start; a running vagentd closes
// them by shutting its servers down).
func (e *endpoints) close() {
	for _, ln := range append([]net.Listener{e.api, e.ctl}, e.stray...) {
		if ln != nil {
			ln.Close()
		}
	}
	for _, ln := range e.agents {
		ln.Close()
	}
}

// listen returns the listeners of every address in cfg. It takes them from
// files, the sockets systemd handed over (socket activation: vagentd.socket,
// whose descriptors are all named units.SocketFDName), matching each by the
// address it is bound to: the configuration is the one place that says which
// address is the endpoint, which is an agent's and which is the control
// socket. systemd keeps its copies open while vagentd restarts, so that new
// connections wait in the kernel's backlog instead of being refused.
//
// What cfg names but systemd did not hand over (the configuration changed
// since vagentd.socket started, or vagentd runs without it) vagentd opens
// itself, with a warning when it was socket-activated: there, connections
// are refused while it restarts. A socket handed over that cfg no longer
// names is kept, in stray, to be answered with an error: closed, its
// connections would wait in systemd's backlog for nobody.
func listen(cfg *config.Config, files []*os.File, log *slog.Logger) (_ *endpoints, err error) {
	e := &endpoints{agents: map[string]net.Listener{}}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	var pool []net.Listener
	for _, f := range files {
		if f.Name() != units.SocketFDName {
			log.Warn("closing a socket handed over under another name than vagentd.socket's",
				"name", f.Name(), "want", units.SocketFDName)
			f.Close()
			continue
		}
		ln, err := net.FileListener(f)
		f.Close() // FileListener holds its own copy
		if err != nil {
			log.Warn("closing a descriptor handed over that is no listening socket", "err", err)
			continue
		}
		pool = append(pool, ln)
	}
	activated := len(pool) > 0
	take := func(match func(net.Addr) bool) net.Listener {
		for i, ln := range pool {
			if match(ln.Addr()) {
				pool = append(pool[:i], pool[i+1:]...)
				return ln
			}
		}
		return nil
	}
	// own opens a TCP listener systemd did not hand over.
	own := func(addr, field string) (net.Listener, error) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, err
		}
		switch _, holdable := units.SocketAddress(addr); {
		case !activated:
		case !holdable:
			log.Info("listening without vagentd.socket on a host name, which systemd cannot hold (refused while vagentd restarts)",
				"listen", addr, "field", field)
		default:
			log.Warn("vagentd.socket did not hand this address over: listening without it until vagentctl apply and systemctl restart vagentd.socket",
				"listen", addr, "field", field)
		}
		return ln, nil
	}

	if e.api = take(func(a net.Addr) bool { return sameTCP(cfg.Gateway.Listen, a) }); e.api == nil {
		if e.api, err = own(cfg.Gateway.Listen, "gateway.listen"); err != nil {
			return nil, fmt.Errorf("listen on gateway.listen %s: %w", cfg.Gateway.Listen, err)
		}
	}
	for _, a := range cfg.Agents {
		if a.Listen == "" {
			continue
		}
		ln := take(func(addr net.Addr) bool { return sameTCP(a.Listen, addr) })
		if ln == nil {
			if ln, err = own(a.Listen, "listen of agent "+a.Name); err != nil {
				return nil, fmt.Errorf("listen on %s's listen %s (%s): %w", a.Name, a.Listen, a.File, err)
			}
		}
		e.agents[a.Name] = ln
	}
	path := cfg.Gateway.ControlSocket
	sameUnix := func(a net.Addr) bool {
		return a.Network() == "unix" && filepath.Clean(a.String()) == filepath.Clean(path)
	}
	if e.ctl = take(sameUnix); e.ctl != nil {
		checkControlSocket(path, cfg.Gateway.ControlGroup, log)
	} else {
		if e.ctl, err = ListenControl(path, cfg.Gateway.ControlGroup); err != nil {
			return nil, err
		}
		if activated {
			log.Warn("vagentd.socket did not hand the control socket over: listening without it until vagentctl apply and systemctl restart vagentd.socket",
				"control_socket", path)
		}
	}
	for _, ln := range pool {
		log.Warn("vagentd.socket holds an address no configuration names: answering it with an error until vagentctl apply and systemctl restart vagentd.socket",
			"address", ln.Addr().String())
	}
	e.stray = pool
	if activated {
		log.Info("listening on the sockets vagentd.socket handed over", "handed_over", len(files)-len(pool))
	}
	return e, nil
}

// sameTCP reports whether a, a listener's address, is the configured listen
// address (host:port; an empty host is every interface).
func sameTCP(listen string, a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return false
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if p, err := strconv.Atoi(port); err != nil || p != ta.Port {
		return false
	}
	if host == "" {
		return ta.IP.IsUnspecified()
	}
	host, zone, _ := strings.Cut(host, "%")
	ip := net.ParseIP(host)
	switch {
	case ip == nil:
		return false // a host name: systemd never holds it
	case ip.IsUnspecified():
		return ta.IP.IsUnspecified()
	}
	return ip.Equal(ta.IP) && zone == ta.Zone
}

// checkControlSocket warns when the control socket systemd made does not
// have the mode and group the configuration asks for (vagentd.socket renders
// them from it, so only a socket unit older than the configuration differs):
// vagentd, not root, cannot change them itself.
func checkControlSocket(path, group string, log *slog.Logger) {
	fi, err := os.Stat(path)
	if err != nil {
		log.Warn("control socket from vagentd.socket", "control_socket", path, "err", err)
		return
	}
	why := ""
	if fi.Mode().Perm() != 0o660 {
		why = fmt.Sprintf("mode %04o, not 0660", fi.Mode().Perm())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && group != "" {
		if g, err := user.LookupGroup(group); err == nil && g.Gid != strconv.Itoa(int(st.Gid)) {
			why = strings.TrimPrefix(why+fmt.Sprintf("; group id %d, not %s's %s", st.Gid, group, g.Gid), "; ")
		}
	}
	if why != "" {
		log.Warn("the control socket vagentd.socket made is not as configured ("+why+
			"): vagentctl apply, then systemctl restart vagentd.socket", "control_socket", path, "control_group", group)
	}
}
