package models

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	getter "github.com/hashicorp/go-getter/v2"
)

// LocalDir is where PullSource puts a model given by NAME rather than by
// an absolute path: HF_HOME/local/NAME. An agent then names that directory
// as its model.
func LocalDir(hfHome, name string) string { return filepath.Join(hfHome, "local", name) }

// PullSource fetches a model that is not on the Hub through go-getter and
// places it at dest (an absolute path, or a NAME under LocalDir), replacing
// what was there only once the new copy is complete and has a config.json.
// src is any go-getter source, for example
//
//	https://host/m.tar.gz?checksum=sha256:HEX   an archive, unpacked and checked
//	git::https://host/org/repo.git?ref=v1       a git repository (needs git)
//	/srv/models/m                               a local directory, copied
//
// An archive holding one top-level directory is unpacked from inside it. It
// returns where the model is; point the agent's model at that directory.
func (p *Puller) PullSource(ctx context.Context, agent, src, dest string) (*Result, error) {
	if src == "" {
		return nil, errors.New("pull: empty source")
	}
	if dest == "" {
		return nil, errors.New("pull: a source needs a destination (a name under HF_HOME/local, or an absolute path)")
	}
	if !filepath.IsAbs(dest) {
		if err := safeRelPath(dest); err != nil || strings.Contains(dest, "/") {
			return nil, fmt.Errorf("pull: destination %q: want a plain name or an absolute path", dest)
		}
		dest = LocalDir(p.opts.HFHome, dest)
	}
	dest = filepath.Clean(dest)
	t0 := time.Now()
	fail := func(err error) (*Result, error) {
		p.emit(Event{Event: EventError, Agent: agent, Source: SourceGetter, Repo: src, Error: err.Error()})
		return nil, err
	}
	parent := filepath.Dir(dest)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fail(fmt.Errorf("pull %s: %w", src, err))
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dest)+".incomplete-")
	if err != nil {
		return fail(fmt.Errorf("pull %s: %w", src, err))
	}
	defer os.RemoveAll(tmp)
	pwd, _ := os.Getwd()
	tracker := &getterProgress{p: p, agent: agent, src: src, every: p.opts.ProgressInterval}
	p.emit(Event{Event: EventStart, Agent: agent, Source: SourceGetter, Repo: src})
	client := &getter.Client{
		Getters: []getter.Getter{
			&getter.GitGetter{Detectors: []getter.Detector{new(getter.GitHubDetector), new(getter.GitDetector),
				new(getter.BitBucketDetector), new(getter.GitLabDetector)}},
			// No overall timeout: weights are large. ctx bounds it.
			&getter.HttpGetter{Netrc: true, XTerraformGetDisabled: true, HeadFirstTimeout: 30 * time.Second},
			new(getter.FileGetter),
		},
		DisableSymlinks: true,
	}
	got := filepath.Join(tmp, "model")
	_, err = client.Get(ctx, &getter.Request{
		Src: src, Dst: got, Pwd: pwd, GetMode: getter.ModeAny, Copy: true,
		ProgressListener: tracker,
	})
	if err != nil {
		return fail(fmt.Errorf("pull %s: %w", src, err))
	}
	// go-getter links a local directory rather than copying it: copy it
	// (following links, as a snapshot's files are links to blobs), so that
	// the model does not change when its source does.
	if fi, err := os.Lstat(got); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		target, err := filepath.EvalSymlinks(got)
		if err != nil {
			return fail(fmt.Errorf("pull %s: %w", src, err))
		}
		got = filepath.Join(tmp, "copy")
		if err := copyTree(ctx, target, got); err != nil {
			return fail(fmt.Errorf("pull %s: copy: %w", src, err))
		}
	}
	root, err := modelRoot(got)
	if err != nil {
		return fail(fmt.Errorf("pull %s: %w", src, err))
	}
	files, size := treeSize(root)
	// Swap in the new copy: the old one stays until the new one is there.
	old := ""
	if _, err := os.Lstat(dest); err == nil {
		old = filepath.Join(tmp, "old")
		if err := os.Rename(dest, old); err != nil {
			return fail(fmt.Errorf("pull %s: %w", src, err))
		}
	}
	if err := os.Rename(root, dest); err != nil {
		if old != "" {
			os.Rename(old, dest)
		}
		return fail(fmt.Errorf("pull %s: %w", src, err))
	}
	res := &Result{Agent: agent, Source: SourceGetter, Repo: src, Dir: dest, Files: files, Fetched: files,
		TotalBytes: size, FetchedBytes: size, Duration: time.Since(t0)}
	e := Event{Event: EventSummary, Agent: agent, Source: SourceGetter, Repo: src, Snapshot: dest, Files: files,
		Fetched: files, Size: size, Bytes: size, FetchedBytes: size, Seconds: res.Duration.Seconds()}
	if s := res.Duration.Seconds(); s > 0 {
		e.Rate = math.Round(float64(size) / s)
	}
	p.emit(e)
	return res, nil
}

// modelRoot finds the directory holding config.json: dir itself, or its
// only subdirectory (an archive of one top-level folder).
func modelRoot(dir string) (string, error) {
	if _, err := os.Stat(filepath.Join(dir, "config.json")); err == nil {
		return dir, nil
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	if len(ents) == 1 && ents[0].IsDir() {
		sub := filepath.Join(dir, ents[0].Name())
		if _, err := os.Stat(filepath.Join(sub, "config.json")); err == nil {
			return sub, nil
		}
	}
	return "", errors.New("no config.json at the top of what was fetched (nor in its only directory): vLLM cannot load it")
}

func treeSize(dir string) (files int, size int64) {
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				files++
				size += fi.Size()
			}
		}
		return nil
	})
	return files, size
}

// copyTree copies the directory src to dst, following symbolic links.
func copyTree(ctx context.Context, src, dst string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range ents {
		s, d := filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())
		fi, err := os.Stat(s)
		if err != nil {
			return err
		}
		switch {
		case fi.IsDir():
			if err := copyTree(ctx, s, d); err != nil {
				return err
			}
		case fi.Mode().IsRegular():
			if err := copyFile(s, d, fi.Mode().Perm()); err != nil {
				return err
			}
		}
	}
	return nil
}

func copyFile(src, dst string, mode fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode|0o200)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// getterProgress turns go-getter's progress callbacks into events.
type getterProgress struct {
	p     *Puller
	agent string
	src   string
	every time.Duration
}

func (g *getterProgress) TrackProgress(src string, current, total int64, stream io.ReadCloser) io.ReadCloser {
	r := &countingReader{rc: stream, g: g, total: total}
	r.n.Store(current)
	return r
}

type countingReader struct {
	rc    io.ReadCloser
	g     *getterProgress
	total int64
	n     atomic.Int64
	last  time.Time
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.rc.Read(b)
	v := c.n.Add(int64(n))
	if time.Since(c.last) >= c.g.every {
		c.last = time.Now()
		c.g.p.emit(Event{Event: EventProgress, Agent: c.g.agent, Source: SourceGetter, Repo: c.g.src,
			Bytes: v, Size: c.total, TotalBytes: v, TotalSize: c.total})
	}
	return n, err
}

func (c *countingReader) Close() error { return c.rc.Close() }
