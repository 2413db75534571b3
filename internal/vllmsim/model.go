package vllmsim

import (
	"math"
	"regexp"
	"strconv"
	"strings"
)

const (
	kib = 1 << 10
	mib = 1 << 20
	gib = 1 << 30
)

// modelFacts is what the simulator believes about a checkpoint, derived from
// its name: vLLM would read config.json and the safetensors sizes.
type modelFacts struct {
	paramsB      float64 // billions of parameters
	quant        string  // "" (bf16), "awq", "gptq", "fp8", "bitsandbytes"
	weightsBytes uint64  // whole model
	kvPerToken   uint64  // whole model, 16-bit KV
	layers       int
	arch         string
	derivedLen   int // max_position_embeddings
	shards       int
	genDefaults  map[string]any // generation_config.json sampling defaults
}

var (
	sizeRe    = regexp.MustCompile(`(?i)(?:^|[-_/. ])(\d+(?:\.\d+)?)b(?:$|[-_. ])`)
	moeSizeRe = regexp.MustCompile(`(?i)(?:^|[-_/. ])(\d+)x(\d+(?:\.\d+)?)b(?:$|[-_. ])`)
)

// paramsFromName reads the parameter count from a model name such as
// "Qwen/Qwen2.5-14B-Instruct-AWQ" (14), "Qwen2.5-0.5B" (0.5) or
// "Mixtral-8x7B" (56); 7 when the name says nothing.
func paramsFromName(name string) float64 {
	if m := moeSizeRe.FindStringSubmatch(name); m != nil {
		n, _ := strconv.ParseFloat(m[1], 64)
		s, _ := strconv.ParseFloat(m[2], 64)
		return n * s
	}
	if m := sizeRe.FindStringSubmatch(name); m != nil {
		s, _ := strconv.ParseFloat(m[1], 64)
		if s > 0 {
			return s
		}
	}
	return 7
}

// kvTable is KV bytes per token at 16 bits, by size, for the Qwen2.5 family
// (layers × KV heads × head_dim × 2 × 2 bytes); other sizes interpolate.
var kvTable = []struct {
	params float64
	kib    float64
	layers int
}{
	{0.5, 12, 24}, {1.5, 28, 28}, {3, 36, 36}, {7, 56, 28}, {14, 192, 48}, {32, 256, 64}, {72, 320, 80},
}

func kvPerTokenFor(params float64) (uint64, int) {
	t := kvTable
	if params <= t[0].params {
		return uint64(t[0].kib * kib), t[0].layers
	}
	for i := 1; i < len(t); i++ {
		if params <= t[i].params {
			a, b := t[i-1], t[i]
			f := (params - a.params) / (b.params - a.params)
			k := a.kib + f*(b.kib-a.kib)
			l := float64(a.layers) + f*float64(b.layers-a.layers)
			if params == b.params {
				return uint64(b.kib * kib), b.layers
			}
			return uint64(math.Round(k)) * kib, int(math.Round(l))
		}
	}
	last := t[len(t)-1]
	return uint64(last.kib*params/last.params) * kib, int(float64(last.layers) * params / last.params)
}

// weightTable holds real checkpoint sizes (bytes of *.safetensors) of the
// Qwen2.5 instruct models.
var weightTable = map[float64]map[string]float64{
	7:  {"": 15.23e9, "awq": 5.57e9, "gptq": 5.58e9},
	14: {"": 29.54e9, "awq": 9.98e9, "gptq": 9.99e9},
	32: {"": 65.53e9, "awq": 19.33e9, "gptq": 19.35e9},
}

// quantFromName detects a quantized checkpoint from its name or the
// --quantization flag.
func quantFromName(name, flag string) string {
	if flag != "" {
		switch {
		case strings.Contains(flag, "awq"):
			return "awq"
		case strings.Contains(flag, "gptq"), strings.Contains(flag, "marlin"):
			return "gptq"
		case strings.Contains(flag, "fp8"), strings.Contains(flag, "fbgemm"):
			return "fp8"
		case flag == "bitsandbytes":
			return "bitsandbytes"
		}
	}
	n := strings.ToLower(name)
	switch {
	case strings.Contains(n, "awq"):
		return "awq"
	case strings.Contains(n, "gptq"), strings.Contains(n, "int4"):
		return "gptq"
	case strings.Contains(n, "4bit"), strings.Contains(n, "bnb"):
		return "bitsandbytes"
	case strings.Contains(n, "fp8"), strings.Contains(n, "int8"), strings.Contains(n, "8bit"):
		return "fp8"
	}
	return flag
}

