package supervisor

import (
	"context"

	"github.com/vagent-dev/vagent/gpu"
)

// FromBackend gives the supervisor's view of a gpu backend.
func FromBackend(b gpu.Backend) GPU { return backendView{b} }

type backendView struct{ b gpu.Backend }

func (v backendView) Memory(ctx context.Context) (map[int]GPUMemory, error) {
	info, err := v.b.Info(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[int]GPUMemory, len(info.Devices))
	for _, d := range info.Devices {
		out[d.Index] = GPUMemory{Total: d.TotalBytes, Used: d.UsedBytes, Free: d.FreeBytes}
	}
	return out, nil
}

func (v backendView) AgentBytes(ctx context.Context) (map[string]uint64, error) {
	procs, err := v.b.Processes(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for _, p := range procs {
		if p.Agent != "" {
			out[p.Agent] += p.UsedBytes
		}
	}
	return out, nil
}

// AgentHostBytes implements HostReporter: the host memory each agent's
// processes hold for the GPU, by agent name (the simulator's ledger reports
// a sleeping engine's weights there; NVML reports nothing).
func (v backendView) AgentHostBytes(ctx context.Context) (map[string]uint64, error) {
	procs, err := v.b.Processes(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for _, p := range procs {
		if p.Agent != "" && p.HostBytes > 0 {
			out[p.Agent] += p.HostBytes
		}
	}
	return out, nil
}

// AgentBytesByGPU implements CardReporter: the GPU memory each agent's
// processes hold, by GPU index then agent name (a tensor-parallel engine's
// workers each on their own GPU).
func (v backendView) AgentBytesByGPU(ctx context.Context) (map[int]map[string]uint64, error) {
	procs, err := v.b.Processes(ctx)
	if err != nil {
		return nil, err
	}
	out := map[int]map[string]uint64{}
	for _, p := range procs {
		if p.Agent == "" {
			continue
		}
		if out[p.GPU] == nil {
			out[p.GPU] = map[string]uint64{}
		}
		out[p.GPU][p.Agent] += p.UsedBytes
	}
	return out, nil
}
