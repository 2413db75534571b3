package plan

import (
	"context"
	"testing"

	"github.com/vagent-dev/vagent/config"
)

func TestHostWeightsFromBuiltinTableOffline(t *testing.T) {
	c := config.Defaults()
	c.Paths.HFHome = t.TempDir()
	hw := HostWeights(&c)
	a := &config.Agent{Name: "dev", Model: "Qwen/Qwen2.5-Coder-14B-Instruct-AWQ", Revision: "main", TensorParallelSize: 2}
	if got := hw(context.Background(), a); got != 9_980_000_000 {
		t.Errorf("14B AWQ: %d, want the whole checkpoint (9.98 GB) whatever the tensor parallelism", got)
	}
	if got := hw(context.Background(), &config.Agent{Name: "x", Model: "org/unknown-model", Revision: "main"}); got != 0 {
		t.Errorf("unknown model: %d, want 0", got)
	}
}
