package gateway

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/controlapi"
	"github.com/vagent-dev/vagent/supervisor"
)

// Agent states as metrics, /v1/models and the control API report them.
const (
	StateRunning  = controlapi.StateRunning
	StateLoading  = controlapi.StateLoading
	StateSleeping = controlapi.StateSleeping
	StateStopped  = controlapi.StateStopped
	StateFailed   = controlapi.StateFailed
)

var metricStates = []string{StateRunning, StateLoading, StateSleeping, StateStopped, StateFailed}

// metrics are the gateway's vagent_* series.
type metrics struct {
	switches      *prometheus.CounterVec
	switchSeconds *prometheus.HistogramVec
	startFailures *prometheus.CounterVec
	queueWait     *prometheus.HistogramVec
	requests      *prometheus.CounterVec
	reqSeconds    *prometheus.HistogramVec
	ttft          *prometheus.HistogramVec
	tokens        *prometheus.CounterVec
	cut           *prometheus.CounterVec
	wakeSeconds   *prometheus.HistogramVec
	sleepSeconds  *prometheus.HistogramVec
}

// agentMetrics are one agent's series, resolved once.
type agentMetrics struct {
	reqSeconds    prometheus.Observer
	ttft          prometheus.Observer
	queueWait     prometheus.Observer
	prompt        prometheus.Counter
	completion    prometheus.Counter
	startFailures prometheus.Counter
	cut           prometheus.Counter
	wakeSeconds   prometheus.Observer
	sleepSeconds  prometheus.Observer

	mu       sync.Mutex
	byStatus map[int]prometheus.Counter
	requests *prometheus.CounterVec
	name     string
}

func (m *agentMetrics) request(status int) {
	m.mu.Lock()
	c := m.byStatus[status]
	if c == nil {
		c = m.requests.WithLabelValues(m.name, strconv.Itoa(status))
		m.byStatus[status] = c
	}
	m.mu.Unlock()
	c.Inc()
}

var (
	latencyBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800}
	switchBuckets  = []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600}
	sleepBuckets   = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}
)

func newMetrics() *metrics {
	return &metrics{
		switches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vagent_switches_total",
			Help: "Agent transitions: from the agent stopped for it (\"none\" when nothing was stopped) to the agent started (\"none\" for a plain stop); reason is request, switch, load, idle or stop.",
		}, []string{"from", "to", "reason"}),
		switchSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vagent_switch_duration_seconds",
			Help:    "Time a switch took, evictions and the engine's cold start included, by the agent started.",
			Buckets: switchBuckets,
		}, []string{"agent"}),
		startFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vagent_start_failures_total",
			Help: "Switches to an agent that failed: a start error, or no room for it. Starts cancelled because nobody waited for them any more are not counted.",
		}, []string{"agent"}),
		queueWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vagent_queue_wait_seconds",
			Help:    "Time requests waited for their agent (to start, or for another agent's turn), whether they were then served or not.",
			Buckets: latencyBuckets,
		}, []string{"agent"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vagent_requests_total",
			Help: "Requests by agent and status: the HTTP status, or for a stream cut short the status of its error event; 499 when the client went away.",
		}, []string{"agent", "status"}),
		reqSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vagent_request_duration_seconds",
			Help:    "Time from a request's arrival to the end of its response, queueing included.",
			Buckets: latencyBuckets,
		}, []string{"agent"}),
		ttft: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vagent_time_to_first_token_seconds",
			Help:    "Time from a streamed request's arrival to its first event, queueing included.",
			Buckets: latencyBuckets,
		}, []string{"agent"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vagent_tokens_total",
			Help: "Tokens from the engines' usage reports, by agent and kind (prompt or completion).",
		}, []string{"agent", "kind"}),
		cut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vagent_requests_cut_total",
			Help: "Requests in flight cut when their agent was stopped after the drain bound, or when vagentd stopped after gateway.shutdown_timeout.",
		}, []string{"agent"}),
		wakeSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vagent_wake_duration_seconds",
			Help:    "Time a sleep agent's wake took: wake-up, check, weight reload after a level-2 sleep, and a 1-token warm-up.",
			Buckets: sleepBuckets,
		}, []string{"agent"}),
		sleepSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "vagent_sleep_duration_seconds",
			Help:    "Time putting a sleep agent to sleep took (after its requests drained), by the agent put to sleep.",
			Buckets: sleepBuckets,
		}, []string{"agent"}),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.switches, m.switchSeconds, m.startFailures, m.queueWait,
		m.requests, m.reqSeconds, m.ttft, m.tokens, m.cut, m.wakeSeconds, m.sleepSeconds}
}

