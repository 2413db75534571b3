// Package gateway is vagentd's OpenAI-compatible front: it routes each
// request to the agent its "model" names, starts that agent through the
// supervisor when it is not running, queues requests while agents switch,
// streams responses through unbuffered, checks client keys, stops idle
// agents, and reports vagent_* metrics. It also serves the control API
// vagentctl uses.
//
// # Scheduling
//
// One mutex guards all scheduling state, and scheduleLocked makes every
// decision the state allows whenever something changes: a request arrives,
// leaves the queue or ends; a start or stop finishes; a fairness deadline
// passes. The slow work (Switcher calls, drains) runs in goroutines outside
// the lock.
//
// Agents "conflict" when config.CannotShare says they cannot run together
// (with the GPU's size when Options.GPU is set). Only conflicting agents
// take turns; the others start at once and the supervisor evicts what
// really has to go.
//
// A request for a running agent goes straight through, unless it is
// another agent's turn. Otherwise it waits in its agent's queue (all
// queues together hold at most gateway.queue_length requests: 429 past
// that; 503 after gateway.max_wait). Requests waiting for the same agent
// share one Switch. Waiting agents are served oldest request first: an
// agent with requests waiting starts as soon as the conflicting agents
// that run are idle, or once its oldest request has waited
// gateway.fairness_window; from then on the running agents take no new
// requests (they queue for their next turn) and the switch drains them.
// So alternating clients A B A B are served A A B B, and no agent waits
// much longer than the fairness window plus a switch.
//
// A start nobody waits for any more (clients gone) is cancelled and the
// half-started unit stopped, unless the agent is pinned.
//
// # Background work
//
// vagentd's own work (batches, pipeline runs) comes in through
// BackgroundHandler, in process, marked by a context value: it takes no
// client key but is otherwise served as a client's request. Agents with
// clients waiting are served before agents with background work only, and
// a client's request cancels a start that only background work waits for
// (those requests are answered Yielded). Load tells the work executor
// which agents run and whom clients wait for.
//
// # Sleep mode
//
// The supervisor puts a sleep agent to sleep instead of stopping it (after
// BeforeEvict drained it) and wakes it when a switch needs it again. A
// sleeping agent is in state "sleeping": it takes no requests (its engine
// would refuse them), and a request for it wakes it through a Switch, as a
// request for a stopped agent starts it. A wake that fails is restarted
// cold by the supervisor; the gateway sees a slower switch or a failed
// start. The engines' control routes (/sleep, /wake_up, /collective_rpc,
// ...) take no key in vLLM, so the gateway refuses them, and any path with
// dot segments or escaped slashes that an engine could resolve to them.
//
// # Draining
//
// The supervisor calls BeforeEvict before it stops an agent for a switch:
// the agent takes no new requests, and its requests in flight have
// gateway.drain_timeout to finish; then they are cut, and their clients
// get a 503 (a stream: an error event and [DONE]).
//
// An engine put to sleep or stopped under a request (behind the gateway's
// back: by hand, or vLLM 0.18 pausing its scheduler) ends it with HTTP 200
// and finish_reason "abort". That is never relayed as an answer: a
// non-streamed one, which the client has not seen yet, is sent once more
// (waiting for the agent like a new request, so a sleeping agent is woken
// first), and a 503 with Retry-After if it is aborted again; a stream,
// whose first chunks are already out, ends with an error event (503) and
// [DONE] in place of the abort chunk.
//
// # Logs
//
// Every inference request ends with one log line, msg "request": agent,
// model, path, status (499: the client went away; for a stream cut short,
// the status of its error event), duration, stream, and when they apply
// queued, ttft, key (its name) and error.
//
// # Metrics
//
// vagent_agent_state{agent,state} (state running, loading, sleeping, stopped
// or failed), vagent_agent_pinned{agent},
// vagent_queue_depth{agent}, vagent_requests_in_flight{agent} and
// vagent_vram_bytes{agent} are read at scrape time;
// vagent_switches_total{from,to,reason}, vagent_switch_duration_seconds{agent},
// vagent_start_failures_total{agent}, vagent_queue_wait_seconds{agent},
// vagent_requests_total{agent,status}, vagent_request_duration_seconds{agent},
// vagent_time_to_first_token_seconds{agent}, vagent_tokens_total{agent,kind},
// vagent_requests_cut_total{agent}, vagent_wake_duration_seconds{agent} and
// vagent_sleep_duration_seconds{agent} are counted as things happen.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/engine"
	"github.com/vagent-dev/vagent/supervisor"
)

// Switcher is what the gateway needs of the supervisor;
// *supervisor.Supervisor satisfies it.
type Switcher interface {
	Switch(ctx context.Context, agent string) (*supervisor.Result, error)
	Stop(ctx context.Context, agent string) error
	Status(ctx context.Context) ([]supervisor.AgentStatus, error)
}