func factsFor(model, quantFlag, dtype string) modelFacts {
	p := paramsFromName(model)
	q := quantFromName(model, quantFlag)
	f := modelFacts{paramsB: p, quant: q}
	f.kvPerToken, f.layers = kvPerTokenFor(p)
	if t, ok := weightTable[p]; ok {
		if w, ok := t[q]; ok {
			f.weightsBytes = uint64(w)
		}
	}
	if f.weightsBytes == 0 {
		perB := 2.15e9 // bf16, embeddings included
		switch q {
		case "awq", "gptq", "bitsandbytes":
			perB = 0.72e9
		case "fp8":
			perB = 1.1e9
		case "":
		default:
			perB = 0.72e9
		}
		f.weightsBytes = uint64(p * perB)
	}
	if q == "" && (dtype == "float" || dtype == "float32") {
		f.weightsBytes *= 2
	}
	n := strings.ToLower(model)
	switch {
	case strings.Contains(n, "qwen3"):
		f.arch, f.derivedLen = "Qwen3ForCausalLM", 40960
		f.genDefaults = map[string]any{"temperature": 0.6, "top_k": 20, "top_p": 0.95}
	case strings.Contains(n, "qwen"):
		f.arch, f.derivedLen = "Qwen2ForCausalLM", 32768
		f.genDefaults = map[string]any{"repetition_penalty": 1.05, "temperature": 0.7, "top_k": 20, "top_p": 0.8}
	case strings.Contains(n, "llama"):
		f.arch, f.derivedLen = "LlamaForCausalLM", 131072
		f.genDefaults = map[string]any{"temperature": 0.6, "top_p": 0.9}
	case strings.Contains(n, "mistral"), strings.Contains(n, "mixtral"):
		f.arch, f.derivedLen = "MistralForCausalLM", 32768
	default:
		f.arch, f.derivedLen = "LlamaForCausalLM", 32768
	}
	f.shards = int(math.Ceil(float64(f.weightsBytes) / 4e9))
	if f.shards < 1 {
		f.shards = 1
	}
	return f
}

// memPlan is one engine's memory on each of its GPUs.
type memPlan struct {
	total        uint64 // per GPU
	requested    uint64 // ceil(total × utilization): the startup free-memory check
	weights      uint64 // per GPU
	activation   uint64
	cudaContext  uint64
	kv           uint64 // KV cache per GPU (0 when none fits)
	kvShort      bool   // requested − weights − overheads ≤ 0
	held         uint64 // what the engine holds on each GPU once loaded
	kvPerToken   uint64 // per GPU, after KV dtype
	blockSize    int
	gpuBlocks    int
	kvTokens     int
	residual     uint64 // held asleep with --enable-sleep-mode: context + graphs
	fixedKV      bool   // --kv-cache-memory-bytes
	utilization  float64
	graphsMemory uint64 // CUDA graphs (0 with --enforce-eager), inside held
}

// activationFor is the profiled activation peak: ~1.5 GiB for 7B and up,
// less for small models.
func activationFor(params float64) uint64 {
	g := 0.3 + 0.17*params
	if g > 1.5 {
		g = 1.5
	}
	return uint64(g * gib)
}

func planMemory(f modelFacts, o *options, totalBytes uint64) memPlan {
	world := o.tp * o.pp
	if world < 1 {
		world = 1
	}
	p := memPlan{total: totalBytes, blockSize: o.blockSize, utilization: o.gpuUtil}
	p.requested = uint64(math.Ceil(float64(totalBytes) * o.gpuUtil))
	p.weights = f.weightsBytes / uint64(world)
	p.activation = activationFor(f.paramsB)
	p.cudaContext = 400 * mib
	kvpt := f.kvPerToken
	if strings.HasPrefix(o.kvCacheDtype, "fp8") {
		kvpt /= 2
	} else if f.quant == "" && (o.dtype == "float" || o.dtype == "float32") {
		kvpt *= 2
	}
	p.kvPerToken = kvpt / uint64(world)
	if p.kvPerToken == 0 {
		p.kvPerToken = 1
	}
	overhead := p.weights + p.activation + p.cudaContext
	if o.kvCacheBytes > 0 {
		p.fixedKV = true
		p.kv = uint64(o.kvCacheBytes)
		p.held = overhead + p.kv
	} else {
		p.held = p.requested
		if p.requested > overhead {
			p.kv = p.requested - overhead
		} else {
			p.kvShort = true
		}
	}
	blockBytes := p.kvPerToken * uint64(p.blockSize)
	p.gpuBlocks = int(p.kv / blockBytes)
	p.kvTokens = p.gpuBlocks * p.blockSize
	if p.gpuBlocks <= 0 {
		p.kvShort = true
	}
	if !o.enforceEager {
		p.graphsMemory = uint64(0.25*gib + 0.02*float64(p.weights))
	}
	// Asleep, vLLM frees only its sleep-mode pools (weights and KV cache)
	// and torch's cache (CuMemAllocator.sleep ends in empty_cache): the
	// CUDA context and the captured CUDA graphs' memory stay on the GPU.
	p.residual = p.cudaContext + p.graphsMemory
	return p
}

// fitLen is the longest context the KV cache holds, in whole blocks: vLLM's
// "estimated maximum model length".
func (p memPlan) fitLen() int { return p.kvTokens }
