package supervisor

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/vagent-dev/vagent/config"
)

// backoff is an agent's run of failed starts: each failure in a row
// doubles how long the next start is refused (config's start_backoff, up to
// start_backoff_max), so that a client retrying an agent whose engine
// exits at once does not restart it in a loop. systemd's own start limit
// stays the operator's: vagent never resets it.
type backoff struct {
	failures int
	until    time.Time
	cause    string
}

// Backoff is an agent refused starts until Until after Failures failed
// starts in a row, the last for Cause.
type Backoff struct {
	Failures int       `json:"failures"`
	Until    time.Time `json:"until"`
	Cause    string    `json:"cause"`
}

// BackoffError refuses a start during the agent's backoff.
type BackoffError struct {
	Agent string
	Backoff
	// RetryAfter is how long until the next start is allowed.
	RetryAfter time.Duration
}

func (e *BackoffError) Error() string {
	return fmt.Sprintf("agent %s is in start backoff after %d failed start(s) in a row; next try in %s (`vagentctl restart %s` tries now): last failure: %s",
		e.Agent, e.Failures, e.RetryAfter.Round(time.Second), e.Agent, e.Cause)
}

func (s *Supervisor) now() time.Time {
	if s.o.Now != nil {
		return s.o.Now()
	}
	return time.Now()
}

// Backoff returns agent name's start backoff, when it is in one now.
func (s *Supervisor) Backoff(name string) (Backoff, bool) {
	s.boMu.Lock()
	defer s.boMu.Unlock()
	b, ok := s.backoffs[name]
	if !ok || !s.now().Before(b.until) {
		return Backoff{}, false
	}
	return Backoff{Failures: b.failures, Until: b.until, Cause: b.cause}, true
}

// checkBackoff refuses a start of a during its backoff.
func (s *Supervisor) checkBackoff(a *config.Agent) error {
	b, ok := s.Backoff(a.Name)
	if !ok {
		return nil
	}
	return &BackoffError{Agent: a.Name, Backoff: b, RetryAfter: b.Until.Sub(s.now())}
}

// startFailed records a failed start of a.
func (s *Supervisor) startFailed(a *config.Agent, err error) {
	base, most := s.cfg.Supervisor.StartBackoff.Duration, s.cfg.Supervisor.StartBackoffMax.Duration
	s.boMu.Lock()
	defer s.boMu.Unlock()
	b := s.backoffs[a.Name]
	if b == nil {
		b = &backoff{}
		s.backoffs[a.Name] = b
	}
	b.failures++
	b.cause = err.Error()
	d := base
	for i := 1; i < b.failures && d < most; i++ {
		d *= 2
	}
	d = min(d, most)
	b.until = s.now().Add(d)
	if base > 0 {
		s.o.Log.Warn("agent start failed: backing off", "agent", a.Name, "failures", b.failures, "for", d, "err", err)
	}
}

// startSucceeded clears a's backoff.
func (s *Supervisor) startSucceeded(a *config.Agent) {
	s.boMu.Lock()
	delete(s.backoffs, a.Name)
	s.boMu.Unlock()
}

// RestoreError is a start that failed after agents were evicted for it:
// Err is why it failed; the evicted agents were brought back (Restored) or
// could not be (NotRestored, each with why).
type RestoreError struct {
	Err         error
	Restored    []string
	NotRestored []string
}

func (e *RestoreError) Error() string {
	msg := e.Err.Error()
	if len(e.Restored) > 0 {
		msg += "; restored what was evicted for it: " + strings.Join(e.Restored, ", ")
	}
	if len(e.NotRestored) > 0 {
		msg += "; could not restore " + strings.Join(e.NotRestored, "; ")
	}
	return msg
}

func (e *RestoreError) Unwrap() error { return e.Err }

// restore brings back what a switch to a evicted (stopped or put to sleep)
// when a's start failed with cause, highest priority first, each only if
// it fits beside what runs: a failed switch must not leave the GPU empty
// (DESIGN.md invariant 11). It runs to the end even when ctx is done (the
// client that asked for a may have gone).
func (s *Supervisor) restore(ctx context.Context, a *config.Agent, res *Result, cause error) error {
	var names []string
	names = append(names, res.Evicted...)
	for _, sl := range res.Slept {
		names = append(names, sl.Agent)
	}
	if len(names) == 0 {
		return cause
	}
	rctx := context.WithValue(context.WithoutCancel(ctx), memoKey{}, &stateMemo{m: map[string]UnitState{}})
	// a may hold memory still (an engine that died during its load): it
	// is stopped already when its start failed; wait for the GPU to show
	// its memory back before anything else starts.
	if err := s.stopAndRelease(rctx, a); err != nil {
		s.o.Log.Warn("releasing the failed agent before restoring", "agent", a.Name, "err", err)
	}
	var agents []*config.Agent
	for _, n := range names {
		if v := s.cfg.Agent(n); v != nil {
			agents = append(agents, v)
		}
	}
	sort.SliceStable(agents, func(i, j int) bool { return agents[i].Priority > agents[j].Priority })
	re := &RestoreError{Err: cause}
	for _, v := range agents {
		s.o.Log.Info("restoring agent evicted for a failed start", "agent", v.Name, "for", a.Name)
		if _, err := s.transitionLocked(rctx, v, false); err != nil {
			re.NotRestored = append(re.NotRestored, fmt.Sprintf("%s: %v", v.Name, err))
			continue
		}
		re.Restored = append(re.Restored, v.Name)
	}
	res.Restored = re.Restored
	return re
}
