package batchapi

import (
	"context"
	"encoding/json"
	"io"
	"net/http"

	"github.com/vagent-dev/vagent/work"
)

// Ownership: who made a file or a batch, and the listings of one caller's.

func ownsJob(j work.Job, caller string) bool {
	m, err := readMeta(j)
	return err == nil && m.Owner == caller
}

func ownsFile(f work.File, caller string) bool { return f.Owner == caller }

// putFile stores a file of owner's, at most max bytes (0: no bound).
func putFile(ctx context.Context, s *work.Store, owner, purpose, filename string, r io.Reader, max int64) (work.File, error) {
	return s.PutFile(ctx, work.File{Owner: owner, Purpose: purpose, Filename: filename}, r, max)
}

func (a *API) createJob(r *http.Request, caller string, j work.Job, m meta, items []work.Item) (work.Job, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return work.Job{}, err
	}
	j.Meta = b
	return a.o.Store.CreateJob(r.Context(), j, items)
}

func (a *API) listOwnFiles(r *http.Request, caller, purpose string, p page) ([]work.File, bool, error) {
	if p.after != "" {
		if _, err := a.file(r, caller, p.after); err != nil {
			return nil, false, work.ErrNotFound
		}
	}
	return collect(p, func(after string, n int) ([]work.File, error) {
		return a.o.Store.Files(r.Context(), purpose, after, n)
	}, func(f work.File) string { return f.ID }, func(f work.File) bool { return ownsFile(f, caller) })
}

func (a *API) listOwnJobs(r *http.Request, caller string, p page) ([]work.Job, bool, error) {
	return collect(p, func(after string, n int) ([]work.Job, error) {
		return a.o.Store.Jobs(r.Context(), Kind, after, n)
	}, func(j work.Job) string { return j.ID }, func(j work.Job) bool { return ownsJob(j, caller) })
}
