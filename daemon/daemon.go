// Package daemon is vagentd: it wires the configuration, systemd (over
// D-Bus), the GPU backend, the supervisor and the gateway together, serves
// the OpenAI-compatible endpoint on TCP and the control API on a unix
// socket, and tells systemd when it is ready.
//
// vagentd keeps no state of its own about agents: on start it rebuilds its
// view from systemd and the GPU, and on stop it only stops serving. It never
// stops an agent because it is itself stopping, so restarting or upgrading
// vagentd leaves every engine running. The one thing it stores is accepted
// background work (batches, pipeline runs) in the work store under the state
// directory, which a new vagentd resumes.
package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	sddaemon "github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/vagent-dev/vagent/batchapi"
	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/engine"
	"github.com/vagent-dev/vagent/gateway"
	"github.com/vagent-dev/vagent/gpu"
	"github.com/vagent-dev/vagent/internal/enginekey"
	"github.com/vagent-dev/vagent/journal"
	"github.com/vagent-dev/vagent/plan"
	"github.com/vagent-dev/vagent/supervisor"
)

// Version is set at build time with -ldflags "-X .../daemon.Version=...".
var Version = "dev"

// Exit statuses: 0 success (including a stop by SIGTERM), 1 failure, 2 usage.
const (
	ExitOK      = 0
	ExitFailure = 1
	ExitUsage   = 2
)

// Main runs vagentd with args (args[0] is the program name) until ctx ends
// (SIGTERM or SIGINT in cmd/vagentd) and returns the exit status. Logs go to
// stderr, which systemd hands to journald.
func Main(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("vagentd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "main configuration file (default $"+config.EnvPath+" or "+config.DefaultPath+")")
	level := fs.String("log-level", "info", "least severe log level: debug, info, warn or error")
	version := fs.Bool("version", false, "print the version and exit")
	if len(args) == 0 {
		args = []string{"vagentd"}
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitOK
		}
		return ExitUsage
	}
	if *version {
		fmt.Fprintf(stderr, "vagentd %s\n", Version)
		return ExitOK
	}
	// The flag package prints its own usage after a flag error; these
	// errors get a hint to it instead.
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "vagentd: unexpected arguments %q\nhint: vagentd takes options only; vagentd -h lists them\n", fs.Args())
		return ExitUsage
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(stderr, "vagentd: --log-level: %v\nhint: --log-level is one of debug, info, warn, error\n", err)
		return ExitUsage
	}
	log := NewLogger(stderr, lv)

	path := config.Path(*configPath)
	cfg, err := config.Load(path)
	if err != nil {
		// One record per problem, so that each lands in the journal whole.
		for _, line := range strings.Split(err.Error(), "\n") {
			log.Error("configuration rejected", "err", line)
		}
		return ExitFailure
	}
	if cfg.GPU.Backend == config.GPUBackendAuto {
		gpu.ResolveBackend(ctx, cfg)
		log.Info("gpu backend", "backend", cfg.GPU.Backend, "why", cfg.GPU.BackendReason)
	}
	if err := Run(ctx, cfg, Options{Log: log}); err != nil {
		log.Error("vagentd failed", "err", err)
		return ExitFailure
	}
	return ExitOK
}

// NewLogger returns vagentd's logger: logfmt text on w. When w is stderr
// and stderr is the journal's stream, records go to journald with their
// level as priority and their attributes as fields (journal.LogHandler),
// and without a time of their own, since the journal stamps each one.
func NewLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(journal.NewLogHandler(w, journal.DetectLogMode(w), level, "vagentd", nil))
}

// Options are Run's collaborators; the zero value uses the real ones.
type Options struct {
	Log *slog.Logger
	// Notify sends a state to the service manager (sd_notify); nil uses
	// $NOTIFY_SOCKET, and does nothing outside a Type=notify unit.
	Notify func(state string) error
	// Systemd, when set, replaces the D-Bus connection (tests).
	Systemd supervisor.Systemd
	// Ready, when set, is called with the listeners' addresses once both
	// listen (tests).
	Ready func(api, control net.Addr)
	// Inherited, when set, replaces the sockets systemd hands over
	// (activation.Files: $LISTEN_FDS) (tests).
	Inherited []*os.File
}

