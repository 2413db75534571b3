package work

import (
	"context"
	"database/sql"
	"fmt"
)

// migrations are the schema, one numbered step each, in the one place that
// knows it. A database records how many it has run (schema_version); Open
// runs the rest, each in its own transaction, so a database from an older
// vagentd is brought forward and one from a newer vagentd is refused
// rather than misread. Never edit a step that has shipped: add one.
var migrations = []string{
	// 1: jobs, their items, files and which job uses which file.
	`CREATE TABLE jobs (
		id          TEXT PRIMARY KEY,
		kind        TEXT NOT NULL,
		status      TEXT NOT NULL,
		meta        TEXT NOT NULL DEFAULT '{}',
		paused      INTEGER NOT NULL DEFAULT 0,
		created_at  INTEGER NOT NULL,
		ended_at    INTEGER,
		finalized   INTEGER NOT NULL DEFAULT 0
	);
	CREATE INDEX jobs_kind ON jobs(kind);
	CREATE TABLE items (
		id          INTEGER PRIMARY KEY,
		job_id      TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
		seq         INTEGER NOT NULL,
		stage       INTEGER NOT NULL DEFAULT 0,
		after       INTEGER NOT NULL DEFAULT 0,
		custom_id   TEXT NOT NULL DEFAULT '',
		agent       TEXT NOT NULL,
		path        TEXT NOT NULL,
		body        BLOB,
		state       TEXT NOT NULL,
		status      INTEGER NOT NULL DEFAULT 0,
		response    BLOB,
		error       TEXT NOT NULL DEFAULT '',
		attempts    INTEGER NOT NULL DEFAULT 0,
		created_at  INTEGER NOT NULL,
		updated_at  INTEGER NOT NULL
	);
	CREATE INDEX items_job ON items(job_id, seq, stage);
	CREATE INDEX items_state ON items(state, agent);
	CREATE TABLE files (
		id          TEXT PRIMARY KEY,
		owner       TEXT NOT NULL DEFAULT '',
		purpose     TEXT NOT NULL,
		filename    TEXT NOT NULL,
		bytes       INTEGER NOT NULL,
		created_at  INTEGER NOT NULL
	);
	CREATE TABLE job_files (
		job_id      TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
		file_id     TEXT NOT NULL REFERENCES files(id) ON DELETE CASCADE,
		PRIMARY KEY (job_id, file_id)
	);
	CREATE INDEX job_files_file ON job_files(file_id);`,
}

// SchemaVersion is the number of migrations this vagentd knows.
var SchemaVersion = len(migrations)

// migrate brings db to SchemaVersion.
func migrate(ctx context.Context, db *sql.DB) error {
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("create schema_version: %w", err)
	}
	for {
		done, err := migrateOne(ctx, db)
		if err != nil || done {
			return err
		}
	}
}

// migrateOne runs the next migration, if any, in one transaction together
// with the version bump, so a crash leaves the database at one version or
// the next, never between.
func migrateOne(ctx context.Context, db *sql.DB) (done bool, err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("begin migration: %w", err)
	}
	defer tx.Rollback()
	var v int
	switch err := tx.QueryRowContext(ctx, `SELECT version FROM schema_version`).Scan(&v); err {
	case nil:
	case sql.ErrNoRows:
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version(version) VALUES (0)`); err != nil {
			return false, fmt.Errorf("init schema_version: %w", err)
		}
	default:
		return false, fmt.Errorf("read schema_version: %w", err)
	}
	switch {
	case v > len(migrations):
		return false, fmt.Errorf("%w: the database has schema version %d, this vagentd knows up to %d (was it written by a newer vagentd?)", ErrSchema, v, len(migrations))
	case v == len(migrations):
		return true, nil
	}
	if _, err := tx.ExecContext(ctx, migrations[v]); err != nil {
		return false, fmt.Errorf("migration %d: %w", v+1, err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE schema_version SET version = ?`, v+1); err != nil {
		return false, fmt.Errorf("migration %d: %w", v+1, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("commit migration %d: %w", v+1, err)
	}
	return false, nil
}
