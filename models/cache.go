package models

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// DefaultRevision is the revision pulled when an agent names none, as
// huggingface_hub and vLLM default to it.
const DefaultRevision = "main"

// ErrNotPulled is wrapped by SnapshotDir when a model is not in the cache.
var ErrNotPulled = errors.New("model not pulled")

var (
	// repoPartRE is one part of a Hub repository id, as huggingface_hub's
	// validate_repo_id accepts it.
	repoPartRE = regexp.MustCompile(`^[A-Za-z0-9_.\-]{1,96}$`)
	// commitRE is a full git commit hash: a revision given this way needs
	// no refs/ file.
	commitRE = regexp.MustCompile(`^[0-9a-f]{40}$`)
)

// IsLocal reports whether model names a directory on this host rather than
// a Hub repository: an absolute path, or one starting with ./ or ../. vLLM
// looks for such a model on disk and never on the Hub.
func IsLocal(model string) bool {
	return strings.HasPrefix(model, "/") || strings.HasPrefix(model, "./") || strings.HasPrefix(model, "../") ||
		model == "." || model == ".."
}

// ValidRepoID checks a Hub repository id ("name" or "namespace/name") the
// way the Hub does, so that a typo fails before any request.
func ValidRepoID(repo string) error {
	parts := strings.Split(repo, "/")
	if len(parts) > 2 {
		return fmt.Errorf("repo id %q: want \"name\" or \"namespace/name\"", repo)
	}
	for _, p := range parts {
		if !repoPartRE.MatchString(p) || strings.HasPrefix(p, "-") || strings.HasPrefix(p, ".") ||
			strings.HasSuffix(p, "-") || strings.HasSuffix(p, ".") {
			return fmt.Errorf("repo id %q: %q may hold only letters, digits, '-', '_' and '.', and not start or end with '-' or '.'", repo, p)
		}
	}
	if strings.Contains(repo, "--") || strings.Contains(repo, "..") {
		return fmt.Errorf("repo id %q: '--' and '..' are not allowed", repo)
	}
	return nil
}

// RepoFolder is the cache folder of a model repository in a hub cache
// (see Env.HubCache): HUB/models--ORG--NAME.
func RepoFolder(hubCache, repo string) string {
	return filepath.Join(hubCache, repoFolderName(repo))
}

func repoFolderName(repo string) string { return "models--" + strings.ReplaceAll(repo, "/", "--") }

// lockDir holds huggingface_hub's per-blob lock files for repo; vagent
// takes the same flock(2) locks, so a pull and a Python download of the
// same blob never write it at once.
func lockDir(hubCache, repo string) string {
	return filepath.Join(hubCache, ".locks", repoFolderName(repo))
}

// ResolveCommit reads the commit a revision points at in the cache: the
// revision itself when it is a full commit hash, else refs/REVISION.
func ResolveCommit(hubCache, repo, revision string) (string, error) {
	if revision == "" {
		revision = DefaultRevision
	}
	if commitRE.MatchString(revision) {
		return revision, nil
	}
	data, err := os.ReadFile(filepath.Join(RepoFolder(hubCache, repo), "refs", revision))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("%s@%s: %w (no %s)", repo, revision, ErrNotPulled,
				filepath.Join(RepoFolder(hubCache, repo), "refs", revision))
		}
		return "", fmt.Errorf("%s@%s: %w", repo, revision, err)
	}
	commit := strings.TrimSpace(string(data))
	if !commitRE.MatchString(commit) {
		return "", fmt.Errorf("%s@%s: refs file holds %q, not a commit hash", repo, revision, commit)
	}
	return commit, nil
}

// SnapshotDir returns the local directory a model loads from: for a Hub
// repository the snapshot of revision ("" is main) in the hub cache, as
// vLLM resolves it with HF_HUB_OFFLINE=1; for a local model (see IsLocal)
// the directory itself. The error wraps ErrNotPulled when the model is not
// there; SnapshotDir does not check that every file is (vagentctl pull
// writes the refs file only after all of them).
func SnapshotDir(hubCache, repo, revision string) (string, error) {
	if IsLocal(repo) {
		st, err := os.Stat(repo)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return "", fmt.Errorf("local model %s: %w (the directory does not exist)", repo, ErrNotPulled)
			}
			return "", fmt.Errorf("local model %s: %w", repo, err)
		}
		if !st.IsDir() {
			return "", fmt.Errorf("local model %s: not a directory", repo)
		}
		return repo, nil
	}
	if err := ValidRepoID(repo); err != nil {
		return "", err
	}
	commit, err := ResolveCommit(hubCache, repo, revision)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(RepoFolder(hubCache, repo), "snapshots", commit)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return "", fmt.Errorf("%s@%s: %w (no snapshot %s)", repo, revisionOr(revision), ErrNotPulled, dir)
	}
	return dir, nil
}

func revisionOr(r string) string {
	if r == "" {
		return DefaultRevision
	}
	return r
}

// blobRel is the relative link from a snapshot file to its blob:
// snapshots/COMMIT/a/b.json → ../../../blobs/ID, as huggingface_hub makes
// it (os.path.relpath from the link's directory).
func blobRel(file, blobID string) string {
	depth := strings.Count(file, "/") + 2 // snapshots/COMMIT, plus each subdirectory
	return strings.Repeat("../", depth) + "blobs/" + blobID
}

// safeRelPath rejects a repository file name that would escape the
// snapshot directory or is not a plain relative path.
func safeRelPath(name string) error {
	if name == "" || strings.HasPrefix(name, "/") || strings.Contains(name, "\\") || strings.ContainsRune(name, 0) {
		return fmt.Errorf("unsafe file name %q", name)
	}
	for _, p := range strings.Split(name, "/") {
		if p == "" || p == "." || p == ".." {
			return fmt.Errorf("unsafe file name %q", name)
		}
	}
	return nil
}

// writeFileAtomic writes data to name in root through a temporary file and
// a rename, so that readers see the old content or the new, never a part.
// Every step goes through root: name cannot reach outside it, whatever it
// holds.
func writeFileAtomic(root *os.Root, name string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(name)
	if err := root.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp := filepath.Join(dir, "."+filepath.Base(name)+".tmp-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	fh, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	_, werr := fh.Write(data)
	cerr := fh.Close()
	if err := errors.Join(werr, cerr); err != nil {
		root.Remove(tmp)
		return err
	}
	if err := root.Chmod(tmp, mode); err != nil {
		root.Remove(tmp)
		return err
	}
	if err := root.Rename(tmp, name); err != nil {
		root.Remove(tmp)
		return err
	}
	return nil
}

// symlinkAtomic makes name in root a symbolic link to target, replacing
// whatever link was there in one rename.
func symlinkAtomic(root *os.Root, target, name string) error {
	if cur, err := root.Readlink(name); err == nil && cur == target {
		return nil
	}
	if err := root.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		return err
	}
	tmp := filepath.Join(filepath.Dir(name), "."+filepath.Base(name)+".link-tmp")
	root.Remove(tmp)
	if err := root.Symlink(target, tmp); err != nil {
		return err
	}
	if err := root.Rename(tmp, name); err != nil {
		root.Remove(tmp)
		return err
	}
	return nil
}
