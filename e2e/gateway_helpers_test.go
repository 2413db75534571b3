package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/vagent-dev/vagent/e2e/sandbox"
)

// gwHost is a host (see newHost) whose agents are applied and which runs
// vagentd as vagentd.service, installed from packaging/vagentd.service with
// only its binary path, its configuration and its restart delay changed.
type gwHost struct {
	*host
	port int
	base string // http://127.0.0.1:PORT
	sock string // the control socket
	hc   *http.Client
}

// gatewayUnit is the unit name vagentd runs as.
const gatewayUnit = sandbox.GatewayUnit

// newGatewayHost boots a sandbox with the shipped agents on the simulator,
// applies them, sets gateway settings (keys "gateway.x", merged over a free
// listen port and a control socket under the sandbox's /run), installs and
// starts vagentd, and waits until its /healthz answers.
func newGatewayHost(tb testing.TB, set map[string]any) *gwHost {
	tb.Helper()
	return newGatewayHostOn(tb, newHost(tb), set)
}

// newGatewayHostOn is newGatewayHost on h.
func newGatewayHostOn(tb testing.TB, h *host, set map[string]any) *gwHost {
	tb.Helper()
	ctx := tb.Context()
	if err := h.s.Build(ctx, "./cmd/vagentd"); err != nil {
		tb.Fatal(err)
	}
	port, err := sandbox.FreePort()
	if err != nil {
		tb.Fatal(err)
	}
	g := &gwHost{
		host: h,
		port: port,
		base: fmt.Sprintf("http://127.0.0.1:%d", port),
		sock: h.s.Path("run/vagent/vagentd.sock"),
		hc: &http.Client{Transport: &http.Transport{
			MaxIdleConns:        256,
			MaxIdleConnsPerHost: 256,
			IdleConnTimeout:     30 * time.Second,
		}},
	}
	all := map[string]any{
		"gateway.listen":         fmt.Sprintf("127.0.0.1:%d", port),
		"gateway.control_socket": g.sock,
	}
	for k, v := range set {
		all[k] = v
	}
	if err := h.s.EditConfig("vagent.toml", all); err != nil {
		tb.Fatal(err)
	}
	h.mustCtl("apply")
	g.installUnit()
	if _, err := h.s.Systemctl(ctx, "start", gatewayUnit); err != nil {
		tb.Fatalf("start vagentd: %v\n%s", err, h.s.Journal(ctx, gatewayUnit))
	}
	g.waitHealthy(10 * time.Second)
	tb.Cleanup(func() {
		if tb.Failed() {
			c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			tb.Logf("vagentd journal (last lines):\n%s", h.s.Journal(c, gatewayUnit, "-n", "80"))
		}
	})
	return g
}

// installUnit writes the shipped vagentd.service into the sandbox with
// ExecStart pointing at the built binary, the sandbox's configuration and a
// short restart delay.
func (g *gwHost) installUnit() {
	g.t.Helper()
	if err := g.s.InstallGateway(g.t.Context(), "../packaging/vagentd.service", g.conf,
		[2]string{"RestartSec=1s\n", "RestartSec=100ms\n"}); err != nil {
		g.t.Fatal(err)
	}
}

// restartGateway restarts vagentd (after a configuration change) and waits
// until it serves.
func (g *gwHost) restartGateway() {
	g.t.Helper()
	if _, err := g.s.Systemctl(g.t.Context(), "restart", gatewayUnit); err != nil {
		g.t.Fatalf("restart vagentd: %v\n%s", err, g.s.Journal(g.t.Context(), gatewayUnit, "-n", "40"))
	}
	g.waitHealthy(10 * time.Second)
}

