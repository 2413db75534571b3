// Package hubtest is a Hugging Face Hub for tests: an HTTP server that
// speaks the part of the Hub API vagent pulls with (revision info with
// siblings, sizes and LFS sha256; resolve with X-Repo-Commit, X-Linked-Etag
// and X-Linked-Size, LFS files redirected to a "CDN" path that honours
// Range), gated repositories, the Hub's error codes, and injected faults: a
// connection dropped after N bytes, a corrupted byte, a refused token. Every
// request is logged so that a test can assert what a client asked for.
package hubtest

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path"
	"sort"
	"strings"
	"sync"
	"time"
)

// LFSThreshold is the size from which a file is stored in LFS, unless
// File.LFS says otherwise; weights always are.
const LFSThreshold = 10 << 20

// File is one file of a repository.
type File struct {
	Path string
	Data []byte
	// LFS forces the file into LFS (sha256, a CDN redirect); files of
	// LFSThreshold bytes or more and *.safetensors, *.bin are LFS anyway.
	LFS bool

	// Checksums, computed once: Data must not change after first use.
	once        sync.Once
	sha256, git string
}

func (f *File) sums() {
	f.once.Do(func() {
		s := sha256.Sum256(f.Data)
		f.sha256 = hex.EncodeToString(s[:])
		h := sha1.New()
		fmt.Fprintf(h, "blob %d\x00", len(f.Data))
		h.Write(f.Data)
		f.git = hex.EncodeToString(h.Sum(nil))
	})
}

func (f *File) isLFS() bool {
	ext := path.Ext(f.Path)
	return f.LFS || len(f.Data) >= LFSThreshold || ext == ".safetensors" || ext == ".bin" || ext == ".gguf"
}

// SHA256 is the hex sha256 of the file's content.
func (f *File) SHA256() string {
	f.sums()
	return f.sha256
}

// GitSHA1 is the git blob id of the file's content.
func (f *File) GitSHA1() string {
	f.sums()
	return f.git
}

// BlobID is what huggingface_hub names the file's blob: the sha256 of an
// LFS file, the git sha1 of any other.
func (f *File) BlobID() string {
	if f.isLFS() {
		return f.SHA256()
	}
	return f.GitSHA1()
}

// Repo is a model repository with one commit.
type Repo struct {
	ID     string
	Commit string
	// Refs maps branch and tag names to Commit; "main" always does.
	Refs  []string
	Files []*File
	// Gated repositories answer 401 without a token and 403 with a wrong one.
	Gated bool
}

// File returns the repository's file called name, or nil.
func (r *Repo) File(name string) *File {
	for _, f := range r.Files {
		if f.Path == name {
			return f
		}
	}
	return nil
}

// Request is one request the server got.
type Request struct {
	Method string
	Path   string
	Range  string
	Auth   string
	Status int
	// Start is when the request came, End when its handler returned (for
	// a dropped download: when the connection was cut).
	Start, End time.Time
}

// Server is a fake Hub. Set faults before the requests they should hit.
type Server struct {
	*httptest.Server
	// Token is the one token gated repositories accept.
	Token string

	mu      sync.Mutex
	repos   map[string]*Repo
	drops   map[string][]int64 // blob id → bytes to send before dropping, per coming request
	corrupt map[string][]int64 // blob id → offset to flip, per coming request
	delay   time.Duration      // per 1 MiB sent, to make downloads observable
	log     []Request
	busy    int // requests being served
}

// New starts a fake Hub on a free loopback port holding repos.
func New(repos ...*Repo) *Server {
	s := &Server{repos: map[string]*Repo{}, drops: map[string][]int64{}, corrupt: map[string][]int64{}}
	for _, r := range repos {
		s.Add(r)
	}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// Add adds or replaces a repository.
func (s *Server) Add(r *Repo) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.Commit == "" {
		h := sha1.Sum([]byte(r.ID))
		r.Commit = hex.EncodeToString(h[:])
	}
	for _, f := range r.Files {
		f.sums()
	}
	s.repos[r.ID] = r
}