// Run serves until ctx ends, then stops accepting, lets requests in
// flight finish (at most gateway.shutdown_timeout; the rest are cut with an
// explicit error) and returns nil. It returns
// an error when vagentd cannot start or a listener fails.
func Run(ctx context.Context, cfg *config.Config, o Options) error {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	notify := o.Notify
	if notify == nil {
		notify = func(state string) error {
			_, err := sddaemon.SdNotify(false, state)
			return err
		}
	}
	t0 := time.Now()

	keys, err := loadKeys(cfg, log)
	if err != nil {
		return err
	}
	engineKey, err := enginekey.Ensure(cfg)
	if err != nil {
		return err
	}

	sd := o.Systemd
	if sd == nil {
		d, err := supervisor.NewDBus(ctx, cfg.Supervisor.DBusTimeout.Duration)
		if err != nil {
			return err
		}
		sd = d
	}
	defer sd.Close()
	gb, err := gpu.Open(cfg)
	if err != nil {
		return err
	}
	defer gb.Close()
	view := supervisor.FromBackend(gb)

	// The supervisor asks the gateway (built next, from the supervisor)
	// which agents are busy and which were used last: the closures break
	// the cycle. Nothing calls them before gw is set.
	var gw *gateway.Gateway
	sup := supervisor.New(cfg, supervisor.Options{
		Systemd:   sd,
		GPU:       view,
		RootCause: journal.StartCause(engine.Of(cfg).Log()),
		Log:       log,
		LastUsed:  func(agent string) time.Time { return gw.LastUsed(agent) },
		BeforeEvict: func(ctx context.Context, agent string) error {
			return gw.BeforeEvict(ctx, agent)
		},
		EngineKey:     engineKey,
		HostWeights:   plan.HostWeights(cfg),
		SleepResidual: plan.SleepResidual,
		NeverFits:     plan.NeverFits(cfg),
	})
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	gw, err = gateway.New(gateway.Options{
		Config:    cfg,
		Switcher:  sup,
		Keys:      keys,
		EngineKey: engineKey,
		Log:       log,
		Registry:  reg,
		GPU:       view,
	})
	if err != nil {
		return err
	}
	// Batches and pipeline runs: stored under the state directory, run by
	// the executor through gw. Their APIs mount on api and ctl below.
	store, executor, err := openWork(ctx, cfg, gw, reg, log)
	if err != nil {
		return err
	}
	defer store.Close()
	bapi := batchapi.New(batchapi.Options{Store: store, Gateway: gw, Notify: executor.Notify,
		MaxFileMiB: cfg.Batch.MaxFileMiB, BodyTimeout: cfg.Gateway.BodyTimeout.Duration, Log: log})
	executor.Register(batchapi.Kind, bapi.Kind())
	openPipelines(ctx, cfg, store, executor, gw, log)

	files := o.Inherited
	if files == nil {
		files = activation.Files(true)
	}
	eps, err := listen(cfg, files, log)
	if err != nil {
		return err
	}
	defer eps.close()
	apiLn, ctlLn := eps.api, eps.ctl

	errLog := slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	api := gw.Server(errLog)
	// The Batch API is on the main endpoint only: an agent's own listener
	// serves that agent's inference alone.
	api.Handler = bapi.Handler(api.Handler)
	apiLn = gw.Listener(apiLn)
	// Agents' own listeners (listen in an agent file), for clients with a
	// base URL per agent; and sockets handed over that no configuration
	// names any more, answered with an error.
	type agentListener struct {
		srv *http.Server
		ln  net.Listener
	}
	var own []agentListener
	for _, a := range cfg.Agents {
		if ln := eps.agents[a.Name]; ln != nil {
			own = append(own, agentListener{gw.AgentServer(a.Name, errLog), gw.Listener(ln)})
		}
	}
	for _, ln := range eps.stray {
		own = append(own, agentListener{gw.UnservedServer(ln.Addr().String(), errLog), ln})
	}
	ctl := &http.Server{Handler: gw.ControlHandler(), ReadHeaderTimeout: 30 * time.Second, ErrorLog: errLog}

	// The gateway's own loop (idle stops, metrics) outlives the listeners:
	// it stops only after the requests in flight are done.
	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRun()
	errc := make(chan error, 4+len(own))
	go func() { errc <- serve("gateway", api, apiLn) }()
	for _, l := range own {
		go func() { errc <- serve("agent listener", l.srv, l.ln) }()
	}
	go func() { errc <- serve("control socket", ctl, ctlLn) }()
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		if err := gw.Run(runCtx); err != nil && runCtx.Err() == nil {
			errc <- fmt.Errorf("gateway: %w", err)
		}
	}()
	// Background work stops first at shutdown: its requests in flight are
	// cut and their items go back to pending, for the next vagentd.
	workCtx, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()
	workDone := make(chan struct{})
	go func() {
		defer close(workDone)
		if err := executor.Run(workCtx); err != nil && workCtx.Err() == nil {
			errc <- fmt.Errorf("background work: %w", err)
		}
	}()

	if err := notify(sddaemon.SdNotifyReady + "\nSTATUS=serving on " + apiLn.Addr().String()); err != nil {
		log.Warn("sd_notify READY=1", "err", err)
	}
	if o.Ready != nil {
		o.Ready(apiLn.Addr(), ctlLn.Addr())
	}
	log.Info("vagentd ready", "version", Version, "listen", apiLn.Addr().String(),
		"control_socket", cfg.Gateway.ControlSocket, "agents", len(cfg.Agents),
		"keys", keys != nil, "startup", time.Since(t0).Round(time.Microsecond))

	bound := cfg.Gateway.ShutdownTimeout.Duration
	var failed error
	select {
	case <-ctx.Done():
		log.Info("stopping: agents keep running", "shutdown_timeout", bound)
	case failed = <-errc:
		log.Error("stopping after a failure: agents keep running", "err", failed)
	}
	_ = notify(sddaemon.SdNotifyStopping)
	stopWork()
	select {
	case <-workDone:
	case <-time.After(10 * time.Second):
		log.Warn("background work did not stop within 10s")
	}

	// Stop accepting (closing the listeners: under socket activation
	// systemd keeps its own copy open, so new connections wait in the
	// kernel's backlog for the next process instead of being refused), let
	// the requests in flight finish within the bound, then cut what is left
	// with an explicit error and give that a moment to reach the clients.
	// Agents are separate units: nothing here stops them.
	srvs := []*http.Server{api, ctl}
	for _, l := range own {
		srvs = append(srvs, l.srv)
	}
	if !shutdown(ctx, bound, srvs...) {
		n := gw.CutForShutdown()
		log.Warn("requests still in flight after gateway.shutdown_timeout: cutting them with an error", "cut", n, "shutdown_timeout", bound)
		if !shutdown(ctx, cutGrace, srvs...) {
			for _, s := range srvs {
				s.Close()
			}
		}
	}
	stopRun()
	select {
	case <-runDone:
	case <-time.After(5 * time.Second):
		log.Warn("gateway loop did not stop within 5s")
	}
	log.Info("vagentd stopped")
	return failed
}

