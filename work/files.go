package work

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vagent-dev/vagent/internal/fsync"
)

// fileWriter is the temporary file PutFile writes (an *os.File; tests
// inject one that fails).
type fileWriter interface {
	io.Writer
	Sync() error
	Close() error
	Name() string
}

func createTemp(dir, pattern string) (fileWriter, error) { return os.CreateTemp(dir, pattern) }

// tmpPrefix marks contents still being written: Open removes them, since a
// crash left them.
const tmpPrefix = ".tmp-"

// PutFile stores r's contents as a new file with f's Owner, Purpose and
// Filename (its other fields are set by the store), at most max bytes (0:
// no bound; past it ErrTooLarge). The contents are written to a temporary
// file, synced, renamed into place and the directory synced before the row
// is committed, so a stored file is always whole. On any error (too large,
// a full disk, a reader that fails) nothing is left behind and earlier
// files are untouched.
func (s *Store) PutFile(ctx context.Context, f File, r io.Reader, max int64) (File, error) {
	f.ID, f.CreatedAt = NewID("file-"), time.UnixMilli(ms(s.now()))
	n, err := s.writeContents(f.ID, r, max)
	if err != nil {
		return File{}, fmt.Errorf("store file %s: %w", f.Filename, err)
	}
	f.Bytes = n
	_, err = s.db.ExecContext(ctx, `INSERT INTO files(id, owner, purpose, filename, bytes, created_at) VALUES (?,?,?,?,?,?)`,
		f.ID, f.Owner, f.Purpose, f.Filename, f.Bytes, ms(f.CreatedAt))
	if err != nil {
		os.Remove(s.contentPath(f.ID))
		return File{}, fmt.Errorf("store file %s: %w", f.Filename, err)
	}
	return f, nil
}

func (s *Store) contentPath(id string) string { return filepath.Join(s.files, id) }

