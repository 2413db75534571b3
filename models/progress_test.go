package models

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// pty is a pseudo-terminal whose output the test reads: the progress writes
// to slave, a goroutine collects what comes out of master.
type pty struct {
	master, slave *os.File
	mu            sync.Mutex
	out           bytes.Buffer
	marks         int
}

func openPTY(t *testing.T, cols int) *pty {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetUint32(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("ptsname: %v", err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(int(n)), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open the pty's slave: %v", err)
	}
	p := &pty{master: m, slave: s}
	p.resize(t, cols)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := m.Read(buf)
			p.mu.Lock()
			p.out.Write(buf[:n])
			p.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		s.Close()
		m.Close()
		<-done
	})
	return p
}

func (p *pty) resize(t *testing.T, cols int) {
	t.Helper()
	if err := unix.IoctlSetWinsize(int(p.master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 40, Col: uint16(cols)}); err != nil {
		t.Fatalf("TIOCSWINSZ: %v", err)
	}
}

// take returns all the terminal printed so far: it writes a marker through
// the slave and waits until the marker comes out.
func (p *pty) take(t *testing.T) string {
	t.Helper()
	p.marks++
	mark := fmt.Sprintf("\x1b_mark%d\x1b\\", p.marks)
	if _, err := p.slave.WriteString(mark); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		p.mu.Lock()
		s := p.out.String()
		if i := strings.Index(s, mark); i >= 0 {
			p.out.Reset()
			p.out.WriteString(s[i+len(mark):])
			p.mu.Unlock()
			return s[:i]
		}
		p.mu.Unlock()
	}
	t.Fatal("the pseudo-terminal's output never came through")
	return ""
}

// screen is as much of a terminal as the progress uses: printing with
// autowrap, CR, LF, cursor up, erase in line, and a resize
// that re-wraps rows too wide for the new width, as most terminals do.
type screen struct {
	width int
	rows  [][]rune
	r, c  int
}

func (s *screen) row() []rune {
	for len(s.rows) <= s.r {
		s.rows = append(s.rows, nil)
	}
	return s.rows[s.r]
}

func (s *screen) feed(t *testing.T, out string) {
	t.Helper()
	for len(out) > 0 {
		if strings.HasPrefix(out, "\x1b[") {
			i := 2
			for i < len(out) && (out[i] >= '0' && out[i] <= '9' || out[i] == ';') {
				i++
			}
			if i == len(out) {
				t.Fatalf("unterminated escape %q", out)
			}
			n, _ := strconv.Atoi(out[2:i])
			switch out[i] {
			case 'A':
				s.r = max(s.r-max(n, 1), 0)
			case 'K':
				row := s.row()
				if n == 2 {
					s.rows[s.r] = nil
				} else if s.c < len(row) {
					s.rows[s.r] = row[:s.c]
				}
			default:
				t.Fatalf("escape %q not expected", out[:i+1])
			}
			out = out[i+1:]
			continue
		}
		if strings.HasPrefix(out, "\x1b") {
			t.Fatalf("escape %q not expected", out)
		}
		r, size := utf8.DecodeRuneInString(out)
		out = out[size:]
		switch r {
		case '\r':
			s.c = 0
		case '\n':
			s.r++
			s.row()
		default:
			if s.c >= s.width {
				s.r++
				s.c = 0
			}
			row := s.row()
			for len(row) <= s.c {
				row = append(row, ' ')
			}
			row[s.c] = r
			s.rows[s.r] = row
			s.c++
		}
	}
}

func (s *screen) resize(width int) {
	var rows [][]rune
	r := 0
	for i, row := range s.rows {
		if i == s.r {
			r = len(rows) + min(s.c, max(len(row)-1, 0))/width
		}
		for len(row) > width {
			rows = append(rows, row[:width])
			row = row[width:]
		}
		rows = append(rows, row)
	}
	s.rows, s.r, s.width = rows, r, width
	s.c = min(s.c, width)
}

func (s *screen) lines() []string {
	var l []string
	for _, row := range s.rows {
		l = append(l, strings.TrimRight(string(row), " "))
	}
	for len(l) > 0 && l[len(l)-1] == "" {
		l = l[:len(l)-1]
	}
	return l
}

// isBar tells a bar line from a message line.
func isBar(l string) bool { return strings.Contains(l, "%") && !strings.Contains(l, ": ") }

