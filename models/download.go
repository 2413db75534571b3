package models

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vagent-dev/vagent/internal/filelock"
)

// blobIDRE is a blob name: a git sha1 or a sha256, lower-case hex.
var blobIDRE = regexp.MustCompile(`^(?:[0-9a-f]{40}|[0-9a-f]{64})$`)

const (
	// incompleteSuffix marks a blob being downloaded, as huggingface_hub
	// names it; such a file is never linked into a snapshot.
	incompleteSuffix = ".incomplete"
	// netAttempts is how often one file is tried after network failures,
	// each try resuming where the last one stopped.
	netAttempts = 6
	// copyBufSize and copyBufs size the download pipeline (see pipeCopy):
	// reads and writes of 1 MiB, and up to copyBufs of them written and
	// waiting to be hashed, per file.
	copyBufSize = 1 << 20
	copyBufs    = 8
	// writebackChunk is how much of a durable download is written before
	// its writeback is started (see pipeCopy).
	writebackChunk = 8 << 20
)

// ChecksumError is a file whose content did not match the Hub's checksum
// twice in a row: it was rejected both times.
type ChecksumError struct {
	Repo, File string
	Algo       string // "sha256" or "git-sha1"
	Want, Got  string
}

func (e *ChecksumError) Error() string {
	return fmt.Sprintf("pull %s: %s: %s mismatch on two downloads in a row (want %s, got %s): the file was rejected; "+
		"the mirror or a proxy serves different content than the Hub lists", e.Repo, e.File, e.Algo, e.Want, e.Got)
}

// DiskFullError is a pull that cannot fit on the disk: found before any
// download (Free < Need) or by a write that failed with ENOSPC (Partial
// names the kept partial file).
type DiskFullError struct {
	Repo    string
	Dir     string
	Need    int64
	Free    int64
	Partial string
	Err     error
}

func (e *DiskFullError) Error() string {
	if e.Partial != "" {
		return fmt.Sprintf("pull %s: disk full while writing %s (%v); the partial download is kept and resumes on the next pull: "+
			"free space on that disk (or move paths.hf_home) and run vagentctl pull again", e.Repo, e.Partial, e.Err)
	}
	return fmt.Sprintf("pull %s: not enough disk space in %s: %s still to download, %s free; "+
		"free space on that disk (or move paths.hf_home) and run vagentctl pull again",
		e.Repo, e.Dir, FormatBytes(e.Need), FormatBytes(e.Free))
}

func (e *DiskFullError) Unwrap() error { return e.Err }

// isNoSpace reports whether err is the disk (or a quota) running out.
func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// fileState tracks one file of a pull for progress reports.
type fileState struct {
	file    File
	bytes   atomic.Int64 // present in the partial or blob
	started atomic.Bool
	done    atomic.Bool
	lastRep int64 // bytes at the last progress event (reporter only)
}

// newHasher returns the hash a file's content is checked with and the
// digest it must produce.
func newHasher(f File) (h hash.Hash, algo, want string) {
	if f.LFS() {
		return sha256.New(), "sha256", f.SHA256
	}
	h = sha1.New()
	fmt.Fprintf(h, "blob %d\x00", f.Size)
	return h, "git-sha1", f.GitSHA1
}

// hashFile feeds the first n bytes of path to h.
func hashFile(path string, n int64, h hash.Hash) error {
	fh, err := os.Open(path)
	if err != nil {
		return err
	}
	defer fh.Close()
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	got, err := io.CopyBuffer(h, io.LimitReader(fh, n), *bp)
	if err != nil {
		return err
	}
	if got != n {
		return fmt.Errorf("%s: %d bytes, want %d", path, got, n)
	}
	return nil
}

// verifyBlob re-hashes a complete blob.
func verifyBlob(path string, f File) (ok bool, got string, err error) {
	h, _, want := newHasher(f)
	if err := hashFile(path, f.Size, h); err != nil {
		return false, "", err
	}
	got = hex.EncodeToString(h.Sum(nil))
	return got == want, got, nil
}

