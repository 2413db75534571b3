package journal

import (
	"context"
	"regexp"
	"strings"
	"time"

	"github.com/vagent-dev/vagent/engine"
)

var (
	// ansiRE matches terminal colour and cursor sequences.
	ansiRE = regexp.MustCompile(`\x1b\[[0-9;?]*[A-Za-z]`)
	// exceptionRE is the last line of a Python traceback: a possibly
	// dotted exception class at the start of the line, then ": message" or
	// nothing (a bare AssertionError).
	exceptionRE = regexp.MustCompile(`^(?:[A-Za-z_]\w*\.)*([A-Z]\w*)(?::\s|:?$)`)
)

// systemdNoise are systemd's lines about a unit that say that it failed,
// never why; they close every failed start's log.
var systemdNoise = []string{
	"Main process exited, code=",
	"Failed with result '",
	"Scheduled restart job",
	"Start request repeated too quickly",
	"Failed to start ",
	"Stopped ",
	"Consumed ",
	"Deactivated successfully",
	"Started ",
	"Starting ",
	"Stopping ",
}

// RootCause returns the line that says why an engine's start failed, for a
// user who would otherwise scroll a page of tracebacks, reading the log as
// the engine writes it (f, from engine.Engine.Log) and how systemd recorded
// the engine's end (exit; zero when unknown). An engine ends a failed start
// with a generic exception (vLLM: "RuntimeError: Engine core initialization
// failed. See root cause above."); the answer is the last exception line
// before it (ValueError: Free memory on device ..., OSError: [Errno 98]
// Address already in use), or the engine's usage error for bad flags,
// without the engine's process and logging prefixes. Failing that, it is
// the last ERROR line; then the signal that killed the engine ("the engine
// was killed by SIGKILL during load"); then the last line that says
// something (neither a progress bar nor logged at INFO or DEBUG) and is not
// systemd's own report of the failure, or the exit status; then systemd's
// report. Never a progress line: a bar that stopped at 50% says when the
// engine died, not why. "" when nothing is known.
func RootCause(entries []Entry, f engine.LogFormat, exit Exit) string {
	lines := logLines(entries, f)
	isGeneric := func(line string) bool { return generic(line, f.Generic) }
	// The cause comes before the last generic summary; lines after it are
	// the unit's stop, not the cause.
	end := len(lines)
	for i := len(lines) - 1; i >= 0; i-- {
		if isException(lines[i].text) && isGeneric(lines[i].text) {
			end = i
			break
		}
	}
	for i := end - 1; i >= 0; i-- {
		t := lines[i].text
		if (isException(t) && !isGeneric(t) && !ignored(lines, i)) || (f.UsageError != nil && f.UsageError.MatchString(t)) {
			return strings.TrimSpace(t)
		}
	}
	for i := end - 1; i >= 0; i-- {
		l := lines[i]
		if (l.error || l.priority <= 3) && !isSystemdNoise(l) && !isGeneric(l.text) {
			return strings.TrimSpace(l.text)
		}
	}
	if exit.signalled() {
		return exit.describe()
	}
	says := func(l logLine) bool {
		return !l.info
	}
	for i := len(lines) - 1; i >= 0; i-- {
		if says(lines[i]) && !isSystemdNoise(lines[i]) {
			return strings.TrimSpace(lines[i].text)
		}
	}
	if exit.failed() {
		return exit.describe()
	}
	for i := len(lines) - 1; i >= 0; i-- {
		if says(lines[i]) {
			return strings.TrimSpace(lines[i].text)
		}
	}
	return ""
}

type logLine struct {
	text     string // prefixes stripped, not trimmed: indentation tells code from exceptions
	error    bool   // the engine logged it at ERROR or CRITICAL
	info     bool   // the engine logged it at INFO or DEBUG: progress, not a cause
	priority int
	systemd  bool // systemd's own record about the unit
}

// logLines splits the entries into single lines, as a record may hold
// several, and strips colour codes, progress-bar redraws and the engine's
// prefixes, and drops progress bars, which say when the engine died, not why.
func logLines(entries []Entry, f engine.LogFormat) []logLine {
	var out []logLine
	for _, e := range entries {
		systemd := e.Identifier == "systemd" || e.PID == 1
		msg := ansiRE.ReplaceAllString(e.Message, "")
		for _, l := range strings.Split(msg, "\n") {
			// A carriage return redraws the line: the last frame shows.
			l = strings.TrimRight(l, "\r")
			if k := strings.LastIndexByte(l, '\r'); k >= 0 {
				l = l[k+1:]
			}
			if f.ProcessPrefix != nil {
				l = f.ProcessPrefix.ReplaceAllString(l, "")
			}
			isErr, isInfo := false, false
			if f.LevelPrefix != nil {
				if m := f.LevelPrefix.FindStringSubmatch(l); m != nil {
					isErr = m[1] == "ERROR" || m[1] == "CRITICAL"
					isInfo = m[1] == "INFO" || m[1] == "DEBUG"
					l = l[len(m[0]):]
				}
			}
			if strings.TrimSpace(l) == "" || (f.Progress != nil && f.Progress.MatchString(l)) {
				continue
			}
			out = append(out, logLine{text: l, error: isErr, info: isInfo, priority: e.Priority, systemd: systemd})
		}
	}
	return out
}

// isException reports whether line is an exception line of a traceback. The
// class must end like an exception class, so that "Note: ..." or "INFO: ..."
// do not pass.
func isException(line string) bool {
	m := exceptionRE.FindStringSubmatch(line)
	if m == nil {
		return false
	}
	name := m[1]
	for _, suffix := range []string{"Error", "Exception", "Exit", "Interrupt", "Failure"} {
		if strings.HasSuffix(name, suffix) {
			return true
		}
	}
	return false
}

// ignored reports whether the exception at lines[i] closes a traceback that
// Python printed as "Exception ignored in: ..." (a destructor failing during
// the shutdown that follows the real failure).
func ignored(lines []logLine, i int) bool {
	j := i - 1
	for j >= 0 && (strings.HasPrefix(lines[j].text, " ") || strings.HasPrefix(lines[j].text, "\t")) {
		j--
	}
	if j >= 0 && strings.HasPrefix(lines[j].text, "Traceback (most recent call last)") {
		j--
	}
	return j >= 0 && strings.HasPrefix(lines[j].text, "Exception ignored in")
}

func generic(line string, markers []string) bool {
	for _, m := range markers {
		if strings.Contains(line, m) {
			return true
		}
	}
	return false
}

func isSystemdNoise(l logLine) bool {
	if !l.systemd {
		return false
	}
	for _, n := range systemdNoise {
		if strings.Contains(l.text, n) {
			return true
		}
	}
	return false
}

// StartCause is the supervisor's RootCause hook for engines that log in
// format f: it reads the unit's log since a start and lifts the line that
// explains why the start failed, or says how the engine ended.
func StartCause(f engine.LogFormat) func(ctx context.Context, unit string, since time.Time, exit Exit) string {
	return func(ctx context.Context, unit string, since time.Time, exit Exit) string {
		// journald stamps lines when it receives them; a second of slack
		// covers the clock granularity of the start time we were given.
		entries, err := Read(ctx, unit, Options{Lines: 400, Since: since.Add(-time.Second)})
		if err != nil {
			// Without the log, how the engine ended is still a cause.
			entries = nil
		}
		return RootCause(entries, f, exit)
	}
}
