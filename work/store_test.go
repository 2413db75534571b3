package work

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func openTest(t *testing.T, o Options) *Store {
	t.Helper()
	s, err := Open(context.Background(), t.TempDir(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func batchItems(agents ...string) []Item {
	var items []Item
	for i, a := range agents {
		items = append(items, Item{Seq: i, CustomID: "c" + string(rune('a'+i)), Agent: a, Path: "/v1/chat/completions",
			Body: []byte(`{"model":"` + a + `","messages":[]}`)})
	}
	return items
}

func TestCreateJobRoundTrip(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	j, err := s.CreateJob(ctx, Job{Kind: "batch", Status: "validating", Meta: json.RawMessage(`{"x":1}`)}, batchItems("dev", "po", "dev"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(j.ID, "batch_") || len(j.ID) != len("batch_")+24 {
		t.Fatalf("id %q", j.ID)
	}
	got, err := s.Job(ctx, j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Kind != "batch" || got.Status != "validating" || string(got.Meta) != `{"x":1}` || got.Counts[Pending] != 3 || got.Total() != 3 {
		t.Fatalf("job %+v", got)
	}
	if !got.EndedAt.IsZero() || got.Finalized {
		t.Fatalf("new job ended: %+v", got)
	}
	items, err := s.Items(ctx, j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 3 || items[1].Agent != "po" || items[1].CustomID != "cb" || items[2].State != Pending || !bytes.Contains(items[0].Body, []byte(`"dev"`)) {
		t.Fatalf("items %+v", items)
	}
	r, err := s.CreateJob(ctx, Job{Kind: "pipeline"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(r.ID, "run_") || r.EndedAt.IsZero() {
		t.Fatalf("empty pipeline run %+v: want run_ id and ended at once", r)
	}
	if _, err := s.Job(ctx, "batch_nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing job: %v", err)
	}
}

// A job whose items cannot all be stored is not stored at all.
func TestCreateJobAllOrNothing(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	_, err := s.CreateJob(ctx, Job{ID: "batch_a", Kind: "batch", Files: []string{"file-missing"}}, batchItems("dev"))
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("job naming a missing file: %v, want ErrNotFound", err)
	}
	if _, err := s.Job(ctx, "batch_a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("half-created job is visible: %v", err)
	}
	var n int
	if err := s.db.QueryRow(`SELECT count(*) FROM items`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("items left behind: %d %v", n, err)
	}
	if _, err := s.CreateJob(ctx, Job{ID: "batch_b", Kind: "batch"}, batchItems("dev")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateJob(ctx, Job{ID: "batch_b", Kind: "batch"}, batchItems("dev", "po")); err == nil {
		t.Fatal("duplicate id accepted")
	}
	if err := s.db.QueryRow(`SELECT count(*) FROM items`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("items after a refused duplicate: %d %v", n, err)
	}
}

func TestJobsPagination(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	var ids []string
	for i := 0; i < 5; i++ {
		j, err := s.CreateJob(ctx, Job{Kind: "batch"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, j.ID)
	}
	if _, err := s.CreateJob(ctx, Job{Kind: "pipeline"}, nil); err != nil {
		t.Fatal(err)
	}
	page, err := s.Jobs(ctx, "batch", "", 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(page) != 2 || page[0].ID != ids[4] || page[1].ID != ids[3] {
		t.Fatalf("first page %v", jobIDs(page))
	}
	page, err = s.Jobs(ctx, "batch", page[1].ID, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(page) != 3 || page[0].ID != ids[2] || page[2].ID != ids[0] {
		t.Fatalf("second page %v", jobIDs(page))
	}
	all, _ := s.Jobs(ctx, "", "", 0)
	if len(all) != 6 {
		t.Fatalf("all jobs: %d", len(all))
	}
	if _, err := s.Jobs(ctx, "batch", "batch_gone", 10); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown cursor: %v", err)
	}
}

func jobIDs(js []Job) []string {
	var out []string
	for _, j := range js {
		out = append(out, j.ID)
	}
	return out
}

func TestUpdateJob(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	j, _ := s.CreateJob(ctx, Job{Kind: "batch", Status: "validating"}, batchItems("dev"))
	f, err := s.PutFile(ctx, File{Owner: "alice", Purpose: "batch", Filename: "in.jsonl"}, strings.NewReader("{}\n"), 10)
	if err != nil {
		t.Fatal(err)
	}
	err = s.UpdateJob(ctx, j.ID, func(j *Job) error {
		if j.Counts[Pending] != 1 {
			t.Errorf("f sees counts %v", j.Counts)
		}
		j.Status, j.Meta, j.Paused, j.Files = "in_progress", json.RawMessage(`{"y":2}`), true, []string{f.ID}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := s.Job(ctx, j.ID)
	if got.Status != "in_progress" || string(got.Meta) != `{"y":2}` || !got.Paused || len(got.Files) != 1 || got.Files[0] != f.ID {
		t.Fatalf("after update: %+v", got)
	}
	boom := errors.New("boom")
	if err := s.UpdateJob(ctx, j.ID, func(j *Job) error { j.Status = "failed"; return boom }); !errors.Is(err, boom) {
		t.Fatalf("f's error: %v", err)
	}
	if got, _ := s.Job(ctx, j.ID); got.Status != "in_progress" {
		t.Fatalf("a failed update changed the job: %q", got.Status)
	}
	if err := s.UpdateJob(ctx, "batch_nope", func(*Job) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("update of a missing job: %v", err)
	}
}

func TestCancelJob(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	j, _ := s.CreateJob(ctx, Job{Kind: "batch"}, batchItems("dev", "dev", "po"))
	it, _, ok, err := s.claim(ctx, "dev")
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if err := s.CancelJob(ctx, j.ID); err != nil {
		t.Fatal(err)
	}
	got, _ := s.Job(ctx, j.ID)
	if got.Counts[Cancelled] != 2 || got.Counts[Running] != 1 || !got.EndedAt.IsZero() {
		t.Fatalf("after cancel: %+v", got)
	}
	ended, err := s.complete(ctx, it.ID, Outcome{State: Done, Status: 200, Response: []byte(`{}`)})
	if err != nil || !ended {
		t.Fatalf("the last running item's completion should end the job: %v %v", ended, err)
	}
	if err := s.CancelJob(ctx, "batch_nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("cancel of a missing job: %v", err)
	}
}

func TestPutFile(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	f, err := s.PutFile(ctx, File{Owner: "alice", Purpose: "batch", Filename: "a.jsonl"}, strings.NewReader("0123456789"), 10)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(f.ID, "file-") || f.Bytes != 10 || f.Filename != "a.jsonl" || f.Purpose != "batch" || f.Owner != "alice" {
		t.Fatalf("file %+v", f)
	}
	rc, err := s.OpenFile(ctx, f.ID)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if string(b) != "0123456789" {
		t.Fatalf("contents %q", b)
	}
	if _, err := s.PutFile(ctx, File{Owner: "alice", Purpose: "batch", Filename: "big.jsonl"}, strings.NewReader("0123456789x"), 10); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("11 bytes over a 10-byte limit: %v", err)
	}
	assertOnlyFiles(t, s, f.ID)
	list, err := s.Files(ctx, "batch", "", 0)
	if err != nil || len(list) != 1 {
		t.Fatalf("files: %v %v", list, err)
	}
	if err := s.DeleteFile(ctx, f.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.File(ctx, f.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted file: %v", err)
	}
	if _, err := s.OpenFile(ctx, f.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted file opened: %v", err)
	}
	if err := s.DeleteFile(ctx, f.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	assertOnlyFiles(t, s)
}

// assertOnlyFiles checks that the files directory holds exactly ids.
func assertOnlyFiles(t *testing.T, s *Store, ids ...string) {
	t.Helper()
	ents, err := os.ReadDir(s.files)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != strings.Join(ids, ",") {
		t.Fatalf("files dir holds %v, want %v", names, ids)
	}
}

// failingWriter fails with ENOSPC once it has taken room bytes. It does
// not embed *os.File, whose ReadFrom io.Copy would use instead of Write.
type failingWriter struct {
	f    *os.File
	room int
}

func (w *failingWriter) Write(p []byte) (int, error) {
	if len(p) > w.room {
		n, _ := w.f.Write(p[:w.room])
		w.room = 0
		return n, &os.PathError{Op: "write", Path: w.f.Name(), Err: syscall.ENOSPC}
	}
	w.room -= len(p)
	return w.f.Write(p)
}

func (w *failingWriter) Sync() error  { return w.f.Sync() }
func (w *failingWriter) Close() error { return w.f.Close() }
func (w *failingWriter) Name() string { return w.f.Name() }

// A full disk during an upload is a clear error and leaves earlier files
// and the database as they were.
func TestPutFileDiskFull(t *testing.T) {
	ctx := context.Background()
	full := false
	s := openTest(t, Options{create: func(dir, pattern string) (fileWriter, error) {
		f, err := os.CreateTemp(dir, pattern)
		if err != nil || !full {
			return f, err
		}
		return &failingWriter{f: f, room: 4}, nil
	}})
	old, err := s.PutFile(ctx, File{Owner: "alice", Purpose: "batch", Filename: "old.jsonl"}, strings.NewReader("kept"), 10)
	if err != nil {
		t.Fatal(err)
	}
	full = true
	_, err = s.PutFile(ctx, File{Owner: "alice", Purpose: "batch", Filename: "new.jsonl"}, strings.NewReader("does not fit"), 0)
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "new.jsonl") {
		t.Fatalf("disk full: %v, want ENOSPC naming the file", err)
	}
	assertOnlyFiles(t, s, old.ID)
	list, _ := s.Files(ctx, "", "", 0)
	if len(list) != 1 || list[0].ID != old.ID {
		t.Fatalf("files after a failed upload: %+v", list)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("client went away") }

func TestPutFileReaderError(t *testing.T) {
	s := openTest(t, Options{})
	if _, err := s.PutFile(context.Background(), File{Purpose: "batch", Filename: "x"}, io.MultiReader(strings.NewReader("abc"), errReader{}), 0); err == nil {
		t.Fatal("a failing reader stored a file")
	}
	assertOnlyFiles(t, s)
}

// Open removes what a crash in PutFile or DeleteFile left: temporary files
// and contents without a row.
func TestOpenCleansFiles(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	f, _ := s.PutFile(ctx, File{Owner: "alice", Purpose: "batch", Filename: "a"}, strings.NewReader("a"), 10)
	s.Close()
	for _, name := range []string{tmpPrefix + "file-x-123", "file-orphan"} {
		if err := os.WriteFile(filepath.Join(dir, FilesDir, name), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s, err = Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	assertOnlyFiles(t, s, f.ID)
}

func TestMigrations(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	j, _ := s.CreateJob(ctx, Job{Kind: "batch"}, batchItems("dev"))
	var v int
	if err := s.db.QueryRow(`SELECT version FROM schema_version`).Scan(&v); err != nil || v != SchemaVersion {
		t.Fatalf("schema_version %d %v, want %d", v, err, SchemaVersion)
	}
	s.Close()
	// Reopening runs nothing again and keeps the data.
	s, err = Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Job(ctx, j.ID); err != nil {
		t.Fatal(err)
	}
	// A database from a newer vagentd is refused, not misread.
	if _, err := s.db.Exec(`UPDATE schema_version SET version = ?`, SchemaVersion+1); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := Open(ctx, dir, Options{}); !errors.Is(err, ErrSchema) || !strings.Contains(err.Error(), DBName) {
		t.Fatalf("newer schema: %v, want ErrSchema naming the database", err)
	}
}

func TestPragmas(t *testing.T) {
	s := openTest(t, Options{})
	var mode string
	var fk, sync int
	s.db.QueryRow(`PRAGMA journal_mode`).Scan(&mode)
	s.db.QueryRow(`PRAGMA foreign_keys`).Scan(&fk)
	s.db.QueryRow(`PRAGMA synchronous`).Scan(&sync)
	if mode != "wal" || fk != 1 || sync != 2 {
		t.Fatalf("journal_mode %q foreign_keys %d synchronous %d, want wal 1 2", mode, fk, sync)
	}
}

// Items wait for the item they come after; when it fails, they fail too.
func TestClaimOrderAndDependencies(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	j, err := s.CreateJob(ctx, Job{Kind: "pipeline"}, []Item{
		{Seq: 0, Stage: 0, Agent: "po", Path: "/v1/chat/completions"},
		{Seq: 0, Stage: 1, AfterIndex: 1, Agent: "dev", Path: "/v1/chat/completions"},
		{Seq: 1, Stage: 0, Agent: "po", Path: "/v1/chat/completions"},
		{Seq: 1, Stage: 1, AfterIndex: 3, Agent: "dev", Path: "/v1/chat/completions"},
		{Seq: 1, Stage: 2, AfterIndex: 4, Agent: "architect", Path: "/v1/chat/completions"},
	})
	if err != nil {
		t.Fatal(err)
	}
	j2 := j
	items, _ := s.Items(ctx, j.ID)
	if items[1].After != items[0].ID || items[3].After != items[2].ID || items[4].After != items[3].ID {
		t.Fatalf("AfterIndex not turned into ids: %+v", items)
	}
	qs, _ := s.Queues(ctx)
	if len(qs) != 1 || qs[0].Agent != "po" || qs[0].Items != 2 {
		t.Fatalf("queues before any stage ran: %+v", qs)
	}
	if _, _, ok, _ := s.claim(ctx, "dev"); ok {
		t.Fatal("claimed an item whose predecessor has not run")
	}
	a, _, _, _ := s.claim(ctx, "po")
	b, _, _, _ := s.claim(ctx, "po")
	if a.Seq != 0 || b.Seq != 1 || a.Attempts != 1 {
		t.Fatalf("claim order: %+v %+v", a, b)
	}
	if _, err := s.complete(ctx, a.ID, Outcome{State: Done, Status: 200}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.complete(ctx, b.ID, Outcome{State: Failed, Status: 400, Error: "bad"}); err != nil {
		t.Fatal(err)
	}
	got, _ := s.Job(ctx, j2.ID)
	if got.Counts[Failed] != 3 || got.Counts[Pending] != 1 || got.Counts[Done] != 1 {
		t.Fatalf("dependent of a failed item: %+v", got.Counts)
	}
	c, _, ok, _ := s.claim(ctx, "dev")
	if !ok || c.Seq != 0 {
		t.Fatalf("dev claim: %+v %v", c, ok)
	}
	if _, _, ok, _ := s.claim(ctx, "dev"); ok {
		t.Fatal("claimed the dependent of a failed item")
	}
	if _, err := s.CreateJob(ctx, Job{Kind: "pipeline"}, []Item{{Agent: "po", AfterIndex: 1}}); err == nil || !strings.Contains(err.Error(), "AfterIndex") {
		t.Fatalf("AfterIndex naming itself: %v", err)
	}
}

// An item refused up front (created failed) fails the items after it, so
// the job ends.
func TestCreateJobRefusedItemEndsChain(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	j, err := s.CreateJob(ctx, Job{Kind: "pipeline"}, []Item{
		{Agent: "po", State: Failed, Error: "template: missing stage"},
		{Agent: "dev", AfterIndex: 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	if j.Counts[Failed] != 2 || j.EndedAt.IsZero() {
		t.Fatalf("job %+v: want both failed and the job ended", j)
	}
}

func TestPausedJobNotClaimed(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	j, _ := s.CreateJob(ctx, Job{Kind: "batch", Paused: true}, batchItems("dev"))
	if _, _, ok, _ := s.claim(ctx, "dev"); ok {
		t.Fatal("claimed an item of a paused job")
	}
	s.UpdateJob(ctx, j.ID, func(j *Job) error { j.Paused = false; return nil })
	if _, _, ok, _ := s.claim(ctx, "dev"); !ok {
		t.Fatal("resumed job's item not claimed")
	}
}

// At start, items left running by a crash go back to pending, and their
// attempts stay counted.
func TestResetRunning(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, _ := Open(ctx, dir, Options{})
	j, _ := s.CreateJob(ctx, Job{Kind: "batch"}, batchItems("dev", "dev"))
	s.claim(ctx, "dev")
	s.Close() // the "crash"
	s, _ = Open(ctx, dir, Options{})
	defer s.Close()
	n, err := s.ResetRunning(ctx)
	if err != nil || n != 1 {
		t.Fatalf("reset %d %v", n, err)
	}
	items, _ := s.Items(ctx, j.ID)
	if items[0].State != Pending || items[0].Attempts != 1 {
		t.Fatalf("reset item %+v", items[0])
	}
}

func TestSweep(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{Retention: time.Hour})
	t0 := time.Now()
	s.now = func() time.Time { return t0 }
	in, _ := s.PutFile(ctx, File{Owner: "alice", Purpose: "batch", Filename: "in"}, strings.NewReader("x"), 10)
	loose, _ := s.PutFile(ctx, File{Owner: "alice", Purpose: "batch", Filename: "loose"}, strings.NewReader("y"), 10)
	done, _ := s.CreateJob(ctx, Job{Kind: "batch", Files: []string{in.ID}}, nil) // ended at once
	live, _ := s.CreateJob(ctx, Job{Kind: "batch", Files: []string{in.ID}}, batchItems("dev"))
	if err := s.finalize(ctx, done.ID); err != nil {
		t.Fatal(err)
	}
	if j, f, err := s.Sweep(ctx, t0.Add(30*time.Minute)); err != nil || j != 0 || f != 0 {
		t.Fatalf("sweep within retention: %d jobs %d files %v", j, f, err)
	}
	j, f, err := s.Sweep(ctx, t0.Add(2*time.Hour))
	if err != nil || j != 1 || f != 1 {
		t.Fatalf("sweep after retention: %d jobs %d files %v, want the ended job and the loose file", j, f, err)
	}
	if _, err := s.Job(ctx, done.ID); !errors.Is(err, ErrNotFound) {
		t.Fatal("ended job kept")
	}
	if _, err := s.Job(ctx, live.ID); err != nil {
		t.Fatal("live job swept")
	}
	if _, err := s.File(ctx, in.ID); err != nil {
		t.Fatal("a live job's file swept")
	}
	if _, err := s.File(ctx, loose.ID); !errors.Is(err, ErrNotFound) {
		t.Fatal("loose file kept")
	}
	assertOnlyFiles(t, s, in.ID)
}

// A reader that opens the database read-only while the store writes sees
// whole transactions only.
func TestReadOnlyReader(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	ro, err := sql.Open("sqlite", "file:"+s.Path()+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	for i := 0; i < 20; i++ {
		if _, err := s.CreateJob(ctx, Job{Kind: "batch"}, batchItems("dev", "po", "architect")); err != nil {
			t.Fatal(err)
		}
		var jobs, items int
		tx, err := ro.Begin()
		if err != nil {
			t.Fatal(err)
		}
		tx.QueryRow(`SELECT count(*) FROM jobs`).Scan(&jobs)
		tx.QueryRow(`SELECT count(*) FROM items`).Scan(&items)
		tx.Rollback()
		if items != 3*jobs || jobs != i+1 {
			t.Fatalf("reader saw %d jobs, %d items", jobs, items)
		}
	}
}
