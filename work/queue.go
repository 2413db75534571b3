package work

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// The executor's side of the store: items move pending → running (claim)
// and running → done or failed (complete) each in one transaction, so
// that a crash leaves every item in exactly one state and an answer is
// recorded together with its state.

// eligibleWhere selects the items the executor may run now: pending, of a
// job that is not paused, with no item before them or that one done.
const eligibleWhere = `i.state = 'pending'
	AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = i.job_id AND j.paused = 1)
	AND (i.after = 0 OR EXISTS (SELECT 1 FROM items a WHERE a.id = i.after AND a.state = 'done'))`

// Queue is the eligible work for one agent.
type Queue struct {
	Agent  string
	Items  int
	Oldest time.Time // when the oldest eligible item was created
}

// Queues returns the eligible work by agent.
func (s *Store) Queues(ctx context.Context) ([]Queue, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT i.agent, count(*), min(i.created_at) FROM items i WHERE `+eligibleWhere+` GROUP BY i.agent ORDER BY i.agent`)
	if err != nil {
		return nil, fmt.Errorf("queues: %w", err)
	}
	defer rows.Close()
	var out []Queue
	for rows.Next() {
		var q Queue
		var oldest int64
		if err := rows.Scan(&q.Agent, &q.Items, &oldest); err != nil {
			return nil, fmt.Errorf("queues: %w", err)
		}
		q.Oldest = time.UnixMilli(oldest)
		out = append(out, q)
	}
	return out, rows.Err()
}

// StateCount is how many items of a kind are in a state.
type StateCount struct {
	Kind  string
	State ItemState
	Items int
}

// Counts returns the number of items by job kind and state, and for each
// kind when its oldest pending item was created (metrics).
func (s *Store) Counts(ctx context.Context) ([]StateCount, map[string]time.Time, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT j.kind, i.state, count(*), min(i.created_at) FROM items i JOIN jobs j ON j.id = i.job_id GROUP BY j.kind, i.state`)
	if err != nil {
		return nil, nil, fmt.Errorf("count items: %w", err)
	}
	defer rows.Close()
	var out []StateCount
	oldest := map[string]time.Time{}
	for rows.Next() {
		var c StateCount
		var st string
		var min int64
		if err := rows.Scan(&c.Kind, &st, &c.Items, &min); err != nil {
			return nil, nil, fmt.Errorf("count items: %w", err)
		}
		c.State = ItemState(st)
		if c.State == Pending {
			oldest[c.Kind] = time.UnixMilli(min)
		}
		out = append(out, c)
	}
	return out, oldest, rows.Err()
}

// claim moves the next eligible item for agent from pending to running
// (one more attempt) and returns it with its job; ok is false when agent
// has none. Items go in job order (oldest job first), then Seq and Stage.
func (s *Store) claim(ctx context.Context, agent string) (it Item, j Job, ok bool, err error) {
	err = s.tx(ctx, "claim item", func(tx *sql.Tx) error {
		it, err = scanItem(tx.QueryRowContext(ctx, `SELECT `+itemColsI+` FROM items i JOIN jobs jj ON jj.id = i.job_id
			WHERE i.agent = ? AND `+eligibleWhere+` ORDER BY jj.rowid, i.seq, i.stage, i.id LIMIT 1`, agent))
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("claim item: %w", err)
		}
		now := ms(s.now())
		if _, err := tx.ExecContext(ctx, `UPDATE items SET state = 'running', attempts = attempts + 1, updated_at = ? WHERE id = ?`, now, it.ID); err != nil {
			return fmt.Errorf("claim item %d: %w", it.ID, err)
		}
		it.State, it.Attempts, it.UpdatedAt = Running, it.Attempts+1, time.UnixMilli(now)
		j, err = getJob(ctx, tx, it.JobID)
		if err != nil {
			return err
		}
		ok = true
		return nil
	})
	return it, j, ok, err
}

const itemColsI = `i.id, i.job_id, i.seq, i.stage, i.after, i.custom_id, i.agent, i.path, i.body, i.state, i.status, i.response, i.error, i.attempts, i.created_at, i.updated_at`

// Outcome is how an item run ended.
type Outcome struct {
	State    ItemState // Done or Failed
	Status   int
	Response []byte
	Error    string
}

