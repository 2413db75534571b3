package units

import (
	"net"
	"strings"

	"github.com/vagent-dev/vagent/config"
)

// SocketName is the socket unit that holds vagentd's listening sockets (the
// main endpoint, every agent's own listener and the control socket) for it:
// while vagentd restarts, crashes or is upgraded, systemd keeps them open and
// new connections wait in the kernel's backlog for the next process instead
// of being refused.
const SocketName = "vagentd.socket"

// SocketFDName is the FileDescriptorName= of every socket SocketName holds.
// systemd names all descriptors of one socket unit alike, so the name only
// tells vagentd that a descriptor is its own; which endpoint each one is,
// vagentd reads from the address it is bound to (the configuration is the
// one place that says which address is what).
const SocketFDName = "vagentd"

// VendorSocket is where the package installs the socket unit rendered from
// its own configuration. As for the template, the unit directory holds a
// copy only when this host's configuration renders a different one.
const VendorSocket = "/usr/lib/systemd/system/" + SocketName

// VendorPath is where the package installs the unit file name when it does
// (the template and the socket unit), else "": there the package's copy
// counts, when the unit directory has none.
func VendorPath(name string) string {
	switch name {
	case TemplateName:
		return VendorTemplate
	case SocketName:
		return VendorSocket
	}
	return ""
}

// socketHeader starts the socket unit, so that Write can tell a copy it
// wrote from an admin's own vagentd.socket.
const socketHeader = "# vagentd's sockets, written by vagent"

// SocketAddress is the ListenStream= form of a listen address from the
// configuration (host:port), and false when systemd cannot hold it: a host
// name, which ListenStream= does not resolve (vagentd then opens that
// listener itself). An empty host (every interface) becomes the bare port,
// which systemd, like Go, binds on every IPv6 and IPv4 address.
func SocketAddress(listen string) (string, bool) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", false
	}
	if host == "" {
		return port, true
	}
	ip, _, _ := strings.Cut(host, "%") // an IPv6 zone
	switch parsed := net.ParseIP(ip); {
	case parsed == nil:
		return "", false
	case parsed.To4() == nil:
		return "[" + host + "]:" + port, true
	default:
		return host + ":" + port, true
	}
}

// socket renders vagentd.socket: one ListenStream= per address vagentd
// serves, all from the configuration.
func (r *renderer) socket() []byte {
	c := r.cfg
	var u unitFile
	u.line("%s from vagent.toml and the agent files:", socketHeader)
	u.line("# edit those and run vagentctl apply; a running socket listens on a new")
	u.line("# address only after systemctl restart vagentd.socket (vagentd restarts")
	u.line("# with it). systemd holds these sockets while vagentd itself restarts, is")
	u.line("# killed or is upgraded: new connections wait in the backlog for the next")
	u.line("# vagentd instead of being refused.")
	u.line("")
	u.line("[Unit]")
	u.line("Description=vagent gateway sockets: the endpoint, the agents' listeners, the control socket")
	u.line("Documentation=%s", Documentation)
	u.line("")
	u.line("[Socket]")
	tcp := func(listen, what, field string, fail func(string, string, ...any)) {
		if listen == "" {
			return
		}
		addr, ok := SocketAddress(listen)
		if !ok {
			u.line("# %s: %s is not an IP address and port, which ListenStream= needs:", what, commentText(listen))
			u.line("# vagentd listens on it itself, and refuses connections there while it restarts.")
			return
		}
		v, err := plainValue(addr)
		if err != nil {
			fail(field, "%v", err)
			return
		}
		u.line("# %s", what)
		u.line("ListenStream=%s", v)
	}
	tcp(c.Gateway.Listen, "gateway.listen", "gateway.listen", r.mainErr)
	for _, a := range c.Agents {
		tcp(a.Listen, "listen of agent "+commentText(a.Name), "listen", func(field, format string, args ...any) {
			r.agentErr(a, field, format, args...)
		})
	}
	u.line("# gateway.control_socket, for vagentctl: mode 0660, group gateway.control_group")
	if v, err := plainValue(c.Gateway.ControlSocket); err != nil {
		r.mainErr("gateway.control_socket", "%v", err)
	} else if err := config.CheckPath(c.Gateway.ControlSocket); err != nil {
		r.mainErr("gateway.control_socket", "%v", err)
	} else {
		u.line("ListenStream=%s", v)
	}
	u.line("SocketMode=0660")
	if c.Gateway.ControlGroup != "" {
		if v, err := plainValue(c.Gateway.ControlGroup); err != nil {
			r.mainErr("gateway.control_group", "%v", err)
		} else {
			u.line("SocketGroup=%s", v)
		}
	}
	// The control socket's directory, if systemd makes it, as tmpfiles.d
	// makes /run/vagent: world-searchable, so that vagentctl can tell "not a
	// member of the group" from "vagentd not running".
	u.line("DirectoryMode=0755")
	// Sockets start before the network is up: a gateway.listen on this
	// host's LAN address must bind all the same (vagentd alone waited for
	// network-online.target).
	u.line("FreeBind=yes")
	u.line("RemoveOnStop=yes")
	u.line("FileDescriptorName=%s", SocketFDName)
	// What waits during a restart: as many connections as vagentd would
	// serve at once (the kernel caps it at net.core.somaxconn).
	u.line("Backlog=%d", max(c.Gateway.MaxConnections, 1))
	u.line("")
	u.line("[Install]")
	u.line("WantedBy=sockets.target")
	u.checkLines(func(format string, args ...any) { r.mainErr("", "vagentd.socket: "+format, args...) })
	return []byte(u.b.String())
}
