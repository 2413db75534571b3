// Package work holds the background work of vagentd: batches (the OpenAI
// Batch API) and pipeline runs, their items and files, stored in one SQLite
// database under the state directory so that accepted work survives any
// crash, and the executor that runs the items through the gateway grouped by
// agent, so that many items cost few switches.
//
// The store knows jobs, items and files; what a job's status and meta mean
// belongs to its kind (batch, pipeline), which plugs into the executor
// through the Kind hooks.
package work

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	// modernc.org/sqlite: SQLite in pure Go, so vagentd stays one static
	// binary without cgo.
	_ "modernc.org/sqlite"
)

// Errors callers tell apart with errors.Is.
var (
	// ErrNotFound: no job, item or file has that id.
	ErrNotFound = errors.New("not found")
	// ErrTooLarge: an upload is over Options.MaxFileBytes.
	ErrTooLarge = errors.New("file too large")
	// ErrSchema: the database was written by a newer vagentd.
	ErrSchema = errors.New("unknown database schema")
)

// DBName is the database's file name in the store's directory; FilesDir
// holds the files' contents.
const (
	DBName   = "work.db"
	FilesDir = "files"
)

// Options bound what the store keeps.
type Options struct {
	// Retention is how long a job is kept after its last item ended (with
	// its items and the files only it used), and how long a file that no
	// job uses is kept. Zero keeps everything.
	Retention time.Duration
	// BusyTimeout bounds how long a statement waits for another
	// connection's write lock; zero means 5s.
	BusyTimeout time.Duration

	// create opens a new temporary file in dir (tests inject failures).
	create func(dir, pattern string) (fileWriter, error)
}

// Store is the database of jobs, items and files. It is safe for
// concurrent use.
type Store struct {
	db    *sql.DB
	dir   string
	files string
	o     Options
	now   func() time.Time
}

