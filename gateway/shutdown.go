package gateway

import "net/http"

// retryShutdown is the Retry-After for requests a stopping vagentd cut: its
// successor serves within about a second.
const retryShutdown = 1

// CutForShutdown ends every request the gateway still holds once a stopping
// vagentd's gateway.shutdown_timeout has passed: requests in flight are cut
// (a stream ends with an error event, never a bare EOF) and requests waiting
// for their agent are answered, both with a 503 that says to send them
// again. It returns how many it ended.
func (g *Gateway) CutForShutdown() int {
	cause := &APIError{Status: http.StatusServiceUnavailable, Type: typeUnavailable, RetryAfter: retryShutdown,
		Message: "vagentd is restarting or stopping and this request did not finish within gateway.shutdown_timeout (" +
			g.cfg.Gateway.ShutdownTimeout.String() + "); send it again"}
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, ag := range g.byAgent {
		for l := range ag.active {
			l.cancel(cause)
		}
		ag.m.cut.Add(float64(len(ag.active)))
		n += len(ag.active) + len(ag.waiters)
		g.failWaitersLocked(ag, cause)
	}
	return n
}
