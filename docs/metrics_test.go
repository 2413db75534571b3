package docs

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/vagent-dev/vagent/gateway"
	"github.com/vagent-dev/vagent/work"
)

// exported is every vagent_* metric family a gateway registers, with its
// type and label names, as vagentd serves them on /metrics: a gateway with
// a fake supervisor and GPU, after one streamed request through a
// simulated engine (families with labels appear once they have a series).
func exported(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	port := freePort(t)
	cfgPath := installConfig(t, "configs", nil, map[string]map[string]any{"po": {"port": port}})
	cfg := loadConfig(t, cfgPath)
	simServe(t, map[string]string{"VLLM_SIM_LEDGER": filepath.Join(t.TempDir(), "ledger.json"),
		"VLLM_SIM_LOAD_SECONDS": "0", "VLLM_SIM_TTFT_MS": "0", "VLLM_SIM_TOKENS_PER_SECOND": "1000"},
		model7B, "--port", itoa(port), "--served-model-name", "po", "--max-model-len", "32768")
	reg := prometheus.NewRegistry()
	// The work executor's metrics (vagent_batch_*, vagent_pipeline_*), as
	// vagentd registers them beside the gateway's.
	st, err := work.Open(context.Background(), t.TempDir(), work.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	work.NewExecutor(st, work.Target{}, work.ExecOptions{Registry: reg})
	v := startVagentd(t, cfg, gateway.Options{Switcher: &fakeSwitcher{cfg: cfg}, Registry: reg,
		GPU: fakeGPU{total: 16376 << 20, free: 16000 << 20}})
	code, _, body := v.post(t, "/v1/chat/completions", "", `{"model": "po", "stream": true, "stream_options": {"include_usage": true}, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi."}]}`)
	if code != http.StatusOK || !strings.Contains(body, "data: [DONE]") {
		t.Fatalf("request through the gateway: %d\n%s", code, body)
	}
	// The request is counted when its handler returns, which may be just
	// after the client read the end of the stream.
	deadline := time.Now().Add(5 * time.Second)
	for {
		fams, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]*dto.MetricFamily{}
		for _, f := range fams {
			if strings.HasPrefix(f.GetName(), "vagent_") {
				out[f.GetName()] = f
			}
		}
		if (out["vagent_requests_total"] != nil && out["vagent_switches_total"] != nil) || time.Now().After(deadline) {
			return out
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func labelNames(f *dto.MetricFamily) []string {
	var out []string
	if len(f.Metric) > 0 {
		for _, l := range f.Metric[0].Label {
			out = append(out, l.GetName())
		}
	}
	sort.Strings(out)
	return out
}

// documentedMetric is one row of the metrics table of operations.md:
// | `vagent_x` | type | `label`, `label` | meaning |
type documentedMetric struct {
	name, typ string
	labels    []string
}

var metricRowRE = regexp.MustCompile("^\\| `(vagent_[a-z_]+)` \\| ([a-z]+) \\| ([^|]*) \\|")

func documentedMetrics(t *testing.T) map[string]documentedMetric {
	t.Helper()
	data, err := os.ReadFile("operations.md")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]documentedMetric{}
	for _, line := range strings.Split(string(data), "\n") {
		m := metricRowRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		d := documentedMetric{name: m[1], typ: m[2]}
		for _, l := range strings.Split(m[3], ",") {
			if l = strings.Trim(strings.TrimSpace(l), "`"); l != "" && l != "none" {
				d.labels = append(d.labels, l)
			}
		}
		sort.Strings(d.labels)
		out[d.name] = d
	}
	return out
}

// TestMetricsTableIsWhatTheGatewayExports checks operations.md's table of
// vagent_* metrics against the gateway's registry: the same names, types
// and labels.
func TestMetricsTableIsWhatTheGatewayExports(t *testing.T) {
	got := exported(t)
	doc := documentedMetrics(t)
	for name, f := range got {
		d, ok := doc[name]
		if !ok {
			t.Errorf("operations.md does not list %s (%s, labels %v): %s", name, strings.ToLower(f.GetType().String()), labelNames(f), f.GetHelp())
			continue
		}
		if typ := strings.ToLower(f.GetType().String()); d.typ != typ {
			t.Errorf("operations.md: %s is a %s, the gateway exports a %s", name, d.typ, typ)
		}
		if want := labelNames(f); fmt.Sprint(want) != fmt.Sprint(d.labels) {
			t.Errorf("operations.md: %s has labels %v, the gateway exports %v", name, d.labels, want)
		}
	}
	for name := range doc {
		if _, ok := got[name]; !ok {
			t.Errorf("operations.md lists %s, which the gateway does not export", name)
		}
	}
}

// dashboard is the Grafana dashboard shipped in the repository.
const dashboard = "grafana/vagent.json"

// exprs collects every PromQL expression of a dashboard: the "expr" of
// each target and the "query" of each templating variable, at any depth.
func exprs(v any, out *[]string) {
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			if s, ok := val.(string); ok && (k == "expr" || (k == "query" && strings.Contains(s, "("))) {
				*out = append(*out, s)
				continue
			}
			if q, ok := val.(map[string]any); ok && k == "query" {
				if s, ok := q["query"].(string); ok {
					*out = append(*out, s)
				}
			}
			exprs(val, out)
		}
	case []any:
		for _, e := range x {
			exprs(e, out)
		}
	}
}

