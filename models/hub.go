package models

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// DefaultEndpoint is the Hugging Face Hub, used when HF_ENDPOINT is unset.
const DefaultEndpoint = "https://huggingface.co"

// apiTimeout bounds one Hub API call (not a download, which is bounded by
// its stall timeout instead).
const apiTimeout = 30 * time.Second

// File is one file of a repository revision as the Hub lists it.
type File struct {
	// Path is the file's name in the repository ("config.json",
	// "model-00001-of-00002.safetensors", "subdir/x.json").
	Path string `json:"path"`
	// Size in bytes.
	Size int64 `json:"size"`
	// BlobID names the file's blob in the cache: the sha256 of an LFS
	// file, the git blob sha1 of any other.
	BlobID string `json:"blob_id"`
	// SHA256 is set for LFS files: their content's sha256.
	SHA256 string `json:"sha256,omitempty"`
	// GitSHA1 is the git blob id ("blob SIZE\0" + content) of a non-LFS file.
	GitSHA1 string `json:"git_sha1,omitempty"`
}

// LFS reports whether the file is stored in LFS (and so has a sha256).
func (f File) LFS() bool { return f.SHA256 != "" }

// RepoInfo is a repository at one revision.
type RepoInfo struct {
	Repo     string
	Revision string
	// Commit is the full commit hash the revision resolved to.
	Commit string
	Files  []File
}

// HubError is a failed Hub request with what the Hub said about it.
type HubError struct {
	Repo     string
	Revision string
	File     string // "" for the API call
	Status   int
	// Code is the Hub's X-Error-Code header (RepoNotFound, RevisionNotFound,
	// EntryNotFound, GatedRepo), "" when absent.
	Code    string
	Message string // the Hub's X-Error-Message or body, trimmed
	URL     string
}

func (e *HubError) what() string {
	if e.File != "" {
		return fmt.Sprintf("%s@%s: %s", e.Repo, e.Revision, e.File)
	}
	return fmt.Sprintf("%s@%s", e.Repo, e.Revision)
}

func (e *HubError) Error() string {
	var msg string
	switch {
	case e.Code == "GatedRepo" || (e.Status == http.StatusForbidden && e.Code != "RepoNotFound"):
		msg = fmt.Sprintf("access to %s is restricted (%d %s): the repository is gated or private; "+
			"accept the model's license on its Hub page and set HF_TOKEN to a token of an account with access",
			e.Repo, e.Status, http.StatusText(e.Status))
	case e.Code == "RepoNotFound":
		msg = fmt.Sprintf("repository %s not found (%d): check the model name; a private repository needs HF_TOKEN", e.Repo, e.Status)
	case e.Status == http.StatusUnauthorized:
		msg = fmt.Sprintf("access to %s denied (401 Unauthorized): the repository is gated or private, or HF_TOKEN is invalid; "+
			"set HF_TOKEN to a token of an account that accepted the model's license", e.Repo)
	case e.Code == "RevisionNotFound" || (e.Status == http.StatusNotFound && e.File == ""):
		msg = fmt.Sprintf("revision %q of %s not found (%d): check the agent's revision (a branch, tag or commit)", e.Revision, e.Repo, e.Status)
	case e.Code == "EntryNotFound" || e.Status == http.StatusNotFound:
		msg = fmt.Sprintf("file %s not found in %s at %s (%d)", e.File, e.Repo, e.Revision, e.Status)
	default:
		msg = fmt.Sprintf("the Hub answered %d %s", e.Status, http.StatusText(e.Status))
	}
	if e.Message != "" {
		msg += " [hub: " + e.Message + "]"
	}
	return fmt.Sprintf("pull %s: %s", e.what(), msg)
}

// Auth reports whether the error is the Hub refusing access (401/403).
func (e *HubError) Auth() bool {
	return (e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden) && e.Code != "RepoNotFound"
}

// NotFound reports whether the repository, revision or file does not exist.
func (e *HubError) NotFound() bool {
	return e.Status == http.StatusNotFound || e.Code == "RepoNotFound" || e.Code == "RevisionNotFound" || e.Code == "EntryNotFound"
}

// temporary reports whether retrying the request may help.
func (e *HubError) temporary() bool {
	return e.Status >= 500 || e.Status == http.StatusTooManyRequests || e.Status == http.StatusRequestTimeout
}

// hub speaks the Hub's HTTP API.
type hub struct {
	endpoint  string
	token     string
	userAgent string
	client    *http.Client
}

// newTransport is an HTTP transport for pulls: no transparent gzip (it
// breaks Range requests and hides sizes), bounded dial, TLS and header
// waits, and enough idle connections for the parallel jobs.
func newTransport(jobs int) *http.Transport {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   jobs + 2,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   15 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
		ReadBufferSize:        256 << 10,
		WriteBufferSize:       64 << 10,
	}
}

func (h *hub) newRequest(ctx context.Context, method, u string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, err
	}
	if h.token != "" {
		// net/http drops Authorization when a redirect leaves the host, so
		// the token never reaches a CDN.
		req.Header.Set("Authorization", "Bearer "+h.token)
	}
	if h.userAgent != "" {
		req.Header.Set("User-Agent", h.userAgent)
	}
	return req, nil
}

// hubError reads a failed response into a HubError.
func hubError(resp *http.Response, repo, rev, file string) *HubError {
	e := &HubError{Repo: repo, Revision: rev, File: file, Status: resp.StatusCode,
		Code: resp.Header.Get("X-Error-Code"), Message: resp.Header.Get("X-Error-Message"), URL: resp.Request.URL.String()}
	if e.Message == "" {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
		var j struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(body, &j) == nil && j.Error != "" {
			e.Message = j.Error
		} else if s := strings.TrimSpace(string(body)); s != "" && !strings.HasPrefix(s, "<") && len(s) < 300 {
			e.Message = s
		}
	}
	return e
}

