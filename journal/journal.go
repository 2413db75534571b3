// Package journal reads an agent's log from the systemd journal by running
// journalctl -o json, and lifts the line that explains a failed vLLM start out
// of it. journalctl rather than sdjournal: sdjournal needs cgo and libsystemd
// headers, and journalctl is what the admin uses too, so both see the same.
// It also writes vagentd's own log for journald (LogHandler): levels as
// priorities, attributes as fields.
package journal

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Entry is one journal record.
type Entry struct {
	// Time is when journald received the record (__REALTIME_TIMESTAMP).
	Time time.Time
	// Message is the log line; "" for a record without one. Bytes that are
	// not UTF-8 come back as U+FFFD.
	Message string
	// PID is the process that logged it (_PID), 0 if unknown.
	PID int
	// Priority is the syslog level, 0 (emerg) to 7 (debug); 6 (info), the
	// journal's default, when the record has none. An engine's stderr lines
	// are all 6: vLLM's own level is in the text.
	Priority int
	// Identifier is SYSLOG_IDENTIFIER: the program name ("vllm", "systemd").
	Identifier string
	// InvocationID tells one run of the unit from the next
	// (_SYSTEMD_INVOCATION_ID; INVOCATION_ID on systemd's own records about
	// the unit).
	InvocationID string
	// Cursor is the record's position, for resuming after it.
	Cursor string
}

// Options narrow what Read returns.
type Options struct {
	// Lines is the number of most recent records; 0 means all.
	Lines int
	// InvocationID keeps only the records of one run of the unit (the
	// unit's InvocationID property), so that an old failure does not pass
	// for the current one.
	InvocationID string
	// Since keeps only records from this time on; zero means no bound.
	Since time.Time
}

// ErrNoAccess is matched (errors.Is) when journalctl showed nothing because
// the user may not read the system journal.
var ErrNoAccess = errors.New("journal: this user may not read the system journal: run as root or join the systemd-journal group")

// Journal runs journalctl. The zero value runs the journalctl on PATH.
type Journal struct {
	// Run runs journalctl with args, copying its standard output to stdout
	// and its standard error to stderr as they come, and returns when it
	// exits or ctx ends. Nil runs the real journalctl; tests replace it to
	// feed recorded output.
	Run func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

// Read returns the records of unit, oldest first, using the journalctl on
// PATH.
func Read(ctx context.Context, unit string, opts Options) ([]Entry, error) {
	return (&Journal{}).Read(ctx, unit, opts)
}

// Follow calls fn for the last n records of unit and then for each new one
// as it is written, until ctx ends or journalctl fails, using the journalctl
// on PATH. See Journal.Follow.
func Follow(ctx context.Context, unit string, n int, fn func(Entry)) error {
	return (&Journal{}).Follow(ctx, unit, n, fn)
}

// Read returns the records of unit, oldest first.
func (j *Journal) Read(ctx context.Context, unit string, opts Options) ([]Entry, error) {
	args, err := baseArgs(unit)
	if err != nil {
		return nil, err
	}
	if opts.Lines > 0 {
		args = append(args, "-n", strconv.Itoa(opts.Lines))
	}
	if !opts.Since.IsZero() {
		// "@SECONDS" is systemd's absolute time: no time zone to get wrong.
		args = append(args, "--since", "@"+strconv.FormatInt(opts.Since.Unix(), 10))
	}
	if opts.InvocationID != "" {
		if !isHex(opts.InvocationID) {
			return nil, fmt.Errorf("journal: invocation ID %q is not hexadecimal", opts.InvocationID)
		}
		args = append(args, "_SYSTEMD_INVOCATION_ID="+opts.InvocationID)
	}
	var stdout, stderr bytes.Buffer
	if err := j.run(ctx, args, &stdout, &stderr); err != nil {
		return nil, runError(unit, err, stderr.Bytes())
	}
	var out []Entry
	r := bufio.NewReader(&stdout)
	for {
		line, err := r.ReadBytes('\n')
		if e, ok, perr := parseLine(line); perr != nil {
			return nil, fmt.Errorf("journal %s: %w", unit, perr)
		} else if ok {
			out = append(out, e)
		}
		if err != nil {
			break
		}
	}
	if len(out) == 0 && noAccess(stderr.Bytes()) {
		return nil, ErrNoAccess
	}
	return out, nil
}

// Follow calls fn for the last n records of unit (none when n is 0) and then
// for each new one as it is written, in order, from this goroutine. It
// returns ctx's error once ctx ends, or an error when journalctl exits on its
// own, which it does only on failure.
func (j *Journal) Follow(ctx context.Context, unit string, n int, fn func(Entry)) error {
	args, err := baseArgs(unit)
	if err != nil {
		return err
	}
	if n < 0 {
		n = 0
	}
	args = append(args, "-n", strconv.Itoa(n), "-f")

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	var stderr lockedBuffer
	done := make(chan error, 1)
	go func() {
		err := j.run(runCtx, args, pw, &stderr)
		pw.Close()
		done <- err
	}()

	r := bufio.NewReader(pr)
	var parseErr error
	for {
		line, err := r.ReadBytes('\n')
		if e, ok, perr := parseLine(line); perr != nil {
			parseErr = fmt.Errorf("journal %s: %w", unit, perr)
			break
		} else if ok {
			fn(e)
		}
		if err != nil {
			break
		}
	}
	cancel()
	pr.CloseWithError(io.ErrClosedPipe) // unblock a writer still running
	runErr := <-done
	switch {
	case ctx.Err() != nil:
		// A line cut short by the kill is no error.
		return ctx.Err()
	case parseErr != nil:
		return parseErr
	case runErr != nil:
		return runError(unit, runErr, stderr.Bytes())
	}
	return fmt.Errorf("journal %s: journalctl -f ended unexpectedly%s", unit, stderrSuffix(stderr.Bytes()))
}

// fields are the journal fields Entry is made of, so that journalctl sends
// nothing else (__REALTIME_TIMESTAMP and __CURSOR always come).
const fields = "MESSAGE,_PID,PRIORITY,SYSLOG_IDENTIFIER,_SYSTEMD_INVOCATION_ID,INVOCATION_ID"

func baseArgs(unit string) ([]string, error) {
	if unit == "" || strings.HasPrefix(unit, "-") || strings.ContainsFunc(unit, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return nil, fmt.Errorf("journal: %q is not a unit name", unit)
	}
	return []string{"-u", unit, "-o", "json", "--output-fields=" + fields, "--no-pager"}, nil
}

func (j *Journal) run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if j.Run != nil {
		return j.Run(ctx, args, stdout, stderr)
	}
	cmd := exec.CommandContext(ctx, "journalctl", args...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	// Output copying must not outlive the kill by much, whatever holds the
	// pipes.
	cmd.WaitDelay = 2 * time.Second
	return cmd.Run()
}

func runError(unit string, err error, stderr []byte) error {
	switch {
	case errors.Is(err, exec.ErrNotFound):
		return errors.New("journal: journalctl not found: is systemd installed? (an agent's log is in the systemd journal)")
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("journal %s: %w", unit, err)
	case noAccess(stderr):
		return fmt.Errorf("journal %s: %w", unit, ErrNoAccess)
	}
	return fmt.Errorf("journal %s: journalctl: %w%s", unit, err, stderrSuffix(stderr))
}

// noAccess recognises journalctl's notes for a user who may not read the
// system journal: it then shows the user's own journal, or nothing.
func noAccess(stderr []byte) bool {
	return bytes.Contains(stderr, []byte("not seeing messages from other users and the system")) ||
		bytes.Contains(stderr, []byte("insufficient permissions"))
}

// stderrSuffix is ": " and the first line of journalctl's complaint, or "".
func stderrSuffix(stderr []byte) string {
	for _, l := range strings.Split(string(stderr), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			return ": " + l
		}
	}
	return ""
}

