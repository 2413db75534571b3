package export

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/engine"
)

// The Secrets the cluster admin creates before applying: the Hugging Face
// token (optional: public models need none) and the key the engine checks,
// which vagent keeps in a root-only file on one host.
const (
	HFTokenSecret   = "vagent-hf-token"
	HFTokenKey      = "token"
	EngineKeySecret = "vagent-engine-key"
	EngineKeyKey    = "key"
)

const (
	// vllmImage is vLLM's published server image; its tag is
	// engine.vllm_version, the version vagent's units are rendered for.
	vllmImage = "vllm/vllm-openai"
	// containerPort is vllm serve's default port.
	containerPort = 8000
	// modelCache is where the image's Hugging Face cache lives (it runs as
	// root); the PVC keeps downloads across restarts.
	modelCache = "/root/.cache/huggingface"
	// modelCacheSize is the claim's size: no agent key says how much disk
	// a model takes, so it is a size that holds the weights of a 70B model
	// in 4 bits or a 14B one in 16, with room to spare.
	modelCacheSize = "100Gi"
	// probePeriod is how often the kubelet asks /health.
	probePeriod = 10 * time.Second
)

// dnsLabel is what Kubernetes takes as an object name (RFC 1123 label).
var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// kubernetes renders agent a as a PersistentVolumeClaim for its model
// cache, a Deployment of vLLM's image and a Service in front of it.
func kubernetes(c *config.Config, a *config.Agent, res *Result) config.Errors {
	model, flags, errs := serveArgs(c, a)
	if !dnsLabel.MatchString(a.Name) {
		errs = append(errs, &config.Error{File: a.File, Agent: a.Name,
			Msg: fmt.Sprintf("the agent's name %q is no Kubernetes object name (lower case letters, digits and '-'): rename its file", a.Name)})
	}
	if len(errs) > 0 {
		return errs
	}
	labels := map[string]any{
		"app.kubernetes.io/name":       a.Name,
		"app.kubernetes.io/part-of":    "vagent",
		"app.kubernetes.io/managed-by": "vagentctl-export",
	}
	meta := map[string]any{"name": a.Name, "labels": labels}
	selector := map[string]any{"app.kubernetes.io/name": a.Name}

	env := []any{
		map[string]any{"name": "HF_TOKEN", "valueFrom": map[string]any{"secretKeyRef": map[string]any{
			"name": HFTokenSecret, "key": HFTokenKey, "optional": true}}},
		map[string]any{"name": "VLLM_API_KEY", "valueFrom": map[string]any{"secretKeyRef": map[string]any{
			"name": EngineKeySecret, "key": EngineKeyKey}}},
		map[string]any{"name": "VLLM_NO_USAGE_STATS", "value": "1"},
	}
	for _, k := range slices.Sorted(maps.Keys(a.Env)) {
		env = append(env, map[string]any{"name": k, "value": a.Env[k]})
	}
	gpus := strconv.Itoa(gpuCount(a))
	probe := func(failures int) map[string]any {
		return map[string]any{
			"httpGet":          map[string]any{"path": engine.VLLM{}.HealthRoute(), "port": "http"},
			"periodSeconds":    int(probePeriod / time.Second),
			"failureThreshold": failures,
		}
	}
	// The startup probe gives the engine units.start_timeout to load its
	// model, as systemd does on one host; liveness starts after it.
	startFailures := max(1, int((c.Units.StartTimeout.Duration+probePeriod-1)/probePeriod))

	pvc := map[string]any{
		"apiVersion": "v1", "kind": "PersistentVolumeClaim",
		"metadata": map[string]any{"name": a.Name + "-model-cache", "labels": labels},
		"spec": map[string]any{
			"accessModes": []any{"ReadWriteOnce"},
			"resources":   map[string]any{"requests": map[string]any{"storage": modelCacheSize}},
		},
	}
	deploy := map[string]any{
		"apiVersion": "apps/v1", "kind": "Deployment",
		"metadata": meta,
		"spec": map[string]any{
			"replicas": 1,
			// The claim is ReadWriteOnce, and one engine holds the GPUs:
			// the old pod goes before the new one starts.
			"strategy": map[string]any{"type": "Recreate"},
			"selector": map[string]any{"matchLabels": selector},
			"template": map[string]any{
				"metadata": map[string]any{"labels": labels},
				"spec": map[string]any{
					"containers": []any{map[string]any{
						"name":    "vllm",
						"image":   vllmImage + ":v" + c.Engine.VLLMVersion,
						"command": []any{"vllm", "serve"},
						"args":    append([]string{model}, flags...),
						"env":     env,
						"ports": []any{map[string]any{
							"name": "http", "containerPort": containerPort, "protocol": "TCP"}},
						"resources": map[string]any{
							"requests": map[string]any{"nvidia.com/gpu": gpus},
							"limits":   map[string]any{"nvidia.com/gpu": gpus},
						},
						"startupProbe":   probe(startFailures),
						"readinessProbe": probe(3),
						"livenessProbe":  probe(3),
						"volumeMounts": []any{
							map[string]any{"name": "model-cache", "mountPath": modelCache},
							map[string]any{"name": "dshm", "mountPath": "/dev/shm"},
						},
					}},
					"volumes": []any{
						map[string]any{"name": "model-cache", "persistentVolumeClaim": map[string]any{
							"claimName": a.Name + "-model-cache"}},
						// vLLM's workers share tensors through /dev/shm,
						// which a container gets only 64 MiB of otherwise.
						map[string]any{"name": "dshm", "emptyDir": map[string]any{"medium": "Memory"}},
					},
				},
			},
		},
	}
	svc := map[string]any{
		"apiVersion": "v1", "kind": "Service",
		"metadata": meta,
		"spec": map[string]any{
			"selector": selector,
			"ports": []any{map[string]any{
				"name": "http", "port": servicePort(a), "targetPort": "http", "protocol": "TCP"}},
		},
	}
	for _, o := range []struct {
		suffix string
		obj    map[string]any
	}{{"model-cache-pvc", pvc}, {"deployment", deploy}, {"service", svc}} {
		data, err := yaml.Marshal(o.obj)
		if err != nil {
			return config.Errors{{File: a.File, Agent: a.Name, Msg: fmt.Sprintf("export kubernetes: %v", err)}}
		}
		res.Objects = append(res.Objects, Object{Name: a.Name + "-" + o.suffix + ".yaml", Agent: a.Name, Data: data})
	}

	if a.SystemPrompt != "" {
		res.NotCarried = append(res.NotCarried, NotCarried{a.Name, "system_prompt",
			"vagentd prepends it; vLLM's server has no default system prompt"})
	}
	res.NotCarried = append(res.NotCarried, samplingNotCarried(a)...)
	if a.IdleTimeout.Duration > 0 {
		res.NotCarried = append(res.NotCarried, NotCarried{a.Name, "idle_timeout",
			"a Deployment runs its replica until it is scaled down"})
	}
	if a.Pinned {
		res.NotCarried = append(res.NotCarried, NotCarried{a.Name, "pinned", "vagentd's eviction; a Deployment keeps its replica anyway"})
	}
	res.NotCarried = append(res.NotCarried, hostOnly(c, a)...)
	return nil
}

// servicePort is the port agent a's Service offers: its engine's port on
// one host, or vllm serve's default for an engine on a unix socket there.
func servicePort(a *config.Agent) int {
	if a.Port > 0 {
		return a.Port
	}
	return containerPort
}
