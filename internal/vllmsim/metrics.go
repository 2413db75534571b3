package vllmsim

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"
	"time"
)

// Histogram buckets vLLM's v1 Prometheus logger uses.
var (
	ttftBuckets    = []float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0}
	itlBuckets     = []float64{0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0}
	latencyBuckets = []float64{0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0}
	tokenBuckets   = []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000}
)

type histogram struct {
	buckets []float64
	counts  []uint64
	sum     float64
	count   uint64
}

func newHistogram(b []float64) *histogram {
	return &histogram{buckets: b, counts: make([]uint64, len(b))}
}

func (h *histogram) observe(v float64) {
	for i, b := range h.buckets {
		if v <= b {
			h.counts[i]++
		}
	}
	h.sum += v
	h.count++
}

// metrics is the engine's Prometheus state, served at /metrics in vLLM's
// names.
type metrics struct {
	mu              sync.Mutex
	created         float64
	running         int
	waiting         int
	runningTokens   int
	promptTokens    uint64
	genTokens       uint64
	success         map[string]uint64
	preemptions     uint64
	prefixQueries   uint64
	prefixHits      uint64
	ttft            *histogram
	itl             *histogram
	e2e             *histogram
	queue           *histogram
	promptHist      *histogram
	genHist         *histogram
	seenPrompts     map[uint64]bool
	intervalPrompt  uint64
	intervalGen     uint64
	lastLoggedBusy  bool
	intervalQueries uint64
	intervalHits    uint64
}

func newMetrics(now time.Time) *metrics {
	return &metrics{
		created:     float64(now.UnixNano()) / 1e9,
		success:     map[string]uint64{"stop": 0, "length": 0, "abort": 0, "error": 0},
		ttft:        newHistogram(ttftBuckets),
		itl:         newHistogram(itlBuckets),
		e2e:         newHistogram(latencyBuckets),
		queue:       newHistogram(latencyBuckets),
		promptHist:  newHistogram(tokenBuckets),
		genHist:     newHistogram(tokenBuckets),
		seenPrompts: map[uint64]bool{},
	}
}

// promFloat prints a value as Python's prometheus_client does (1.0, 0.25, +Inf).
func promFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return pyFloat(v)
}

type promWriter struct {
	b      strings.Builder
	labels string // engine="0",model_name="x"
}

func (w *promWriter) header(name, typ, help string) {
	fmt.Fprintf(&w.b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
}

func (w *promWriter) sample(name, extra string, v float64) {
	l := w.labels
	if extra != "" {
		l += "," + extra
	}
	fmt.Fprintf(&w.b, "%s{%s} %s\n", name, l, promFloat(v))
}

func (w *promWriter) gauge(name, help string, v float64) {
	w.header(name, "gauge", help)
	w.sample(name, "", v)
}

// created writes a family's _created samples the way prometheus_client's
// generate_latest does in the text format: as a gauge family of its own
// after the family (they are OpenMetrics samples the text format lacks).
func (w *promWriter) created(name, help string, extras []string, created float64) {
	w.header(name+"_created", "gauge", help)
	for _, x := range extras {
		w.sample(name+"_created", x, created)
	}
}

func (w *promWriter) counter(name, help string, v, created float64) {
	w.header(name+"_total", "counter", help)
	w.sample(name+"_total", "", v)
	w.created(name, help, []string{""}, created)
}

func (w *promWriter) hist(name, help string, h *histogram, created float64) {
	w.header(name, "histogram", help)
	for i, b := range h.buckets {
		w.sample(name+"_bucket", fmt.Sprintf(`le="%s"`, promFloat(b)), float64(h.counts[i]))
	}
	w.sample(name+"_bucket", `le="+Inf"`, float64(h.count))
	w.sample(name+"_count", "", float64(h.count))
	w.sample(name+"_sum", "", h.sum)
	w.created(name, help, []string{""}, created)
}

func labelEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}

// render writes the Prometheus text exposition.
func (m *metrics) render(modelName string, kvTokens int, cacheInfo map[string]string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	w := &promWriter{labels: fmt.Sprintf(`engine="0",model_name="%s"`, labelEscape(modelName))}
	w.gauge("vllm:num_requests_running", "Number of requests in model execution batches.", float64(m.running))
	w.gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", float64(m.waiting))
	usage := 0.0
	if kvTokens > 0 {
		usage = math.Min(1, float64(m.runningTokens)/float64(kvTokens))
	}
	w.gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", usage)
	w.counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.", float64(m.prefixQueries), m.created)
	w.counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", float64(m.prefixHits), m.created)
	w.counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.", float64(m.preemptions), m.created)
	w.counter("vllm:prompt_tokens", "Number of prefill tokens processed.", float64(m.promptTokens), m.created)
	w.counter("vllm:generation_tokens", "Number of generation tokens processed.", float64(m.genTokens), m.created)
	name := "vllm:request_success_total"
	w.header(name, "counter", "Count of successfully processed requests.")
	reasons := make([]string, 0, len(m.success))
	for r := range m.success {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	for _, r := range reasons {
		w.sample(name, fmt.Sprintf(`finished_reason="%s"`, r), float64(m.success[r]))
	}
	var extras []string
	for _, r := range reasons {
		extras = append(extras, fmt.Sprintf(`finished_reason="%s"`, r))
	}
	w.created("vllm:request_success", "Count of successfully processed requests.", extras, m.created)
	w.hist("vllm:request_prompt_tokens", "Number of prefill tokens processed.", m.promptHist, m.created)
	w.hist("vllm:request_generation_tokens", "Number of generation tokens processed.", m.genHist, m.created)
	w.hist("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", m.ttft, m.created)
	w.hist("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", m.itl, m.created)
	w.hist("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", m.e2e, m.created)
	w.hist("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", m.queue, m.created)
	// Info gauge: labels only, value 1.
	keys := make([]string, 0, len(cacheInfo))
	for k := range cacheInfo {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var ls []string
	for _, k := range keys {
		ls = append(ls, fmt.Sprintf(`%s="%s"`, k, labelEscape(cacheInfo[k])))
	}
	fmt.Fprintf(&w.b, "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n# TYPE vllm:cache_config_info gauge\n")
	fmt.Fprintf(&w.b, "vllm:cache_config_info{%s} 1.0\n", strings.Join(ls, ","))
	return w.b.String()
}
