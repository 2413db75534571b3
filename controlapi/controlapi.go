// Package controlapi is vagentd's control API, as both ends speak it: the
// wire types vagentd (gateway) answers with and vagentctl (ctl) reads, and
// the client vagentctl calls the control socket with. One definition, so
// the two cannot drift apart.
//
//	GET  /vagent/v1/status                            → []AgentState
//	POST /vagent/v1/switch {"agent":"dev"}            → supervisor.Result
//	POST /vagent/v1/load   {"agent":"dev","pin":true} → supervisor.Result
//	POST /vagent/v1/stop   {"agent":"dev"}            → Stopped
//	     /vagent/v1/runs...                           → pipeline runs (runs.go)
//
// Errors are OpenAI-shaped: {"error":{"message","type","param","code"}}.
package controlapi

import (
	"time"

	"github.com/vagent-dev/vagent/supervisor"
)

// Paths of the control API.
const (
	Prefix     = "/vagent/v1/"
	PathStatus = Prefix + "status"
	PathSwitch = Prefix + "switch"
	PathLoad   = Prefix + "load"
	PathStop   = Prefix + "stop"
)

// Agent states, as the control API, /v1/models and the metrics report them.
const (
	StateRunning  = "running"
	StateLoading  = "loading"
	StateSleeping = "sleeping"
	StateStopped  = "stopped"
	StateFailed   = "failed"
)

// AgentState is one agent in the status: what systemd and the GPU say,
// plus vagentd's view. State may say failed while systemd's unit is
// inactive (a failed start whose unit was stopped again): State and Error
// are the truth a client shows.
type AgentState struct {
	supervisor.AgentStatus
	// State is running, loading, sleeping, stopped or failed.
	State    string    `json:"state"`
	InFlight int       `json:"in_flight"`
	Queued   int       `json:"queued"`
	LastUsed time.Time `json:"last_used,omitzero"`
	// Pinned is true when the agent's config pins it or a load pinned it.
	Pinned bool `json:"pinned"`
	// Error is why its last start failed, while it stays failed.
	Error string `json:"error,omitempty"`
}

// Request is the body of POST switch, load and stop.
type Request struct {
	Agent string `json:"agent"`
	// Pin, for load: pin the agent (true) against idle stops and eviction
	// for this vagentd's life, or drop such a pin (false).
	Pin *bool `json:"pin,omitempty"`
}

// Stopped is the answer to a stop.
type Stopped struct {
	Agent   string `json:"agent"`
	Stopped bool   `json:"stopped"`
}