// lockBlob takes huggingface_hub's lock for one blob (flock on
// .locks/models--X/ID.lock), waiting while ctx allows. The lock file is
// created through root, and then only opened, so that the lock writes
// nothing outside the cache.
func lockBlob(ctx context.Context, root *os.Root, dir, blobID string) (unlock func(), err error) {
	if err := root.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	name := filepath.Join(dir, blobID+".lock")
	fh, err := root.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	fh.Close()
	l, err := filelock.Acquire(ctx, filepath.Join(root.Name(), name), filelock.Options{NoCreate: true})
	if err != nil {
		return nil, err
	}
	return func() { l.Unlock() }, nil
}

// fetchFile brings one file's blob into blobs/: skipped when already there
// (its size checked, its hash too with verify), else downloaded into
// BLOB.incomplete, resumed with a Range request after a dropped connection,
// checked against the Hub's checksum, and renamed into place. A corrupted
// download is removed and fetched once more from scratch. It reports
// whether anything was fetched.
func (p *Puller) fetchFile(ctx context.Context, job *pullJob, st *fileState) (fetched bool, err error) {
	f := st.file
	blob := filepath.Join(job.folder, "blobs", f.BlobID)
	partial := blob + incompleteSuffix
	unlock, err := lockBlob(ctx, job.root, job.rel(lockDir(p.opts.HubCache, job.repo)), f.BlobID)
	if err != nil {
		return false, fmt.Errorf("pull %s: %s: lock: %w", job.repo, f.Path, err)
	}
	defer unlock()

	if fi, err := os.Stat(blob); err == nil {
		switch {
		case fi.Size() != f.Size:
			p.emit(job.event(EventError, f.Path, fmt.Sprintf("cached blob is %d bytes, want %d: fetching it again", fi.Size(), f.Size), true))
			job.root.Remove(job.rel(blob))
		case p.opts.Verify:
			ok, got, err := verifyBlob(blob, f)
			if err != nil {
				return false, fmt.Errorf("pull %s: %s: verify: %w", job.repo, f.Path, err)
			}
			if ok {
				st.bytes.Store(f.Size)
				return false, nil
			}
			p.emit(job.event(EventError, f.Path, fmt.Sprintf("cached blob has checksum %s, want %s: fetching it again", got, f.BlobID), true))
			job.root.Remove(job.rel(blob))
		default:
			st.bytes.Store(f.Size)
			return false, nil
		}
	}

	refetched := false
	for {
		got, synced, err := p.download(ctx, job, st, partial)
		if err != nil {
			return true, err
		}
		_, algo, want := newHasher(f)
		if got == want {
			if p.opts.Durable && !synced {
				if err := syncFile(partial); err != nil {
					return true, fmt.Errorf("pull %s: %s: %w", job.repo, f.Path, err)
				}
			}
			if err := job.root.Rename(job.rel(partial), job.rel(blob)); err != nil {
				return true, fmt.Errorf("pull %s: %s: %w", job.repo, f.Path, err)
			}
			return true, nil
		}
		job.root.Remove(job.rel(partial))
		st.bytes.Store(0)
		if refetched {
			return true, &ChecksumError{Repo: job.repo, File: f.Path, Algo: algo, Want: want, Got: got}
		}
		refetched = true
		p.emit(job.event(EventError, f.Path, fmt.Sprintf("%s mismatch (want %s, got %s): rejected, fetching it again", algo, want, got), true))
	}
}

func syncFile(path string) error {
	fh, err := os.Open(path)
	if err != nil {
		return err
	}
	defer fh.Close()
	return fh.Sync()
}

// download makes partial hold the file's f.Size bytes, resuming from what
// it holds already and retrying network failures. It returns the hex
// digest of the whole file (see newHasher), computed while it streams, and
// whether the file was fsynced once complete (with Durable, when it was
// downloaded rather than found complete).
func (p *Puller) download(ctx context.Context, job *pullJob, st *fileState, partial string) (sum string, synced bool, err error) {
	f := st.file
	var lastErr error
	var hs hashState
	for attempt := 0; attempt < netAttempts; attempt++ {
		if attempt > 0 {
			p.emit(job.event(EventError, f.Path, lastErr.Error()+": resuming", true))
			// The first retry goes at once (a dropped connection), the
			// next ones back off.
			select {
			case <-ctx.Done():
				return "", false, ctx.Err()
			case <-time.After(time.Duration(attempt-1) * 500 * time.Millisecond):
			}
		}
		sum, synced, err := p.downloadOnce(ctx, job, st, partial, &hs)
		if err == nil {
			return sum, synced, nil
		}
		if ctx.Err() != nil {
			return "", false, ctx.Err()
		}
		var pe permanentError
		if errors.As(err, &pe) {
			return "", false, pe.error
		}
		lastErr = err
	}
	return "", false, fmt.Errorf("pull %s: %s: giving up after %d tries: %w", job.repo, f.Path, netAttempts, lastErr)
}