// TestTextProgressFitsTheTerminal draws a pull on a pseudo-terminal 60 and
// 80 columns wide and resized to the other width midway: every bar line
// fits in a row, the screen shows exactly the bars of files in flight
// below the messages, and nothing is left of them at the end.
func TestTextProgressFitsTheTerminal(t *testing.T) {
	for _, cols := range [][2]int{{80, 60}, {60, 80}} {
		t.Run(fmt.Sprintf("%d-then-%d", cols[0], cols[1]), func(t *testing.T) {
			p := openPTY(t, cols[0])
			tp := NewTerminalProgress(p.slave)
			if !tp.TTY() {
				t.Fatal("a pseudo-terminal is not taken for a terminal")
			}
			sc := &screen{width: cols[0]}
			check := func(wantBars ...string) {
				t.Helper()
				sc.feed(t, p.take(t))
				lines := sc.lines()
				var bars []string
				for i, l := range lines {
					if isBar(l) {
						bars = append(bars, l)
						if n := utf8.RuneCountInString(l); n >= sc.width {
							t.Errorf("bar %q is %d wide on %d columns", l, n, sc.width)
						}
					} else if len(bars) > 0 {
						t.Errorf("message %q below the bars (line %d)", l, i)
					}
				}
				if len(bars) != len(wantBars) {
					t.Fatalf("screen at %d columns shows %d bars, want %d:\n%s", sc.width, len(bars), len(wantBars), strings.Join(lines, "\n"))
				}
				for i, w := range wantBars {
					if !strings.Contains(bars[i], w) {
						t.Errorf("bar %d is %q, want it to show %q", i, bars[i], w)
					}
				}
			}
			const (
				a = "model-00001-of-00002.safetensors"
				b = "a/very/long/path/inside/the/repository/model-00002-of-00002.safetensors"
			)
			base := Event{Agent: "po", Repo: "Qwen/Qwen2.5-7B-Instruct-AWQ", TotalSize: 3 << 30}
			ev := func(kind, file string, size, have, total int64) {
				e := base
				e.Event, e.File, e.Size, e.Bytes, e.TotalBytes, e.Rate = kind, file, size, have, total, 110<<20
				tp.Event(e)
			}
			start := base
			start.Event, start.Revision, start.Commit, start.Files, start.Size, start.ToFetch = EventStart, "main", strings.Repeat("c", 40), 2, 3<<30, 3<<30
			tp.Event(start)
			ev(EventStart, a, 2<<30, 0, 0)
			ev(EventStart, b, 1<<30, 0, 0)
			check("00001-of-00002", "00002-of-00002", "po total")
			for i := int64(1); i <= 4; i++ {
				ev(EventProgress, a, 2<<30, i<<28, i<<28)
				ev(EventProgress, b, 1<<30, i<<27, i<<28+i<<27)
			}
			check("00001-of-00002.safetensors", "00002-of-00002.safetensors", "po total")

			// The terminal changes width.
			sc.feed(t, p.take(t))
			sc.resize(cols[1])
			p.resize(t, cols[1])
			if err := unix.Kill(os.Getpid(), unix.SIGWINCH); err != nil {
				t.Fatal(err)
			}
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
				tp.mu.Lock()
				w := tp.Width
				tp.mu.Unlock()
				if w == cols[1] {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("width still %d after SIGWINCH to %d columns", w, cols[1])
				}
			}
			check("50.0%", "50.0%", "po total")

			ev(EventDone, a, 2<<30, 2<<30, 2<<30+1<<29)
			check("50.0%", "po total")
			ev(EventProgress, b, 1<<30, 3<<28, 2<<30+3<<28)
			check("75.0%", "po total")
			ev(EventDone, b, 1<<30, 1<<30, 3<<30)
			sum := base
			sum.Event, sum.Revision, sum.Snapshot, sum.Files, sum.Fetched = EventSummary, "main", "/cache/snap", 2, 2
			tp.Event(sum)
			tp.Close()
			check()
			// Messages wrap where they are longer than the terminal is wide.
			lines := strings.Join(sc.lines(), "")
			for _, want := range []string{"po: pulling Qwen/", "po: " + a + ": done", "po: " + b + ": done", "ready in /cache/snap"} {
				if !strings.Contains(lines, want) {
					t.Errorf("the screen lacks %q:\n%s", want, lines)
				}
			}
		})
	}
}

// TestTextProgressLayout: what each width keeps.
func TestTextProgressLayout(t *testing.T) {
	for _, tc := range []struct {
		width int
		want  []string
		not   []string
	}{
		{99, []string{"[============>           ]", " 50.0%", "1.0 GiB / 2.0 GiB", "110.0 MiB/s"}, nil},
		{79, []string{"l-00001-of-00002.safetensors [========>       ]", "1.0 GiB / 2.0 GiB"}, []string{"MiB/s"}},
		{59, []string{"  model-00001-of-00002.safetensors", "[=====>    ]", " 50.0%"}, []string{"GiB"}},
		{39, []string{"00002.safetensors", "[=====>    ]", " 50.0%"}, []string{"GiB"}},
		{15, []string{"50.0%"}, []string{"["}},
	} {
		l := barLine("  model-00001-of-00002.safetensors", 1<<30, 2<<30, 110<<20, tc.width)
		if n := utf8.RuneCountInString(l); n > tc.width {
			t.Errorf("width %d: %q is %d wide", tc.width, l, n)
		}
		for _, w := range tc.want {
			if !strings.Contains(l, w) {
				t.Errorf("width %d: %q lacks %q", tc.width, l, w)
			}
		}
		for _, w := range tc.not {
			if strings.Contains(l, w) {
				t.Errorf("width %d: %q has %q", tc.width, l, w)
			}
		}
	}
}

// TestTextProgressNotATerminal: on a pipe or a buffer, lines without
// escapes.
func TestTextProgressNotATerminal(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var buf bytes.Buffer
	for _, out := range []any{w, &buf} {
		var tp *TextProgress
		switch o := out.(type) {
		case *os.File:
			tp = NewTerminalProgress(o)
		case *bytes.Buffer:
			tp = NewTerminalProgress(o)
		}
		if tp.TTY() {
			t.Errorf("%T taken for a terminal", out)
		}
		tp.Close()
	}
	w.Close()
	tp := NewTerminalProgress(&buf)
	tp.Event(Event{Event: EventStart, Agent: "po", Repo: "r", File: "a", Size: 10, TotalSize: 10})
	tp.Event(Event{Event: EventDone, Agent: "po", Repo: "r", File: "a", Size: 10, TotalSize: 10})
	tp.Close()
	if s := buf.String(); strings.Contains(s, "\x1b") || s != "po: a: done (10 B, verified)\n" {
		t.Errorf("line output %q", s)
	}
}
