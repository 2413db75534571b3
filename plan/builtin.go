package plan

import "strings"

// builtinModel is a model whose figures vagent knows without reading
// anything, so that plan works offline before a pull.
type builtinModel struct {
	arch    Arch
	weights uint64 // bytes of *.safetensors
	files   int
}

// Architectures of the Qwen2.5 family (config.json of each checkpoint).
var (
	qwen25_7B = Arch{Layers: 28, KVHeads: 4, AttnHeads: 28, Hidden: 3584, HeadDim: 128,
		MaxPosition: 32768, Dtype: "float16", Quant: "awq", QuantBits: 4}
	qwen25_14B = Arch{Layers: 48, KVHeads: 8, AttnHeads: 40, Hidden: 5120, HeadDim: 128,
		MaxPosition: 32768, Dtype: "float16", Quant: "awq", QuantBits: 4}
	qwen25_32B = Arch{Layers: 64, KVHeads: 8, AttnHeads: 40, Hidden: 5120, HeadDim: 128,
		MaxPosition: 32768, Dtype: "float16", Quant: "awq", QuantBits: 4}
)

// builtin holds the checkpoints vagent ships configurations for, keyed by
// lower-case repo id. Weights are the sums of the repos' safetensors sizes
// (reference/vllm.md's table); the Coder models share their base model's
// shapes and so its sizes.
var builtin = map[string]builtinModel{
	"qwen/qwen2.5-7b-instruct-awq":        {qwen25_7B, 5_570_000_000, 2},
	"qwen/qwen2.5-coder-7b-instruct-awq":  {qwen25_7B, 5_570_000_000, 2},
	"qwen/qwen2.5-14b-instruct-awq":       {qwen25_14B, 9_980_000_000, 3},
	"qwen/qwen2.5-coder-14b-instruct-awq": {qwen25_14B, 9_980_000_000, 3},
	"qwen/qwen2.5-32b-instruct-awq":       {qwen25_32B, 19_330_000_000, 5},
	"qwen/qwen2.5-coder-32b-instruct-awq": {qwen25_32B, 19_330_000_000, 5},
}

// Known reports whether the built-in table has repo.
func Known(repo string) bool {
	_, ok := builtin[strings.ToLower(repo)]
	return ok
}

// fromBuiltin fills what is still unknown from the table.
func fromBuiltin(f *Facts) {
	m, ok := builtin[strings.ToLower(f.Model)]
	if !ok {
		if !IsLocal(f.Model) {
			f.Notes = append(f.Notes, "built-in table: "+f.Model+" is not in it")
		}
		return
	}
	if f.Arch == nil {
		a := m.arch
		f.Arch, f.ArchSource = &a, SourceBuiltin
	}
	if f.WeightsBytes == 0 {
		f.WeightsBytes, f.WeightFiles, f.WeightsSource = m.weights, m.files, SourceBuiltin
	}
}
