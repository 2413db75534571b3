package export

import (
	"fmt"
	"maps"
	"strconv"

	"sigs.k8s.io/yaml"

	"github.com/vagent-dev/vagent/config"
)

// kubeaiDefaultScaleDown is KubeAI's own scaleDownDelaySeconds default,
// for agents that never idle out (they keep one replica anyway).
const kubeaiDefaultScaleDown = 30

// kubeaiDefaultTargetRequests is KubeAI's targetRequests default, for
// agents that leave max_num_seqs to vLLM.
const kubeaiDefaultTargetRequests = 100

// kubeai renders agent a as a KubeAI Model: KubeAI starts vLLM with
// --model and --served-model-name (the Model's name) itself, and scales
// the replicas from zero on requests, as vagentd starts an agent on its
// first request.
func kubeai(c *config.Config, a *config.Agent, profile string, res *Result) config.Errors {
	model, flags, errs := serveArgs(c, a)
	if !dnsLabel.MatchString(a.Name) || len(a.Name) > 40 {
		errs = append(errs, &config.Error{File: a.File, Agent: a.Name,
			Msg: fmt.Sprintf("the agent's name %q is no KubeAI Model name (at most 40 lower case letters, digits and '-'): rename its file", a.Name)})
	}
	// KubeAI names the served model after the Model; one more name would
	// replace it.
	var args []string
	for i := 0; i < len(flags); i++ {
		if flags[i] == "--served-model-name" {
			for i+1 < len(flags) && !config.IsOption(flags[i+1]) {
				i++
			}
			continue
		}
		args = append(args, flags[i])
	}
	if len(errs) > 0 {
		return errs
	}
	minReplicas, scaleDown := 0, kubeaiDefaultScaleDown
	switch {
	case a.Pinned || a.IdleTimeout.Duration == 0:
		// Never stopped for idleness on one host: always one replica.
		minReplicas = 1
	default:
		scaleDown = int(a.IdleTimeout.Seconds())
	}
	target := kubeaiDefaultTargetRequests
	if a.MaxNumSeqs > 0 {
		target = a.MaxNumSeqs
	}
	spec := map[string]any{
		"engine":                "VLLM",
		"features":              []any{"TextGeneration"},
		"url":                   "hf://" + model,
		"args":                  args,
		"resourceProfile":       profile + ":" + strconv.Itoa(gpuCount(a)),
		"minReplicas":           minReplicas,
		"maxReplicas":           1,
		"scaleDownDelaySeconds": scaleDown,
		"targetRequests":        target,
	}
	if len(a.Env) > 0 {
		spec["env"] = maps.Clone(a.Env)
	}
	obj := map[string]any{
		"apiVersion": "kubeai.org/v1", "kind": "Model",
		"metadata": map[string]any{"name": a.Name, "labels": map[string]any{
			"app.kubernetes.io/part-of":    "vagent",
			"app.kubernetes.io/managed-by": "vagentctl-export",
		}},
		"spec": spec,
	}
	data, err := yaml.Marshal(obj)
	if err != nil {
		return config.Errors{{File: a.File, Agent: a.Name, Msg: fmt.Sprintf("export kubeai: %v", err)}}
	}
	res.Objects = append(res.Objects, Object{Name: a.Name + "-model.yaml", Agent: a.Name, Data: data})

	if len(a.ServedNames) > 0 && !(len(a.ServedNames) == 1 && a.ServedNames[0] == a.Name) {
		res.NotCarried = append(res.NotCarried, NotCarried{a.Name, "served_names",
			"KubeAI serves a Model under its name, the agent's"})
	}
	if a.SystemPrompt != "" {
		res.NotCarried = append(res.NotCarried, NotCarried{a.Name, "system_prompt",
			"vagentd prepends it; neither KubeAI nor vLLM's server has a default system prompt"})
	}
	res.NotCarried = append(res.NotCarried, samplingNotCarried(a)...)
	res.NotCarried = append(res.NotCarried, hostOnly(c, a)...)
	return nil
}
