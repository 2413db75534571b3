package models

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// JSONProgress returns an Options.Progress that writes each event to w as
// one JSON object a line, for scripts (vagentctl pull --json).
func JSONProgress(w io.Writer) func(Event) {
	var mu sync.Mutex
	enc := json.NewEncoder(w)
	return func(e Event) {
		mu.Lock()
		defer mu.Unlock()
		enc.Encode(e)
	}
}

// TextProgress renders a pull for people. On a terminal it keeps a bar per
// file being fetched and one for the whole model at the bottom, redrawn in
// place; elsewhere (a log, a pipe) it writes plain lines: what starts, each
// file done, the model's progress at most every LineInterval, and a
// summary. Fatal errors are left to the caller, which returns them.
type TextProgress struct {
	w   io.Writer
	tty bool
	// Width of a terminal line; 100 when 0.
	Width int
	// LineInterval throttles progress lines when not on a terminal; 5s
	// when 0.
	LineInterval time.Duration

	mu       sync.Mutex
	bars     []*bar
	total    Event // latest model totals
	hasTotal bool
	drawn    int
	lastLine time.Time
}

type bar struct {
	key  string
	name string
	size int64
	have int64
}

// NewTextProgress renders onto w; tty says whether w is a terminal.
func NewTextProgress(w io.Writer, tty bool) *TextProgress {
	return &TextProgress{w: w, tty: tty}
}

func label(e Event) string {
	if e.Agent != "" {
		return e.Agent
	}
	return e.Repo
}

func (t *TextProgress) width() int {
	if t.Width > 0 {
		return t.Width
	}
	return 100
}

// Event takes one event; use it as Options.Progress.
func (t *TextProgress) Event(e Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e.TotalSize > 0 || e.File == "" {
		t.total, t.hasTotal = e, true
	}
	var lines []string
	who := label(e)
	switch e.Event {
	case EventStart:
		if e.File == "" {
			lines = append(lines, fmt.Sprintf("%s: pulling %s@%s (commit %s): %d files, %s, %s to fetch",
				who, e.Repo, e.Revision, short(e.Commit), e.Files, FormatBytes(e.Size), FormatBytes(e.ToFetch)))
			break
		}
		if e.ResumedFrom > 0 {
			lines = append(lines, fmt.Sprintf("%s: %s: resuming at %s of %s", who, e.File, FormatBytes(e.ResumedFrom), FormatBytes(e.Size)))
		}
		t.setBar(e)
	case EventProgress:
		t.setBar(e)
		if !t.tty && time.Since(t.lastLine) >= t.lineInterval() && t.hasTotal {
			t.lastLine = time.Now()
			lines = append(lines, fmt.Sprintf("%s: %s of %s (%s)%s", who, FormatBytes(e.TotalBytes), FormatBytes(e.TotalSize),
				percent(e.TotalBytes, e.TotalSize), rate(e.Rate)))
		}
	case EventDone:
		t.dropBar(e)
		if e.Skipped {
			lines = append(lines, fmt.Sprintf("%s: %s: already complete (%s)", who, e.File, FormatBytes(e.Size)))
		} else {
			lines = append(lines, fmt.Sprintf("%s: %s: done (%s, verified)", who, e.File, FormatBytes(e.Size)))
		}
	case EventError:
		if e.Retry {
			lines = append(lines, fmt.Sprintf("%s: %s", who, e.Error))
		} else {
			t.bars = nil
		}
	case EventSummary:
		t.bars, t.hasTotal = nil, false
		switch e.Source {
		case SourceLocal:
			lines = append(lines, fmt.Sprintf("%s: local model %s: has config.json, nothing to pull", who, e.Repo))
		case SourceGetter:
			lines = append(lines, fmt.Sprintf("%s: fetched into %s (%d files, %s)", e.Repo, e.Snapshot, e.Files, FormatBytes(e.Size)))
		default:
			lines = append(lines, fmt.Sprintf("%s: %s@%s ready in %s (%d files: %d fetched, %d already there; %s in %s%s)",
				who, e.Repo, e.Revision, e.Snapshot, e.Files, e.Fetched, e.SkippedFiles,
				FormatBytes(e.FetchedBytes), time.Duration(e.Seconds*float64(time.Second)).Round(100*time.Millisecond), rate(e.Rate)))
		}
	}
	if !t.tty {
		for _, l := range lines {
			fmt.Fprintln(t.w, l)
		}
		return
	}
	var b strings.Builder
	t.clear(&b)
	for _, l := range lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	t.draw(&b)
	io.WriteString(t.w, b.String())
}