// writeContents writes r to files/id atomically and returns its size.
func (s *Store) writeContents(id string, r io.Reader, max int64) (n int64, err error) {
	tmp, err := s.o.create(s.files, tmpPrefix+id+"-*")
	if err != nil {
		return 0, err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	src := r
	if max > 0 {
		src = io.LimitReader(r, max+1)
	}
	n, err = io.Copy(tmp, src)
	if err != nil {
		return 0, err
	}
	if max > 0 && n > max {
		return 0, fmt.Errorf("%w: over %d bytes", ErrTooLarge, max)
	}
	if err = tmp.Sync(); err != nil {
		return 0, err
	}
	if err = tmp.Close(); err != nil {
		return 0, err
	}
	if err = os.Rename(tmp.Name(), s.contentPath(id)); err != nil {
		return 0, err
	}
	if err = fsync.Dir(s.files); err != nil {
		os.Remove(s.contentPath(id))
		return 0, err
	}
	return n, nil
}

const fileCols = `id, owner, purpose, filename, bytes, created_at`

func scanFile(sc interface{ Scan(...any) error }) (File, error) {
	var f File
	var created int64
	if err := sc.Scan(&f.ID, &f.Owner, &f.Purpose, &f.Filename, &f.Bytes, &created); err != nil {
		return File{}, err
	}
	f.CreatedAt = time.UnixMilli(created)
	return f, nil
}

// File returns a file's metadata; ErrNotFound if there is none.
func (s *Store) File(ctx context.Context, id string) (File, error) {
	f, err := scanFile(s.db.QueryRowContext(ctx, `SELECT `+fileCols+` FROM files WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return File{}, fmt.Errorf("file %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return File{}, fmt.Errorf("file %s: %w", id, err)
	}
	return f, nil
}

// OpenFile opens a file's contents; ErrNotFound if there is none.
func (s *Store) OpenFile(ctx context.Context, id string) (io.ReadCloser, error) {
	if _, err := s.File(ctx, id); err != nil {
		return nil, err
	}
	f, err := os.Open(s.contentPath(id))
	if err != nil {
		return nil, fmt.Errorf("open file %s: %w", id, err)
	}
	return f, nil
}

// Files lists files with purpose (all if empty), newest first, at most
// limit (all if limit <= 0), after the file with id after (ErrNotFound if
// it does not exist).
func (s *Store) Files(ctx context.Context, purpose, after string, limit int) ([]File, error) {
	q := `SELECT ` + fileCols + ` FROM files WHERE (? = '' OR purpose = ?)`
	args := []any{purpose, purpose}
	if after != "" {
		var rowid int64
		if err := s.db.QueryRowContext(ctx, `SELECT rowid FROM files WHERE id = ?`, after).Scan(&rowid); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return nil, fmt.Errorf("list files after %s: %w", after, ErrNotFound)
			}
			return nil, fmt.Errorf("list files: %w", err)
		}
		q += ` AND rowid < ?`
		args = append(args, rowid)
	}
	q += ` ORDER BY rowid DESC`
	if limit > 0 {
		q += fmt.Sprintf(` LIMIT %d`, limit)
	}
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list files: %w", err)
	}
	defer rows.Close()
	var out []File
	for rows.Next() {
		f, err := scanFile(rows)
		if err != nil {
			return nil, fmt.Errorf("list files: %w", err)
		}
		out = append(out, f)
	}
	return out, rows.Err()
}

// DeleteFile deletes a file (and its links to jobs); ErrNotFound if there
// is none. The row goes first: a crash between the two leaves contents
// without a row, which the next Open removes.
func (s *Store) DeleteFile(ctx context.Context, id string) error {
	r, err := s.db.ExecContext(ctx, `DELETE FROM files WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("delete file %s: %w", id, err)
	}
	if n, _ := r.RowsAffected(); n == 0 {
		return fmt.Errorf("delete file %s: %w", id, ErrNotFound)
	}
	if err := os.Remove(s.contentPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete file %s: %w", id, err)
	}
	return nil
}

// cleanFiles removes temporary files and contents without a row: what a
// crash in PutFile or DeleteFile left.
func (s *Store) cleanFiles(ctx context.Context) error {
	ents, err := os.ReadDir(s.files)
	if err != nil {
		return err
	}
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, tmpPrefix) {
			var one int
			err := s.db.QueryRowContext(ctx, `SELECT 1 FROM files WHERE id = ?`, name).Scan(&one)
			if err == nil {
				continue
			}
			if !errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("clean files: %w", err)
			}
		}
		if err := os.Remove(filepath.Join(s.files, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("clean files: %w", err)
		}
	}
	return nil
}

// Sweep deletes what Options.Retention no longer keeps, as of now: jobs
// whose last item ended longer ago (with their items), then files older
// than that which no remaining job uses. It returns how many jobs and
// files it deleted.
func (s *Store) Sweep(ctx context.Context, now time.Time) (jobs, files int, err error) {
	if s.o.Retention <= 0 {
		return 0, 0, nil
	}
	cutoff := ms(now.Add(-s.o.Retention))
	r, err := s.db.ExecContext(ctx, `DELETE FROM jobs WHERE ended_at IS NOT NULL AND ended_at < ? AND finalized = 1`, cutoff)
	if err != nil {
		return 0, 0, fmt.Errorf("sweep jobs: %w", err)
	}
	n, _ := r.RowsAffected()
	rows, err := s.db.QueryContext(ctx, `SELECT id FROM files WHERE created_at < ?
		AND NOT EXISTS (SELECT 1 FROM job_files WHERE file_id = files.id)`, cutoff)
	if err != nil {
		return int(n), 0, fmt.Errorf("sweep files: %w", err)
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return int(n), 0, fmt.Errorf("sweep files: %w", err)
		}
		ids = append(ids, id)
	}
	rows.Close()
	for _, id := range ids {
		if err := s.DeleteFile(ctx, id); err != nil && !errors.Is(err, ErrNotFound) {
			return int(n), files, fmt.Errorf("sweep files: %w", err)
		}
		files++
	}
	return int(n), files, nil
}
