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
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
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
	// copyBufSize and copyBufs size the download pipeline: chunks small
	// enough to still be in the CPU cache when they are hashed after being
	// written, and enough of them to keep the network busy meanwhile.
	copyBufSize = 256 << 10
	copyBufs    = 16
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
	got, err := io.CopyBuffer(h, io.LimitReader(fh, n), make([]byte, copyBufSize))
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
// .locks/models--X/ID.lock), waiting while ctx allows.
func lockBlob(ctx context.Context, dir, blobID string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	fh, err := os.OpenFile(filepath.Join(dir, blobID+".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := unix.Flock(int(fh.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { unix.Flock(int(fh.Fd()), unix.LOCK_UN); fh.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			fh.Close()
			return nil, err
		}
		select {
		case <-ctx.Done():
			fh.Close()
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
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
	unlock, err := lockBlob(ctx, lockDir(p.opts.HFHome, job.repo), f.BlobID)
	if err != nil {
		return false, fmt.Errorf("pull %s: %s: lock: %w", job.repo, f.Path, err)
	}
	defer unlock()

	if fi, err := os.Stat(blob); err == nil {
		switch {
		case fi.Size() != f.Size:
			p.emit(job.event(EventError, f.Path, fmt.Sprintf("cached blob is %d bytes, want %d: fetching it again", fi.Size(), f.Size), true))
			os.Remove(blob)
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
			os.Remove(blob)
		default:
			st.bytes.Store(f.Size)
			return false, nil
		}
	}

	refetched := false
	for {
		got, err := p.download(ctx, job, st, partial)
		if err != nil {
			return true, err
		}
		_, algo, want := newHasher(f)
		if got == want {
			if p.opts.Durable {
				if err := syncFile(partial); err != nil {
					return true, fmt.Errorf("pull %s: %s: %w", job.repo, f.Path, err)
				}
			}
			if err := os.Rename(partial, blob); err != nil {
				return true, fmt.Errorf("pull %s: %s: %w", job.repo, f.Path, err)
			}
			return true, nil
		}
		os.Remove(partial)
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
// digest of the whole file (see newHasher), computed while it streams.
func (p *Puller) download(ctx context.Context, job *pullJob, st *fileState, partial string) (string, error) {
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
				return "", ctx.Err()
			case <-time.After(time.Duration(attempt-1) * 500 * time.Millisecond):
			}
		}
		sum, err := p.downloadOnce(ctx, job, st, partial, &hs)
		if err == nil {
			return sum, nil
		}
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		var pe permanentError
		if errors.As(err, &pe) {
			return "", pe.error
		}
		lastErr = err
	}
	return "", fmt.Errorf("pull %s: %s: giving up after %d tries: %w", job.repo, f.Path, netAttempts, lastErr)
}

// downloadOnce is one HTTP request for the rest of a file; it returns the
// digest of the whole file once partial holds all of it. Errors worth
// another try are returned plain, the others wrapped as permanent.
// hashState carries a file's hash from one try to the next, so that a
// resume within one pull does not read the partial file again.
type hashState struct {
	h hash.Hash
	n int64 // bytes of the partial file h has seen
}

func (p *Puller) downloadOnce(ctx context.Context, job *pullJob, st *fileState, partial string, hs *hashState) (string, error) {
	f := st.file
	if err := os.MkdirAll(filepath.Dir(partial), 0o755); err != nil {
		return "", permanent(fmt.Errorf("pull %s: %w", job.repo, err))
	}
	fh, err := os.OpenFile(partial, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return "", permanent(fmt.Errorf("pull %s: %s: %w", job.repo, f.Path, err))
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil {
		return "", permanent(err)
	}
	have := fi.Size()
	if have > f.Size {
		// Longer than the file can be: not a prefix of it.
		have = 0
	}
	var h hash.Hash
	switch {
	case hs.h != nil && hs.n == have:
		h = hs.h
	default:
		h, _, _ = newHasher(f)
		if have > 0 {
			// A partial file from an earlier pull: hash what it holds.
			if err := hashFile(partial, have, h); err != nil {
				return "", permanent(fmt.Errorf("pull %s: %s: %w", job.repo, f.Path, err))
			}
		}
	}
	hs.h = nil
	st.bytes.Store(have)
	if !st.started.Swap(true) {
		e := job.event(EventStart, f.Path, "", false)
		e.Size, e.Bytes, e.ResumedFrom = f.Size, have, have
		p.emit(e)
	}
	if have == f.Size {
		return hex.EncodeToString(h.Sum(nil)), nil
	}

	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := p.hub.newRequest(rctx, http.MethodGet, p.hub.resolveURL(job.repo, job.commit, f.Path))
	if err != nil {
		return "", permanent(err)
	}
	if have > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", have))
	}
	resp, err := p.hub.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("pull %s: %s: %w", job.repo, f.Path, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusPartialContent:
		if start, ok := contentRangeStart(resp.Header.Get("Content-Range")); !ok || start != have {
			fh.Truncate(0)
			st.bytes.Store(0)
			return "", fmt.Errorf("pull %s: %s: asked for bytes=%d-, got range %q", job.repo, f.Path, have, resp.Header.Get("Content-Range"))
		}
	case http.StatusOK:
		// The whole file, whether or not a range was asked for.
		if have > 0 {
			have = 0
			h, _, _ = newHasher(f)
		}
	case http.StatusRequestedRangeNotSatisfiable:
		// Nothing past what the partial file holds: it is checked as it
		// is, and a mismatch starts over.
		return hex.EncodeToString(h.Sum(nil)), nil
	default:
		he := hubError(resp, job.repo, job.revision, f.Path)
		if he.temporary() {
			return "", he
		}
		return "", permanent(he)
	}
	if err := fh.Truncate(have); err != nil {
		return "", permanent(fmt.Errorf("pull %s: %s: %w", job.repo, f.Path, err))
	}
	st.bytes.Store(have)
	if _, err := fh.Seek(have, io.SeekStart); err != nil {
		return "", permanent(err)
	}
	body := &stallReader{r: resp.Body, timeout: p.opts.StallTimeout, cancel: cancel}
	body.arm()
	defer body.stop()
	want := f.Size - have
	n, err := pipeCopy(fh, io.LimitReader(body, want), h, func(n int64) { st.bytes.Add(n) }, cancel)
	if err != nil {
		// What was written is hashed: the next try continues both.
		hs.h, hs.n = h, have+n
	}
	switch {
	case err != nil && isNoSpace(err):
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return "", permanent(&DiskFullError{Repo: job.repo, Dir: filepath.Dir(partial), Partial: partial, Err: err})
	case err != nil && body.stalled.Load():
		return "", fmt.Errorf("pull %s: %s: no data for %s", job.repo, f.Path, p.opts.StallTimeout)
	case err != nil:
		var werr *writeError
		if errors.As(err, &werr) {
			return "", permanent(fmt.Errorf("pull %s: %s: %w", job.repo, f.Path, werr.err))
		}
		return "", fmt.Errorf("pull %s: %s: connection lost after %s of %s: %w", job.repo, f.Path,
			FormatBytes(have+n), FormatBytes(f.Size), err)
	case n < want:
		return "", fmt.Errorf("pull %s: %s: connection closed after %s of %s", job.repo, f.Path, FormatBytes(have+n), FormatBytes(f.Size))
	}
	return hex.EncodeToString(h.Sum(nil)), nil
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

// pipeCopy copies r to w and into h with reading, writing and hashing
// overlapped: one goroutine fills buffers from the network, this one writes
// them, another hashes what was written, so a download runs at the speed of
// its slowest stage rather than of all three added up. It returns the bytes
// written; a failed write is a *writeError, after which abort is called to
// unblock the reader. progress gets each write's size.
func pipeCopy(w io.Writer, r io.Reader, h hash.Hash, progress func(int64), abort func()) (int64, error) {
	free := make(chan []byte, copyBufs)
	for range copyBufs {
		free <- make([]byte, copyBufSize)
	}
	full := make(chan []byte, copyBufs)
	hashq := make(chan []byte, copyBufs)
	stop := make(chan struct{})
	hashed := make(chan struct{})
	var readErr error
	go func() {
		defer close(full)
		for {
			var b []byte
			select {
			case b = <-free:
			case <-stop:
				return
			}
			n, err := fillBuffer(r, b)
			if n > 0 {
				full <- b[:n]
			} else {
				free <- b
			}
			if err != nil {
				if err != io.EOF {
					readErr = err
				}
				return
			}
		}
	}()
	go func() {
		defer close(hashed)
		for b := range hashq {
			h.Write(b)
			free <- b[:cap(b)]
		}
	}()
	var written int64
	var werr error
	for b := range full {
		if werr != nil {
			free <- b[:cap(b)]
			continue
		}
		n, err := w.Write(b)
		written += int64(n)
		if n > 0 {
			progress(int64(n))
		}
		if err != nil {
			werr = &writeError{err}
			close(stop)
			abort()
			free <- b[:cap(b)]
			continue
		}
		hashq <- b
	}
	close(hashq)
	<-hashed
	if werr != nil {
		return written, werr
	}
	return written, readErr
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
