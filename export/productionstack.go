package export

import (
	"fmt"
	"maps"
	"slices"

	"sigs.k8s.io/yaml"

	"github.com/vagent-dev/vagent/config"
)

// What no agent key says about a pod of vLLM's production-stack chart,
// which requires requestCPU and requestMemory: enough host memory to load
// a 14B model's weights through it, and the CPUs its tokenizers and API
// server use.
const (
	stackRequestCPU    = 4
	stackRequestMemory = "32Gi"
)

// stackFlags are the flags the production-stack chart renders from
// vllmConfig or the modelSpec (helm/templates/deployment-vllm-multi.yaml),
// with whether they take a value: extraArgs must not repeat them.
var stackFlags = map[string]bool{
	"--max-model-len": true, "--dtype": true, "--tensor-parallel-size": true,
	"--max-num-seqs": true, "--gpu-memory-utilization": true, "--revision": true,
	"--enable-prefix-caching": false, "--no-enable-prefix-caching": false,
}

// modelSpec renders agent a as one entry of the chart's
// servingEngineSpec.modelSpec: the chart runs `vllm serve <modelURL>` with
// --host and --port, the vllmConfig flags, then extraArgs.
func modelSpec(c *config.Config, a *config.Agent, res *Result) (map[string]any, config.Errors) {
	model, flags, errs := serveArgs(c, a)
	if !dnsLabel.MatchString(a.Name) {
		errs = append(errs, &config.Error{File: a.File, Agent: a.Name,
			Msg: fmt.Sprintf("the agent's name %q is no Kubernetes object name (lower case letters, digits and '-'): rename its file", a.Name)})
	}
	if len(errs) > 0 {
		return nil, errs
	}
	var extra []string
	for i := 0; i < len(flags); i++ {
		if takesValue, ok := stackFlags[flags[i]]; ok {
			if takesValue {
				i++
			}
			continue
		}
		extra = append(extra, flags[i])
	}
	vc := map[string]any{
		// The chart passes --no-enable-prefix-caching unless told
		// otherwise; vLLM's own default is on.
		"enablePrefixCaching": a.EnablePrefixCaching == nil || *a.EnablePrefixCaching,
		"tensorParallelSize":  max(1, a.TensorParallelSize),
	}
	if a.KVCacheMemoryBytes == 0 {
		vc["gpuMemoryUtilization"] = a.GPUMemoryUtilization
	}
	if a.MaxModelLen > 0 {
		vc["maxModelLen"] = a.MaxModelLen
	}
	if a.Dtype != "" && a.Dtype != "auto" {
		vc["dtype"] = a.Dtype
	}
	if a.MaxNumSeqs > 0 {
		vc["maxNumSeqs"] = a.MaxNumSeqs
	}
	if len(extra) > 0 {
		vc["extraArgs"] = extra
	}
	spec := map[string]any{
		"name":          a.Name,
		"repository":    vllmImage,
		"tag":           "v" + c.Engine.VLLMVersion,
		"modelURL":      model,
		"replicaCount":  1,
		"requestCPU":    stackRequestCPU,
		"requestMemory": stackRequestMemory,
		"requestGPU":    gpuCount(a),
		"pvcStorage":    modelCacheSize,
		"hf_token":      map[string]any{"secretName": HFTokenSecret, "secretKey": HFTokenKey},
		"vllmConfig":    vc,
	}
	if a.Revision != "" && a.Revision != "main" {
		spec["modelRevision"] = a.Revision
	}
	if len(a.Env) > 0 {
		var env []any
		for _, k := range slices.Sorted(maps.Keys(a.Env)) {
			env = append(env, map[string]any{"name": k, "value": a.Env[k]})
		}
		spec["env"] = env
	}

	if a.SystemPrompt != "" {
		res.NotCarried = append(res.NotCarried, NotCarried{a.Name, "system_prompt",
			"vagentd prepends it; neither the chart's router nor vLLM's server has a default system prompt"})
	}
	res.NotCarried = append(res.NotCarried, samplingNotCarried(a)...)
	if a.IdleTimeout.Duration > 0 {
		res.NotCarried = append(res.NotCarried, NotCarried{a.Name, "idle_timeout",
			"the chart keeps replicaCount engines running"})
	}
	if a.Pinned {
		res.NotCarried = append(res.NotCarried, NotCarried{a.Name, "pinned", "vagentd's eviction; the chart keeps its replicas anyway"})
	}
	res.NotCarried = append(res.NotCarried, hostOnly(c, a)...)
	return spec, nil
}

// stackValues writes the chart's values file for the agents' model specs.
func stackValues(c *config.Config, specs []any, res *Result) error {
	values := map[string]any{
		"servingEngineSpec": map[string]any{
			"enableEngine": true,
			"vllmApiKey":   map[string]any{"secretName": EngineKeySecret, "secretKey": EngineKeyKey},
			"modelSpec":    specs,
		},
	}
	data, err := yaml.Marshal(values)
	if err != nil {
		return fmt.Errorf("export production-stack: %w", err)
	}
	res.Objects = append(res.Objects, Object{Name: "production-stack-values.yaml", Data: data})
	return nil
}
