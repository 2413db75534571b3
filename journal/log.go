package journal

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"

	sdjournal "github.com/coreos/go-systemd/v22/journal"
)

// Sender sends one record over journald's native protocol (go-systemd's
// journal.Send, or a fake in tests).
type Sender func(message string, priority sdjournal.Priority, fields map[string]string) error

// Priority is the syslog priority journald stores for a slog level.
func Priority(l slog.Level) sdjournal.Priority {
	switch {
	case l >= slog.LevelError:
		return sdjournal.PriErr
	case l >= slog.LevelWarn:
		return sdjournal.PriWarning
	case l >= slog.LevelInfo:
		return sdjournal.PriInfo
	}
	return sdjournal.PriDebug
}

// LogMode is how NewLogHandler writes.
type LogMode int

const (
	// Plain: logfmt lines with a time, for a terminal or a file.
	Plain LogMode = iota
	// Prefixed: logfmt lines without a time (journald adds its own), each
	// prefixed with "<N>", the priority, which journald's stream transport
	// strips and stores (SyslogLevelPrefix=, on by default).
	Prefixed
	// Native: one datagram per record to journald's socket, with the
	// priority and each attribute as a field of its own; the message is the
	// Prefixed line without its prefix.
	Native
)

// DetectLogMode says how a program whose log goes to w should write it:
// Native when w is stderr, stderr is the journal's stream (JOURNAL_STREAM
// names its device and inode, as systemd documents for protocol upgrades)
// and journald's socket answers; Prefixed when only the stream is there;
// else Plain.
func DetectLogMode(w io.Writer) LogMode {
	if w != io.Writer(os.Stderr) {
		return Plain
	}
	if ok, err := sdjournal.StderrIsJournalStream(); err != nil || !ok {
		return Plain
	}
	if sdjournal.Enabled() {
		return Native
	}
	return Prefixed
}

// LogHandler is a slog.Handler that writes for journald: see LogMode.
// Native fields are the attributes' keys in upper case, with groups joined
// by "_" and anything but letters, digits and "_" replaced by "_" ("agent"
// becomes AGENT, so `journalctl AGENT=dev` selects one agent's records); a
// key that would clash with a field journald defines (MESSAGE, PRIORITY,
// CODE_FILE, ...) or is not a valid field name gets the prefix VAGENT_.
type LogHandler struct {
	mode   LogMode
	ident  string
	send   Sender
	w      io.Writer
	out    *logBuffer
	text   slog.Handler
	fields []field // from WithAttrs, with their group prefix
	prefix string  // the open groups, as a field prefix ("G_")
}

type field struct{ name, value string }

// logBuffer is where the text handler renders one record; mu makes render
// and read one step, since handlers derived by WithAttrs share it.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// NewLogHandler returns a handler writing in mode to w (Plain, Prefixed) or
// through send (Native; a record send fails on goes to w, Prefixed). ident
// is the SYSLOG_IDENTIFIER of native records; send nil means journald's
// socket.
func NewLogHandler(w io.Writer, mode LogMode, level slog.Leveler, ident string, send Sender) *LogHandler {
	if send == nil {
		send = sdjournal.Send
	}
	out := &logBuffer{}
	opts := &slog.HandlerOptions{Level: level}
	if mode != Plain {
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
	}
	return &LogHandler{mode: mode, ident: ident, send: send, w: w, out: out, text: slog.NewTextHandler(&out.buf, opts)}
}

// Enabled implements slog.Handler.
func (h *LogHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.text.Enabled(ctx, l)
}

// Handle implements slog.Handler.
func (h *LogHandler) Handle(ctx context.Context, r slog.Record) error {
	h.out.mu.Lock()
	h.out.buf.Reset()
	err := h.text.Handle(ctx, r)
	line := h.out.buf.String()
	h.out.mu.Unlock()
	if err != nil {
		return err
	}
	prio := Priority(r.Level)
	if h.mode == Native {
		fields := make(map[string]string, len(h.fields)+r.NumAttrs()+1)
		if h.ident != "" {
			fields["SYSLOG_IDENTIFIER"] = h.ident
		}
		for _, f := range h.fields {
			fields[f.name] = f.value
		}
		r.Attrs(func(a slog.Attr) bool {
			addFields(fields, h.prefix, a)
			return true
		})
		if err := h.send(strings.TrimSuffix(line, "\n"), prio, fields); err == nil {
			return nil
		}
		// journald went away: the stream still carries the priority.
	}
	if h.mode != Plain {
		line = "<" + strconv.Itoa(int(prio)) + ">" + line
	}
	_, err = io.WriteString(h.w, line)
	return err
}

// WithAttrs implements slog.Handler.
func (h *LogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.text = h.text.WithAttrs(attrs)
	m := map[string]string{}
	for _, a := range attrs {
		addFields(m, h.prefix, a)
	}
	c.fields = append([]field(nil), h.fields...)
	for name, value := range m {
		c.fields = append(c.fields, field{name, value})
	}
	return &c
}

// WithGroup implements slog.Handler.
func (h *LogHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.text = h.text.WithGroup(name)
	c.prefix = h.prefix + name + "_"
	return &c
}

// addFields adds a's fields to m, flattening groups.
func addFields(m map[string]string, prefix string, a slog.Attr) {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p += a.Key + "_"
		}
		for _, g := range v.Group() {
			addFields(m, p, g)
		}
		return
	}
	if a.Key == "" {
		return
	}
	m[FieldName(prefix+a.Key)] = v.String()
}

// journaldFields are names journald or its clients give a meaning to; an
// attribute of that name is stored as VAGENT_NAME instead.
var journaldFields = map[string]bool{
	"MESSAGE": true, "MESSAGE_ID": true, "PRIORITY": true, "CODE_FILE": true, "CODE_LINE": true,
	"CODE_FUNC": true, "ERRNO": true, "INVOCATION_ID": true, "USER_INVOCATION_ID": true,
	"SYSLOG_FACILITY": true, "SYSLOG_IDENTIFIER": true, "SYSLOG_PID": true, "SYSLOG_TIMESTAMP": true,
	"SYSLOG_RAW": true, "DOCUMENTATION": true, "TID": true, "UNIT": true, "USER_UNIT": true,
}

// FieldName is the journal field an attribute key is stored under: upper
// case, [A-Z0-9_] only, at most 64 bytes, never a name journald defines.
func FieldName(key string) string {
	var b strings.Builder
	for _, c := range strings.ToUpper(key) {
		if ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') || c == '_' {
			b.WriteRune(c)
		} else {
			b.WriteByte('_')
		}
	}
	n := b.String()
	if n == "" || n[0] < 'A' || n[0] > 'Z' || journaldFields[n] || strings.HasPrefix(n, "COREDUMP") || strings.HasPrefix(n, "OBJECT_") {
		n = "VAGENT_" + n
	}
	if len(n) > 64 {
		n = n[:64]
	}
	return n
}

var _ slog.Handler = (*LogHandler)(nil)
