// Package models puts model weights where vLLM finds them offline: it pulls
// a Hub repository into the Hugging Face cache layout under vagent's
// HF_HOME (hub/models--ORG--NAME/{blobs,snapshots,refs}), exactly as
// huggingface_hub would, so that units run with HF_HUB_OFFLINE=1 and never
// touch the network. Files come in parallel, resume after a dropped
// connection, are checked against the Hub's sha256 (git sha1 for small
// files) and placed atomically; a partial file is never linked into a
// snapshot, and refs/REVISION is written last, once every file is there.
// Other sources (archives with a checksum, git, local directories) come
// through go-getter (see PullSource).
package models

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vagent-dev/vagent/internal/fsync"
)

// Event kinds, the "event" field of a progress event.
const (
	// EventStart opens a model (File empty: its size, what is present and
	// what is left to fetch) or a file download (ResumedFrom > 0 when it
	// continues a partial file).
	EventStart = "start"
	// EventProgress reports bytes of a file and of the whole model,
	// throttled to one per file per ProgressInterval.
	EventProgress = "progress"
	// EventDone closes a file: fetched and verified, or Skipped when it
	// was complete already.
	EventDone = "done"
	// EventError is a failure; with Retry the pull goes on (a dropped
	// connection resumed, a corrupted file fetched again).
	EventError = "error"
	// EventSummary closes a model: where it is and what the pull did.
	EventSummary = "summary"
)

// Sources of a model, the "source" field of events.
const (
	SourceHub    = "hub"
	SourceLocal  = "local"
	SourceGetter = "getter"
)

// Event is one progress event of a pull, written by --json as one JSON
// object a line. Fields that do not apply to an event are left out.
type Event struct {
	Event string    `json:"event"`
	Time  time.Time `json:"time"`
	// Agent is the agent the model belongs to, when pulled for one.
	Agent string `json:"agent,omitempty"`
	// Source is "hub", "local" or "getter".
	Source string `json:"source,omitempty"`
	// Repo is the Hub repository, local directory or go-getter source.
	Repo     string `json:"repo"`
	Revision string `json:"revision,omitempty"`
	Commit   string `json:"commit,omitempty"`
	// File is the repository file the event is about; "" for the model.
	File string `json:"file,omitempty"`
	// Size and Bytes: the file's size and the bytes of it present (for a
	// model event, the model's).
	Size  int64 `json:"size,omitempty"`
	Bytes int64 `json:"bytes,omitempty"`
	// ResumedFrom is where a resumed download continues.
	ResumedFrom int64 `json:"resumed_from,omitempty"`
	// TotalSize and TotalBytes are the whole model's, on every event.
	TotalSize  int64 `json:"total_size,omitempty"`
	TotalBytes int64 `json:"total_bytes,omitempty"`
	// ToFetch is what a model start still has to download.
	ToFetch int64 `json:"to_fetch,omitempty"`
	// Rate is the download speed so far, bytes per second.
	Rate float64 `json:"bytes_per_second,omitempty"`
	// Files is the model's number of files (start, summary).
	Files int `json:"files,omitempty"`
	// Fetched and Skipped count files (summary); Skipped on done marks a
	// file that was complete already.
	Fetched      int   `json:"fetched,omitempty"`
	FetchedBytes int64 `json:"fetched_bytes,omitempty"`
	Skipped      bool  `json:"skipped,omitempty"`
	SkippedFiles int   `json:"skipped_files,omitempty"`
	// Seconds is the model's pull time (summary).
	Seconds float64 `json:"seconds,omitempty"`
	// Snapshot is the directory vLLM loads the model from (summary).
	Snapshot string `json:"snapshot,omitempty"`
	Error    string `json:"error,omitempty"`
	// Retry marks an error the pull recovers from by trying again.
	Retry bool `json:"retry,omitempty"`
}