// Open opens (creating it if needed) the store in dir: dir/work.db and
// dir/files/. It brings the schema up to date and removes file contents
// that a crash left without a row.
func Open(ctx context.Context, dir string, o Options) (*Store, error) {
	if o.BusyTimeout <= 0 {
		o.BusyTimeout = 5 * time.Second
	}
	if o.create == nil {
		o.create = createTemp
	}
	files := filepath.Join(dir, FilesDir)
	if err := os.MkdirAll(files, 0o750); err != nil {
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	path := filepath.Join(dir, DBName)
	// Immediate transactions take the write lock at BEGIN: a transaction
	// that reads then writes can then never fail with SQLITE_BUSY halfway.
	// synchronous=FULL makes each commit durable before it returns, so
	// what a caller was told is stored survives a power cut.
	dsn := "file:" + path + "?_txlock=immediate" +
		fmt.Sprintf("&_pragma=busy_timeout(%d)", o.BusyTimeout.Milliseconds()) +
		"&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_pragma=synchronous(FULL)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	s := &Store{db: db, dir: dir, files: files, o: o, now: time.Now}
	if err := migrate(ctx, db); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	if err := s.cleanFiles(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	return s, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Path is the database file (readers such as tests and backups open it
// read-only).
func (s *Store) Path() string { return filepath.Join(s.dir, DBName) }

// ItemState is where an item is in its life: pending → running → done or
// failed; pending → cancelled.
type ItemState string

// The item states.
const (
	Pending   ItemState = "pending"
	Running   ItemState = "running"
	Done      ItemState = "done"
	Failed    ItemState = "failed"
	Cancelled ItemState = "cancelled"
)

// Job is one batch or pipeline run.
type Job struct {
	// ID is "batch_..." or "run_..." (random, URL-safe); CreateJob makes
	// one when it is empty.
	ID string
	// Kind is "batch" or "pipeline": which Kind's hooks run it.
	Kind string
	// Status is the kind's own (a batch: OpenAI's statuses); the store
	// does not interpret it.
	Status string
	// Meta is the kind's own JSON (a batch object's fields, a pipeline's
	// name and inputs).
	Meta json.RawMessage
	// Paused jobs keep their items pending: the executor takes none.
	Paused bool
	// Files are the ids of the files the job uses (input, output, error):
	// retention deletes them with the job, never while it is kept.
	Files []string
	// CreatedAt is set by CreateJob.
	CreatedAt time.Time
	// EndedAt is when the job's last item left pending and running (zero
	// while some have not).
	EndedAt time.Time
	// Finalized is set once the kind's Finished hook returned nil.
	Finalized bool
	// Counts are the job's items by state, filled on read.
	Counts map[ItemState]int
}

// Total is the number of items of the job (from Counts).
func (j Job) Total() int {
	n := 0
	for _, c := range j.Counts {
		n += c
	}
	return n
}

// Item is one request of a job.
type Item struct {
	ID    int64
	JobID string
	// Seq orders items within the job (a batch's line number, a
	// pipeline's input index).
	Seq int
	// Stage is 0 for a batch, the stage index for a pipeline.
	Stage int
	// After is 0 or the item that must be done first (a pipeline: the same
	// input's previous stage). If that one fails or is cancelled, so is
	// this one.
	After int64
	// AfterIndex, in CreateJob only, names the item to wait for among
	// those of the same call: i+1 for items[i], 0 for none. CreateJob
	// turns it into After, since ids are made by the insert.
	AfterIndex int
	CustomID   string
	// Agent is the model name as the gateway resolves it.
	Agent string
	// Path is "/v1/chat/completions" or "/v1/completions".
	Path string
	// Body is the request; nil if the kind's Prepare hook builds it.
	Body     []byte
	State    ItemState
	Status   int    // the answer's HTTP status
	Response []byte // the answer's body (JSON)
	Error    string
	Attempts int
	// CreatedAt and UpdatedAt are set by the store.
	CreatedAt, UpdatedAt time.Time
}

// File is the metadata of a stored file.
type File struct {
	ID string
	// Owner is who may see the file (the Batch API: the API key's name;
	// "" without keys). The store keeps it and does not interpret it.
	Owner     string
	Purpose   string
	Filename  string
	Bytes     int64
	CreatedAt time.Time
}

// NewID returns prefix followed by 24 random URL-safe characters.
func NewID(prefix string) string {
	var b [15]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return prefix + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

// idPrefix is the prefix of a new job's id by kind.
func idPrefix(kind string) string {
	switch kind {
	case "batch":
		return "batch_"
	case "pipeline":
		return "run_"
	}
	return kind + "_"
}

func ms(t time.Time) int64 { return t.UnixMilli() }

func fromMS(v sql.NullInt64) time.Time {
	if !v.Valid {
		return time.Time{}
	}
	return time.UnixMilli(v.Int64)
}

// tx runs f in one (immediate) transaction.
func (s *Store) tx(ctx context.Context, op string, f func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("%s: begin: %w", op, err)
	}
	defer tx.Rollback()
	if err := f(tx); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("%s: commit: %w", op, err)
	}
	return nil
}

// CreateJob stores j and its items in one transaction: either all of it is
// stored, or nothing. Items start pending (a state given as Cancelled or
// Failed is kept, for lines the kind refused up front). It returns the job
// as stored.
func (s *Store) CreateJob(ctx context.Context, j Job, items []Item) (Job, error) {
	if j.ID == "" {
		j.ID = NewID(idPrefix(j.Kind))
	}
	if len(j.Meta) == 0 {
		j.Meta = json.RawMessage("{}")
	}
	now := s.now()
	err := s.tx(ctx, "create job "+j.ID, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO jobs(id, kind, status, meta, paused, created_at) VALUES (?,?,?,?,?,?)`,
			j.ID, j.Kind, j.Status, string(j.Meta), j.Paused, ms(now)); err != nil {
			return fmt.Errorf("create job %s: %w", j.ID, err)
		}
		if err := setFiles(ctx, tx, j.ID, j.Files); err != nil {
			return err
		}
		stmt, err := tx.PrepareContext(ctx, `INSERT INTO items(job_id, seq, stage, after, custom_id, agent, path, body, state, status, response, error, created_at, updated_at)
			VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)`)
		if err != nil {
			return fmt.Errorf("create job %s: %w", j.ID, err)
		}
		defer stmt.Close()
		ids := make([]int64, len(items))
		for i, it := range items {
			st := it.State
			if st == "" || st == Running {
				st = Pending
			}
			after := it.After
			if it.AfterIndex != 0 {
				if it.AfterIndex < 1 || it.AfterIndex > i {
					return fmt.Errorf("create job %s: item %d: AfterIndex %d must name an earlier item of the same call (1..%d)", j.ID, i, it.AfterIndex, i)
				}
				after = ids[it.AfterIndex-1]
			}
			r, err := stmt.ExecContext(ctx, j.ID, it.Seq, it.Stage, after, it.CustomID, it.Agent, it.Path,
				it.Body, string(st), it.Status, it.Response, it.Error, ms(now), ms(now))
			if err != nil {
				return fmt.Errorf("create job %s: item %d: %w", j.ID, i, err)
			}
			if ids[i], err = r.LastInsertId(); err != nil {
				return fmt.Errorf("create job %s: item %d: %w", j.ID, i, err)
			}
		}
		// Items refused up front take the items after them along, so that
		// the job can still end.
		for i, it := range items {
			if it.State == Failed || it.State == Cancelled {
				if err := failDependents(ctx, tx, ids[i], ms(now)); err != nil {
					return err
				}
			}
		}
		if err := markEnded(ctx, tx, j.ID, ms(now)); err != nil {
			return err
		}
		j, err = getJob(ctx, tx, j.ID)
		return err
	})
	if err != nil {
		return Job{}, err
	}
	return j, nil
}

// setFiles replaces the files job id uses.
func setFiles(ctx context.Context, tx *sql.Tx, id string, files []string) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM job_files WHERE job_id = ?`, id); err != nil {
		return fmt.Errorf("job %s: files: %w", id, err)
	}
	for _, f := range files {
		if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO job_files(job_id, file_id) VALUES (?,?)`, id, f); err != nil {
			if strings.Contains(err.Error(), "FOREIGN KEY") {
				return fmt.Errorf("job %s: file %s: %w", id, f, ErrNotFound)
			}
			return fmt.Errorf("job %s: file %s: %w", id, f, err)
		}
	}
	return nil
}

// queryer is what *sql.DB and *sql.Tx share.
type queryer interface {
	QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row
}

const jobCols = `id, kind, status, meta, paused, created_at, ended_at, finalized`

func scanJob(sc interface{ Scan(...any) error }) (Job, error) {
	var j Job
	var meta string
	var created int64
	var ended sql.NullInt64
	if err := sc.Scan(&j.ID, &j.Kind, &j.Status, &meta, &j.Paused, &created, &ended, &j.Finalized); err != nil {
		return Job{}, err
	}
	j.Meta = json.RawMessage(meta)
	j.CreatedAt = time.UnixMilli(created)
	j.EndedAt = fromMS(ended)
	return j, nil
}

// fill adds the job's counts and files.
func fill(ctx context.Context, q queryer, j *Job) error {
	j.Counts = map[ItemState]int{}
	rows, err := q.QueryContext(ctx, `SELECT state, count(*) FROM items WHERE job_id = ? GROUP BY state`, j.ID)
	if err != nil {
		return fmt.Errorf("job %s: counts: %w", j.ID, err)
	}
	for rows.Next() {
		var st string
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			rows.Close()
			return fmt.Errorf("job %s: counts: %w", j.ID, err)
		}
		j.Counts[ItemState(st)] = n
	}
	if err := rows.Close(); err != nil {
		return err
	}
	j.Files = nil
	rows, err = q.QueryContext(ctx, `SELECT file_id FROM job_files WHERE job_id = ? ORDER BY rowid`, j.ID)
	if err != nil {
		return fmt.Errorf("job %s: files: %w", j.ID, err)
	}
	defer rows.Close()
	for rows.Next() {
		var f string
		if err := rows.Scan(&f); err != nil {
			return fmt.Errorf("job %s: files: %w", j.ID, err)
		}
		j.Files = append(j.Files, f)
	}
	return rows.Err()
}

func getJob(ctx context.Context, q queryer, id string) (Job, error) {
	j, err := scanJob(q.QueryRowContext(ctx, `SELECT `+jobCols+` FROM jobs WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Job{}, fmt.Errorf("job %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Job{}, fmt.Errorf("job %s: %w", id, err)
	}
	if err := fill(ctx, q, &j); err != nil {
		return Job{}, err
	}
	return j, nil
}

// Job returns the job id with its counts; ErrNotFound if there is none.
func (s *Store) Job(ctx context.Context, id string) (Job, error) {
	var j Job
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		var err error
		j, err = getJob(ctx, tx, id)
		return err
	})
	return j, err
}

// readTx runs f in a read transaction, so that a job and its counts come
// from one snapshot.
func (s *Store) readTx(ctx context.Context, f func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("begin read: %w", err)
	}
	defer tx.Rollback()
	return f(tx)
}