// parseLine decodes one line of journalctl -o json. ok is false for a line
// that holds no record (blank, or a "-- ... --" note).
func parseLine(line []byte) (e Entry, ok bool, err error) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 || line[0] != '{' {
		return Entry{}, false, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(line, &m); err != nil {
		return Entry{}, false, fmt.Errorf("bad journalctl output: %w", err)
	}
	str := func(k string) string {
		v, ok := m[k]
		if !ok {
			return ""
		}
		return fieldString(v)
	}
	e.Message = str("MESSAGE")
	e.Identifier = str("SYSLOG_IDENTIFIER")
	e.Cursor = str("__CURSOR")
	e.InvocationID = str("_SYSTEMD_INVOCATION_ID")
	if e.InvocationID == "" {
		e.InvocationID = str("INVOCATION_ID")
	}
	e.PID, _ = strconv.Atoi(str("_PID"))
	e.Priority = 6
	if p, err := strconv.Atoi(str("PRIORITY")); err == nil {
		e.Priority = p
	}
	if us, err := strconv.ParseInt(str("__REALTIME_TIMESTAMP"), 10, 64); err == nil {
		e.Time = time.UnixMicro(us)
	}
	return e, true, nil
}

// fieldString decodes a field of journalctl's JSON. A field is a string; an
// array of numbers when it holds bytes that are not printable UTF-8 (a
// tqdm progress bar's carriage returns, colour codes, a stray Latin-1
// byte); null when journalctl deems it too large; and an array of those when
// the record repeats the field, of which the first is kept.
func fieldString(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return ""
	}
	switch raw[0] {
	case 'n':
		return ""
	case '"':
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return ""
		}
		return s
	case '[':
		var items []json.RawMessage
		if json.Unmarshal(raw, &items) != nil || len(items) == 0 {
			return ""
		}
		b := make([]byte, 0, len(items))
		for _, it := range items {
			n, err := strconv.ParseUint(string(bytes.TrimSpace(it)), 10, 8)
			if err != nil {
				return fieldString(items[0]) // repeated field
			}
			b = append(b, byte(n))
		}
		if utf8.Valid(b) {
			return string(b)
		}
		return strings.ToValidUTF8(string(b), "\uFFFD")
	}
	return string(raw)
}

func isHex(s string) bool {
	for _, r := range s {
		if !('0' <= r && r <= '9' || 'a' <= r && r <= 'f' || 'A' <= r && r <= 'F') {
			return false
		}
	}
	return true
}

// lockedBuffer collects journalctl's stderr, written by exec's copying
// goroutine while Follow runs.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}
