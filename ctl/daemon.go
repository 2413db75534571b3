package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/supervisor"
)

// vagentd is the one arbiter of agents while it runs: it knows which
// requests are in flight and drains an agent before stopping it. So
// vagentctl sends what would cut requests through vagentd's control socket
// when vagentd answers there, and drives systemd over D-Bus itself only
// when vagentd is not running:
//
//	status   GET  /vagent/v1/status  (adds the gateway's view: state, requests in flight, queued)
//	switch   POST /vagent/v1/switch  (vagentd drains the agents it evicts)
//	stop     POST /vagent/v1/stop    (vagentd stops routing to the agent and drains it first)
//	restart  POST /vagent/v1/stop, then a start here as below
//	start    here over D-Bus: a start never evicts, so it cannot cut a
//	         request, and the per-GPU transition lock orders it against
//	         vagentd's own switches
//
// apply, logs, gpu and test never go through vagentd.

// daemonProbeTimeout bounds the connect that decides whether vagentd runs.
const daemonProbeTimeout = time.Second

// daemonClient talks to vagentd over its control socket.
type daemonClient struct {
	cfg    *config.Config
	socket string
	hc     *http.Client
}

// daemonError is an error vagentd answered with, or a failure to reach a
// vagentd that is there.
type daemonError struct {
	Status  int
	Message string
	Type    string
	Code    string
}

func (e *daemonError) Error() string { return "vagentd: " + e.Message }

// reachDaemon returns a client of vagentd's control socket when vagentd
// answers there; nil (and no error) when the socket does not exist or
// nobody listens on it (vagentd is not running: use D-Bus). Any other
// failure, such as a socket this user may not open, is an error: going
// around a running vagentd would make two arbiters.
func reachDaemon(ctx context.Context, cfg *config.Config) (*daemonClient, error) {
	path := cfg.Gateway.ControlSocket
	if path == "" {
		return nil, nil
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		return nil, nil
	}
	d := net.Dialer{Timeout: daemonProbeTimeout}
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
			return nil, nil // a socket left by a vagentd that is gone
		}
		if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
			return nil, &daemonError{Message: fmt.Sprintf("control socket %s: permission denied: run as root or as a member of group %s",
				path, orDefault(cfg.Gateway.ControlGroup, "vagent"))}
		}
		return nil, &daemonError{Message: fmt.Sprintf("control socket %s: %v", path, err)}
	}
	c.Close()
	return &daemonClient{
		cfg:    cfg,
		socket: path,
		hc: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return d.DialContext(ctx, "unix", path)
			},
			DisableKeepAlives: true,
		}},
	}, nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// daemonStatus is one agent as vagentd reports it: what systemd and the
// GPU say plus the gateway's own view.
type daemonStatus struct {
	supervisor.AgentStatus
	// State is the gateway's: running, loading, stopped, draining, ...
	State    string    `json:"state"`
	InFlight int       `json:"in_flight"`
	Queued   int       `json:"queued"`
	LastUsed time.Time `json:"last_used,omitzero"`
	Pinned   bool      `json:"pinned"`
}

// Status returns vagentd's view of every agent, and the answer as sent.
func (c *daemonClient) Status(ctx context.Context) ([]daemonStatus, json.RawMessage, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Supervisor.DBusTimeout.Duration+10*time.Second)
	defer cancel()
	var raw json.RawMessage
	if err := c.call(ctx, http.MethodGet, "/vagent/v1/status", nil, &raw); err != nil {
		return nil, nil, err
	}
	var st []daemonStatus
	if err := json.Unmarshal(raw, &st); err != nil {
		return nil, nil, &daemonError{Message: fmt.Sprintf("status: malformed answer: %v", err)}
	}
	return st, raw, nil
}

// Switch asks vagentd to make agent run, evicting (and draining) what does
// not fit beside it.
func (c *daemonClient) Switch(ctx context.Context, agent string) (*supervisor.Result, error) {
	s := c.cfg.Supervisor
	g := c.cfg.Gateway
	bound := g.DrainTimeout.Duration + s.ReleaseTimeout.Duration + c.cfg.Units.StopTimeout.Duration +
		s.HealthTimeout.Duration + time.Minute
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	var res supervisor.Result
	if err := c.call(ctx, http.MethodPost, "/vagent/v1/switch", map[string]string{"agent": agent}, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// Stop asks vagentd to drain agent and stop it.
func (c *daemonClient) Stop(ctx context.Context, agent string) error {
	bound := c.cfg.Gateway.DrainTimeout.Duration + c.cfg.Supervisor.ReleaseTimeout.Duration +
		c.cfg.Units.StopTimeout.Duration + time.Minute
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	return c.call(ctx, http.MethodPost, "/vagent/v1/stop", map[string]string{"agent": agent}, nil)
}

func (c *daemonClient) call(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://vagentd"+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return &daemonError{Message: fmt.Sprintf("%s %s over %s: %v", method, path, c.socket, err)}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return &daemonError{Status: resp.StatusCode, Message: fmt.Sprintf("%s %s: reading the answer: %v", method, path, err)}
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error struct {
				Message string `json:"message"`
				Type    string `json:"type"`
				Code    any    `json:"code"`
			} `json:"error"`
		}
		de := &daemonError{Status: resp.StatusCode}
		if json.Unmarshal(data, &e) == nil && e.Error.Message != "" {
			de.Message, de.Type = e.Error.Message, e.Error.Type
			if e.Error.Code != nil {
				de.Code = fmt.Sprint(e.Error.Code)
			}
		} else {
			de.Message = fmt.Sprintf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(data))
		}
		return de
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return &daemonError{Status: resp.StatusCode, Message: fmt.Sprintf("%s %s: malformed answer: %v", method, path, err)}
	}
	return nil
}
