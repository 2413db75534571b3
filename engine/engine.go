// Package engine is the one place that knows the model servers vagent runs:
// their command lines per version, how to reach them, their health and
// sleep calls, which of their routes drive the engine rather than serve a
// model, and the texts their logs explain a failure with. units, supervisor,
// gateway, journal, plan, doctor, venv and ctl ask an Engine instead of
// knowing vLLM.
//
// One implementation exists, vLLM's (vllm*.go), which also drives vllm-sim:
// the simulator takes the same command line and serves the same routes.
// Adding an engine is one more implementation of Engine and Client and a
// case in For; see docs/architecture.md.
package engine

import (
	"context"
	"fmt"
	"regexp"

	"github.com/vagent-dev/vagent/config"
)

// Engine is one kind of model server.
type Engine interface {
	// Command is agent a's command line, binary first, each word with the
	// configuration field it came from. Bad values are reported together
	// as config.Errors naming file and field.
	Command(c *config.Config, a *config.Agent) ([]Arg, config.Errors)
	// Env is what the engine's process needs in its environment beyond
	// what vagent sets for every engine, in a fixed order.
	Env(c *config.Config, a *config.Agent) []Var
	// LockedEnv are the variables Env sets that configuration may not
	// override.
	LockedEnv() []string
	// Endpoint is where agent a's engine serves.
	Endpoint(c *config.Config, a *config.Agent) Endpoint
	// ControlRoute reports whether path (clean, lower case) drives the
	// engine instead of serving a model: the gateway never forwards it,
	// since the engine may not check its key there.
	ControlRoute(path string) bool
	// ModelRoute reports whether path, outside /v1/, serves a model: the
	// gateway routes it by the request's model like /v1/ paths.
	ModelRoute(path string) bool
	// Client talks to the engine at ep, sending key where the engine
	// checks one.
	Client(ep Endpoint, key string) Client
	// Log is how the engine's log says why a start failed.
	Log() LogFormat
	// Sampling says what each [sampling] key of agent a does on this
	// engine, in the order of config's keys.
	Sampling(a *config.Agent) []SamplingKey
}

// Client is the engine's API as the supervisor drives it. Every call is
// bounded by its context.
type Client interface {
	// Healthy reports whether the engine answers its health probe with
	// success (a sleeping engine does too).
	Healthy(ctx context.Context) bool
	// Sleep puts the engine to sleep at level (1: weights to host RAM,
	// 2: weights dropped).
	Sleep(ctx context.Context, level int) error
	// Wake wakes a sleeping engine.
	Wake(ctx context.Context) error
	// IsSleeping asks the engine whether it sleeps.
	IsSleeping(ctx context.Context) (bool, error)
	// Reload reloads the weights after a sleep that dropped them, and
	// drops cache entries computed with the old ones.
	Reload(ctx context.Context) error
	// WarmUp generates one token as model, so that the first request after
	// a wake does not pay for lazy allocations. An engine that refuses the
	// key returns an *HTTPError with status 401.
	WarmUp(ctx context.Context, model string) error
}

// LogFormat is how an engine writes its log, for finding the line that
// says why a start failed (journal.RootCause).
type LogFormat struct {
	// ProcessPrefix is the tag the engine puts before the lines of its
	// child processes, stripped before reading a line; nil for none.
	ProcessPrefix *regexp.Regexp
	// LevelPrefix is the engine's logging prefix, stripped before reading
	// a line; its first group is the level name (ERROR, CRITICAL, ...).
	LevelPrefix *regexp.Regexp
	// UsageError is the line that refuses a bad command line.
	UsageError *regexp.Regexp
	// Progress is a progress bar's line (a frame of tqdm's), never a cause;
	// nil for none.
	Progress *regexp.Regexp
	// Generic are texts of the exceptions the engine raises only to say
	// that the cause was logged above them.
	Generic []string
}

// Arg is one word of a command line and the configuration field it came
// from ("" for words vagent adds itself), for errors about it.
type Arg struct {
	Val   string
	Field string
}

// Var is one environment variable and the configuration field its value
// came from.
type Var struct {
	Key, Val, Field string
}

// SamplingKey is one [sampling] key as the engine applies it.
type SamplingKey struct {
	Key string
	// Value is the configured value.
	Value string
	// Effect says what it does: a default a request may override, or
	// something else.
	Effect string
}

// HTTPError is an engine's answer other than success to a control call.
type HTTPError struct {
	Op     string // "POST /sleep?level=1"
	Status int
	Body   string // trimmed, at most 300 bytes
}

func (e *HTTPError) Error() string {
	msg := fmt.Sprintf("%s: %d", e.Op, e.Status)
	if t := statusText(e.Status); t != "" {
		msg += " " + t
	}
	if e.Body != "" {
		msg += ": " + e.Body
	}
	return msg
}

// For returns the engine of kind (config's engine.kind).
func For(kind string) (Engine, error) {
	switch kind {
	case config.EngineVLLM:
		return VLLM{}, nil
	case config.EngineSim:
		return VLLM{Sim: true}, nil
	}
	return nil, fmt.Errorf("engine kind %q: want %q or %q", kind, config.EngineVLLM, config.EngineSim)
}

// Of returns the engine configured in c, vLLM's for a kind config does not
// know (config refuses those when it loads).
func Of(c *config.Config) Engine {
	e, err := For(c.Engine.Kind)
	if err != nil {
		return VLLM{}
	}
	return e
}
