package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"

	"github.com/vagent-dev/vagent/supervisor"
)

// Error types in OpenAI-shaped error bodies, by status.
const (
	typeInvalidRequest = "invalid_request_error"
	typeAuthentication = "authentication_error"
	typePermission     = "permission_error"
	typeNotFound       = "not_found_error"
	typeConflict       = "conflict_error"
	typeRateLimit      = "rate_limit_error"
	typeServer         = "server_error"
	typeBadGateway     = "bad_gateway_error"
	typeUnavailable    = "service_unavailable_error"
	typeTimeout        = "timeout_error"
)

// Retry-After values, in seconds.
const (
	retryQueueFull = 1
	retryMaxWait   = 5
	retryDrained   = 1
	retryKeyLimit  = 1
)

// APIError is a failure the gateway reports to a client in OpenAI's error
// shape: {"error":{"message","type","param","code"}}. Code is the HTTP
// status, as vLLM sets it.
type APIError struct {
	Status  int
	Type    string
	Message string
	// Param names the request field at fault, when one is.
	Param string
	// RetryAfter, when positive, is sent as the Retry-After header.
	RetryAfter int
	// yielded marks background work that gave way to a client (see
	// Yielded).
	yielded bool
}

func (e *APIError) Error() string { return e.Message }

func apiErr(status int, typ, format string, a ...any) *APIError {
	return &APIError{Status: status, Type: typ, Message: fmt.Sprintf(format, a...)}
}

type errorBody struct {
	Error errorInfo `json:"error"`
}

type errorInfo struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    int     `json:"code"`
}

// body is the JSON error document.
func (e *APIError) body() []byte {
	info := errorInfo{Message: e.Message, Type: e.Type, Code: e.Status}
	if e.Param != "" {
		info.Param = &e.Param
	}
	b, _ := json.Marshal(errorBody{info})
	return b
}

// write sends e as a JSON response.
func (e *APIError) write(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	if e.RetryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(e.RetryAfter))
	}
	if e.yielded {
		h.Set(yieldedHeader, "1")
	}
	w.WriteHeader(e.Status)
	w.Write(e.body())
}

// writeError sends err, an *APIError or anything else (a 500), as JSON.
func writeError(w http.ResponseWriter, err error) int {
	ae := asAPIError(err)
	ae.write(w)
	return ae.Status
}

func asAPIError(err error) *APIError {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae
	}
	return &APIError{Status: http.StatusInternalServerError, Type: typeServer, Message: err.Error()}
}

// PinnedError refuses to evict an agent pinned by a load request.
type PinnedError struct{ Agent string }

func (e *PinnedError) Error() string {
	return fmt.Sprintf("agent %s is pinned (POST /vagent/v1/load with \"pin\": true): it is not evicted", e.Agent)
}

// switchError turns an error from Switcher.Switch into what a client sees:
// 409 when the agent cannot fit or would need to evict a pinned agent, 500
// with the engine's root cause when it failed to start, 503 when the wait
// was cut short or the agent is in its start backoff.
func switchError(agent string, err error) *APIError {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae
	}
	var be *supervisor.BackoffError
	if errors.As(err, &be) {
		// The agent failed to start moments ago: say why, and when a new
		// try will be made, rather than starting it again in a loop.
		return &APIError{Status: http.StatusServiceUnavailable, Type: typeUnavailable, Message: be.Error(),
			RetryAfter: max(1, int(math.Ceil(be.RetryAfter.Seconds())))}
	}
	var se *supervisor.StartError
	if errors.As(err, &se) {
		// err, not se: it also says what was restored after the failure.
		return apiErr(http.StatusInternalServerError, typeServer, "%s", err.Error())
	}
	if isConflict(err) {
		return apiErr(http.StatusConflict, typeConflict, "cannot start agent %s: %v", agent, err)
	}
	return apiErr(http.StatusInternalServerError, typeServer, "switch to agent %s: %v", agent, err)
}

// isConflict reports errors that say the agent cannot run now because of
// what else runs: FitError, PinnedError, and the supervisor's refusals to
// evict a pinned agent (plain errors, recognised by their text).
func isConflict(err error) bool {
	var fe *supervisor.FitError
	var pe *PinnedError
	if errors.As(err, &fe) || errors.As(err, &pe) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "which is pinned") || strings.Contains(msg, "cannot run beside")
}

// inferenceError is switchError for a client waiting to be served: a
// conflict is temporary from its point of view, so it gets 503 with
// Retry-After rather than 409.
func inferenceError(agent string, err error) *APIError {
	ae := switchError(agent, err)
	if ae.Status == http.StatusConflict {
		return &APIError{Status: http.StatusServiceUnavailable, Type: typeUnavailable, Message: ae.Message, RetryAfter: retryMaxWait}
	}
	return ae
}
