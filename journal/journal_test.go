package journal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

const invocation = "8f3c0b7e5d2a4c19a6b1e0f9d8c7b6a5"

// byteArray writes s as journalctl writes a field that is not printable
// UTF-8: a JSON array of byte values.
func byteArray(s string) string {
	parts := make([]string, len(s))
	for i := 0; i < len(s); i++ {
		parts[i] = fmt.Sprint(s[i])
	}
	return "[" + strings.Join(parts, ",") + "]"
}

// recorded is journalctl -u vagent@dev.service -o json output for a failed
// start, as systemd 252 writes it: one object per line, every value a string
// except binary fields (arrays of numbers) and fields too large to show
// (null).
var recorded = strings.Join([]string{
	`{"__CURSOR":"s=e2118303c42f4a07b4a939a025a861fb;i=1a01;b=16d46f6be7444f579e29879649c725f6;m=3286e53;t=6446e1c2a8c40;x=1","__REALTIME_TIMESTAMP":"1764431470000000","_PID":"1","PRIORITY":"6","SYSLOG_IDENTIFIER":"systemd","INVOCATION_ID":"` + invocation + `","MESSAGE":"Started vagent@dev.service - vagent agent dev."}`,
	`{"__CURSOR":"s=e2118303c42f4a07b4a939a025a861fb;i=1a02;b=16d46f6be7444f579e29879649c725f6;m=3286e54;t=6446e1c2a8c41;x=2","__REALTIME_TIMESTAMP":"1764431470123456","_PID":"1200","PRIORITY":"6","SYSLOG_IDENTIFIER":"vllm","_SYSTEMD_INVOCATION_ID":"` + invocation + `","MESSAGE":"(APIServer pid=1200) INFO 11-29 15:51:10 [api_server.py:1839] vLLM API server version 0.11.0"}`,
	// A tqdm progress bar: carriage returns make the field binary.
	`{"__CURSOR":"c3","__REALTIME_TIMESTAMP":"1764431478000000","_PID":"1290","PRIORITY":"6","SYSLOG_IDENTIFIER":"vllm","_SYSTEMD_INVOCATION_ID":"` + invocation + `","MESSAGE":` + byteArray("Loading safetensors checkpoint shards:   0% Completed | 0/2\rLoading safetensors checkpoint shards: 100% Completed | 2/2\r") + `}`,
	// Colour codes and a stray Latin-1 byte.
	`{"__CURSOR":"c4","__REALTIME_TIMESTAMP":"1764431490000001","_PID":"1290","PRIORITY":"6","SYSLOG_IDENTIFIER":"vllm","_SYSTEMD_INVOCATION_ID":"` + invocation + `","MESSAGE":` + byteArray("(EngineCore_DP0 pid=1290) \x1b[1;31mERROR\x1b[0m 11-29 15:51:30 [core.py:708] ValueError: Free memory on device (3.22/15.98 GiB) on startup is less than desired GPU memory utilization (0.9, 14.38 GiB). caf\xe9") + `}`,
	`{"__CURSOR":"c5","__REALTIME_TIMESTAMP":"1764431490000002","_PID":"1290","PRIORITY":"6","SYSLOG_IDENTIFIER":"vllm","_SYSTEMD_INVOCATION_ID":"` + invocation + `","MESSAGE":null}`,
	`{"__CURSOR":"c6","__REALTIME_TIMESTAMP":"1764431491000000","_PID":"1200","PRIORITY":"6","SYSLOG_IDENTIFIER":["vllm","python3"],"_SYSTEMD_INVOCATION_ID":"` + invocation + `","MESSAGE":"(APIServer pid=1200) RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}"}`,
	`{"__CURSOR":"c7","__REALTIME_TIMESTAMP":"1764431491500000","_PID":"1","PRIORITY":"5","SYSLOG_IDENTIFIER":"systemd","INVOCATION_ID":"` + invocation + `","MESSAGE":"vagent@dev.service: Main process exited, code=exited, status=1/FAILURE"}`,
	`{"__CURSOR":"c8","__REALTIME_TIMESTAMP":"1764431491500100","_PID":"1","PRIORITY":"4","SYSLOG_IDENTIFIER":"systemd","INVOCATION_ID":"` + invocation + `","MESSAGE":"vagent@dev.service: Failed with result 'exit-code'."}`,
}, "\n") + "\n"

// fakeRun is a journalctl that writes out and errOut and returns err,
// recording its arguments.
type fakeRun struct {
	out, errOut string
	err         error
	args        []string
}

func (f *fakeRun) run(_ context.Context, args []string, stdout, stderr io.Writer) error {
	f.args = args
	io.WriteString(stdout, f.out)
	io.WriteString(stderr, f.errOut)
	return f.err
}