// Options configure a Puller.
type Options struct {
	// HFHome is the Hugging Face home (HF_HOME): sources pulled by name go
	// to its local/ directory.
	HFHome string
	// HubCache is the hub cache Hub models go to (see Env); HFHome/hub
	// when empty.
	HubCache string
	// Endpoint is the Hub (HF_ENDPOINT); DefaultEndpoint when empty.
	Endpoint string
	// Token is sent as a bearer token (HF_TOKEN) for gated and private repos.
	Token string
	// Offline never calls the Hub (HF_HUB_OFFLINE): a revision already in
	// the cache is checked there, anything else fails.
	Offline bool
	// UserAgent of the requests.
	UserAgent string
	// Jobs is how many files download at once; 4 when 0.
	Jobs int
	// Verify re-hashes files already in the cache instead of trusting their
	// size.
	Verify bool
	// AllFiles fetches every file of the repository. By default only the
	// weights vLLM loads are fetched: *.safetensors when the repository has
	// them, else *.bin, never original/**; every other file comes too.
	AllFiles bool
	// Durable fsyncs each blob before it is renamed into place, and the
	// directories before refs/ is written, so that a power cut cannot leave
	// a ref pointing at an incomplete snapshot.
	Durable bool
	// Progress receives every event; nil drops them. It is called from one
	// goroutine at a time.
	Progress func(Event)
	// ProgressInterval throttles progress events; 250ms when 0.
	ProgressInterval time.Duration
	// StallTimeout aborts (and then resumes) a download that receives
	// nothing this long; 60s when 0.
	StallTimeout time.Duration
	// Client makes the HTTP requests; a pull-tuned client when nil.
	Client *http.Client
	// FreeSpace returns the bytes available to vagent on the file system
	// of dir; statfs(2) when nil.
	FreeSpace func(dir string) (int64, error)
}

// Result is what one pull did.
type Result struct {
	Agent    string
	Source   string
	Repo     string
	Revision string
	Commit   string
	// Dir is what vLLM loads: the snapshot directory, or the local one.
	Dir          string
	Files        int
	Fetched      int
	Skipped      int
	TotalBytes   int64
	FetchedBytes int64
	Duration     time.Duration
}

// Puller pulls models into one Hugging Face cache.
type Puller struct {
	opts Options
	hub  *hub
	mu   sync.Mutex // serialises Progress
}

// New returns a Puller for opts.
func New(opts Options) (*Puller, error) {
	if opts.HFHome == "" {
		return nil, errors.New("models: no HF home (paths.hf_home)")
	}
	if opts.HubCache == "" {
		opts.HubCache = filepath.Join(opts.HFHome, "hub")
	}
	if opts.Jobs <= 0 {
		opts.Jobs = 4
	}
	if opts.ProgressInterval <= 0 {
		opts.ProgressInterval = 250 * time.Millisecond
	}
	if opts.StallTimeout <= 0 {
		opts.StallTimeout = 60 * time.Second
	}
	if opts.FreeSpace == nil {
		opts.FreeSpace = freeSpace
	}
	ep := strings.TrimRight(opts.Endpoint, "/")
	if ep == "" {
		ep = DefaultEndpoint
	}
	if !strings.HasPrefix(ep, "http://") && !strings.HasPrefix(ep, "https://") {
		return nil, fmt.Errorf("models: Hub endpoint %q: want an http:// or https:// URL", opts.Endpoint)
	}
	opts.Endpoint = ep
	client := opts.Client
	if client == nil {
		client = &http.Client{Transport: newTransport(opts.Jobs)}
	}
	return &Puller{opts: opts, hub: &hub{endpoint: ep, token: opts.Token, userAgent: opts.UserAgent, client: client}}, nil
}

// HubCache is the hub cache the puller writes Hub models to.
func (p *Puller) HubCache() string { return p.opts.HubCache }

// Endpoint is the Hub the puller talks to.
func (p *Puller) Endpoint() string { return p.opts.Endpoint }