func (g *gwHost) waitHealthy(bound time.Duration) {
	g.t.Helper()
	deadline := time.Now().Add(bound)
	for {
		code, _ := g.get("/healthz", "")
		if code == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("vagentd /healthz: %d after %s\n%s", code, bound, g.s.Journal(g.t.Context(), gatewayUnit, "-n", "40"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// get fetches path from the gateway with an optional key; the status is 0
// when the request failed.
func (g *gwHost) get(path, key string) (int, []byte) {
	ctx, cancel := context.WithTimeout(g.t.Context(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, g.base+path, nil)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := g.hc.Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// post sends a JSON body to path on the gateway.
func (g *gwHost) post(ctx context.Context, path, key string, body any) (*http.Response, []byte, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, g.base+path, bytes.NewReader(b))
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := g.hc.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp, out, err
}

// chatBody is a small chat completion for agent.
func chatBody(agent string, maxTokens int, stream bool) map[string]any {
	return map[string]any{
		"model":      agent,
		"messages":   []map[string]string{{"role": "user", "content": "Say hello."}},
		"max_tokens": maxTokens,
		"stream":     stream,
	}
}

// sdk is an OpenAI Go SDK client of the gateway, without retries so that
// every error shows.
func (g *gwHost) sdk(key string) openai.Client {
	if key == "" {
		key = "no-key"
	}
	return openai.NewClient(
		option.WithBaseURL(g.base+"/v1/"),
		option.WithAPIKey(key),
		option.WithMaxRetries(0),
		option.WithHTTPClient(g.hc),
	)
}

// metric sums every sample of the counter or gauge name on /metrics.
func (g *gwHost) metric(name string) (float64, bool) {
	g.t.Helper()
	code, body := g.get("/metrics", "")
	if code != http.StatusOK {
		g.t.Fatalf("/metrics: %d %s", code, body)
	}
	return sumMetric(body, name)
}

// sumMetric sums the samples of name in a Prometheus text exposition.
func sumMetric(body []byte, name string) (float64, bool) {
	var sum float64
	found := false
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		metric, rest := line, ""
		if i := strings.IndexByte(line, '{'); i >= 0 {
			j := strings.LastIndexByte(line, '}')
			if j < i {
				continue
			}
			metric, rest = line[:i], line[j+1:]
		} else if f := strings.Fields(line); len(f) >= 2 {
			metric, rest = f[0], strings.Join(f[1:], " ")
		}
		if metric != name {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			sum += v
			found = true
		}
	}
	return sum, found
}

// unitProps reads ActiveState, MainPID and the time the unit last became
// active from systemd over D-Bus.
type unitProps struct {
	ActiveState string
	MainPID     int
	ActiveEnter time.Time
}

func (g *gwHost) unitProps(ctx context.Context, unit string) (unitProps, error) {
	conn, err := g.s.Systemd(ctx)
	if err != nil {
		return unitProps{}, err
	}
	defer conn.Close()
	return readUnitProps(ctx, conn, unit)
}

func readUnitProps(ctx context.Context, conn *sddbus.Conn, unit string) (unitProps, error) {
	var p unitProps
	props, err := conn.GetUnitPropertiesContext(ctx, unit)
	if err != nil {
		return p, err
	}
	p.ActiveState, _ = props["ActiveState"].(string)
	if us, ok := props["ActiveEnterTimestamp"].(uint64); ok && us > 0 {
		p.ActiveEnter = time.UnixMicro(int64(us))
	}
	pid, err := conn.GetUnitTypePropertyContext(ctx, unit, "Service", "MainPID")
	if err != nil {
		return p, err
	}
	if v, ok := pid.Value.Value().(uint32); ok {
		p.MainPID = int(v)
	}
	return p, nil
}

// gatewayJournal returns vagentd's journal as bare messages.
func (g *gwHost) gatewayJournal() string {
	ctx, cancel := context.WithTimeout(g.t.Context(), 20*time.Second)
	defer cancel()
	return g.s.Journal(ctx, gatewayUnit)
}

// vmHWM reads the peak resident set of a process of the sandbox (its PID
// as systemd reports it) in bytes.
func (g *gwHost) vmHWM(pid int) (uint64, error) {
	out, errOut, code, err := g.s.Exec(g.t.Context(), "cat", fmt.Sprintf("/proc/%d/status", pid))
	if err != nil || code != 0 {
		return 0, fmt.Errorf("read /proc/%d/status: %v %s", pid, err, errOut)
	}
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(v)
			kb, err := strconv.ParseUint(f[0], 10, 64)
			if err != nil {
				return 0, err
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
}
