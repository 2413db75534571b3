package config

import (
	"fmt"
	"strings"
)

// maxRevisionLen bounds a revision: git allows longer ref names, but a
// revision becomes a file path under the Hub cache (refs/REVISION), and
// each component a file name (255 bytes on Linux file systems).
const maxRevisionLen = 255

// CheckRevision checks a model revision the way git (and so the Hub)
// accepts ref names (git check-ref-format): a branch, a tag, a ref such as
// refs/pr/1, or a commit hash. It refuses what could name a path outside
// refs/ in the Hub cache: an absolute name, "." or ".." components, empty
// components, backslashes, control characters.
func CheckRevision(rev string) error {
	switch {
	case rev == "":
		return fmt.Errorf("must be a branch, tag or commit, not empty")
	case len(rev) > maxRevisionLen:
		return fmt.Errorf("is %d bytes long; a branch, tag or commit has at most %d", len(rev), maxRevisionLen)
	case strings.HasPrefix(rev, "/") || strings.HasSuffix(rev, "/"):
		return fmt.Errorf("%q must not start or end with '/': a branch, tag or commit, not a path", rev)
	case strings.Contains(rev, ".."):
		return fmt.Errorf("%q must not contain \"..\" (git refuses it in a ref name, and it would climb out of the Hub cache)", rev)
	case strings.Contains(rev, "@{") || rev == "@":
		return fmt.Errorf("%q: \"@{\" and \"@\" are not ref names", rev)
	case strings.HasSuffix(rev, "."):
		return fmt.Errorf("%q must not end with '.'", rev)
	}
	for _, r := range rev {
		if r < 0x20 || r == 0x7f || strings.ContainsRune(" ~^:?*[\\", r) {
			return fmt.Errorf("%q holds %q, which git refuses in a branch or tag name", rev, r)
		}
	}
	for _, part := range strings.Split(rev, "/") {
		switch {
		case part == "":
			return fmt.Errorf("%q has an empty component (\"//\")", rev)
		case strings.HasPrefix(part, "."):
			return fmt.Errorf("%q: component %q must not start with '.'", rev, part)
		case strings.HasSuffix(part, ".lock"):
			return fmt.Errorf("%q: component %q must not end with \".lock\"", rev, part)
		}
	}
	return nil
}