// DropAfter makes the next download of file (in any repository) send n
// bytes of the body and then close the connection; called again, it drops
// the following download too.
func (s *Server) DropAfter(f *File, n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := f.BlobID()
	s.drops[id] = append(s.drops[id], n)
}

// CorruptAt makes the next download of file flip the byte at offset.
func (s *Server) CorruptAt(f *File, offset int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := f.BlobID()
	s.corrupt[id] = append(s.corrupt[id], offset)
}

// Throttle makes downloads sleep d per MiB sent.
func (s *Server) Throttle(d time.Duration) {
	s.mu.Lock()
	s.delay = d
	s.mu.Unlock()
}

// Requests returns the requests served so far, once those in progress are
// done (a client may have all of a response before its handler returns).
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for s.busy > 0 && time.Now().Before(deadline) {
		s.mu.Unlock()
		time.Sleep(time.Millisecond)
		s.mu.Lock()
	}
	return append([]Request(nil), s.log...)
}

// ResetLog forgets the requests served so far.
func (s *Server) ResetLog() {
	s.mu.Lock()
	s.log = nil
	s.mu.Unlock()
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (w *statusRecorder) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusRecorder) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	rec := &statusRecorder{ResponseWriter: w}
	start := time.Now()
	s.mu.Lock()
	s.busy++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.busy--
		s.log = append(s.log, Request{Method: r.Method, Path: r.URL.Path, Range: r.Header.Get("Range"),
			Auth: r.Header.Get("Authorization"), Status: rec.status, Start: start, End: time.Now()})
		s.mu.Unlock()
	}()
	p := r.URL.EscapedPath()
	switch {
	case strings.HasPrefix(p, "/api/models/"):
		s.serveAPI(rec, r, strings.TrimPrefix(p, "/api/models/"))
	case strings.HasPrefix(p, "/cdn/"):
		s.serveCDN(rec, r, strings.TrimPrefix(p, "/cdn/"))
	case strings.Contains(p, "/resolve/"):
		s.serveResolve(rec, r, p)
	default:
		http.NotFound(rec, r)
	}
}