func (p *Puller) emit(e Event) {
	if p.opts.Progress == nil {
		return
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.opts.Progress(e)
}

// pullJob is one model being pulled.
type pullJob struct {
	agent, repo, revision, commit string
	folder                        string
	// root is the hub cache: every write of the pull goes through it, so
	// that no name (revision, file, blob) can write outside the cache.
	root      *os.Root
	files     []*fileState
	totalSize int64
	started   time.Time
	baseBytes int64           // present before this pull
	early     map[string]bool // fetched before the others (the shard index)
}

// rel is abs, a path in the job's repository folder, relative to the hub
// cache (the job's root).
func (j *pullJob) rel(abs string) string {
	r, err := filepath.Rel(j.root.Name(), abs)
	if err != nil {
		return abs // the root refuses it
	}
	return r
}

func (j *pullJob) present() int64 {
	var n int64
	for _, f := range j.files {
		n += f.bytes.Load()
	}
	return n
}

// event is an event about the job (file "" for the model) with the
// model's totals filled in.
func (j *pullJob) event(kind, file, errText string, retry bool) Event {
	e := Event{Event: kind, Agent: j.agent, Source: SourceHub, Repo: j.repo, Revision: j.revision, Commit: j.commit,
		File: file, Error: errText, Retry: retry, TotalSize: j.totalSize}
	e.TotalBytes = j.present()
	if el := time.Since(j.started).Seconds(); el > 0 && !j.started.IsZero() {
		if r := float64(e.TotalBytes-j.baseBytes) / el; r > 0 {
			e.Rate = math.Round(r)
		}
	}
	return e
}

// Pull brings model (a Hub repository id, or a local directory, which is
// only checked) at revision ("" is main) into the cache for agent ("" when
// pulled for none).
func (p *Puller) Pull(ctx context.Context, agent, model, revision string) (*Result, error) {
	if IsLocal(model) {
		return p.checkLocal(agent, model)
	}
	if err := ValidRepoID(model); err != nil {
		return nil, fmt.Errorf("pull: %w", err)
	}
	if revision == "" {
		revision = DefaultRevision
	}
	if p.opts.Offline {
		return p.pullOffline(agent, model, revision)
	}
	t0 := time.Now()
	info, err := p.hub.repoInfo(ctx, model, revision)
	if err != nil {
		p.emit(Event{Event: EventError, Agent: agent, Source: SourceHub, Repo: model, Revision: revision, Error: err.Error()})
		return nil, err
	}
	files := info.Files
	job := &pullJob{agent: agent, repo: model, revision: revision, commit: info.Commit, folder: RepoFolder(p.opts.HubCache, model)}
	if err := os.MkdirAll(p.opts.HubCache, 0o755); err != nil {
		return nil, fmt.Errorf("pull %s: %w", model, err)
	}
	if job.root, err = os.OpenRoot(p.opts.HubCache); err != nil {
		return nil, fmt.Errorf("pull %s: %w", model, err)
	}
	defer job.root.Close()
	if !p.opts.AllFiles {
		files = SelectFiles(files)
		if files, err = p.dropUnindexed(ctx, job, files); err != nil {
			p.emit(Event{Event: EventError, Agent: agent, Source: SourceHub, Repo: model, Revision: revision, Error: err.Error()})
			return nil, err
		}
	}
	var toFetch int64
	for _, f := range files {
		st := &fileState{file: f}
		job.files = append(job.files, st)
		job.totalSize += f.Size
		blob := filepath.Join(job.folder, "blobs", f.BlobID)
		if fi, err := os.Stat(blob); err == nil && fi.Size() == f.Size {
			st.bytes.Store(f.Size)
			continue
		}
		var have int64
		if fi, err := os.Stat(blob + incompleteSuffix); err == nil && fi.Size() <= f.Size {
			have = fi.Size()
		}
		st.bytes.Store(have)
		toFetch += f.Size - have
	}
	job.baseBytes = job.present()
	blobs := filepath.Join(job.folder, "blobs")
	if err := job.root.MkdirAll(job.rel(blobs), 0o755); err != nil {
		return nil, fmt.Errorf("pull %s: %w", model, err)
	}
	if free, err := p.opts.FreeSpace(blobs); err != nil {
		return nil, fmt.Errorf("pull %s: free space of %s: %w", model, blobs, err)
	} else if free < toFetch {
		err := &DiskFullError{Repo: model, Dir: blobs, Need: toFetch, Free: free}
		p.emit(job.event(EventError, "", err.Error(), false))
		return nil, err
	}
	job.started = time.Now()
	start := job.event(EventStart, "", "", false)
	start.Files, start.Size, start.Bytes, start.ToFetch = len(files), job.totalSize, job.baseBytes, toFetch
	p.emit(start)

	res := &Result{Agent: agent, Source: SourceHub, Repo: model, Revision: revision, Commit: info.Commit,
		Files: len(files), TotalBytes: job.totalSize}
	if err := p.fetchAll(ctx, job, res); err != nil {
		p.emit(job.event(EventError, "", err.Error(), false))
		return nil, err
	}
	dir, err := p.finish(job)
	if err != nil {
		p.emit(job.event(EventError, "", err.Error(), false))
		return nil, err
	}
	res.Dir = dir
	res.Duration = time.Since(t0)
	sum := job.event(EventSummary, "", "", false)
	sum.Files, sum.Fetched, sum.SkippedFiles, sum.FetchedBytes = res.Files, res.Fetched, res.Skipped, res.FetchedBytes
	sum.Size, sum.Bytes, sum.Seconds, sum.Snapshot = res.TotalBytes, res.TotalBytes, res.Duration.Seconds(), dir
	sum.Rate = 0
	if res.Duration > 0 && res.FetchedBytes > 0 {
		sum.Rate = math.Round(float64(res.FetchedBytes) / res.Duration.Seconds())
	}
	p.emit(sum)
	return res, nil
}

// OfflineMessage is huggingface_hub's own text for a snapshot missing
// with HF_HUB_OFFLINE set (_snapshot_download.py, snapshot_download), so
// that the fix reads the same from vagent and from Python.
const OfflineMessage = "Cannot find an appropriate cached snapshot folder for the specified revision on the local disk " +
	"and outgoing traffic has been disabled. To enable repo look-ups and downloads online, set 'HF_HUB_OFFLINE=0' as environment variable."

// ErrOffline is wrapped by a pull that needed the Hub with HF_HUB_OFFLINE
// set.
var ErrOffline = errors.New(OfflineMessage)

// pullOffline accepts a revision the cache holds in full (its ref, its
// snapshot, and every file of the snapshot resolving to a blob) without a
// call to the Hub.
func (p *Puller) pullOffline(agent, model, revision string) (*Result, error) {
	fail := func(err error) (*Result, error) {
		p.emit(Event{Event: EventError, Agent: agent, Source: SourceHub, Repo: model, Revision: revision, Error: err.Error()})
		return nil, err
	}
	dir, err := SnapshotDir(p.opts.HubCache, model, revision)
	if err != nil {
		return fail(fmt.Errorf("pull %s@%s: %w (%v)", model, revision, ErrOffline, err))
	}
	res := &Result{Agent: agent, Source: SourceHub, Repo: model, Revision: revision, Commit: filepath.Base(dir), Dir: dir}
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		st, err := os.Stat(path) // follows the link to its blob
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		res.Files++
		res.Skipped++
		res.TotalBytes += st.Size()
		return nil
	})
	if err != nil {
		return fail(fmt.Errorf("pull %s@%s: %w (snapshot incomplete: %v)", model, revision, ErrOffline, err))
	}
	p.emit(Event{Event: EventSummary, Agent: agent, Source: SourceHub, Repo: model, Revision: revision, Commit: res.Commit,
		Files: res.Files, SkippedFiles: res.Skipped, Size: res.TotalBytes, Bytes: res.TotalBytes, Snapshot: dir})
	return res, nil
}