// Options are the gateway's configuration and collaborators.
type Options struct {
	Config   *config.Config
	Switcher Switcher
	// Keys are the client keys; nil means no client authentication (the
	// daemon then listens on loopback only).
	Keys *Keys
	// EngineKey is sent to engines as "Authorization: Bearer ...": engines
	// run with --api-key and never see the clients' keys.
	EngineKey string
	Log       *slog.Logger
	// Registry receives every vagent_* metric; /metrics serves it. A
	// private registry is used when nil.
	Registry *prometheus.Registry
	// GPU, when set, reports VRAM per agent for vagent_vram_bytes and the
	// GPU sizes that decide which agents conflict.
	GPU supervisor.GPU
	// SyncInterval is how often Run rebuilds the agents' states from
	// Switcher.Status, to see engines that died or were started by hand
	// (default 5s).
	SyncInterval time.Duration
}

// Gateway is the OpenAI-compatible front and its scheduler.
type Gateway struct {
	o         Options
	mounts    []controlMount // set before serving (MountControl)
	cfg       *config.Config
	log       *slog.Logger
	agents    []*agentRT
	byName    map[string]*agentRT // every name of every agent
	byFolded  map[string]*agentRT // the same, lower case, and each agent's repository id
	byAgent   map[string]*agentRT // agent names only
	names     []string            // every name a client may use, for error messages
	client    *engineClient
	eng       engine.Engine
	m         *metrics
	noAgent   *agentMetrics
	promH     http.Handler
	created   int64
	engineKey []string // the Authorization header value for engines

	conns     chan struct{} // one token per open client connection (Listener)
	keyLimits *keyLimits

	base       context.Context // ends when Run ends: starts in progress are abandoned
	baseCancel context.CancelFunc
	resyncMu   sync.Mutex
	resyncing  chan struct{} // closed when the running resync ends; nil when none runs

	mu      sync.Mutex
	queued  int // waiters over all agents
	timer   *time.Timer
	timerAt time.Time
	order   []*agentRT // scratch for scheduleLocked
}

// New builds a gateway for o.Config's agents. It registers the vagent_*
// metrics in o.Registry.
func New(o Options) (*Gateway, error) {
	if o.Config == nil || o.Switcher == nil {
		return nil, errors.New("gateway: Config and Switcher are required")
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
	}
	if o.SyncInterval <= 0 {
		o.SyncInterval = 5 * time.Second
	}
	g := &Gateway{
		o: o, cfg: o.Config, log: o.Log,
		byName: map[string]*agentRT{}, byFolded: map[string]*agentRT{}, byAgent: map[string]*agentRT{},
		m:       newMetrics(),
		created: time.Now().Unix(),
		client:  newEngineClient(),
		eng:     engine.Of(o.Config),

		conns:     make(chan struct{}, max(o.Config.Gateway.MaxConnections, 1)),
		keyLimits: newKeyLimits(max(o.Config.Gateway.MaxRequestsPerKey, 1)),
	}
	if o.EngineKey != "" {
		g.engineKey = []string{"Bearer " + o.EngineKey}
	}
	g.base, g.baseCancel = context.WithCancel(context.Background())
	for _, a := range o.Config.Agents {
		ag := &agentRT{
			cfg: a, name: a.Name,
			ep:      g.eng.Endpoint(o.Config, a),
			active:  map[*lease]struct{}{},
			changed: make(chan struct{}),
			m:       g.m.forAgent(a.Name),
		}
		ag.timeoutErr = &APIError{Status: http.StatusGatewayTimeout, Type: typeTimeout,
			Message: fmt.Sprintf("agent %s: request timed out after %s (gateway.request_timeout)", a.Name, o.Config.Gateway.RequestTimeout)}
		g.agents = append(g.agents, ag)
		g.byAgent[a.Name] = ag
	}
	// Agent names win over other agents' served names and aliases.
	for _, ag := range g.agents {
		g.byName[ag.name] = ag
	}
	for _, ag := range g.agents {
		for _, n := range ag.cfg.Names() {
			if _, taken := g.byName[n]; !taken {
				g.byName[n] = ag
			}
		}
	}
	for _, ag := range g.agents {
		for _, n := range ag.cfg.Names() {
			if g.byName[n] == ag {
				g.names = append(g.names, n)
			}
		}
	}
	// Clients write names in any case, and the model's repository id
	// ("Qwen/Qwen2.5-7B-Instruct-AWQ") as other servers take it; exact
	// names win over folded ones, and the first agent over later ones.
	for n, ag := range g.byName {
		g.byFolded[strings.ToLower(n)] = ag
	}
	for _, ag := range g.agents {
		if config.IsLocalModel(ag.cfg.Model) {
			continue
		}
		if _, taken := g.byFolded[strings.ToLower(ag.cfg.Model)]; !taken {
			g.byFolded[strings.ToLower(ag.cfg.Model)] = ag
		}
	}
	g.computeConflicts(nil)
	g.noAgent = g.m.forAgent("")
	for _, c := range g.m.collectors() {
		if err := o.Registry.Register(c); err != nil {
			return nil, fmt.Errorf("gateway: register metrics: %w", err)
		}
	}
	if err := o.Registry.Register(newStateCollector(g)); err != nil {
		return nil, fmt.Errorf("gateway: register metrics: %w", err)
	}
	g.promH = promhttp.HandlerFor(o.Registry, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(o.Log.Handler(), slog.LevelWarn)})
	if o.Keys != nil {
		if unknown := o.Keys.unknownAgents(o.Config); len(unknown) > 0 {
			g.log.Warn("keys file grants agents that are not configured", "file", o.Keys.file, "agents", strings.Join(unknown, ", "))
		}
	}
	return g, nil
}

