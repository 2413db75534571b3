package supervisor

// Messages of docs/troubleshooting.md about failed switches, produced by
// the supervisor against the fake host of its own tests.

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/docs"
	"github.com/vagent-dev/vagent/journal"
)

func TestDocumentedMessagesOfFailedSwitches(t *testing.T) {
	msgs, err := docs.Messages("../docs")
	if err != nil {
		t.Fatal(err)
	}
	cause := "torch.OutOfMemoryError: CUDA out of memory."
	ctx := context.Background()
	got := map[string]string{}

	// start-limit-refused: systemd refuses the start of a failed unit.
	{
		cfg := testConfig(t, agent("dev", 0.5, 30))
		fh := newFakeHost(t, cfg, 16*gib)
		h := &limitHost{fakeHost: fh, hit: map[string]bool{"vagent@dev.service": true}}
		s := New(cfg, Options{Systemd: h, GPU: fh, RootCause: func(context.Context, string, time.Time, journal.Exit) string { return cause }})
		_, err := s.Switch(ctx, "dev")
		got["start-limit-refused"] = err.Error()
	}
	// restored-after-failed-start and start-backoff.
	{
		cfg := testConfig(t, agent("po", 0.92, 10), agent("dev", 0.92, 30))
		h := newFakeHost(t, cfg, 16*gib)
		h.failing["vagent@dev.service"] = true
		c := &clock{t: time.Unix(1e9, 0)}
		s := New(cfg, Options{Systemd: h, GPU: h, Now: c.now, RootCause: func(context.Context, string, time.Time, journal.Exit) string { return cause }})
		if _, err := s.Switch(ctx, "po"); err != nil {
			t.Fatal(err)
		}
		_, err := s.Switch(ctx, "dev")
		got["restored-after-failed-start"] = err.Error()
		c.add(cfg.Supervisor.StartBackoff.Duration)
		s.Switch(ctx, "dev")
		_, err = s.Switch(ctx, "dev")
		got["start-backoff"] = err.Error()
	}
	// never-fits: refused before anything is evicted.
	{
		cfg := testConfig(t, agent("big", 0.5, 30))
		h := newFakeHost(t, cfg, 16*gib)
		s := New(cfg, Options{Systemd: h, GPU: h, NeverFits: func(context.Context, *config.Agent, map[int]uint64) string {
			return "does not fit: its weights alone (18.00 GiB, 19.33 GB) exceed the whole 15.99 GiB card (GPU 0)"
		}})
		_, err := s.Switch(ctx, "big")
		got["never-fits"] = err.Error()
	}
	for id, out := range got {
		out += "\n"
		if os.Getenv("VAGENT_DOCS_SHOW") != "" {
			t.Logf("%s:\n%s", id, out)
		}
		b, ok := msgs[id]
		if !ok {
			t.Errorf("no ```text vagent-message id=%s block in docs/*.md", id)
			continue
		}
		if err := docs.Match(b.Text, out); err != nil {
			t.Errorf("%s: %v\nthe supervisor said:\n%s", b.Where(), err, out)
		}
	}
}
