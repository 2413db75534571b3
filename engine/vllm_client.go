package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/vagent-dev/vagent/internal/jsonreq"
)

// probeTimeout bounds one health probe or is_sleeping question: a live
// engine answers them in microseconds.
const probeTimeout = 2 * time.Second

// vllmClient drives one vLLM engine over its own transport.
type vllmClient struct {
	ep  Endpoint
	key string
	// probe answers health and is_sleeping within probeTimeout; ctl makes
	// the control calls, bounded by their context alone (a real engine's
	// wake or reload takes seconds).
	probe, ctl *http.Client
}

func newVLLMClient(ep Endpoint, key string) *vllmClient {
	t := ep.Transport()
	return &vllmClient{ep: ep, key: key,
		probe: &http.Client{Transport: t, Timeout: probeTimeout},
		ctl:   &http.Client{Transport: t}}
}

// Healthy is GET /health answered 200 (vLLM answers it while asleep too).
func (c *vllmClient) Healthy(ctx context.Context) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.ep.URL(routeHealth), nil)
	if err != nil {
		return false
	}
	resp, err := c.probe.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Sleep is POST /sleep?level=N (dev mode).
func (c *vllmClient) Sleep(ctx context.Context, level int) error {
	return c.call(ctx, http.MethodPost, routeSleep+"?level="+strconv.Itoa(level), nil, nil)
}

// Wake is POST /wake_up (dev mode).
func (c *vllmClient) Wake(ctx context.Context) error {
	return c.call(ctx, http.MethodPost, routeWake, nil, nil)
}

// IsSleeping is GET /is_sleeping (dev mode).
func (c *vllmClient) IsSleeping(ctx context.Context) (bool, error) {
	const op = "GET " + routeIsSleeping
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.ep.URL(routeIsSleeping), nil)
	if err != nil {
		return false, err
	}
	c.auth(req)
	resp, err := c.probe.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, &HTTPError{Op: op, Status: resp.StatusCode}
	}
	var v struct {
		IsSleeping bool `json:"is_sleeping"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&v); err != nil {
		return false, fmt.Errorf("%s: %w", op, err)
	}
	return v.IsSleeping, nil
}

// Reload is POST /collective_rpc {"method": "reload_weights"}, then POST
// /reset_prefix_cache: prefix-cache entries computed with the old weights
// must not be reused.
func (c *vllmClient) Reload(ctx context.Context) error {
	if err := c.call(ctx, http.MethodPost, routeCollectiveRPC, map[string]any{"method": "reload_weights"}, nil); err != nil {
		return err
	}
	return c.call(ctx, http.MethodPost, routeResetPrefixCache, nil, nil)
}

// WarmUp is a 1-token completion of "Hi" at temperature 0.
func (c *vllmClient) WarmUp(ctx context.Context, model string) error {
	return c.call(ctx, http.MethodPost, routeCompletions,
		map[string]any{"model": model, "prompt": "Hi", "max_tokens": 1, "temperature": 0}, nil)
}

func (c *vllmClient) auth(req *http.Request) {
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
}

// call sends one request with the key when known, and fails unless the
// engine answers 200; out, when set, receives the JSON answer.
func (c *vllmClient) call(ctx context.Context, method, path string, body, out any) error {
	req, err := jsonreq.New(ctx, method, c.ep.URL(path), body)
	if err != nil {
		return err
	}
	c.auth(req)
	op := method + " " + path
	resp, err := c.ctl.Do(req)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		msg := strings.TrimSpace(string(data))
		if len(msg) > 300 {
			msg = msg[:300] + "..."
		}
		return &HTTPError{Op: op, Status: resp.StatusCode, Body: msg}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
	}
	return nil
}

// IsUnauthorized reports whether err is an engine's 401: the key sent was
// not the engine's (or none was readable).
func IsUnauthorized(err error) bool {
	var he *HTTPError
	return errors.As(err, &he) && he.Status == http.StatusUnauthorized
}
