package models

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"hash"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/models/hubtest"
)

// trickleReader hands out data at most max bytes a Read, then err (io.EOF
// when nil), like a network body.
type trickleReader struct {
	data  []byte
	max   int
	err   error
	atEnd func()
}

func (r *trickleReader) Read(b []byte) (int, error) {
	if len(r.data) == 0 {
		if r.atEnd != nil {
			r.atEnd()
			r.atEnd = nil
		}
		if r.err != nil {
			return 0, r.err
		}
		return 0, io.EOF
	}
	n := copy(b[:min(len(b), r.max)], r.data)
	r.data = r.data[n:]
	return n, nil
}

// runPipeCopy writes prefix into a new file and copies r after it with
// pipeCopy, h having seen the first hashed bytes of prefix, failing the
// test if that takes more than a minute.
func runPipeCopy(t *testing.T, prefix []byte, hashed int, h hash.Hash, r io.Reader, want int64, durable bool) (*os.File, int64, bool, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "blob.incomplete")
	if err := os.WriteFile(path, prefix, 0o644); err != nil {
		t.Fatal(err)
	}
	fh, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fh.Close() })
	if _, err := fh.Seek(int64(len(prefix)), io.SeekStart); err != nil {
		t.Fatal(err)
	}
	type result struct {
		n      int64
		synced bool
		err    error
	}
	done := make(chan result, 1)
	go func() {
		n, synced, err := pipeCopy(context.Background(), fh, r, h, int64(hashed), int64(len(prefix)), want, durable, func(int64) {})
		done <- result{n, synced, err}
	}()
	select {
	case res := <-done:
		return fh, res.n, res.synced, res.err
	case <-time.After(time.Minute):
		t.Fatal("pipeCopy hangs")
		return nil, 0, false, nil
	}
}

func checkFile(t *testing.T, fh *os.File, want []byte) {
	t.Helper()
	got, err := os.ReadFile(fh.Name())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("file holds %d bytes, want %d (equal: %v)", len(got), len(want), bytes.Equal(got[:min(len(got), len(want))], want[:min(len(got), len(want))]))
	}
}

func checkSum(t *testing.T, h hash.Hash, data []byte) {
	t.Helper()
	if want := sha256.Sum256(data); !bytes.Equal(h.Sum(nil), want[:]) {
		t.Errorf("hash of %d bytes differs from sha256 of what the file holds", len(data))
	}
}

func TestPipeCopyWritesAndHashes(t *testing.T) {
	for _, size := range []int{0, 1, copyBufSize - 1, copyBufSize, copyBufSize + 1, (copyBufs+3)*copyBufSize + 12345} {
		for _, durable := range []bool{false, true} {
			data := hubtest.RandomData(uint64(size), size)
			h := sha256.New()
			fh, n, synced, err := runPipeCopy(t, nil, 0, h, &trickleReader{data: data, max: 70000}, int64(size), durable)
			if err != nil || n != int64(size) || synced != durable {
				t.Fatalf("size %d durable %v: n=%d synced=%v err=%v", size, durable, n, synced, err)
			}
			checkFile(t, fh, data)
			checkSum(t, h, data)
		}
	}
}

// blockingHash is sha256 whose first Write waits until release is closed.
type blockingHash struct {
	hash.Hash
	release chan struct{}
	first   bool
}

func (b *blockingHash) Write(p []byte) (int, error) {
	if !b.first {
		b.first = true
		<-b.release
	}
	return b.Hash.Write(p)
}

// A resumed download hashes the partial file it continues while the rest
// comes in: the download does not wait for that hash, however slow, and
// the hash covers the prefix and the rest.
func TestPipeCopyHashesTheResumedPrefixMeanwhile(t *testing.T) {
	// hashed: from a new pull (0), or a hash carried from an earlier try.
	for _, hashed := range []int{0, 12345} {
		data := hubtest.RandomData(7, (3*copyBufs+2)*copyBufSize+99)
		cut := 5*copyBufSize + 7
		release := make(chan struct{})
		h := &blockingHash{Hash: sha256.New(), release: release}
		h.Hash.Write(data[:hashed])
		// The hasher blocks on the prefix until the whole rest was read:
		// a download that waited for it would never get there.
		r := &trickleReader{data: data[cut:], max: 200000, atEnd: func() { close(release) }}
		fh, n, _, err := runPipeCopy(t, data[:cut], hashed, h, r, int64(len(data)-cut), true)
		if err != nil || n != int64(len(data)-cut) {
			t.Fatalf("hashed %d: n=%d err=%v", hashed, n, err)
		}
		checkFile(t, fh, data)
		checkSum(t, h, data)
	}
}

// A connection lost half way: what was received is written and hashed,
// so that the next try continues both.
func TestPipeCopyConnectionLost(t *testing.T) {
	data := hubtest.RandomData(9, 4*copyBufSize)
	got := 2*copyBufSize + 4321
	lost := errors.New("connection reset by peer")
	h := sha256.New()
	fh, n, synced, err := runPipeCopy(t, data[:1000], 0, h, &trickleReader{data: data[1000:got], max: 50000, err: lost}, int64(len(data)-1000), true)
	if !errors.Is(err, lost) || n != int64(got-1000) || synced {
		t.Fatalf("n=%d synced=%v err=%v, want %d bytes and %v", n, synced, err, got-1000, lost)
	}
	checkFile(t, fh, data[:got])
	checkSum(t, h, data[:got])
}

func TestPipeCopyWriteFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "blob.incomplete")
	os.WriteFile(path, nil, 0o644)
	fh, err := os.Open(path) // read-only: every write fails
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	data := hubtest.RandomData(3, 3*copyBufSize)
	n, synced, err := pipeCopy(context.Background(), fh, &trickleReader{data: data, max: 1 << 20}, sha256.New(), 0, 0, int64(len(data)), true, func(int64) {})
	var we *writeError
	if !errors.As(err, &we) || n != 0 || synced {
		t.Fatalf("n=%d synced=%v err=%v, want a write error", n, synced, err)
	}
}

// A pull stopped while the partial file it resumes is being hashed does
// not wait for the rest of that hash.
func TestPipeCopyStopsHashingWhenCancelled(t *testing.T) {
	data := hubtest.RandomData(11, 40*copyBufSize)
	cut := 32 * copyBufSize
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	release := make(chan struct{})
	h := &blockingHash{Hash: sha256.New(), release: release}
	r := &trickleReader{data: data[cut:], max: 1 << 20, atEnd: func() { cancel(); close(release) }}
	path := filepath.Join(t.TempDir(), "blob.incomplete")
	os.WriteFile(path, data[:cut], 0o644)
	fh, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	fh.Seek(int64(cut), io.SeekStart)
	_, _, err = pipeCopy(ctx, fh, r, h, 0, int64(cut), int64(len(data)-cut), false, func(int64) {})
	var he *hashReadError
	if !errors.As(err, &he) || !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want the hash given up for the cancelled context", err)
	}
}
