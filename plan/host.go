package plan

import (
	"context"
	"sync"

	"github.com/vagent-dev/vagent/config"
)

// HostWeights returns the estimate the supervisor uses before a level-1
// sleep: the host RAM agent a's weights take once vLLM moves them off the
// GPU, which is the whole checkpoint (every tensor-parallel rank's share),
// doubled for dtype float32 on a 16-bit unquantized checkpoint as on the GPU.
// Facts are resolved offline (a local model directory, the HF cache under
// paths.hf_home, then the built-in table: never the Hub, which a switch
// must not wait for), once per model and revision. It returns 0 when the
// size is unknown.
func HostWeights(cfg *config.Config) func(ctx context.Context, a *config.Agent) uint64 {
	r := &Resolver{HFHome: cfg.Paths.HFHome, Offline: true}
	var mu sync.Mutex
	cache := map[string]*Facts{}
	return func(ctx context.Context, a *config.Agent) uint64 {
		key := a.Model + "@" + a.Revision
		mu.Lock()
		f, ok := cache[key]
		mu.Unlock()
		if !ok {
			f = r.Facts(ctx, a)
			mu.Lock()
			cache[key] = f
			mu.Unlock()
		}
		w := f.WeightsBytes
		if (a.Dtype == "float" || a.Dtype == "float32") && f.Arch != nil && f.Arch.Quant == "" && f.Arch.Dtype != "float32" {
			w *= 2
		}
		return w
	}
}
