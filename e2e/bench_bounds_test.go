package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Sizes of the slow-body benchmark and the bounds it checks.
const (
	boundsSlowConns     = 64
	boundsDeclaredBytes = 64 << 20
	boundsHold          = 30 * time.Second
	boundsClients       = 20
	boundsQuiet         = 15 * time.Second
	// boundsTokens per stream, paced by the engine at
	// benchEngineTokensPerSec: streams of about 160 ms.
	boundsTokens = 32

	boundsMaxRSSMB   = 100
	boundsMaxP99Gain = 2.0
)

// BenchmarkGatewaySlowBodies holds boundsSlowConns connections open that
// each declare a 64 MiB body and send one byte, for 30 s, while 20 clients
// stream completions through the same vagentd; the same 20 clients stream
// alone first (the quiet run). It reports the clients' p99 in both runs and
// vagentd's peak RSS (VmHWM), and fails when the peak passes 100 MB or the
// p99 under attack passes twice the quiet one. Before the gateway bounded
// its bodies, sixteen such connections took vagentd to 1.07 GB.
func BenchmarkGatewaySlowBodies(b *testing.B) {
	g := newGatewayHost(b, nil)
	poPath := g.s.Path("etc/vagent/agents/po.toml")
	poData, err := os.ReadFile(poPath)
	if err != nil {
		b.Fatal(err)
	}
	poData = append(poData, fmt.Sprintf("\n[env]\nVLLM_SIM_TOKENS_PER_SECOND = \"%d\"\nVLLM_SIM_TTFT_MS = \"0\"\n", benchEngineTokensPerSec)...)
	if err := os.WriteFile(poPath, poData, 0o644); err != nil {
		b.Fatal(err)
	}
	g.mustCtl("apply")
	g.mustCtl("switch", "po")
	ctx := b.Context()
	addr := fmt.Sprintf("127.0.0.1:%d", g.port)

	var quiet, attacked []time.Duration
	var held, cut int64
	b.ResetTimer()
	for range b.N {
		var err error
		if quiet, err = g.streamFor(ctx, boundsQuiet); err != nil {
			b.Fatalf("quiet run: %v", err)
		}

		// The attack: every connection declares 64 MiB, sends one byte
		// and then nothing until boundsHold has passed.
		actx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		held, cut = 0, 0
		up := make(chan struct{}, boundsSlowConns)
		for range boundsSlowConns {
			wg.Go(func() {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					atomic.AddInt64(&cut, 1)
					up <- struct{}{}
					return
				}
				defer c.Close()
				fmt.Fprintf(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{", addr, boundsDeclaredBytes)
				up <- struct{}{}
				closed := make(chan struct{})
				go func() {
					io.Copy(io.Discard, c) // returns when vagentd closes it
					close(closed)
				}()
				select {
				case <-closed:
					atomic.AddInt64(&cut, 1)
				case <-actx.Done():
					atomic.AddInt64(&held, 1)
				}
			})
		}
		for range boundsSlowConns {
			<-up
		}
		t0 := time.Now()
		attacked, err = g.streamFor(ctx, boundsHold)
		if rest := boundsHold - time.Since(t0); rest > 0 {
			time.Sleep(rest)
		}
		stop()
		wg.Wait()
		if err != nil {
			b.Fatalf("under attack: %v", err)
		}
	}
	b.StopTimer()

	props, err := g.unitProps(ctx, gatewayUnit)
	if err != nil {
		b.Fatal(err)
	}
	hwm, err := g.vmHWM(props.MainPID)
	if err != nil {
		b.Fatal(err)
	}
	peakMB := float64(hwm) / (1 << 20)
	slices.Sort(quiet)
	slices.Sort(attacked)
	qp99, ap99 := pct(quiet, 99), pct(attacked, 99)
	gain := float64(ap99) / float64(qp99)

	b.ReportMetric(peakMB, "vagentd-peak-MB")
	b.ReportMetric(ms(qp99), "quiet-p99-ms")
	b.ReportMetric(ms(ap99), "attacked-p99-ms")
	b.ReportMetric(gain, "p99-ratio")
	fmt.Printf("slow bodies: %d connections declaring %d MiB and sending 1 byte, held %s (%d held to the end, %d closed early); %d clients streaming %d tokens at %d tokens/s\n",
		boundsSlowConns, boundsDeclaredBytes>>20, boundsHold, held, cut, boundsClients, boundsTokens, benchEngineTokensPerSec)
	fmt.Printf("slow bodies: client p99 %.1f ms under attack (%d streams) vs %.1f ms quiet (%d streams): ratio %.2f; bound <= %.1f\n",
		ms(ap99), len(attacked), ms(qp99), len(quiet), gain, boundsMaxP99Gain)
	fmt.Printf("slow bodies: vagentd peak RSS (VmHWM) %.1f MB; bound < %d MB\n", peakMB, boundsMaxRSSMB)
	if peakMB >= boundsMaxRSSMB {
		b.Errorf("vagentd peak RSS %.1f MB with %d slow bodies held: bound %d MB", peakMB, boundsSlowConns, boundsMaxRSSMB)
	}
	if gain > boundsMaxP99Gain {
		b.Errorf("client p99 %.1f ms under attack is %.2f times the quiet %.1f ms: bound %.1f", ms(ap99), gain, ms(qp99), boundsMaxP99Gain)
	}
}

// streamFor has boundsClients clients stream completions from po through
// the gateway one after another for d, and returns every stream's time.
func (g *gwHost) streamFor(ctx context.Context, d time.Duration) ([]time.Duration, error) {
	var mu sync.Mutex
	var all []time.Duration
	var first error
	end := time.Now().Add(d)
	var wg sync.WaitGroup
	for range boundsClients {
		wg.Go(func() {
			for time.Now().Before(end) {
				_, took, err := streamChunks(ctx, g.hc, g.base, "", "po", boundsTokens)
				mu.Lock()
				if err != nil && first == nil {
					first = err
				}
				if err == nil {
					all = append(all, took)
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	return all, first
}