func TestReadRecordedOutput(t *testing.T) {
	f := &fakeRun{out: recorded}
	j := &Journal{Run: f.run}
	es, err := j.Read(context.Background(), "vagent@dev.service", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 8 {
		t.Fatalf("got %d entries, want 8", len(es))
	}
	wantArgs := []string{"-u", "vagent@dev.service", "-o", "json", "--output-fields=" + fields, "--no-pager"}
	if !slices.Equal(f.args, wantArgs) {
		t.Errorf("args = %q, want %q", f.args, wantArgs)
	}

	e := es[1]
	if !e.Time.Equal(time.UnixMicro(1764431470123456)) || e.Time.Nanosecond() != 123456000 {
		t.Errorf("time = %v", e.Time)
	}
	if e.PID != 1200 || e.Priority != 6 || e.Identifier != "vllm" || e.InvocationID != invocation || e.Cursor == "" {
		t.Errorf("entry 1 = %+v", e)
	}
	if e.Message != "(APIServer pid=1200) INFO 11-29 15:51:10 [api_server.py:1839] vLLM API server version 0.11.0" {
		t.Errorf("message = %q", e.Message)
	}
	// systemd's records carry INVOCATION_ID instead.
	if es[0].InvocationID != invocation || es[0].PID != 1 || es[7].Priority != 4 {
		t.Errorf("systemd entries: %+v / %+v", es[0], es[7])
	}
	if !strings.HasSuffix(es[2].Message, "100% Completed | 2/2\r") {
		t.Errorf("byte-array message = %q", es[2].Message)
	}
	if !strings.Contains(es[3].Message, "\x1b[1;31mERROR") || !strings.HasSuffix(es[3].Message, "caf\uFFFD") {
		t.Errorf("binary message with a Latin-1 byte = %q", es[3].Message)
	}
	if es[4].Message != "" {
		t.Errorf("null message = %q", es[4].Message)
	}
	if es[5].Identifier != "vllm" {
		t.Errorf("repeated field = %q, want the first value", es[5].Identifier)
	}

	want := "ValueError: Free memory on device (3.22/15.98 GiB) on startup is less than desired GPU memory utilization (0.9, 14.38 GiB). caf\uFFFD"
	if got := RootCause(es, vllmLog, Exit{}); got != want {
		t.Errorf("RootCause of the recorded start = %q, want %q", got, want)
	}
}

func TestReadOptions(t *testing.T) {
	f := &fakeRun{}
	j := &Journal{Run: f.run}
	since := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	if _, err := j.Read(context.Background(), "vagent@po.service", Options{Lines: 200, InvocationID: invocation, Since: since}); err != nil {
		t.Fatal(err)
	}
	tail := f.args[len(f.args)-5:]
	want := []string{"-n", "200", "--since", fmt.Sprintf("@%d", since.Unix()), "_SYSTEMD_INVOCATION_ID=" + invocation}
	if !slices.Equal(tail, want) {
		t.Errorf("args end %q, want %q", tail, want)
	}
	if _, err := j.Read(context.Background(), "vagent@po.service", Options{InvocationID: "x; rm"}); err == nil {
		t.Error("non-hex invocation ID accepted")
	}
	for _, bad := range []string{"", "--all", "vagent@dev.service --merge", "a\nb"} {
		if _, err := j.Read(context.Background(), bad, Options{}); err == nil {
			t.Errorf("unit %q accepted", bad)
		}
	}
}

func TestReadErrors(t *testing.T) {
	ctx := context.Background()

	// An ordinary user: journalctl says so on stderr and shows nothing.
	f := &fakeRun{errOut: "Hint: You are currently not seeing messages from other users and the system.\n      Users in groups 'adm', 'systemd-journal' can see all messages.\n      Pass -q to turn off this notice.\n"}
	if _, err := (&Journal{Run: f.run}).Read(ctx, "vagent@dev.service", Options{}); !errors.Is(err, ErrNoAccess) {
		t.Errorf("no access: err = %v", err)
	}
	// The same note with records to show is no failure.
	f.out = recorded
	if es, err := (&Journal{Run: f.run}).Read(ctx, "vagent@dev.service", Options{}); err != nil || len(es) != 8 {
		t.Errorf("note with records: %d entries, %v", len(es), err)
	}

	f = &fakeRun{errOut: "Failed to add filter for units: No data available\n", err: errors.New("exit status 1")}
	_, err := (&Journal{Run: f.run}).Read(ctx, "vagent@dev.service", Options{})
	if err == nil || err.Error() != "journal vagent@dev.service: journalctl: exit status 1: Failed to add filter for units: No data available" {
		t.Errorf("failure: %v", err)
	}

	f = &fakeRun{err: &exec.Error{Name: "journalctl", Err: exec.ErrNotFound}}
	_, err = (&Journal{Run: f.run}).Read(ctx, "vagent@dev.service", Options{})
	if err == nil || !strings.Contains(err.Error(), "journalctl not found") {
		t.Errorf("missing journalctl: %v", err)
	}

	f = &fakeRun{out: `{"MESSAGE":"ok"}` + "\n" + `{"MESSAGE":` + "\n"}
	if _, err := (&Journal{Run: f.run}).Read(ctx, "vagent@dev.service", Options{}); err == nil || !strings.Contains(err.Error(), "bad journalctl output") {
		t.Errorf("truncated output: %v", err)
	}
}

func TestReadSkipsNotes(t *testing.T) {
	f := &fakeRun{out: "-- No entries --\n\n" + `{"MESSAGE":"x","__REALTIME_TIMESTAMP":"1"}`}
	es, err := (&Journal{Run: f.run}).Read(context.Background(), "vagent@dev.service", Options{})
	if err != nil || len(es) != 1 || es[0].Message != "x" || es[0].Priority != 6 {
		t.Errorf("entries %+v, err %v", es, err)
	}
}

// streamRun is a journalctl -f: it writes each line of lines, then waits
// for ctx or exits with exitErr when stay is false.
type streamRun struct {
	lines   []string
	stay    bool
	exitErr error
	errOut  string
	args    []string
}

func (s *streamRun) run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	s.args = args
	io.WriteString(stderr, s.errOut)
	for _, l := range s.lines {
		if _, err := io.WriteString(stdout, l+"\n"); err != nil {
			return err
		}
	}
	if !s.stay {
		return s.exitErr
	}
	<-ctx.Done()
	return errors.New("signal: killed")
}

