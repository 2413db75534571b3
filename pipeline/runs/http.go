package runs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/vagent-dev/vagent/controlapi"
	"github.com/vagent-dev/vagent/work"
)

// ServeHTTP serves the runs routes of the control API (controlapi.PathRuns
// and below). Errors are OpenAI-shaped, like the rest of the control API.
func (r *Runs) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	rest := strings.TrimPrefix(req.URL.Path, controlapi.PathRuns)
	rest = strings.Trim(rest, "/")
	parts := strings.Split(rest, "/")
	ctx := req.Context()
	switch {
	case rest == "":
		switch req.Method {
		case http.MethodPost:
			r.serveSubmit(w, req)
		case http.MethodGet, http.MethodHead:
			q := req.URL.Query()
			limit := 20
			if s := q.Get("limit"); s != "" {
				n, err := strconv.Atoi(s)
				if err != nil || n <= 0 {
					writeError(w, http.StatusBadRequest, "invalid_request_error", "limit=%q: want a positive number", s)
					return
				}
				limit = n
			}
			l, err := r.List(ctx, q.Get("after"), limit)
			if err != nil {
				writeStoreError(w, err)
				return
			}
			writeJSON(w, http.StatusOK, l)
		default:
			methodNotAllowed(w, req, "GET, POST")
		}
	case len(parts) == 1:
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			methodNotAllowed(w, req, http.MethodGet)
			return
		}
		run, err := r.Get(ctx, parts[0])
		if err != nil {
			writeStoreError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, run)
	case len(parts) == 2 && parts[1] == "events":
		if req.Method != http.MethodGet {
			methodNotAllowed(w, req, http.MethodGet)
			return
		}
		r.serveEvents(w, req, parts[0])
	case len(parts) == 2 && (parts[1] == "cancel" || parts[1] == "pause" || parts[1] == "resume"):
		if req.Method != http.MethodPost {
			methodNotAllowed(w, req, http.MethodPost)
			return
		}
		var (
			run *controlapi.Run
			err error
		)
		switch parts[1] {
		case "cancel":
			run, err = r.Cancel(ctx, parts[0])
		case "pause":
			run, err = r.Pause(ctx, parts[0], true)
		case "resume":
			run, err = r.Pause(ctx, parts[0], false)
		}
		if err != nil {
			writeStoreError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, run)
	default:
		writeError(w, http.StatusNotFound, "not_found_error", "no control route %s: runs, runs/ID, runs/ID/events, runs/ID/cancel|pause|resume", req.URL.Path)
	}
}

func (r *Runs) serveSubmit(w http.ResponseWriter, req *http.Request) {
	max := int64(r.cfg.Gateway.MaxBodyMiB) << 20
	if max <= 0 {
		max = 64 << 20
	}
	var rr controlapi.RunRequest
	dec := json.NewDecoder(io.LimitReader(req.Body, max))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rr); err != nil {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "bad request body: %v", err)
		return
	}
	run, err := r.Submit(req.Context(), rr)
	if err != nil {
		var br *BadRequest
		if errors.As(err, &br) {
			writeError(w, http.StatusBadRequest, "invalid_request_error", "%v", err)
			return
		}
		writeError(w, http.StatusInternalServerError, "server_error", "%v", err)
		return
	}
	writeJSON(w, http.StatusOK, run)
}