// hashState carries a file's hash from one try to the next, so that a
// resume within one pull does not read the partial file again.
type hashState struct {
	h hash.Hash
	n int64 // bytes of the partial file h has seen
}

// downloadOnce is one HTTP request for the rest of a file; it returns the
// digest of the whole file once partial holds all of it. Errors worth
// another try are returned plain, the others wrapped as permanent. What a
// partial file from an earlier pull holds is hashed while the rest
// downloads, not before asking for it.
func (p *Puller) downloadOnce(ctx context.Context, job *pullJob, st *fileState, partial string, hs *hashState) (sum string, synced bool, err error) {
	f := st.file
	if err := job.root.MkdirAll(job.rel(filepath.Dir(partial)), 0o755); err != nil {
		return "", false, permanent(fmt.Errorf("pull %s: %w", job.repo, err))
	}
	fh, err := job.root.OpenFile(job.rel(partial), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return "", false, permanent(fmt.Errorf("pull %s: %s: %w", job.repo, f.Path, err))
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil {
		return "", false, permanent(err)
	}
	size := fi.Size()
	have := size
	if have > f.Size {
		// Longer than the file can be: not a prefix of it.
		have = 0
	}
	// h has seen the first hashed bytes of the file; the pipeline hashes
	// the rest of what it holds, from the file, while it downloads.
	h, hashed := hs.h, hs.n
	if h == nil || hashed > have {
		h, _, _ = newHasher(f)
		hashed = 0
	}
	hs.h = nil
	// finish hashes what the file holds beyond hashed, when nothing is
	// left to download.
	finish := func() (string, bool, error) {
		if err := hashAt(ctx, fh, h, hashed, have, nil); err != nil {
			return "", false, permanent(fmt.Errorf("pull %s: %s: %w", job.repo, f.Path, err))
		}
		return hex.EncodeToString(h.Sum(nil)), false, nil
	}
	st.bytes.Store(have)
	if !st.started.Swap(true) {
		e := job.event(EventStart, f.Path, "", false)
		e.Size, e.Bytes, e.ResumedFrom = f.Size, have, have
		p.emit(e)
	}
	if have == f.Size {
		return finish()
	}

	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := p.hub.newRequest(rctx, http.MethodGet, p.hub.resolveURL(job.repo, job.commit, f.Path))
	if err != nil {
		return "", false, permanent(err)
	}
	if have > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", have))
	}
	resp, err := p.hub.client.Do(req)
	if err != nil {
		return "", false, fmt.Errorf("pull %s: %s: %w", job.repo, f.Path, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusPartialContent:
		if start, ok := contentRangeStart(resp.Header.Get("Content-Range")); !ok || start != have {
			fh.Truncate(0)
			st.bytes.Store(0)
			return "", false, fmt.Errorf("pull %s: %s: asked for bytes=%d-, got range %q", job.repo, f.Path, have, resp.Header.Get("Content-Range"))
		}
	case http.StatusOK:
		// The whole file, whether or not a range was asked for.
		if have > 0 {
			have, hashed = 0, 0
			h, _, _ = newHasher(f)
		}
	case http.StatusRequestedRangeNotSatisfiable:
		// Nothing past what the partial file holds: it is checked as it
		// is, and a mismatch starts over.
		return finish()
	default:
		he := hubError(resp, job.repo, job.revision, f.Path)
		if he.temporary() {
			return "", false, he
		}
		return "", false, permanent(he)
	}
	if size != have {
		// Only when something is to be cut off: on ext4, truncating a file
		// to nothing makes its close write it all out (auto_da_alloc).
		if err := fh.Truncate(have); err != nil {
			return "", false, permanent(fmt.Errorf("pull %s: %s: %w", job.repo, f.Path, err))
		}
	}
	st.bytes.Store(have)
	if _, err := fh.Seek(have, io.SeekStart); err != nil {
		return "", false, permanent(err)
	}
	body := &stallReader{r: resp.Body, timeout: p.opts.StallTimeout, cancel: cancel}
	body.arm()
	defer body.stop()
	want := f.Size - have
	n, synced, err := pipeCopy(ctx, fh, io.LimitReader(body, want), h, hashed, have, want, p.opts.Durable, func(n int64) { st.bytes.Add(n) })
	var herr *hashReadError
	if err != nil && !errors.As(err, &herr) {
		// What was written is hashed: the next try continues both.
		hs.h, hs.n = h, have+n
	}
	switch {
	case err != nil && errors.As(err, &herr):
		return "", false, permanent(fmt.Errorf("pull %s: %s: %w", job.repo, f.Path, herr.err))
	case err != nil && isNoSpace(err):
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return "", false, permanent(&DiskFullError{Repo: job.repo, Dir: filepath.Dir(partial), Partial: partial, Err: err})
	case err != nil && body.stalled.Load():
		return "", false, fmt.Errorf("pull %s: %s: no data for %s", job.repo, f.Path, p.opts.StallTimeout)
	case err != nil:
		var werr *writeError
		if errors.As(err, &werr) {
			return "", false, permanent(fmt.Errorf("pull %s: %s: %w", job.repo, f.Path, werr.err))
		}
		return "", false, fmt.Errorf("pull %s: %s: connection lost after %s of %s: %w", job.repo, f.Path,
			FormatBytes(have+n), FormatBytes(f.Size), err)
	case n < want:
		return "", false, fmt.Errorf("pull %s: %s: connection closed after %s of %s", job.repo, f.Path, FormatBytes(have+n), FormatBytes(f.Size))
	}
	return hex.EncodeToString(h.Sum(nil)), synced, nil
}

// contentRangeStart parses "bytes START-END/SIZE".
func contentRangeStart(h string) (int64, bool) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(h), "bytes ")
	if !ok {
		return 0, false
	}
	s, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	return n, err == nil
}