// Close removes the bars from the terminal.
func (t *TextProgress) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tty && t.drawn > 0 {
		var b strings.Builder
		t.clear(&b)
		io.WriteString(t.w, b.String())
	}
}

func (t *TextProgress) lineInterval() time.Duration {
	if t.LineInterval > 0 {
		return t.LineInterval
	}
	return 5 * time.Second
}

func barKey(e Event) string { return e.Agent + "\x00" + e.Repo + "\x00" + e.File }

func (t *TextProgress) setBar(e Event) {
	k := barKey(e)
	for _, b := range t.bars {
		if b.key == k {
			b.have, b.size = e.Bytes, e.Size
			return
		}
	}
	t.bars = append(t.bars, &bar{key: k, name: e.File, size: e.Size, have: e.Bytes})
}

func (t *TextProgress) dropBar(e Event) {
	k := barKey(e)
	for i, b := range t.bars {
		if b.key == k {
			t.bars = append(t.bars[:i], t.bars[i+1:]...)
			return
		}
	}
}

// clear moves up over the drawn bars and erases them.
func (t *TextProgress) clear(b *strings.Builder) {
	for range t.drawn {
		b.WriteString("\x1b[1A\x1b[2K")
	}
	b.WriteString("\r")
	t.drawn = 0
}

const maxBars = 8

func (t *TextProgress) draw(b *strings.Builder) {
	if len(t.bars) == 0 && !t.hasTotal {
		return
	}
	w := t.width()
	for i, br := range t.bars {
		if i == maxBars {
			fmt.Fprintf(b, "  ... and %d more\n", len(t.bars)-maxBars)
			t.drawn++
			break
		}
		b.WriteString(barLine("  "+br.name, br.have, br.size, 0, w))
		b.WriteByte('\n')
		t.drawn++
	}
	if t.hasTotal && t.total.TotalSize > 0 {
		b.WriteString(barLine(label(t.total)+" total", t.total.TotalBytes, t.total.TotalSize, t.total.Rate, w))
		b.WriteByte('\n')
		t.drawn++
	}
}

// barLine is "name [=====>    ]  45.0%   1.2 GiB / 2.6 GiB   110.0 MiB/s",
// fitted to width with the bars of all lines aligned.
func barLine(name string, have, size int64, bps float64, width int) string {
	r := ""
	if bps > 0 {
		r = FormatBytes(int64(bps)) + "/s"
	}
	tail := fmt.Sprintf(" %6s %10s / %-10s %12s", percent(have, size), FormatBytes(have), FormatBytes(size), r)
	const barW = 24
	nameW := width - len(tail) - barW - 4
	if nameW < 12 {
		nameW = 12
	}
	if rs := []rune(name); len(rs) > nameW {
		name = "…" + string(rs[len(rs)-nameW+1:])
	}
	fill := 0
	if size > 0 {
		fill = int(float64(barW) * float64(have) / float64(size))
	}
	fill = min(max(fill, 0), barW)
	bar := strings.Repeat("=", fill)
	if fill < barW {
		bar += ">" + strings.Repeat(" ", barW-fill-1)
	}
	return strings.TrimRight(fmt.Sprintf("%-*s [%s]%s", nameW, name, bar, tail), " ")
}

func percent(have, size int64) string {
	if size <= 0 {
		return "100%"
	}
	return fmt.Sprintf("%.1f%%", 100*float64(have)/float64(size))
}

func rate(bps float64) string {
	if bps <= 0 {
		return ""
	}
	return ", " + FormatBytes(int64(bps)) + "/s"
}

func short(commit string) string {
	if len(commit) > 12 {
		return commit[:12]
	}
	return commit
}