// computeConflicts decides which agents cannot run together, with the GPU
// sizes in mem when known (else by their utilization fractions alone).
// Agents that conflict are scheduled in turns; the others may start at
// once and the supervisor decides what really has to go.
func (g *Gateway) computeConflicts(mem map[int]supervisor.GPUMemory) {
	reserve := g.cfg.GPU.ReserveMiB << 20
	totals := make(map[int]uint64, len(mem))
	for x, m := range mem {
		totals[x] = m.Total
	}
	for _, a := range g.agents {
		var cs []*agentRT
		for _, b := range g.agents {
			if a == b || !config.SharesGPU(a.cfg, b.cfg) {
				continue
			}
			if config.CannotShareOn(a.cfg, b.cfg, totals, reserve) {
				cs = append(cs, b)
			}
		}
		a.conflicts = cs
	}
}

// Handler serves the OpenAI API under /v1/ (and vLLM's /tokenize-style
// routes), the control API under /vagent/v1/, /metrics and /healthz. With
// Keys set, /v1/ and /vagent/v1/ need "Authorization: Bearer KEY" (an
// admin-scope key for /vagent/v1/); without Keys the control API is refused
// here and served only by ControlHandler on the unix socket; /healthz and /metrics stay open so that
// probes and Prometheus need no secret: they reveal agent names and
// counts, nothing more.
func (g *Gateway) Handler() http.Handler { return http.HandlerFunc(g.serveHTTP) }

// ControlHandler serves the control API without key checks, for the unix
// socket, which its file permissions guard.
func (g *Gateway) ControlHandler() http.Handler { return http.HandlerFunc(g.serveControl) }

// refusePath refuses what the gateway must never forward: an engine-only
// route, or a path an engine could resolve to another one (dot segments,
// empty segments, backslashes, escaped slashes), since the request line is
// forwarded as the client sent it. It applies before the key check: these
// are refused whoever asks.
func (g *Gateway) refusePath(r *http.Request) *APIError {
	p := r.URL.Path
	raw := strings.ToLower(r.URL.RawPath)
	if strings.HasPrefix(p, "/v1/models/") {
		// Answered by the gateway itself, never forwarded; a served name
		// such as ORG/NAME may come with its slash escaped.
		raw = ""
	}
	if strings.ContainsRune(p, '\\') || strings.Contains(raw, "%2f") || strings.Contains(raw, "%5c") ||
		(p != "/" && path.Clean(p) != strings.TrimSuffix(p, "/")) {
		return apiErr(http.StatusBadRequest, typeInvalidRequest, "the path %q is not in canonical form (no '.', '..' or empty segments, no escaped slashes)", p)
	}
	if g.eng.ControlRoute(strings.ToLower(strings.TrimSuffix(p, "/"))) {
		return apiErr(http.StatusNotFound, typeNotFound, "%s is an engine control route: the gateway never forwards it (vagent drives its engines itself)", p)
	}
	return nil
}