// forAgent resolves an agent's series. The name "" is for requests that
// name no known agent: only vagent_requests_total counts them.
func (m *metrics) forAgent(name string) *agentMetrics {
	am := &agentMetrics{byStatus: map[int]prometheus.Counter{}, requests: m.requests, name: name}
	if name == "" {
		return am
	}
	am.reqSeconds = m.reqSeconds.WithLabelValues(name)
	am.ttft = m.ttft.WithLabelValues(name)
	am.queueWait = m.queueWait.WithLabelValues(name)
	am.prompt = m.tokens.WithLabelValues(name, "prompt")
	am.completion = m.tokens.WithLabelValues(name, "completion")
	am.startFailures = m.startFailures.WithLabelValues(name)
	am.cut = m.cut.WithLabelValues(name)
	am.wakeSeconds = m.wakeSeconds.WithLabelValues(name)
	am.sleepSeconds = m.sleepSeconds.WithLabelValues(name)
	return am
}

// backoffs is implemented by a Switcher that backs agents off after failed
// starts (*supervisor.Supervisor).
type backoffs interface {
	Backoff(agent string) (supervisor.Backoff, bool)
}

// stateCollector reports, at scrape time, what the gateway holds in memory:
// each agent's state, queue and requests in flight, and its VRAM from the GPU.
type stateCollector struct {
	g        *Gateway
	state    *prometheus.Desc
	queue    *prometheus.Desc
	inflight *prometheus.Desc
	pinned   *prometheus.Desc
	vram     *prometheus.Desc
	backoff  *prometheus.Desc
	// Per GPU: its memory, what is in use, and each agent's budget of it
	// and what it holds there.
	gpuTotal  *prometheus.Desc
	gpuUsed   *prometheus.Desc
	gpuBudget *prometheus.Desc
	gpuVRAM   *prometheus.Desc
}