// fetchAll downloads the job's files, Jobs at a time, largest first. The
// first failure cancels the rest (their partial files are kept).
func (p *Puller) fetchAll(ctx context.Context, job *pullJob, res *Result) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	order := append([]*fileState(nil), job.files...)
	sort.SliceStable(order, func(i, j int) bool { return order[i].file.Size > order[j].file.Size })
	work := make(chan *fileState)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	stopReports := p.reportProgress(job)
	defer stopReports()
	for range min(p.opts.Jobs, len(order)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for st := range work {
				before := st.bytes.Load()
				fetched, err := p.fetchFile(ctx, job, st)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
					continue
				}
				st.done.Store(true)
				mu.Lock()
				if fetched || job.early[st.file.Path] {
					res.Fetched++
					res.FetchedBytes += st.file.Size - min(before, st.file.Size)
				} else {
					res.Skipped++
				}
				mu.Unlock()
				e := job.event(EventDone, st.file.Path, "", false)
				e.Size, e.Bytes, e.Skipped = st.file.Size, st.file.Size, !fetched
				p.emit(e)
			}
		}()
	}
feed:
	for _, st := range order {
		select {
		case work <- st:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

// reportProgress emits a progress event per file that moved, every
// ProgressInterval, until the returned stop is called.
func (p *Puller) reportProgress(job *pullJob) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(p.opts.ProgressInterval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			for _, st := range job.files {
				b := st.bytes.Load()
				if !st.started.Load() || st.done.Load() || b == st.lastRep {
					continue
				}
				st.lastRep = b
				e := job.event(EventProgress, st.file.Path, "", false)
				e.Size, e.Bytes = st.file.Size, b
				p.emit(e)
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// finish links every file into snapshots/COMMIT and then writes
// refs/REVISION: a snapshot that a ref points at is complete.
func (p *Puller) finish(job *pullJob) (string, error) {
	snap := filepath.Join(job.folder, "snapshots", job.commit)
	for _, st := range job.files {
		f := st.file
		link := filepath.Join(snap, filepath.FromSlash(f.Path))
		if err := symlinkAtomic(job.root, blobRel(f.Path, f.BlobID), job.rel(link)); err != nil {
			return "", fmt.Errorf("pull %s: snapshot %s: %w", job.repo, f.Path, err)
		}
	}
	if err := job.root.MkdirAll(job.rel(snap), 0o755); err != nil {
		return "", fmt.Errorf("pull %s: %w", job.repo, err)
	}
	if p.opts.Durable {
		for _, d := range []string{filepath.Join(job.folder, "blobs"), snap} {
			if err := fsync.Dir(d); err != nil {
				return "", fmt.Errorf("pull %s: %w", job.repo, err)
			}
		}
	}
	if job.revision != job.commit {
		if err := writeFileAtomic(job.root, job.rel(filepath.Join(job.folder, "refs", filepath.FromSlash(job.revision))), []byte(job.commit), 0o644); err != nil {
			return "", fmt.Errorf("pull %s: ref %s: %w", job.repo, job.revision, err)
		}
	}
	return snap, nil
}

// checkLocal accepts a local model directory that vLLM can load: it
// exists and has a config.json.
func (p *Puller) checkLocal(agent, dir string) (*Result, error) {
	st, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		err = fmt.Errorf("pull: local model %s does not exist (a model starting with / or ./ is a directory on this host, not a Hub repository)", dir)
	case err != nil:
		err = fmt.Errorf("pull: local model %s: %w", dir, err)
	case !st.IsDir():
		err = fmt.Errorf("pull: local model %s is not a directory", dir)
	default:
		if _, cerr := os.Stat(filepath.Join(dir, "config.json")); cerr != nil {
			err = fmt.Errorf("pull: local model %s has no config.json, which vLLM needs to load it", dir)
		}
	}
	if err != nil {
		p.emit(Event{Event: EventError, Agent: agent, Source: SourceLocal, Repo: dir, Error: err.Error()})
		return nil, err
	}
	p.emit(Event{Event: EventSummary, Agent: agent, Source: SourceLocal, Repo: dir, Snapshot: dir})
	return &Result{Agent: agent, Source: SourceLocal, Repo: dir, Dir: dir}, nil
}

// safetensorsIndex is the file naming a sharded checkpoint's shards.
const safetensorsIndex = "model.safetensors.index.json"

// dropUnindexed leaves out top-level *.safetensors files that the
// repository's model.safetensors.index.json does not name (a consolidated
// copy beside the shards, as Mistral repositories carry), as vLLM skips
// them. The index itself is fetched first to read it.
func (p *Puller) dropUnindexed(ctx context.Context, job *pullJob, files []File) ([]File, error) {
	var index *File
	for i := range files {
		if files[i].Path == safetensorsIndex {
			index = &files[i]
		}
	}
	if index == nil {
		return files, nil
	}
	st := &fileState{file: *index}
	fetched, err := p.fetchFile(ctx, job, st)
	if err != nil {
		return nil, err
	}
	if fetched {
		job.early = map[string]bool{index.Path: true}
	}
	data, err := os.ReadFile(filepath.Join(job.folder, "blobs", index.BlobID))
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", job.repo, err)
	}
	var idx struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(data, &idx); err != nil || len(idx.WeightMap) == 0 {
		// Not an index vLLM could use either: keep every shard.
		return files, nil
	}
	named := map[string]bool{}
	for _, shard := range idx.WeightMap {
		named[shard] = true
	}
	var out []File
	for _, f := range files {
		if strings.HasSuffix(f.Path, ".safetensors") && !strings.Contains(f.Path, "/") && !named[f.Path] {
			continue
		}
		out = append(out, f)
	}
	return out, nil
}

// weightExts are the checkpoint formats a repository may carry side by
// side; vLLM loads one of them.
var weightExts = []string{".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".onnx_data", ".gguf", ".ot", ".tflite", ".mlmodel", ".pb"}

func isWeight(name string) bool {
	ext := strings.ToLower(path.Ext(name))
	for _, w := range weightExts {
		if ext == w {
			return true
		}
	}
	return false
}

// SelectFiles keeps the files vLLM reads from a repository: every file
// that is not a checkpoint, and of the checkpoints those of the format vLLM
// picks (*.safetensors when present, else *.bin, else all), outside
// original/ (a second copy in another layout that vLLM ignores).
func SelectFiles(files []File) []File {
	var hasST, hasBin bool
	for _, f := range files {
		if strings.HasPrefix(f.Path, "original/") {
			continue
		}
		switch strings.ToLower(path.Ext(f.Path)) {
		case ".safetensors":
			hasST = true
		case ".bin":
			hasBin = true
		}
	}
	var out []File
	for _, f := range files {
		if strings.HasPrefix(f.Path, "original/") {
			continue
		}
		if isWeight(f.Path) {
			ext := strings.ToLower(path.Ext(f.Path))
			if (hasST && ext != ".safetensors") || (!hasST && hasBin && ext != ".bin") {
				continue
			}
		}
		out = append(out, f)
	}
	return out
}

// freeSpace is statfs(2)'s space available to unprivileged users.
func freeSpace(dir string) (int64, error) {
	var s unix.Statfs_t
	if err := unix.Statfs(dir, &s); err != nil {
		return 0, err
	}
	return int64(s.Bavail) * int64(s.Bsize), nil
}

// FormatBytes prints a size the way people read disk space: 1.5 GiB.
func FormatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