// stallReader cancels a download that receives nothing for timeout.
type stallReader struct {
	r       io.Reader
	timeout time.Duration
	cancel  func()
	timer   *time.Timer
	stalled atomic.Bool
}

func (s *stallReader) arm() {
	if s.timeout > 0 {
		s.timer = time.AfterFunc(s.timeout, func() { s.stalled.Store(true); s.cancel() })
	}
}

func (s *stallReader) stop() {
	if s.timer != nil {
		s.timer.Stop()
	}
}

func (s *stallReader) Read(b []byte) (int, error) {
	n, err := s.r.Read(b)
	if n > 0 && s.timer != nil {
		s.timer.Reset(s.timeout)
	}
	return n, err
}

// writeError marks a failure to write the file, as opposed to reading the
// network.
type writeError struct{ err error }

func (e *writeError) Error() string { return e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

// hashReadError marks a failure to read back, for its hash, what the file
// holds.
type hashReadError struct{ err error }

func (e *hashReadError) Error() string { return e.err.Error() }
func (e *hashReadError) Unwrap() error { return e.err }

// copyBufPool holds the pipeline's copyBufSize buffers, shared by every
// download of the process.
var copyBufPool = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// chunk is a written buffer on its way to the hasher: n bytes at offset off
// of the file.
type chunk struct {
	b   *[]byte
	off int64
	n   int
}

// pipeCopy copies r into fh, which is positioned at off, and makes h hash
// the file from hashed (<= off) to the end of what it wrote. Receiving
// and writing run on this goroutine, hashing on another, so that a
// download runs at the speed of the slower of the two rather than of both
// added up: each written buffer goes to the hasher, which hands it back.
// The hasher reads from the file what it gets no buffer for: the prefix
// [hashed, off) a resumed download starts with, and what was written while
// it was busy with that prefix (the download does not wait for it then).
// Otherwise the download waits for the hasher once copyBufs buffers are in
// flight.
//
// It returns the bytes written (read from r, a network body, until EOF or
// an error); h has seen the file up to off plus those when it returns. A
// failed write is a *writeError, a failed read back a *hashReadError (also
// when ctx ends while the hasher reads the file: then h is of no use). With
// durable, writeback of the file starts while it downloads, and once want
// bytes were written without error the file is fsynced (synced) while the
// hasher finishes.
func pipeCopy(ctx context.Context, fh *os.File, r io.Reader, h hash.Hash, hashed, off, want int64, durable bool, progress func(int64)) (written int64, synced bool, err error) {
	free := make(chan *[]byte, copyBufs)
	queue := make(chan chunk, copyBufs)
	var (
		fromFile atomic.Bool // the hasher is reading the file
		end      int64       // where the hasher stops, set before queue closes
		herr     error
		hdone    = make(chan struct{})
	)
	fromFile.Store(hashed < off)
	go func() {
		defer close(hdone)
		var rb *[]byte // buffer for reading the file back
		defer func() {
			if rb != nil {
				copyBufPool.Put(rb)
			}
		}()
		pos := hashed
		readBack := func(to int64) {
			if herr != nil || pos >= to {
				return
			}
			fromFile.Store(true)
			if rb == nil {
				rb = copyBufPool.Get().(*[]byte)
			}
			if err := hashAt(ctx, fh, h, pos, to, *rb); err != nil {
				herr = &hashReadError{err}
			}
			pos = to
			fromFile.Store(false)
		}
		readBack(off)
		for c := range queue {
			readBack(c.off)
			if herr == nil {
				h.Write((*c.b)[:c.n])
				pos += int64(c.n)
			}
			free <- c.b
		}
		readBack(end)
	}()

	bufs := 1
	own := copyBufPool.Get().(*[]byte)
	wbFrom := off // writeback started up to here
	pos := off
	var rerr, werr error
	for werr == nil && rerr == nil {
		var n int
		n, rerr = fillBuffer(r, *own)
		if n == 0 {
			break
		}
		m, err := fh.Write((*own)[:n])
		if err != nil {
			werr = &writeError{err}
		}
		if m == 0 {
			break
		}
		written += int64(m)
		progress(int64(m))
		// Hand the buffer to the hasher for a free one: from those it
		// returned, a new one while fewer than copyBufs are out, or,
		// unless the hasher is reading the file, the next one it returns.
		// Without one, the hasher reads this chunk back from the file.
		var next *[]byte
		select {
		case next = <-free:
		default:
			switch {
			case bufs < copyBufs:
				next = copyBufPool.Get().(*[]byte)
				bufs++
			case !fromFile.Load():
				next = <-free
			}
		}
		if next != nil {
			queue <- chunk{b: own, off: pos, n: m}
			own = next
		}
		pos += int64(m)
		if durable && pos-wbFrom >= writebackChunk {
			// Start writing this much out now, so that the fsync at the
			// end has little left to do. A hint: errors show in fsync.
			unix.SyncFileRange(int(fh.Fd()), wbFrom, pos-wbFrom, unix.SYNC_FILE_RANGE_WRITE)
			wbFrom = pos
		}
	}
	if rerr == io.EOF {
		rerr = nil
	}
	var serr error
	if durable && werr == nil && rerr == nil && written == want {
		serr = fh.Sync()
		synced = serr == nil
	}
	end = pos
	close(queue)
	<-hdone
	copyBufPool.Put(own)
	for range bufs - 1 {
		copyBufPool.Put(<-free)
	}
	switch {
	case herr != nil:
		return written, false, herr
	case werr != nil:
		return written, false, werr
	case rerr != nil:
		return written, false, rerr
	case serr != nil:
		return written, false, &writeError{serr}
	}
	return written, synced, nil
}

// hashAt feeds bytes [from, to) of fh to h, reading them into buf (a new
// buffer when nil). It gives up when ctx ends.
func hashAt(ctx context.Context, fh *os.File, h hash.Hash, from, to int64, buf []byte) error {
	if buf == nil && from < to {
		bp := copyBufPool.Get().(*[]byte)
		defer copyBufPool.Put(bp)
		buf = *bp
	}
	for from < to {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := fh.ReadAt(buf[:min(int64(len(buf)), to-from)], from)
		h.Write(buf[:n])
		from += int64(n)
		switch {
		case err == io.EOF && from < to:
			return fmt.Errorf("%s: %d bytes, want %d", fh.Name(), from, to)
		case err != nil && err != io.EOF:
			return err
		}
	}
	return nil
}

// fillBuffer reads until b is full or r fails; a full buffer is no error.
func fillBuffer(r io.Reader, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := r.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
