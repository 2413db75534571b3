package vllmsim

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// Process names vLLM prefixes its output with since 0.11: the API server and
// the engine core are separate processes there.
const (
	procAPI    = "APIServer"
	procEngine = "EngineCore_DP0"
)

// logger writes lines in vLLM's format:
//
//	(APIServer pid=42) INFO 11-29 15:51:30 [api_server.py:1351] vLLM API server version 0.18.0
//
// Logs go to stdout as vLLM's logging config does; tracebacks to stderr.
type logger struct {
	mu   sync.Mutex
	out  io.Writer
	errw io.Writer
	pid  int
	now  func() time.Time
}

func (l *logger) prefix(proc string) string {
	return fmt.Sprintf("(%s pid=%d) ", proc, l.pid)
}

func (l *logger) write(w io.Writer, s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	io.WriteString(w, s)
}

// logf writes one vLLM log record (possibly several lines: vLLM prefixes each).
func (l *logger) logf(proc, level, src, format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	ts := l.now().Format("01-02 15:04:05")
	var b strings.Builder
	for _, line := range strings.Split(msg, "\n") {
		fmt.Fprintf(&b, "%s%s %s [%s] %s\n", l.prefix(proc), level, ts, src, line)
	}
	l.write(l.out, b.String())
}

func (l *logger) info(src, format string, a ...any) {
	l.logf(procAPI, "INFO", src, format, a...)
}

func (l *logger) engine(src, format string, a ...any) {
	l.logf(procEngine, "INFO", src, format, a...)
}

func (l *logger) warn(proc, src, format string, a ...any) {
	l.logf(proc, "WARNING", src, format, a...)
}

// uvicorn writes a line in uvicorn's own format ("INFO:     Started server process [42]").
func (l *logger) uvicorn(format string, a ...any) {
	l.write(l.out, l.prefix(procAPI)+"INFO:     "+fmt.Sprintf(format, a...)+"\n")
}

// raw writes lines as a process writes them, with its prefix, to stdout
// (progress bars) or stderr (tracebacks).
func (l *logger) raw(w io.Writer, proc string, lines ...string) {
	var b strings.Builder
	for _, line := range lines {
		for _, part := range strings.Split(line, "\n") {
			b.WriteString(l.prefix(proc) + part + "\n")
		}
	}
	l.write(w, b.String())
}
