package work

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metricKinds are the job kinds with metrics of their own, by prefix:
// vagent_batch_* and vagent_pipeline_*.
var metricKinds = []string{"batch", "pipeline"}

// metricStates are the item states the items gauges report, all of them
// always (0 included), so that a dashboard's series do not come and go.
var metricStates = []ItemState{Pending, Running, Done, Failed, Cancelled}

// execMetrics are the executor's metrics. Items by state and the queue's
// age are read from the store at scrape time; switches are counted as the
// executor causes them.
type execMetrics struct {
	s        *Store
	items    map[string]*prometheus.Desc
	age      map[string]*prometheus.Desc
	switches map[string]prometheus.Counter
}

func newExecMetrics(s *Store) *execMetrics {
	m := &execMetrics{s: s, items: map[string]*prometheus.Desc{}, age: map[string]*prometheus.Desc{}, switches: map[string]prometheus.Counter{}}
	for _, k := range metricKinds {
		m.items[k] = prometheus.NewDesc("vagent_"+k+"_items", "Items of "+k+" jobs by state (pending, running, done, failed, cancelled), as stored.", []string{"state"}, nil)
		m.age[k] = prometheus.NewDesc("vagent_"+k+"_queue_age_seconds", "Age of the oldest pending item of "+k+" jobs (0 when none waits).", nil, nil)
		m.switches[k] = prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vagent_" + k + "_switches_total",
			Help: "Agent switches that " + k + " work caused: items sent to an agent that was not running, starting or already serving background work, with no client waiting for it.",
		})
	}
	return m
}

func (m *execMetrics) switched(kind string) {
	if c := m.switches[kind]; c != nil {
		c.Inc()
	}
}

// Describe implements prometheus.Collector.
func (m *execMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, k := range metricKinds {
		ch <- m.items[k]
		ch <- m.age[k]
		m.switches[k].Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *execMetrics) Collect(ch chan<- prometheus.Metric) {
	for _, k := range metricKinds {
		m.switches[k].Collect(ch)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	counts, oldest, err := m.s.Counts(ctx)
	if err != nil {
		for _, k := range metricKinds {
			ch <- prometheus.NewInvalidMetric(m.items[k], err)
		}
		return
	}
	by := map[string]map[ItemState]int{}
	for _, c := range counts {
		if by[c.Kind] == nil {
			by[c.Kind] = map[ItemState]int{}
		}
		by[c.Kind][c.State] += c.Items
	}
	now := time.Now()
	for _, k := range metricKinds {
		for _, st := range metricStates {
			ch <- prometheus.MustNewConstMetric(m.items[k], prometheus.GaugeValue, float64(by[k][st]), string(st))
		}
		age := 0.0
		if t, ok := oldest[k]; ok {
			age = max(now.Sub(t).Seconds(), 0)
		}
		ch <- prometheus.MustNewConstMetric(m.age[k], prometheus.GaugeValue, age)
	}
}