// apiRevision is the Hub's answer to /api/models/REPO/revision/REV.
type apiRevision struct {
	ID       string `json:"id"`
	SHA      string `json:"sha"`
	Siblings []struct {
		RFilename string `json:"rfilename"`
		Size      *int64 `json:"size"`
		BlobID    string `json:"blobId"`
		LFS       *struct {
			SHA256      string `json:"sha256"`
			Size        int64  `json:"size"`
			PointerSize int64  `json:"pointerSize"`
		} `json:"lfs"`
	} `json:"siblings"`
}

// repoInfo lists the files of repo at revision with their sizes and
// checksums: GET /api/models/REPO/revision/REV?blobs=true. Files the
// listing gives no size or id for are asked with a HEAD of their resolve
// URL (X-Linked-Size, X-Linked-Etag), as some mirrors answer without blobs.
func (h *hub) repoInfo(ctx context.Context, repo, revision string) (*RepoInfo, error) {
	u := fmt.Sprintf("%s/api/models/%s/revision/%s?blobs=true", h.endpoint, repo, url.PathEscape(revision))
	var rev apiRevision
	err := retry(ctx, 3, func() error {
		cctx, cancel := context.WithTimeout(ctx, apiTimeout)
		defer cancel()
		req, err := h.newRequest(cctx, http.MethodGet, u)
		if err != nil {
			return permanent(err)
		}
		resp, err := h.client.Do(req)
		if err != nil {
			return fmt.Errorf("pull %s@%s: list files: %w", repo, revision, err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			he := hubError(resp, repo, revision, "")
			if he.temporary() {
				return he
			}
			return permanent(he)
		}
		if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&rev); err != nil {
			return fmt.Errorf("pull %s@%s: list files: bad answer from %s: %w", repo, revision, h.endpoint, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if !commitRE.MatchString(rev.SHA) {
		return nil, fmt.Errorf("pull %s@%s: the Hub gave no commit hash (sha %q)", repo, revision, rev.SHA)
	}
	info := &RepoInfo{Repo: repo, Revision: revision, Commit: rev.SHA}
	for _, s := range rev.Siblings {
		if err := safeRelPath(s.RFilename); err != nil {
			return nil, fmt.Errorf("pull %s@%s: %w", repo, revision, err)
		}
		f := File{Path: s.RFilename}
		switch {
		case s.LFS != nil && s.LFS.SHA256 != "":
			f.SHA256 = strings.ToLower(s.LFS.SHA256)
			f.BlobID = f.SHA256
			f.Size = s.LFS.Size
		case s.Size != nil && s.BlobID != "":
			f.GitSHA1 = strings.ToLower(s.BlobID)
			f.BlobID = f.GitSHA1
			f.Size = *s.Size
		default:
			if err := h.headFile(ctx, repo, revision, info.Commit, &f); err != nil {
				return nil, err
			}
		}
		if !blobIDRE.MatchString(f.BlobID) {
			return nil, fmt.Errorf("pull %s@%s: %s: the Hub gave no usable checksum (%q)", repo, revision, f.Path, f.BlobID)
		}
		info.Files = append(info.Files, f)
	}
	return info, nil
}

// headFile fills f's size and blob id from a HEAD of its resolve URL.
func (h *hub) headFile(ctx context.Context, repo, revision, commit string, f *File) error {
	cctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	req, err := h.newRequest(cctx, http.MethodHead, h.resolveURL(repo, commit, f.Path))
	if err != nil {
		return err
	}
	// The Hub's X-Linked-* headers come with the redirect itself.
	c := *h.client
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("pull %s@%s: %s: %w", repo, revision, f.Path, err)
	}
	resp.Body.Close()
	if resp.StatusCode >= 400 {
		return hubError(resp, repo, revision, f.Path)
	}
	etag := strings.Trim(strings.TrimPrefix(firstNonEmpty(resp.Header.Get("X-Linked-Etag"), resp.Header.Get("ETag")), "W/"), `"`)
	size, err := strconv.ParseInt(firstNonEmpty(resp.Header.Get("X-Linked-Size"), resp.Header.Get("Content-Length")), 10, 64)
	if err != nil {
		return fmt.Errorf("pull %s@%s: %s: the Hub gave no size", repo, revision, f.Path)
	}
	f.Size = size
	f.BlobID = strings.ToLower(etag)
	if len(f.BlobID) == 64 {
		f.SHA256 = f.BlobID
	} else {
		f.GitSHA1 = f.BlobID
	}
	return nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// resolveURL is the download URL of a file at a commit.
func (h *hub) resolveURL(repo, commit, file string) string {
	parts := strings.Split(file, "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	return fmt.Sprintf("%s/%s/resolve/%s/%s", h.endpoint, repo, commit, strings.Join(parts, "/"))
}

// permanentError marks an error that retry must not retry.
type permanentError struct{ error }

func (e permanentError) Unwrap() error { return e.error }

func permanent(err error) error { return permanentError{err} }

// retry runs f up to attempts times with a short growing pause while it
// fails with an error not marked permanent.
func retry(ctx context.Context, attempts int, f func() error) error {
	var err error
	for i := range attempts {
		if err = f(); err == nil {
			return nil
		}
		var pe permanentError
		if errors.As(err, &pe) {
			return pe.error
		}
		if i == attempts-1 || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Duration(i+1) * 300 * time.Millisecond):
		}
	}
	return err
}