func hubErr(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("X-Error-Code", code)
	w.Header().Set("X-Error-Message", msg)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// access checks the repository and the caller's token; false when it
// answered with an error.
func (s *Server) access(w http.ResponseWriter, r *http.Request, id string) (*Repo, bool) {
	s.mu.Lock()
	repo := s.repos[id]
	s.mu.Unlock()
	auth := r.Header.Get("Authorization")
	if repo == nil {
		status := http.StatusUnauthorized
		if auth != "" {
			status = http.StatusNotFound
		}
		hubErr(w, status, "RepoNotFound", "Repository not found")
		return nil, false
	}
	if repo.Gated {
		switch {
		case auth == "":
			hubErr(w, http.StatusUnauthorized, "GatedRepo",
				fmt.Sprintf("Access to model %s is restricted. You must have access to it and be authenticated to access it. Please log in.", id))
			return nil, false
		case s.Token == "" || auth != "Bearer "+s.Token:
			hubErr(w, http.StatusForbidden, "GatedRepo",
				fmt.Sprintf("Access to model %s is restricted and you are not in the authorized list.", id))
			return nil, false
		}
	}
	return repo, true
}

func (repo *Repo) resolve(rev string) (string, bool) {
	if rev == repo.Commit || rev == "main" {
		return repo.Commit, true
	}
	for _, r := range repo.Refs {
		if r == rev {
			return repo.Commit, true
		}
	}
	return "", false
}

// accessRevision checks access to repo id, as access does, and resolves
// rev in it, answering the Hub's 404 when the revision does not exist.
func (s *Server) accessRevision(w http.ResponseWriter, r *http.Request, id, rev string) (*Repo, string, bool) {
	repo, ok := s.access(w, r, id)
	if !ok {
		return nil, "", false
	}
	commit, ok := repo.resolve(rev)
	if !ok {
		hubErr(w, http.StatusNotFound, "RevisionNotFound", "Invalid rev id: "+rev)
		return nil, "", false
	}
	return repo, commit, true
}

// serveAPI answers /api/models/REPO/revision/REV.
func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request, rest string) {
	id, rev, ok := strings.Cut(rest, "/revision/")
	if !ok {
		http.NotFound(w, r)
		return
	}
	id, _ = url.PathUnescape(id)
	rev, _ = url.PathUnescape(rev)
	repo, commit, ok := s.accessRevision(w, r, id, rev)
	if !ok {
		return
	}
	type lfs struct {
		SHA256      string `json:"sha256"`
		Size        int    `json:"size"`
		PointerSize int    `json:"pointerSize"`
	}
	type sibling struct {
		RFilename string `json:"rfilename"`
		Size      *int   `json:"size,omitempty"`
		BlobID    string `json:"blobId,omitempty"`
		LFS       *lfs   `json:"lfs,omitempty"`
	}
	blobs := r.URL.Query().Get("blobs") == "true"
	out := struct {
		ID       string    `json:"id"`
		ModelID  string    `json:"modelId"`
		SHA      string    `json:"sha"`
		Siblings []sibling `json:"siblings"`
	}{ID: repo.ID, ModelID: repo.ID, SHA: commit}
	files := append([]*File(nil), repo.Files...)
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	for _, f := range files {
		sb := sibling{RFilename: f.Path}
		if blobs {
			n := len(f.Data)
			sb.Size = &n
			if f.isLFS() {
				// The Hub's blobId of an LFS file is its pointer's git id.
				sb.BlobID = pointerID(f)
				sb.LFS = &lfs{SHA256: f.SHA256(), Size: n, PointerSize: 134}
			} else {
				sb.BlobID = f.GitSHA1()
			}
		}
		out.Siblings = append(out.Siblings, sb)
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(out)
}

func pointerID(f *File) string {
	p := fmt.Sprintf("version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %d\n", f.SHA256(), len(f.Data))
	h := sha1.New()
	fmt.Fprintf(h, "blob %d\x00%s", len(p), p)
	return hex.EncodeToString(h.Sum(nil))
}

// serveResolve answers /REPO/resolve/REV/FILE: LFS files redirect to the
// CDN, others are served here.
func (s *Server) serveResolve(w http.ResponseWriter, r *http.Request, p string) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	before, after, _ := strings.Cut(strings.TrimPrefix(p, "/"), "/resolve/")
	id, _ := url.PathUnescape(before)
	rev, file, ok := strings.Cut(after, "/")
	if !ok {
		http.NotFound(w, r)
		return
	}
	rev, _ = url.PathUnescape(rev)
	file, _ = url.PathUnescape(file)
	repo, commit, ok := s.accessRevision(w, r, id, rev)
	if !ok {
		return
	}
	f := repo.File(file)
	if f == nil {
		hubErr(w, http.StatusNotFound, "EntryNotFound", fmt.Sprintf("%s does not exist on %q", file, rev))
		return
	}
	h := w.Header()
	h.Set("X-Repo-Commit", commit)
	if f.isLFS() {
		h.Set("X-Linked-Etag", `"`+f.SHA256()+`"`)
		h.Set("X-Linked-Size", fmt.Sprint(len(f.Data)))
		h.Set("ETag", `"`+pointerID(f)+`"`)
		http.Redirect(w, r, "/cdn/"+f.SHA256()+"?repo="+url.QueryEscape(id), http.StatusFound)
		return
	}
	h.Set("ETag", `"`+f.GitSHA1()+`"`)
	s.sendFile(w, r, f)
}

