package gateway

import (
	"fmt"
	"net/http"
)

// What the gateway lends the APIs mounted beside it (the Batch API): the
// same key check, model resolution and error shape as an inference
// request, so that a key sees the same agents everywhere.

// Caller authenticates r as an inference request is: it returns the key's
// name, "" when there is no keys file (every client is the one anonymous
// caller, as for gateway.max_requests_per_key), or an *APIError (401).
func (g *Gateway) Caller(r *http.Request) (string, error) {
	if g.o.Keys == nil {
		return anonymousKey, nil
	}
	k, aerr := g.authenticate(r)
	if aerr != nil {
		return "", aerr
	}
	return k.name, nil
}

// AgentFor resolves model for the caller named caller (from Caller) as an
// inference request's "model" is resolved: the agent's name, or an
// *APIError (404 naming the models the caller may use, 403 when its key
// may not use that agent).
func (g *Gateway) AgentFor(caller, model string) (string, error) {
	var key *keyEntry
	if g.o.Keys != nil {
		key = g.o.Keys.named(caller)
		if key == nil {
			return "", apiErr(http.StatusForbidden, typePermission, "key %s is no longer in the keys file", caller)
		}
	}
	ag, aerr := g.resolve(model, key)
	if aerr != nil {
		return "", aerr
	}
	if aerr := permit(key, ag); aerr != nil {
		return "", aerr
	}
	return ag.name, nil
}

// permit is the 403 for a key that may not use ag, or nil; a nil key (no
// keys file) may use every agent.
func permit(key *keyEntry, ag *agentRT) *APIError {
	if key != nil && !key.allows(ag.cfg) {
		return apiErr(http.StatusForbidden, typePermission, "key %s may not use agent %s", key.name, ag.name)
	}
	return nil
}

// Error is an OpenAI-shaped error with the type OpenAI gives status, and
// param naming the request field at fault ("" for none).
func Error(status int, param, format string, a ...any) *APIError {
	typ, ok := typeOfStatus[status]
	if !ok {
		typ = typeServer
	}
	return &APIError{Status: status, Type: typ, Param: param, Message: fmt.Sprintf(format, a...)}
}

var typeOfStatus = map[int]string{
	http.StatusBadRequest:            typeInvalidRequest,
	http.StatusUnauthorized:          typeAuthentication,
	http.StatusForbidden:             typePermission,
	http.StatusNotFound:              typeNotFound,
	http.StatusMethodNotAllowed:      typeInvalidRequest,
	http.StatusRequestTimeout:        typeTimeout,
	http.StatusConflict:              typeConflict,
	http.StatusRequestEntityTooLarge: typeInvalidRequest,
	http.StatusUnsupportedMediaType:  typeInvalidRequest,
	http.StatusTooManyRequests:       typeRateLimit,
	http.StatusServiceUnavailable:    typeUnavailable,
}

// WriteError sends err as OpenAI's error document: an *APIError as it
// is, anything else as a 500. It returns the status sent.
func WriteError(w http.ResponseWriter, err error) int { return writeError(w, err) }