func newStateCollector(g *Gateway) *stateCollector {
	return &stateCollector{
		g: g,
		state: prometheus.NewDesc("vagent_agent_state",
			"1 for the state each agent is in as the gateway sees it (running, loading, sleeping, stopped, failed), 0 for the others.",
			[]string{"agent", "state"}, nil),
		queue: prometheus.NewDesc("vagent_queue_depth",
			"Requests waiting for each agent.", []string{"agent"}, nil),
		inflight: prometheus.NewDesc("vagent_requests_in_flight",
			"Requests each agent is serving through the gateway.", []string{"agent"}, nil),
		pinned: prometheus.NewDesc("vagent_agent_pinned",
			"1 when an agent is pinned (in its config or by a load request): never stopped for idleness or evicted.",
			[]string{"agent"}, nil),
		vram: prometheus.NewDesc("vagent_vram_bytes",
			"GPU memory held by each agent's processes, summed over its GPUs.", []string{"agent"}, nil),
		gpuTotal: prometheus.NewDesc("vagent_gpu_total_bytes",
			"Memory of each GPU.", []string{"gpu"}, nil),
		gpuUsed: prometheus.NewDesc("vagent_gpu_used_bytes",
			"Memory in use on each GPU, by any process.", []string{"gpu"}, nil),
		gpuBudget: prometheus.NewDesc("vagent_gpu_budget_bytes",
			"What each agent may take of each of its GPUs (gpu_memory_utilization of that GPU, or its pinned KV cache plus weights).", []string{"gpu", "agent"}, nil),
		gpuVRAM: prometheus.NewDesc("vagent_gpu_vram_bytes",
			"GPU memory held by each agent's processes on each of its GPUs.", []string{"gpu", "agent"}, nil),
		backoff: prometheus.NewDesc("vagent_start_backoff_seconds",
			"Seconds until an agent whose starts failed may be started again (0 when it is not backing off).", []string{"agent"}, nil),
	}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.state
	ch <- c.queue
	ch <- c.inflight
	ch <- c.pinned
	if _, ok := c.g.o.Switcher.(backoffs); ok {
		ch <- c.backoff
	}
	if c.g.o.GPU != nil {
		ch <- c.vram
		ch <- c.gpuTotal
		ch <- c.gpuUsed
		ch <- c.gpuBudget
		ch <- c.gpuVRAM
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	g := c.g
	type snap struct {
		name, state      string
		queued, inflight int
		pinned           bool
	}
	g.mu.Lock()
	snaps := make([]snap, len(g.agents))
	for i, ag := range g.agents {
		snaps[i] = snap{ag.name, ag.stateLocked(), len(ag.waiters), ag.inflight, g.pinnedLocked(ag)}
	}
	g.mu.Unlock()
	for _, s := range snaps {
		for _, st := range metricStates {
			v := 0.0
			if st == s.state {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, v, s.name, st)
		}
		ch <- prometheus.MustNewConstMetric(c.queue, prometheus.GaugeValue, float64(s.queued), s.name)
		ch <- prometheus.MustNewConstMetric(c.inflight, prometheus.GaugeValue, float64(s.inflight), s.name)
		p := 0.0
		if s.pinned {
			p = 1
		}
		ch <- prometheus.MustNewConstMetric(c.pinned, prometheus.GaugeValue, p, s.name)
		if bo, ok := g.o.Switcher.(backoffs); ok {
			left := 0.0
			if b, in := bo.Backoff(s.name); in {
				left = max(0, time.Until(b.Until).Seconds())
			}
			ch <- prometheus.MustNewConstMetric(c.backoff, prometheus.GaugeValue, left, s.name)
		}
	}
	if g.o.GPU != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		agents := make([]*config.Agent, len(g.agents))
		for i, ag := range g.agents {
			agents[i] = ag.cfg
		}
		bytes, byCard, err := supervisor.GPUUse(ctx, g.o.GPU, agents)
		if err != nil {
			g.log.Warn("metrics: reading VRAM per agent", "err", err)
			return
		}
		for _, s := range snaps {
			ch <- prometheus.MustNewConstMetric(c.vram, prometheus.GaugeValue, float64(bytes[s.name]), s.name)
		}
		c.collectCards(ctx, ch, agents, byCard)
	}
}

// collectCards reports each GPU's memory and each agent's part of it.
func (c *stateCollector) collectCards(ctx context.Context, ch chan<- prometheus.Metric, agents []*config.Agent, byCard map[int]map[string]uint64) {
	g := c.g
	mem, err := g.o.GPU.Memory(ctx)
	if err != nil {
		g.log.Warn("metrics: reading GPU memory", "err", err)
		return
	}
	for idx, m := range mem {
		card := strconv.Itoa(idx)
		ch <- prometheus.MustNewConstMetric(c.gpuTotal, prometheus.GaugeValue, float64(m.Total), card)
		used := m.Used
		if used == 0 && m.Total > m.Free {
			used = m.Total - m.Free
		}
		ch <- prometheus.MustNewConstMetric(c.gpuUsed, prometheus.GaugeValue, float64(used), card)
		for _, a := range agents {
			if !slices.Contains(a.GPUs, idx) {
				continue
			}
			ch <- prometheus.MustNewConstMetric(c.gpuBudget, prometheus.GaugeValue, float64(a.Budget(m.Total, 0)), card, a.Name)
			ch <- prometheus.MustNewConstMetric(c.gpuVRAM, prometheus.GaugeValue, float64(byCard[idx][a.Name]), card, a.Name)
		}
	}
}
