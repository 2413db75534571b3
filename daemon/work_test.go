package daemon

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/work"
)

// vagentd opens the work store under the state directory and, at start,
// runs the work a previous vagentd left: an item left running by a crash
// goes back to pending and is sent again, through the gateway, with the
// engine's key.
func TestRunResumesStoredWork(t *testing.T) {
	cfg, key := testConfig(t)
	engine := slowEngine(t, key, 2, time.Millisecond)
	cfg.Agent("dev").Port = engine.Listener.Addr().(*net.TCPAddr).Port

	ctx := context.Background()
	st, err := work.Open(ctx, cfg.WorkDir(), work.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	body := []byte(`{"model":"dev","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	j, err := st.CreateJob(ctx, work.Job{Kind: "test"}, []work.Item{
		{Agent: "dev", Path: "/v1/chat/completions", Body: body},
		{Agent: "dev", Path: "/v1/chat/completions", Body: body, State: work.Running},
	})
	if err != nil {
		t.Fatal(err)
	}

	sd := &fakeSystemd{active: map[string]bool{"vagent@dev.service": true}}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- Run(runCtx, cfg, Options{Systemd: sd, Notify: func(string) error { return nil }}) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got, err := st.Job(ctx, j.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Counts[work.Done] == 2 && got.Finalized {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stored work not run: %+v", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	items, _ := st.Items(ctx, j.ID)
	for _, it := range items {
		if !strings.Contains(string(it.Response), `"content":"t0 t1 "`) {
			t.Errorf("item %d answer %s", it.ID, it.Response)
		}
	}
}
