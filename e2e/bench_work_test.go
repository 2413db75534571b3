package e2e

import (
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/work"
)

// BenchmarkInteractiveWaitDuringBatch measures what a batch costs a client:
// the p99 latency of 1-token requests for dev, sent one at a time with a
// 4 s pause between, with no background work and then while a job of 160 items
// over po and architect (which cannot run beside dev) runs. Interactive
// requests keep priority: the executor sends nothing new while a client
// waits for dev, so a request waits for the batch items in flight (at most
// work.concurrency, 1 s each) and one switch (a 2 s load), not for the
// batch. Reported side by side; no timed assertion.
func BenchmarkInteractiveWaitDuringBatch(b *testing.B) {
	w := newWorkHost(b, map[string]any{"work.concurrency": 4})
	ctx := b.Context()
	// The pause between a client's requests is longer than a switch: a
	// client that comes back faster than a switch takes keeps its agent,
	// and background work makes no progress meanwhile (each start it
	// begins gives way to the next request).
	const requests, pause = 12, 4 * time.Second
	measure := func() []time.Duration {
		var out []time.Duration
		for range requests {
			t0 := time.Now()
			resp, body, err := w.post(ctx, "/v1/chat/completions", "", chatBody("dev", 1, false))
			if err != nil || resp.StatusCode != http.StatusOK {
				b.Fatalf("interactive request: %v %s", err, body)
			}
			out = append(out, time.Since(t0))
			time.Sleep(pause)
		}
		return out
	}
	p99 := func(d []time.Duration) time.Duration {
		s := slices.Clone(d)
		slices.Sort(s)
		return s[(len(s)*99+99)/100-1]
	}
	b.ResetTimer()
	for range b.N {
		// dev warm, no background work.
		if resp, body, err := w.post(ctx, "/v1/chat/completions", "", chatBody("dev", 1, false)); err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("warm-up: %v %s", err, body)
		}
		alone := measure()

		j, err := w.store.CreateJob(ctx, work.Job{Kind: "e2e"}, workItems(80, 100, "po", "architect"))
		if err != nil {
			b.Fatal(err)
		}
		eventually(b, time.Minute, "the batch started", func() bool {
			got, _ := w.store.Job(ctx, j.ID)
			return got.Counts[work.Done]+got.Counts[work.Running] > 0
		})
		during := measure()
		got, _ := w.store.Job(ctx, j.ID)
		b.Logf("waits alone %v, during the batch %v", alone, during)
		if got.Counts[work.Done] == got.Total() {
			b.Fatalf("the batch ended before the measurement did: make it longer")
		}
		b.ReportMetric(ms(p99(alone)), "p99-alone-ms")
		b.ReportMetric(ms(p99(during)), "p99-batch-ms")
		fmt.Printf("interactive wait for dev, %d requests each: p99 %.0f ms alone, %.0f ms during a batch over po and architect (one switch here: a 2 s load plus up to 4 in-flight items of 1 s); batch %d of %d items done meanwhile\n",
			requests, ms(p99(alone)), ms(p99(during)), got.Counts[work.Done], got.Total())
		if err := w.store.CancelJob(ctx, j.ID); err != nil {
			b.Fatal(err)
		}
	}
}
