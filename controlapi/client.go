package controlapi

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
	"github.com/vagent-dev/vagent/internal/jsonreq"
	"github.com/vagent-dev/vagent/supervisor"
)

// probeTimeout bounds the connect that decides whether vagentd runs.
const probeTimeout = time.Second

// Client talks to vagentd over its control socket.
type Client struct {
	cfg    *config.Config
	socket string
	hc     *http.Client
}

// Error is an error vagentd answered with, or a failure to reach or hear
// from a vagentd that is there.
type Error struct {
	Status  int
	Message string
	Type    string
	Code    string
	// Lost is set when vagentd closed the connection before it answered:
	// it crashed, was killed or restarted during the call.
	Lost bool
}

func (e *Error) Error() string {
	if e.Lost {
		return "vagentd closed the connection mid-call (crashed or restarted?): " + e.Message
	}
	return "vagentd: " + e.Message
}

// Reach returns a client of vagentd's control socket when vagentd answers
// there; nil (and no error) when the socket does not exist or nobody
// listens on it (vagentd is not running). Any other failure, such as a
// socket this user may not open, is an error: going around a running
// vagentd would make two arbiters.
func Reach(ctx context.Context, cfg *config.Config) (*Client, error) {
	path := cfg.Gateway.ControlSocket
	if path == "" {
		return nil, nil
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		return nil, nil
	}
	d := net.Dialer{Timeout: probeTimeout}
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
			return nil, nil // a socket left by a vagentd that is gone
		}
		if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
			group := cfg.Gateway.ControlGroup
			if group == "" {
				group = "vagent"
			}
			return nil, &Error{Message: fmt.Sprintf("control socket %s: permission denied: run as root or as a member of group %s", path, group)}
		}
		return nil, &Error{Message: fmt.Sprintf("control socket %s: %v", path, err)}
	}
	c.Close()
	return &Client{
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

// Status returns vagentd's view of every agent, and the answer as sent.
func (c *Client) Status(ctx context.Context) ([]AgentState, json.RawMessage, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Supervisor.DBusTimeout.Duration+10*time.Second)
	defer cancel()
	var raw json.RawMessage
	if err := c.call(ctx, http.MethodGet, PathStatus, nil, &raw); err != nil {
		return nil, nil, err
	}
	var st []AgentState
	if err := json.Unmarshal(raw, &st); err != nil {
		return nil, nil, &Error{Message: fmt.Sprintf("status: malformed answer: %v", err)}
	}
	return st, raw, nil
}

// Switch asks vagentd to make agent run, evicting (and draining) what does
// not fit beside it.
func (c *Client) Switch(ctx context.Context, agent string) (*supervisor.Result, error) {
	s := c.cfg.Supervisor
	g := c.cfg.Gateway
	bound := g.DrainTimeout.Duration + s.ReleaseTimeout.Duration + c.cfg.Units.StopTimeout.Duration +
		s.HealthTimeout.Duration + time.Minute
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	var res supervisor.Result
	if err := c.call(ctx, http.MethodPost, PathSwitch, Request{Agent: agent}, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// Stop asks vagentd to drain agent and stop it.
func (c *Client) Stop(ctx context.Context, agent string) error {
	bound := c.cfg.Gateway.DrainTimeout.Duration + c.cfg.Supervisor.ReleaseTimeout.Duration +
		c.cfg.Units.StopTimeout.Duration + time.Minute
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	return c.call(ctx, http.MethodPost, PathStop, Request{Agent: agent}, nil)
}

// lostMidCall reports errors that mean vagentd went away during a call
// it had accepted: the connection ended or was reset before the answer.
func lostMidCall(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func (c *Client) call(ctx context.Context, method, path string, body, out any) error {
	req, err := jsonreq.New(ctx, method, "http://vagentd"+path, body)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if lostMidCall(err) {
			return &Error{Lost: true, Message: fmt.Sprintf("%s %s over %s; see journalctl -u vagentd", method, path, c.socket)}
		}
		return &Error{Message: fmt.Sprintf("%s %s over %s: %v", method, path, c.socket, err)}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		if lostMidCall(err) {
			return &Error{Lost: true, Status: resp.StatusCode, Message: fmt.Sprintf("%s %s over %s, while answering; see journalctl -u vagentd", method, path, c.socket)}
		}
		return &Error{Status: resp.StatusCode, Message: fmt.Sprintf("%s %s: reading the answer: %v", method, path, err)}
	}
	if resp.StatusCode/100 != 2 {
		return decodeError(method, path, resp, data)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return &Error{Status: resp.StatusCode, Message: fmt.Sprintf("%s %s: malformed answer: %v", method, path, err)}
	}
	return nil
}

// decodeError is vagentd's OpenAI-shaped error answer data as an Error.
func decodeError(method, path string, resp *http.Response, data []byte) error {
	var e struct {
		Error struct {
			Message string `json:"message"`
			Type    string `json:"type"`
			Code    any    `json:"code"`
		} `json:"error"`
	}
	de := &Error{Status: resp.StatusCode}
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
