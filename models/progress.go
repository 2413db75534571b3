package models

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
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
// place and fitted to the terminal's width; elsewhere (a log, a pipe) it
// writes plain lines: what starts, each file done, the model's progress at
// most every LineInterval, and a summary. Fatal errors are left to the
// caller, which returns them.
type TextProgress struct {
	w   io.Writer
	tty bool
	// Width of a terminal line; 100 when 0. NewTerminalProgress keeps it
	// up to date (SetWidth).
	Width int
	// LineInterval throttles progress lines when not on a terminal; 5s
	// when 0.
	LineInterval time.Duration

	mu       sync.Mutex
	bars     []*bar
	total    Event // latest model totals
	hasTotal bool
	drawn    []int // display width of each bar line on the screen
	lastLine time.Time
	stop     func() // ends the SIGWINCH watch
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

// NewTerminalProgress renders onto w, as bars when w is a terminal (its
// width read now and again on every SIGWINCH, until Close), as lines
// otherwise.
func NewTerminalProgress(w io.Writer) *TextProgress {
	f, ok := w.(*os.File)
	if !ok {
		return NewTextProgress(w, false)
	}
	fd := int(f.Fd())
	if _, err := unix.IoctlGetTermios(fd, unix.TCGETS); err != nil {
		return NewTextProgress(w, false)
	}
	t := NewTextProgress(w, true)
	t.Width = termWidth(fd)
	winch := make(chan os.Signal, 1)
	done := make(chan struct{})
	signal.Notify(winch, syscall.SIGWINCH)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-winch:
				t.SetWidth(termWidth(fd))
			case <-done:
				return
			}
		}
	}()
	t.stop = func() {
		signal.Stop(winch)
		close(done)
		wg.Wait()
	}
	return t
}

// termWidth is the terminal's width in columns, 0 when unknown.
func termWidth(fd int) int {
	ws, err := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ)
	if err != nil {
		return 0
	}
	return int(ws.Col)
}

// TTY reports whether the progress is drawn as bars on a terminal.
func (t *TextProgress) TTY() bool { return t.tty }

// SetWidth changes the terminal's width and redraws the bars to fit it.
func (t *TextProgress) SetWidth(cols int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if cols == t.Width {
		return
	}
	t.Width = cols
	if !t.tty || len(t.drawn) == 0 {
		return
	}
	var b strings.Builder
	t.clear(&b)
	t.draw(&b)
	io.WriteString(t.w, b.String())
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

// Close removes the bars from the terminal and stops watching its size.
func (t *TextProgress) Close() {
	if t.stop != nil {
		t.stop()
		t.stop = nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tty && len(t.drawn) > 0 {
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

// clear moves up over the rows the drawn bars take and erases each. A line
// drawn narrower than the terminal was takes one row; after the terminal
// shrank, one now too wide for it was re-wrapped by it and takes more.
func (t *TextProgress) clear(b *strings.Builder) {
	w := t.width()
	for _, n := range t.drawn {
		for range max(1, (n+w-1)/w) {
			b.WriteString("\x1b[1A\x1b[2K")
		}
	}
	b.WriteString("\r")
	t.drawn = t.drawn[:0]
}

const maxBars = 8

// line writes one bar line and notes its width.
func (t *TextProgress) line(b *strings.Builder, s string) {
	b.WriteString(s)
	b.WriteByte('\n')
	t.drawn = append(t.drawn, utf8.RuneCountInString(s))
}

func (t *TextProgress) draw(b *strings.Builder) {
	if len(t.bars) == 0 && !t.hasTotal {
		return
	}
	// One column short of the width: a line that filled it would leave
	// the cursor past the edge, where terminals disagree.
	w := t.width() - 1
	for i, br := range t.bars {
		if i == maxBars {
			t.line(b, fit(fmt.Sprintf("  ... and %d more", len(t.bars)-maxBars), w))
			break
		}
		t.line(b, barLine("  "+br.name, br.have, br.size, 0, w))
	}
	if t.hasTotal && t.total.TotalSize > 0 {
		t.line(b, barLine(label(t.total)+" total", t.total.TotalBytes, t.total.TotalSize, t.total.Rate, w))
	}
}

// fit cuts s to at most width runes.
func fit(s string, width int) string {
	if rs := []rune(s); len(rs) > max(width, 1) {
		return string(rs[:max(width, 1)])
	}
	return s
}

// barLayout is how a bar line uses a width: the widest name, bar and tail
// that fit, the same for every line so that the bars align.
type barLayout struct {
	nameW, barW int
	tail        int // 2: percent, sizes and rate; 1: percent and sizes; 0: percent
	noBar       bool
}

// layoutFor picks, for a line of width runes, the richest tail and the
// widest bar that leave the name 24 runes (enough to tell shards of one
// model apart), else 10; below that the bar goes.
func layoutFor(width int) barLayout {
	tailW := func(kind int) int { return len(tailText(kind, 0, 0, 0)) }
	for _, minName := range []int{24, 10} {
		for _, c := range []struct{ tail, bar int }{{2, 24}, {2, 16}, {2, 10}, {1, 16}, {1, 10}, {0, 10}} {
			if n := width - 3 - c.bar - tailW(c.tail); n >= minName {
				return barLayout{nameW: n, barW: c.bar, tail: c.tail}
			}
		}
	}
	return barLayout{nameW: max(width-tailW(0), 1), noBar: true}
}

// tailText is the part after the bar: percent, then sizes, then the rate,
// as many as kind says, padded to fixed widths.
func tailText(kind int, have, size int64, bps float64) string {
	s := fmt.Sprintf(" %6s", percent(have, size))
	if kind >= 1 {
		s += fmt.Sprintf(" %10s / %-10s", FormatBytes(have), FormatBytes(size))
	}
	if kind >= 2 {
		r := ""
		if bps > 0 {
			r = FormatBytes(int64(bps)) + "/s"
		}
		s += fmt.Sprintf(" %12s", r)
	}
	return s
}

// barLine is "name [=====>    ]  45.0%   1.2 GiB / 2.6 GiB   110.0 MiB/s",
// fitted to width (the rate, the sizes and the bar's length give way
// before the name; see layoutFor), with the bars of all lines aligned.
func barLine(name string, have, size int64, bps float64, width int) string {
	l := layoutFor(width)
	if rs := []rune(name); len(rs) > l.nameW {
		name = "…" + string(rs[len(rs)-l.nameW+1:])
	}
	tail := tailText(l.tail, have, size, bps)
	if l.noBar {
		return fit(strings.TrimRight(fmt.Sprintf("%-*s%s", l.nameW, name, tail), " "), width)
	}
	fill := 0
	if size > 0 {
		fill = int(float64(l.barW) * float64(have) / float64(size))
	}
	fill = min(max(fill, 0), l.barW)
	bar := strings.Repeat("=", fill)
	if fill < l.barW {
		bar += ">" + strings.Repeat(" ", l.barW-fill-1)
	}
	return fit(strings.TrimRight(fmt.Sprintf("%-*s [%s]%s", l.nameW, name, bar, tail), " "), width)
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
