package ctl

import (
	"strings"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/supervisor"
)

// On a host whose agents use two GPUs, status ends with a line per GPU:
// the agents on it, each with its budget of that GPU and what it holds
// there. One GPU prints no such lines (the table says it all).
func TestStatusShowsEachCard(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	const gib = 1 << 30
	st := []supervisor.AgentStatus{
		{Agent: "architect", LoadState: "loaded", ActiveState: "inactive", SubState: "dead", GPUs: []int{0, 1},
			Cards: []supervisor.CardShare{{GPU: 0, BudgetBytes: 22 * gib, TotalBytes: 24 * gib}, {GPU: 1, BudgetBytes: 14 * gib, TotalBytes: 16 * gib}}},
		{Agent: "dev", LoadState: "loaded", ActiveState: "active", SubState: "running", GPUs: []int{1}, Healthy: true, VRAMBytes: 13 * gib,
			Cards: []supervisor.CardShare{{GPU: 1, VRAMBytes: 13 * gib, BudgetBytes: 14 * gib, TotalBytes: 16 * gib}}},
		{Agent: "po", LoadState: "loaded", ActiveState: "active", SubState: "running", GPUs: []int{0}, Healthy: true, VRAMBytes: 20 * gib,
			Cards: []supervisor.CardShare{{GPU: 0, VRAMBytes: 20 * gib, BudgetBytes: 22 * gib, TotalBytes: 24 * gib}}},
	}
	var b strings.Builder
	printStatus(&b, st, now)
	out := b.String()
	for _, want := range []string{
		"GPU 0 (24.00 GiB): architect (budget 22.00 GiB), po (budget 22.00 GiB, holds 20.00 GiB)\n",
		"GPU 1 (16.00 GiB): architect (budget 14.00 GiB), dev (budget 14.00 GiB, holds 13.00 GiB)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}

	b.Reset()
	printStatus(&b, st[2:], now)
	if strings.Contains(b.String(), "GPU 0 (") {
		t.Errorf("one GPU: status prints card lines:\n%s", b.String())
	}
}