func (g *Gateway) serveHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	if aerr := g.refusePath(r); aerr != nil {
		writeError(w, aerr)
		return
	}
	switch {
	case p == "/healthz":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	case p == "/metrics":
		g.promH.ServeHTTP(w, r)
	case strings.HasPrefix(p, "/vagent/v1/"):
		if g.o.Keys == nil {
			// Without keys anyone who reaches the port could switch and
			// stop agents; the control socket's file permissions are then
			// the only guard, so the control API lives there alone.
			writeError(w, apiErr(http.StatusForbidden, typePermission, "without a keys file (gateway.keys_file) the control API is served only on the control socket; use vagentctl"))
			return
		}
		key, err := g.authenticate(r)
		if err != nil {
			writeError(w, err)
			return
		}
		if !key.admin {
			writeError(w, apiErr(http.StatusForbidden, typePermission, "key %s has scope inference: the control API needs an admin key", key.name))
			return
		}
		g.serveControl(w, r)
	case p == "/v1/models" || strings.HasPrefix(p, "/v1/models/"):
		var key *keyEntry
		if g.o.Keys != nil {
			k, err := g.authenticate(r)
			if err != nil {
				writeError(w, err)
				return
			}
			key = k
		}
		g.serveModels(w, r, key)
	case strings.HasPrefix(p, "/v1/") || g.eng.ModelRoute(p):
		g.serveInference(w, r)
	default:
		writeError(w, apiErr(http.StatusNotFound, typeNotFound, "no route %s %s: the gateway serves /v1/* (OpenAI API), /vagent/v1/* (control), /metrics and /healthz", r.Method, p))
	}
}

// authenticate checks the request's bearer key.
func (g *Gateway) authenticate(r *http.Request) (*keyEntry, *APIError) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return nil, apiErr(http.StatusUnauthorized, typeAuthentication, "missing API key: send \"Authorization: Bearer KEY\"")
	}
	tok, ok := bearer(h)
	if !ok {
		return nil, apiErr(http.StatusUnauthorized, typeAuthentication, "the Authorization header must be \"Bearer KEY\"")
	}
	k := g.o.Keys.lookup(tok)
	if k == nil {
		return nil, apiErr(http.StatusUnauthorized, typeAuthentication, "invalid API key")
	}
	return k, nil
}

// resolve finds the agent a client names (agent name, served name or alias).
func (g *Gateway) resolve(model string, key *keyEntry) (*agentRT, *APIError) {
	if ag := g.byName[model]; ag != nil {
		return ag, nil
	}
	if ag := g.byFolded[strings.ToLower(model)]; ag != nil {
		return ag, nil
	}
	return nil, g.noSuchModel(model, key)
}

// noSuchModel is the 404 for a model nobody serves. It lists the names
// key may use (all without keys): a key limited to some agents learns
// nothing of the others.
func (g *Gateway) noSuchModel(model string, key *keyEntry) *APIError {
	return apiErr(http.StatusNotFound, typeNotFound, "The model `%s` does not exist. Available models: %s", model, g.namesFor(key))
}

// namesFor lists the names a client with key may use, comma-separated.
func (g *Gateway) namesFor(key *keyEntry) string {
	if key == nil {
		return strings.Join(g.names, ", ")
	}
	var names []string
	for _, n := range g.names {
		if key.allows(g.byName[n].cfg) {
			names = append(names, n)
		}
	}
	return strings.Join(names, ", ")
}

// Run does the gateway's background work until ctx ends: it rebuilds the
// agents' states from the supervisor at once and every SyncInterval, and
// stops agents idle longer than their idle_timeout. When ctx ends, starts
// still in progress are abandoned (the units keep going: systemd has the
// truth) and Run returns ctx.Err().
func (g *Gateway) Run(ctx context.Context) error {
	defer g.baseCancel()
	defer g.client.closeIdle()
	if g.o.GPU != nil {
		mctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		mem, err := g.o.GPU.Memory(mctx)
		cancel()
		if err != nil {
			g.log.Warn("reading GPU sizes: judging conflicts by gpu_memory_utilization alone", "err", err)
		} else {
			g.mu.Lock()
			g.computeConflicts(mem)
			g.mu.Unlock()
		}
	}
	g.sync(ctx)
	idle := time.NewTicker(g.idleTick())
	defer idle.Stop()
	sync := time.NewTicker(g.o.SyncInterval)
	defer sync.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-idle.C:
			g.stopIdle(time.Now())
		case <-sync.C:
			g.sync(ctx)
		}
	}
}

// idleTick is how often idle agents are looked for: a quarter of the
// shortest idle timeout, between 10ms and 1s.
func (g *Gateway) idleTick() time.Duration {
	tick := time.Second
	for _, a := range g.cfg.Agents {
		if d := a.IdleTimeout.Duration / 4; d > 0 && d < tick {
			tick = d
		}
	}
	return max(tick, 10*time.Millisecond)
}

// LastUsed is when agent last served a request through the gateway (now,
// when it is busy); zero when it has not since vagentd started. The
// supervisor evicts the least recently used first.
func (g *Gateway) LastUsed(agent string) time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	ag := g.byAgent[agent]
	if ag == nil {
		return time.Time{}
	}
	if ag.inflight > 0 || len(ag.waiters) > 0 {
		return time.Now()
	}
	return ag.lastUsed
}