// Jobs lists jobs of kind (all kinds if empty), newest first, at most
// limit (all if limit <= 0), starting after the job with id after (OpenAI's
// cursor; ErrNotFound if it does not exist).
func (s *Store) Jobs(ctx context.Context, kind, after string, limit int) ([]Job, error) {
	var out []Job
	err := s.readTx(ctx, func(tx *sql.Tx) error {
		q := `SELECT ` + jobCols + ` FROM jobs WHERE (? = '' OR kind = ?)`
		args := []any{kind, kind}
		if after != "" {
			var rowid int64
			if err := tx.QueryRowContext(ctx, `SELECT rowid FROM jobs WHERE id = ?`, after).Scan(&rowid); err != nil {
				if errors.Is(err, sql.ErrNoRows) {
					return fmt.Errorf("list jobs after %s: %w", after, ErrNotFound)
				}
				return fmt.Errorf("list jobs: %w", err)
			}
			q += ` AND rowid < ?`
			args = append(args, rowid)
		}
		q += ` ORDER BY rowid DESC`
		if limit > 0 {
			q += fmt.Sprintf(` LIMIT %d`, limit)
		}
		rows, err := tx.QueryContext(ctx, q, args...)
		if err != nil {
			return fmt.Errorf("list jobs: %w", err)
		}
		for rows.Next() {
			j, err := scanJob(rows)
			if err != nil {
				rows.Close()
				return fmt.Errorf("list jobs: %w", err)
			}
			out = append(out, j)
		}
		if err := rows.Close(); err != nil {
			return fmt.Errorf("list jobs: %w", err)
		}
		for i := range out {
			if err := fill(ctx, tx, &out[i]); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

const itemCols = `id, job_id, seq, stage, after, custom_id, agent, path, body, state, status, response, error, attempts, created_at, updated_at`

func scanItem(sc interface{ Scan(...any) error }) (Item, error) {
	var it Item
	var st string
	var created, updated int64
	if err := sc.Scan(&it.ID, &it.JobID, &it.Seq, &it.Stage, &it.After, &it.CustomID, &it.Agent, &it.Path, &it.Body,
		&st, &it.Status, &it.Response, &it.Error, &it.Attempts, &created, &updated); err != nil {
		return Item{}, err
	}
	it.State = ItemState(st)
	it.CreatedAt, it.UpdatedAt = time.UnixMilli(created), time.UnixMilli(updated)
	return it, nil
}

// Items returns the job's items ordered by Seq, then Stage.
func (s *Store) Items(ctx context.Context, jobID string) ([]Item, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+itemCols+` FROM items WHERE job_id = ? ORDER BY seq, stage, id`, jobID)
	if err != nil {
		return nil, fmt.Errorf("items of %s: %w", jobID, err)
	}
	defer rows.Close()
	var out []Item
	for rows.Next() {
		it, err := scanItem(rows)
		if err != nil {
			return nil, fmt.Errorf("items of %s: %w", jobID, err)
		}
		out = append(out, it)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("items of %s: %w", jobID, err)
	}
	return out, nil
}

// Item returns one item; ErrNotFound if there is none.
func (s *Store) Item(ctx context.Context, id int64) (Item, error) {
	it, err := scanItem(s.db.QueryRowContext(ctx, `SELECT `+itemCols+` FROM items WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Item{}, fmt.Errorf("item %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return Item{}, fmt.Errorf("item %d: %w", id, err)
	}
	return it, nil
}

// UpdateJob reads job id, lets f change its Status, Meta, Paused and Files,
// and writes them back, all in one transaction: f sees the job as stored
// (with its counts) and no other update comes between. An error from f
// changes nothing and is returned as is.
func (s *Store) UpdateJob(ctx context.Context, id string, f func(*Job) error) error {
	return s.tx(ctx, "update job "+id, func(tx *sql.Tx) error {
		j, err := getJob(ctx, tx, id)
		if err != nil {
			return err
		}
		if err := f(&j); err != nil {
			return err
		}
		if len(j.Meta) == 0 {
			j.Meta = json.RawMessage("{}")
		}
		if _, err := tx.ExecContext(ctx, `UPDATE jobs SET status = ?, meta = ?, paused = ? WHERE id = ?`,
			j.Status, string(j.Meta), j.Paused, id); err != nil {
			return fmt.Errorf("update job %s: %w", id, err)
		}
		return setFiles(ctx, tx, id, j.Files)
	})
}

// CancelJob cancels the job's pending items; running ones finish. When no
// item is left running the job has ended (the executor then runs its kind's
// Finished hook).
func (s *Store) CancelJob(ctx context.Context, id string) error {
	return s.tx(ctx, "cancel job "+id, func(tx *sql.Tx) error {
		if _, err := getJob(ctx, tx, id); err != nil {
			return err
		}
		now := ms(s.now())
		if _, err := tx.ExecContext(ctx, `UPDATE items SET state = ?, updated_at = ? WHERE job_id = ? AND state = ?`,
			Cancelled, now, id, Pending); err != nil {
			return fmt.Errorf("cancel job %s: %w", id, err)
		}
		return markEnded(ctx, tx, id, now)
	})
}

// markEnded sets the job's ended_at when none of its items is pending or
// running any more.
func markEnded(ctx context.Context, tx *sql.Tx, id string, now int64) error {
	if _, err := tx.ExecContext(ctx, `UPDATE jobs SET ended_at = ? WHERE id = ? AND ended_at IS NULL
		AND NOT EXISTS (SELECT 1 FROM items WHERE job_id = ? AND state IN (?, ?))`,
		now, id, id, Pending, Running); err != nil {
		return fmt.Errorf("job %s: mark ended: %w", id, err)
	}
	return nil
}
