package sandbox

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
)

// DialBus opens a private connection to the sandbox's system bus from
// outside, authenticated with EXTERNAL and registered with Hello. ctx bounds
// the connection's whole life (godbus closes it when ctx is done), so pass a
// context that lives as long as the connection is used. The caller closes it.
func (s *Sandbox) DialBus(ctx context.Context) (*dbus.Conn, error) {
	conn, err := dbus.Dial(s.BusAddress(), dbus.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("dial sandbox bus: %w", err)
	}
	if err := conn.Auth([]dbus.Auth{dbus.AuthExternal(strconv.Itoa(os.Getuid()))}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("auth on sandbox bus: %w", err)
	}
	if err := conn.Hello(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("hello on sandbox bus: %w", err)
	}
	return conn, nil
}

// Systemd returns a go-systemd connection to the sandbox's systemd over its
// system bus, as vagent's supervisor would get on a real host. ctx bounds
// the connection's life, as for DialBus. The caller closes it.
func (s *Sandbox) Systemd(ctx context.Context) (*sddbus.Conn, error) {
	return sddbus.NewConnection(func() (*dbus.Conn, error) { return s.DialBus(ctx) })
}

// systemState reads org.freedesktop.systemd1.Manager.SystemState.
func (s *Sandbox) systemState(ctx context.Context) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := s.DialBus(cctx)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	var v dbus.Variant
	err = conn.Object("org.freedesktop.systemd1", "/org/freedesktop/systemd1").
		CallWithContext(cctx, "org.freedesktop.DBus.Properties.Get", 0, "org.freedesktop.systemd1.Manager", "SystemState").
		Store(&v)
	if err != nil {
		return "", fmt.Errorf("get SystemState: %w", err)
	}
	state, ok := v.Value().(string)
	if !ok {
		return "", fmt.Errorf("SystemState is %s, not a string", v.Signature())
	}
	return state, nil
}