// serveCDN serves an LFS blob by sha256, with Range.
func (s *Server) serveCDN(w http.ResponseWriter, r *http.Request, sha string) {
	s.mu.Lock()
	var f *File
	for _, repo := range s.repos {
		for _, rf := range repo.Files {
			if rf.isLFS() && rf.SHA256() == sha {
				f = rf
			}
		}
	}
	s.mu.Unlock()
	if f == nil {
		http.NotFound(w, r)
		return
	}
	s.sendFile(w, r, f)
}

// sendFile serves f with Range support and the pending faults.
func (s *Server) sendFile(w http.ResponseWriter, r *http.Request, f *File) {
	id := f.BlobID()
	s.mu.Lock()
	drop, flip := int64(-1), int64(-1)
	if r.Method == http.MethodGet {
		if q := s.drops[id]; len(q) > 0 {
			drop, s.drops[id] = q[0], q[1:]
		}
		if q := s.corrupt[id]; len(q) > 0 {
			flip, s.corrupt[id] = q[0], q[1:]
		}
	}
	delay := s.delay
	s.mu.Unlock()
	data := f.Data
	if flip >= 0 && flip < int64(len(data)) {
		data = bytes.Clone(data)
		data[flip] ^= 0xff
	}
	w.Header().Set("Accept-Ranges", "bytes")
	fw := &faultWriter{ResponseWriter: w, drop: drop, delay: delay}
	http.ServeContent(fw, r, path.Base(f.Path), Epoch, bytes.NewReader(data))
}

// faultWriter drops the connection after drop bytes of body (when >= 0)
// and sleeps delay per MiB.
type faultWriter struct {
	http.ResponseWriter
	drop    int64
	sent    int64
	delay   time.Duration
	pending int64
}

func (w *faultWriter) Write(b []byte) (int, error) {
	if w.drop >= 0 && w.sent+int64(len(b)) > w.drop {
		n := w.drop - w.sent
		if n > 0 {
			w.ResponseWriter.Write(b[:n])
		}
		if fl, ok := w.ResponseWriter.(http.Flusher); ok {
			fl.Flush()
		}
		// Closes the connection without finishing the response.
		panic(http.ErrAbortHandler)
	}
	n, err := w.ResponseWriter.Write(b)
	w.sent += int64(n)
	if w.delay > 0 {
		w.pending += int64(n)
		for w.pending >= 1<<20 {
			w.pending -= 1 << 20
			time.Sleep(w.delay)
		}
	}
	return n, err
}

func (w *faultWriter) Flush() {
	if fl, ok := w.ResponseWriter.(http.Flusher); ok {
		fl.Flush()
	}
}

// Epoch is the modification time the server gives every file.
var Epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

// RandomData returns n deterministic pseudo-random bytes for seed.
func RandomData(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24)})
	r.Read(b)
	return b
}

// ModelRepo is a small model repository: config.json, generation_config.json,
// tokenizer.json, and one safetensors shard per weight size given.
func ModelRepo(id string, weights ...int) *Repo {
	r := &Repo{ID: id}
	r.Files = append(r.Files,
		&File{Path: "config.json", Data: []byte(`{"architectures":["Qwen2ForCausalLM"],"hidden_size":3584,"num_attention_heads":28,"num_hidden_layers":28,"num_key_value_heads":4,"max_position_embeddings":32768,"torch_dtype":"float16"}` + "\n")},
		&File{Path: "generation_config.json", Data: []byte(`{"temperature":0.7,"top_p":0.8}` + "\n")},
		&File{Path: "tokenizer.json", Data: RandomData(7, 64<<10)},
	)
	for i, n := range weights {
		name := "model.safetensors"
		if len(weights) > 1 {
			name = fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, len(weights))
		}
		r.Files = append(r.Files, &File{Path: name, Data: RandomData(uint64(i+1)*7919+uint64(len(id)), n)})
	}
	return r
}