// cutGrace is how long requests cut at shutdown get to write their error:
// the handlers end at once, unless a client does not read.
const cutGrace = 5 * time.Second

// shutdown stops the servers' listeners and waits, at most bound, for their
// requests in flight; it reports whether they all finished.
func shutdown(ctx context.Context, bound time.Duration, srvs ...*http.Server) bool {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), bound)
	defer cancel()
	shut := make(chan error, len(srvs))
	for _, s := range srvs {
		go func() { shut <- s.Shutdown(sctx) }()
	}
	ok := true
	for range srvs {
		if err := <-shut; err != nil {
			ok = false
		}
	}
	return ok
}

func serve(what string, srv *http.Server, ln net.Listener) error {
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve %s on %s: %w", what, ln.Addr(), err)
	}
	return nil
}

// loadKeys reads gateway.keys_file, or, when there is none, makes sure the
// endpoint is reachable from this host only.
func loadKeys(cfg *config.Config, log *slog.Logger) (*gateway.Keys, error) {
	if cfg.Gateway.KeysFile != "" {
		keys, err := gateway.LoadKeys(cfg.Gateway.KeysFile)
		if err != nil {
			return nil, fmt.Errorf("gateway.keys_file: %w", err)
		}
		return keys, nil
	}
	ok, err := Loopback(cfg.Gateway.Listen)
	if err != nil {
		return nil, fmt.Errorf("gateway.listen: %w", err)
	}
	if !ok {
		err := fmt.Errorf("%s: gateway.listen = %q is reachable from other hosts but no gateway.keys_file is set: "+
			"anyone could use the agents; set keys_file, or listen on 127.0.0.1", cfg.Path, cfg.Gateway.Listen)
		log.Error("refusing to start without keys on a non-loopback address", "listen", cfg.Gateway.Listen, "config", cfg.Path)
		return nil, err
	}
	for _, a := range cfg.Agents {
		if a.Listen == "" {
			continue
		}
		if ok, err := Loopback(a.Listen); err != nil || !ok {
			log.Error("refusing to start without keys on a non-loopback address", "listen", a.Listen, "agent", a.Name)
			return nil, fmt.Errorf("%s: listen = %q is reachable from other hosts but no gateway.keys_file is set: "+
				"anyone could use agent %s; set keys_file, or listen on 127.0.0.1", a.File, a.Listen, a.Name)
		}
	}
	log.Info("no keys file: listening on loopback only", "listen", cfg.Gateway.Listen)
	return nil, nil
}

// Loopback reports whether the listen address host:port accepts
// connections from this host only. An empty host (every interface) is not
// loopback; "localhost" is.
func Loopback(listen string) (bool, error) {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false, err
	}
	if host == "localhost" {
		return true, nil
	}
	host, _, _ = strings.Cut(host, "%") // an IPv6 zone
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback(), nil
}
