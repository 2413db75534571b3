package journal

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"testing"

	sdjournal "github.com/coreos/go-systemd/v22/journal"
)

type sent struct {
	msg    string
	prio   sdjournal.Priority
	fields map[string]string
}

func TestLogHandlerNative(t *testing.T) {
	var got []sent
	var w bytes.Buffer
	send := func(msg string, p sdjournal.Priority, f map[string]string) error {
		got = append(got, sent{msg, p, f})
		return nil
	}
	log := slog.New(NewLogHandler(&w, Native, slog.LevelDebug, "vagentd", send))
	log.Debug("probe", "agent", "dev")
	log.Info("switching to agent", "agent", "dev", "waiting", 1)
	log.Warn("agent no longer runs", "agent", "po", "state", "failed")
	log.Error("switch failed", "agent", "architect", "err", errors.New("boom"))
	log.With("agent", "po").WithGroup("req").Info("request", "status", 502, "message", "x", "2xx", false, "model-name", "po")

	if w.Len() != 0 {
		t.Errorf("native records also went to the stream: %q", w.String())
	}
	want := []struct {
		prio   sdjournal.Priority
		msg    string
		fields map[string]string
	}{
		{sdjournal.PriDebug, `level=DEBUG msg=probe agent=dev`, map[string]string{"AGENT": "dev"}},
		{sdjournal.PriInfo, `level=INFO msg="switching to agent" agent=dev waiting=1`, map[string]string{"AGENT": "dev", "WAITING": "1"}},
		{sdjournal.PriWarning, `level=WARN msg="agent no longer runs" agent=po state=failed`, map[string]string{"AGENT": "po", "STATE": "failed"}},
		{sdjournal.PriErr, `level=ERROR msg="switch failed" agent=architect err=boom`, map[string]string{"AGENT": "architect", "ERR": "boom"}},
		{sdjournal.PriInfo, `level=INFO msg=request agent=po req.status=502 req.message=x req.2xx=false req.model-name=po`,
			map[string]string{"AGENT": "po", "REQ_STATUS": "502", "REQ_MESSAGE": "x", "REQ_2XX": "false", "REQ_MODEL_NAME": "po"}},
	}
	if len(got) != len(want) {
		t.Fatalf("sent %d records, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		g := got[i]
		if g.prio != w.prio || g.msg != w.msg {
			t.Errorf("record %d: priority %d %q, want %d %q", i, g.prio, g.msg, w.prio, w.msg)
		}
		w.fields["SYSLOG_IDENTIFIER"] = "vagentd"
		if fmt.Sprint(g.fields) != fmt.Sprint(w.fields) {
			t.Errorf("record %d: fields %v, want %v", i, g.fields, w.fields)
		}
	}
}

func TestLogHandlerNativeFallsBackToPrefixes(t *testing.T) {
	var w bytes.Buffer
	send := func(string, sdjournal.Priority, map[string]string) error { return errors.New("no journald") }
	slog.New(NewLogHandler(&w, Native, slog.LevelInfo, "vagentd", send)).Warn("drain bound passed", "agent", "dev")
	if got, want := w.String(), "<4>level=WARN msg=\"drain bound passed\" agent=dev\n"; got != want {
		t.Errorf("stream got %q, want %q", got, want)
	}
}

func TestLogHandlerPrefixed(t *testing.T) {
	var w bytes.Buffer
	log := slog.New(NewLogHandler(&w, Prefixed, slog.LevelInfo, "vagentd", nil))
	log.Debug("hidden")
	log.Info("listening", "addr", "127.0.0.1:8080")
	log.Warn("reading agents' status", "err", "timeout")
	log.Error("vagentd failed", "err", "bind")
	want := "<6>level=INFO msg=listening addr=127.0.0.1:8080\n" +
		"<4>level=WARN msg=\"reading agents' status\" err=timeout\n" +
		"<3>level=ERROR msg=\"vagentd failed\" err=bind\n"
	if w.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", w.String(), want)
	}
}

func TestLogHandlerPlain(t *testing.T) {
	var w bytes.Buffer
	slog.New(NewLogHandler(&w, Plain, slog.LevelInfo, "vagentd", nil)).Warn("x", "agent", "dev")
	if s := w.String(); !strings.HasPrefix(s, "time=") || !strings.HasSuffix(s, " level=WARN msg=x agent=dev\n") {
		t.Errorf("plain line %q", s)
	}
}

func TestFieldName(t *testing.T) {
	for key, want := range map[string]string{
		"agent":                 "AGENT",
		"in_flight":             "IN_FLIGHT",
		"model-name":            "MODEL_NAME",
		"message":               "VAGENT_MESSAGE",
		"priority":              "VAGENT_PRIORITY",
		"_pid":                  "VAGENT__PID",
		"2xx":                   "VAGENT_2XX",
		"":                      "VAGENT_",
		strings.Repeat("a", 80): strings.Repeat("A", 64),
	} {
		if got := FieldName(key); got != want {
			t.Errorf("FieldName(%q) = %q, want %q", key, got, want)
		}
	}
}

// TestDetectLogMode: only stderr whose device and inode JOURNAL_STREAM
// names is the journal.
func TestDetectLogMode(t *testing.T) {
	var st syscall.Stat_t
	if err := syscall.Fstat(2, &st); err != nil {
		t.Fatal(err)
	}
	t.Setenv("JOURNAL_STREAM", fmt.Sprintf("%d:%d", st.Dev, st.Ino))
	want := Prefixed
	if sdjournal.Enabled() {
		want = Native
	}
	if got := DetectLogMode(os.Stderr); got != want {
		t.Errorf("stderr named by JOURNAL_STREAM: mode %d, want %d", got, want)
	}
	if got := DetectLogMode(&bytes.Buffer{}); got != Plain {
		t.Errorf("a buffer: mode %d, want Plain", got)
	}
	t.Setenv("JOURNAL_STREAM", fmt.Sprintf("%d:%d", st.Dev, st.Ino+1))
	if got := DetectLogMode(os.Stderr); got != Plain {
		t.Errorf("JOURNAL_STREAM naming another file: mode %d, want Plain", got)
	}
	t.Setenv("JOURNAL_STREAM", "")
	if got := DetectLogMode(os.Stderr); got != Plain {
		t.Errorf("no JOURNAL_STREAM: mode %d, want Plain", got)
	}
}