// complete records a running item's outcome. A failed item fails the items
// that wait for it. It reports whether the job has now ended (no item
// pending or running). An item that is no longer running (the store was
// reset under it) is left alone.
func (s *Store) complete(ctx context.Context, id int64, o Outcome) (ended bool, err error) {
	err = s.tx(ctx, "complete item", func(tx *sql.Tx) error {
		var job string
		if err := tx.QueryRowContext(ctx, `SELECT job_id FROM items WHERE id = ?`, id).Scan(&job); err != nil {
			return fmt.Errorf("complete item %d: %w", id, err)
		}
		now := ms(s.now())
		if _, err := tx.ExecContext(ctx, `UPDATE items SET state = ?, status = ?, response = ?, error = ?, updated_at = ? WHERE id = ? AND state = 'running'`,
			o.State, o.Status, o.Response, o.Error, now, id); err != nil {
			return fmt.Errorf("complete item %d: %w", id, err)
		}
		if o.State != Done {
			if err := failDependents(ctx, tx, id, now); err != nil {
				return err
			}
		}
		if err := markEnded(ctx, tx, job, now); err != nil {
			return err
		}
		var end sql.NullInt64
		if err := tx.QueryRowContext(ctx, `SELECT ended_at FROM jobs WHERE id = ?`, job).Scan(&end); err != nil {
			return fmt.Errorf("complete item %d: %w", id, err)
		}
		ended = end.Valid
		return nil
	})
	return ended, err
}

// failDependents fails the pending items that wait, directly or not, for
// item id.
func failDependents(ctx context.Context, tx *sql.Tx, id int64, now int64) error {
	_, err := tx.ExecContext(ctx, `WITH RECURSIVE dep(id) AS (
			SELECT id FROM items WHERE after = ?
			UNION SELECT i.id FROM items i JOIN dep ON i.after = dep.id)
		UPDATE items SET state = 'failed', error = ?, updated_at = ? WHERE state = 'pending' AND id IN (SELECT id FROM dep)`,
		id, fmt.Sprintf("not run: item %d it depends on did not succeed", id), now)
	if err != nil {
		return fmt.Errorf("fail items after %d: %w", id, err)
	}
	return nil
}

// release puts a running item back to pending (a retry, or the executor
// stopping under it). Its attempt stays counted unless uncount: a request
// that never reached an engine (it gave way to a client) was no attempt.
func (s *Store) release(ctx context.Context, id int64, errMsg string, uncount bool) error {
	dec := 0
	if uncount {
		dec = 1
	}
	_, err := s.db.ExecContext(ctx, `UPDATE items SET state = 'pending', error = ?, attempts = max(attempts - ?, 0), updated_at = ? WHERE id = ? AND state = 'running'`,
		errMsg, dec, ms(s.now()), id)
	if err != nil {
		return fmt.Errorf("release item %d: %w", id, err)
	}
	return nil
}

// ResetRunning puts every running item back to pending: at start, an item
// still running was cut by a crash, and its answer, not recorded, was not
// delivered either (an engine aborts a request whose client went away).
func (s *Store) ResetRunning(ctx context.Context) (int, error) {
	r, err := s.db.ExecContext(ctx, `UPDATE items SET state = 'pending', updated_at = ? WHERE state = 'running'`, ms(s.now()))
	if err != nil {
		return 0, fmt.Errorf("reset running items: %w", err)
	}
	n, _ := r.RowsAffected()
	return int(n), nil
}

// unfinalized returns the jobs that ended but whose kind's Finished hook
// has not yet succeeded.
func (s *Store) unfinalized(ctx context.Context) ([]Job, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id FROM jobs WHERE ended_at IS NOT NULL AND finalized = 0 ORDER BY rowid`)
	if err != nil {
		return nil, fmt.Errorf("unfinalized jobs: %w", err)
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, fmt.Errorf("unfinalized jobs: %w", err)
		}
		ids = append(ids, id)
	}
	rows.Close()
	var out []Job
	for _, id := range ids {
		j, err := s.Job(ctx, id)
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				continue
			}
			return nil, err
		}
		out = append(out, j)
	}
	return out, nil
}

// finalize records that the job's Finished hook succeeded.
func (s *Store) finalize(ctx context.Context, id string) error {
	if _, err := s.db.ExecContext(ctx, `UPDATE jobs SET finalized = 1 WHERE id = ?`, id); err != nil {
		return fmt.Errorf("finalize job %s: %w", id, err)
	}
	return nil
}
