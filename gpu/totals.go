package gpu

import (
	"context"

	"github.com/vagent-dev/vagent/config"
)

// Totals is each GPU's total memory in bytes, by index, for decisions that
// need only the sizes (which agents conflict). The simulator's sizes come
// from the configuration alone: its ledger is neither read nor created, so
// `vagentctl render` writes nothing outside its output directory.
func Totals(ctx context.Context, cfg *config.Config) (map[int]uint64, error) {
	totals := map[int]uint64{}
	if cfg.GPU.Backend == config.GPUBackendAuto {
		c := *cfg
		ResolveBackend(ctx, &c)
		cfg = &c
	}
	if cfg.GPU.Backend == config.GPUBackendSim {
		for i := 0; i < cfg.GPU.SimCount; i++ {
			totals[i] = cfg.GPU.SimTotalMiB << 20
		}
		return totals, nil
	}
	b, err := Open(cfg)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	info, err := b.Info(ctx)
	if err != nil {
		return nil, err
	}
	for _, d := range info.Devices {
		totals[d.Index] = d.TotalBytes
	}
	return totals, nil
}
