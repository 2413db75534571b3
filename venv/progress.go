package venv

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// progress prints one line per phase with the time since the start, and
// the installer's output summarised under it.
type progress struct {
	out   io.Writer
	now   func() time.Time
	start time.Time
}

func (p *progress) elapsed() time.Duration { return p.now().Sub(p.start) }

// phase prints "[  12.3s] name: message".
func (p *progress) phase(name, format string, args ...any) {
	fmt.Fprintf(p.out, "[%6.1fs] %s: %s\n", p.elapsed().Seconds(), name, fmt.Sprintf(format, args...))
}

// detail prints an indented line under the current phase.
func (p *progress) detail(line string) {
	fmt.Fprintf(p.out, "           %s\n", line)
}

// Lines an installer prints that are worth showing as they come: what is
// being fetched and installed, and anything that went wrong. Everything
// else goes to the log only.
var (
	shownPrefixes = []string{
		// pip
		"Looking in indexes", "Looking in links", "Processing ", "Installing collected packages",
		"Successfully installed", "Building wheel", "ERROR", "WARNING",
		// uv
		"Using CPython", "Using Python", "Creating virtual environment", "Resolved ", "Prepared ",
		"Installed ", "Uninstalled ", "Audited ", "+ vllm", "error:", "warning:",
	}
	// countedPrefixes are printed by the hundred for a real vLLM install;
	// they are shown at most every countEvery with a running count.
	countedPrefixes = []string{"Collecting ", "Downloading "}
)

const (
	countEvery = 3 * time.Second
	shownWidth = 160
	tailLines  = 12
)

// summary receives a command's output: it copies everything to the log,
// shows the meaningful lines on the progress output, and keeps the last
// lines for an error message. It is safe for concurrent writes (stdout and
// stderr copied by two goroutines).
type summary struct {
	mu        sync.Mutex
	log       io.Writer
	p         *progress
	partial   []byte
	tail      []string
	collected int
	lastShown time.Time
	unshown   string // the newest counted line not shown yet
}

func newSummary(log io.Writer, p *progress) *summary { return &summary{log: log, p: p} }

func (s *summary) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, _ = s.log.Write(b)
	s.partial = append(s.partial, b...)
	for {
		i := bytes.IndexAny(s.partial, "\n\r")
		if i < 0 {
			break
		}
		s.line(string(s.partial[:i]))
		s.partial = s.partial[i+1:]
	}
	return len(b), nil
}

// flush handles a last line without a newline and shows the count of
// counted lines not shown yet.
func (s *summary) flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.partial) > 0 {
		s.line(string(s.partial))
		s.partial = nil
		_, _ = s.log.Write([]byte("\n"))
	}
	if s.unshown != "" {
		s.p.detail(s.counted(s.unshown))
		s.unshown = ""
	}
}

func (s *summary) line(raw string) {
	l := strings.TrimSpace(raw)
	if l == "" || strings.HasPrefix(l, "[notice]") {
		return
	}
	s.tail = append(s.tail, l)
	if len(s.tail) > tailLines {
		s.tail = s.tail[len(s.tail)-tailLines:]
	}
	for _, pre := range countedPrefixes {
		if strings.HasPrefix(l, pre) {
			if pre == "Collecting " {
				s.collected++
			}
			now := s.p.now()
			if s.lastShown.IsZero() || now.Sub(s.lastShown) >= countEvery {
				s.p.detail(s.counted(l))
				s.lastShown, s.unshown = now, ""
			} else {
				s.unshown = l
			}
			return
		}
	}
	for _, pre := range shownPrefixes {
		if strings.HasPrefix(l, pre) {
			if s.unshown != "" {
				// Keep the order: the newest counted line, then this one.
				s.p.detail(s.counted(s.unshown))
				s.unshown = ""
			}
			s.p.detail(truncate(l))
			return
		}
	}
}

func (s *summary) counted(l string) string {
	if s.collected > 1 {
		return truncate(fmt.Sprintf("%s (%d packages so far)", l, s.collected))
	}
	return truncate(l)
}

// lastLines is the end of the output, for an error message.
func (s *summary) lastLines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.tail...)
}

func truncate(l string) string {
	if len(l) > shownWidth {
		return l[:shownWidth-3] + "..."
	}
	return l
}