// serveEvents streams run id's events as NDJSON: the run first, then every
// answer already done (whole), then live events, pings when quiet, and the
// run last, once it has ended.
func (r *Runs) serveEvents(w http.ResponseWriter, req *http.Request, id string) {
	ctx := req.Context()
	// Subscribed before the snapshot, so that nothing falls between.
	evs, unsub := r.exec.Subscribe(id)
	defer unsub()
	j, err := r.store.Job(ctx, id)
	if err == nil && j.Kind != Kind {
		err = fmt.Errorf("run %s: %w", id, work.ErrNotFound)
	}
	if err != nil {
		writeStoreError(w, err)
		return
	}
	m, err := readMeta(j)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "server_error", "%v", err)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	send := func(ev controlapi.RunEvent) bool {
		// A follower that does not read does not hold vagentd.
		rc.SetWriteDeadline(time.Now().Add(time.Minute))
		if enc.Encode(ev) != nil {
			return false
		}
		return rc.Flush() == nil
	}
	run := view(j)
	if !send(controlapi.RunEvent{Type: controlapi.EventRun, Run: run}) || controlapi.RunEnded(run.Status) {
		return
	}
	items, err := r.store.Items(ctx, id)
	if err != nil {
		return
	}
	// The snapshot's items: ended ones are not told again, started ones
	// not started again, whatever the channel still holds of them.
	seen, started := map[int64]bool{}, map[int64]bool{}
	for _, it := range items {
		switch it.State {
		case work.Done, work.Failed:
			seen[it.ID] = true
			if !send(r.ended(ctx, m, it)) {
				return
			}
		case work.Running:
			started[it.ID] = true
			ev := event(m, work.Event{Type: work.EventStart, Seq: it.Seq, Stage: it.Stage, Agent: it.Agent})
			if !send(ev) {
				return
			}
		}
	}
	ping := time.NewTicker(controlapi.PingInterval)
	defer ping.Stop()
	last := run.Status
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.done:
			return
		case ev, ok := <-evs:
			if !ok {
				return
			}
			if ev.Type != work.EventJob && seen[ev.ItemID] {
				continue
			}
			switch ev.Type {
			case work.EventJob:
			case work.EventDone, work.EventFailed:
				seen[ev.ItemID] = true
				it, err := r.store.Item(ctx, ev.ItemID)
				if err != nil {
					it = work.Item{ID: ev.ItemID, Seq: ev.Seq, Stage: ev.Stage, Agent: ev.Agent, State: work.Failed, Error: ev.Text}
				}
				if !send(r.ended(ctx, m, it)) {
					return
				}
			default:
				if ev.Type == work.EventStart {
					if started[ev.ItemID] {
						continue
					}
					started[ev.ItemID] = true
				}
				if !send(event(m, ev)) {
					return
				}
				continue
			}
		case <-ping.C:
			if !send(controlapi.RunEvent{Type: controlapi.EventPing}) {
				return
			}
		}
		// After an item or the job ended, and on each ping: has the run
		// changed status (ended, paused)?
		now, err := r.Get(ctx, id)
		if err != nil {
			return
		}
		if now.Status != last || controlapi.RunEnded(now.Status) {
			last = now.Status
			if !send(controlapi.RunEvent{Type: controlapi.EventRun, Run: now}) || controlapi.RunEnded(now.Status) {
				return
			}
		}
	}
}

// ended is the stage_done or stage_failed event of item it, with the whole
// answer or the error.
func (r *Runs) ended(ctx context.Context, m *meta, it work.Item) controlapi.RunEvent {
	ev := event(m, work.Event{Type: work.EventDone, Seq: it.Seq, Stage: it.Stage, Agent: it.Agent})
	if it.State != work.Done {
		ev.Type, ev.Text = controlapi.EventStageFailed, it.Error
		return ev
	}
	a, err := ParseAnswer(it.Response)
	if err != nil {
		ev.Type, ev.Text = controlapi.EventStageFailed, err.Error()
		return ev
	}
	ev.Text, ev.Tokens = a.Content, a.Tokens
	return ev
}

func writeStoreError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, work.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found_error", "%v: vagentctl run list shows the runs", err)
	case errors.Is(err, ErrEnded):
		writeError(w, http.StatusConflict, "invalid_request_error", "%v", err)
	default:
		writeError(w, http.StatusInternalServerError, "server_error", "%v", err)
	}
}

func methodNotAllowed(w http.ResponseWriter, r *http.Request, allow string) {
	w.Header().Set("Allow", allow)
	writeError(w, http.StatusMethodNotAllowed, "invalid_request_error", "%s %s: use %s", r.Method, r.URL.Path, allow)
}

// writeError answers an OpenAI-shaped error, as the rest of the control
// API does.
func writeError(w http.ResponseWriter, status int, typ, format string, args ...any) {
	writeJSON(w, status, map[string]any{"error": map[string]any{
		"message": fmt.Sprintf(format, args...), "type": typ, "param": nil, "code": status,
	}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"error":{"message":"encode answer","type":"server_error","param":null,"code":500}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}