var (
	promStringRE   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)
	promMatchersRE = regexp.MustCompile(`\{[^{}]*\}`)
	promRangeRE    = regexp.MustCompile(`\[[^\[\]]*\]`)
	promGroupingRE = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	promIdentRE    = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	promNumberRE   = regexp.MustCompile(`\b\d+(\.\d+)?([eE][+-]?\d+)?\b`)
	promKeywords   = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true,
		"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
		"inf": true, "nan": true, "Inf": true, "NaN": true}
	grafanaVarRE = regexp.MustCompile(`\$\{?[a-zA-Z_]+\}?|\$__[a-z_]+`)
	// labelValuesRE is Grafana's label_values(METRIC, LABEL): the label
	// is no metric.
	labelValuesRE = regexp.MustCompile(`label_values\(([^,()]*),\s*[a-zA-Z_]+\s*\)`)
)

// metricNames returns the metric names an expression selects: what is
// left of it without strings, label matchers, ranges, groupings, numbers,
// Grafana's variables, keywords and function or aggregation names (an
// identifier followed by "(").
func metricNames(expr string) []string {
	e := labelValuesRE.ReplaceAllString(expr, "($1)")
	e = grafanaVarRE.ReplaceAllString(e, "1m")
	e = promStringRE.ReplaceAllString(e, `""`)
	e = promMatchersRE.ReplaceAllString(e, " ")
	e = promRangeRE.ReplaceAllString(e, " ")
	e = promGroupingRE.ReplaceAllString(e, " ")
	var out []string
	for _, loc := range promIdentRE.FindAllStringIndex(e, -1) {
		id := e[loc[0]:loc[1]]
		rest := strings.TrimLeft(e[loc[1]:], " \t\n")
		if strings.HasPrefix(rest, "(") || promKeywords[id] || promNumberRE.MatchString(id) {
			continue
		}
		if loc[0] > 0 && (e[loc[0]-1] >= '0' && e[loc[0]-1] <= '9' || e[loc[0]-1] == '.') {
			continue // a unit of a number: 5m, 1e3
		}
		out = append(out, id)
	}
	return out
}

// TestDashboardUsesOnlyExportedMetrics parses every query of the Grafana
// dashboard and checks that each metric it names is one the gateway
// exports (a histogram's _bucket, _sum and _count series included).
func TestDashboardUsesOnlyExportedMetrics(t *testing.T) {
	data, err := os.ReadFile(dashboard)
	if err != nil {
		t.Fatal(err)
	}
	var d map[string]any
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s is not JSON: %v", dashboard, err)
	}
	var qs []string
	exprs(d, &qs)
	if len(qs) < 10 {
		t.Fatalf("%s: only %d queries found", dashboard, len(qs))
	}
	got := exported(t)
	series := map[string]bool{}
	for name, f := range got {
		series[name] = true
		if f.GetType() == dto.MetricType_HISTOGRAM {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				series[name+s] = true
			}
		}
	}
	used := map[string]bool{}
	for _, q := range qs {
		names := metricNames(q)
		if len(names) == 0 {
			t.Errorf("%s: query %q names no metric", dashboard, q)
		}
		for _, n := range names {
			used[strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_sum"), "_count")] = true
			if !series[n] {
				t.Errorf("%s: query %q uses %s, which vagentd does not export", dashboard, q, n)
			}
		}
	}
	for name := range got {
		if !used[name] {
			t.Errorf("%s: no panel shows %s", dashboard, name)
		}
	}
}

func TestMetricNamesOfQueries(t *testing.T) {
	for q, want := range map[string]string{
		`sum by (agent, le) (rate(vagent_request_duration_seconds_bucket{agent=~"$agent"}[5m]))`: "[vagent_request_duration_seconds_bucket]",
		`histogram_quantile(0.95, sum by (le) (rate(x_bucket[$__rate_interval])))`:               "[x_bucket]",
		`vagent_agent_state{state="running"} == 1 and on (agent) vagent_agent_pinned`:            "[vagent_agent_state vagent_agent_pinned]",
		`label_values(vagent_agent_state, agent)`:                                                "[vagent_agent_state]",
		`increase(vllm:prompt_tokens_total[1h]) / 1e3`:                                           "[vllm:prompt_tokens_total]",
	} {
		if got := fmt.Sprint(metricNames(q)); got != want {
			t.Errorf("metricNames(%q) = %s, want %s", q, got, want)
		}
	}
}