func TestFollow(t *testing.T) {
	lines := strings.Split(strings.TrimSpace(recorded), "\n")
	s := &streamRun{lines: lines, stay: true}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var got []Entry
	err := (&Journal{Run: s.run}).Follow(ctx, "vagent@dev.service", 5, func(e Entry) {
		got = append(got, e)
		if len(got) == len(lines) {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Follow after cancel = %v, want context.Canceled", err)
	}
	if len(got) != len(lines) || got[1].PID != 1200 || got[4].Message != "" {
		t.Errorf("followed %d entries: %+v", len(got), got)
	}
	if !slices.Equal(s.args[len(s.args)-3:], []string{"-n", "5", "-f"}) {
		t.Errorf("args = %q", s.args)
	}
}

func TestFollowJournalctlExits(t *testing.T) {
	s := &streamRun{lines: []string{`{"MESSAGE":"a"}`}, exitErr: errors.New("exit status 1"), errOut: "Failed to get journal fd: Permission denied\n"}
	var n int
	err := (&Journal{Run: s.run}).Follow(context.Background(), "vagent@dev.service", 0, func(Entry) { n++ })
	if n != 1 || err == nil || !strings.Contains(err.Error(), "Failed to get journal fd: Permission denied") {
		t.Errorf("n = %d, err = %v", n, err)
	}
	if s.args[len(s.args)-2] != "0" {
		t.Errorf("history lines arg = %q, want 0", s.args[len(s.args)-2])
	}

	// Exiting cleanly is still unexpected for -f.
	s = &streamRun{}
	if err := (&Journal{Run: s.run}).Follow(context.Background(), "vagent@dev.service", 0, func(Entry) {}); err == nil || !strings.Contains(err.Error(), "ended unexpectedly") {
		t.Errorf("clean exit: %v", err)
	}
}

func TestFollowBadOutputStopsJournalctl(t *testing.T) {
	s := &streamRun{lines: []string{`{"MESSAGE":"a"}`, `{broken`, `{"MESSAGE":"b"}`}, stay: true}
	done := make(chan error, 1)
	go func() {
		done <- (&Journal{Run: s.run}).Follow(context.Background(), "vagent@dev.service", 0, func(Entry) {})
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "bad journalctl output") {
			t.Errorf("err = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Follow hung on bad output")
	}
}

// TestRealJournalctl runs the journalctl binary itself, without depending on
// what the host's journal holds.
func TestRealJournalctl(t *testing.T) {
	if _, err := exec.LookPath("journalctl"); err != nil {
		t.Skip("no journalctl on this host")
	}
	unit := fmt.Sprintf("vagent@no-such-agent-%d.service", time.Now().UnixNano())
	es, err := Read(context.Background(), unit, Options{Lines: 10})
	if err != nil && !errors.Is(err, ErrNoAccess) {
		t.Fatalf("Read: %v", err)
	}
	if len(es) != 0 {
		t.Errorf("entries for a unit that never existed: %+v", es)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = Follow(ctx, unit, 0, func(e Entry) { t.Errorf("unexpected entry %+v", e) })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Follow = %v, want the deadline", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Follow took %v to stop", d)
	}
}
