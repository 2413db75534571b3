package work

import "slices"

// AgentLoad is what the executor needs to know of one agent from the
// gateway (daemon fills it from gateway.Load).
type AgentLoad struct {
	Agent string
	// Running: it serves requests now. Starting: a switch to it is under
	// way. Draining: it is being evicted and takes no new requests.
	Running, Starting, Draining bool
	// Interactive are clients' requests waiting for it.
	Interactive int
	// Conflicts are the agents that cannot run beside it.
	Conflicts []string
}

// view is the executor's snapshot for one decision.
type view struct {
	queues      []Queue              // eligible work by agent
	loads       map[string]AgentLoad // by agent
	inflight    map[string]int       // the executor's own requests in flight, by agent
	total       int                  // of inflight, all agents
	concurrency int
	current     string // the agent the executor fed last
	// due: agents whose work has given way for ExecOptions.MaxYield and
	// now takes its turn.
	due map[string]bool
}

// decision is which agent gets the next item, and whether sending it
// makes the gateway switch agents.
type decision struct {
	agent string
	cold  bool // the agent is not up: the gateway switches to it
}

// conflict reports whether a and b cannot run together.
func (v *view) conflict(a, b string) bool {
	return slices.Contains(v.loads[a].Conflicts, b) || slices.Contains(v.loads[b].Conflicts, a)
}

// yields reports whether background work for agent must wait: a client's
// request waits for an agent that cannot run beside it (sending more would
// keep that client waiting for our items, or for a switch to ours), or the
// agent is being evicted. Work that has waited long enough (due) waits only
// for an eviction.
func (v *view) yields(agent string) bool {
	if v.loads[agent].Draining {
		return true
	}
	if v.due[agent] {
		return false
	}
	for name, l := range v.loads {
		if l.Interactive > 0 && name != agent && v.conflict(name, agent) {
			return true
		}
	}
	return false
}

// live reports whether agent is up, coming up, or already has our work
// in flight: feeding it costs no switch.
func (v *view) live(agent string) bool {
	l := v.loads[agent]
	return l.Running || l.Starting || v.inflight[agent] > 0
}

// pick decides which agent gets the next item, if any. Background work
// stays with the agent it feeds while that agent has eligible items; then
// with another agent that is up; and only then switches, to the agent with
// the most eligible items (the oldest work on a tie). It never takes a slot
// past the concurrency bound, and it yields to clients (see yields): so N
// items over S agents cost about S switches, and a client's request waits
// at most for the items in flight and one switch.
func pick(v *view) (decision, bool) {
	if v.total >= v.concurrency {
		return decision{}, false
	}
	var live, cold []Queue
	for _, q := range v.queues {
		if q.Items == 0 || v.yields(q.Agent) {
			continue
		}
		if q.Agent == v.current && v.live(q.Agent) {
			return decision{agent: q.Agent}, true
		}
		if v.live(q.Agent) {
			live = append(live, q)
		} else {
			cold = append(cold, q)
		}
	}
	if q, ok := most(live); ok {
		return decision{agent: q.Agent}, true
	}
	if q, ok := most(cold); ok {
		return decision{agent: q.Agent, cold: true}, true
	}
	return decision{}, false
}

// most returns the queue with the most items, the oldest work on a tie.
func most(qs []Queue) (Queue, bool) {
	if len(qs) == 0 {
		return Queue{}, false
	}
	best := qs[0]
	for _, q := range qs[1:] {
		if q.Items > best.Items || (q.Items == best.Items && q.Oldest.Before(best.Oldest)) {
			best = q
		}
	}
	return best, true
}
