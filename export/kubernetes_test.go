package export

import (
	"bytes"
	"fmt"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// decodeKube decodes one object strictly into its k8s.io/api type: an
// unknown or misspelt field is an error, as with kubectl's server-side
// field validation. It then checks the fields the API server requires.
func decodeKube(doc []byte) (any, error) {
	var head struct{ APIVersion, Kind string }
	if err := yaml.Unmarshal(doc, &head); err != nil {
		return nil, err
	}
	var obj any
	switch head.APIVersion + " " + head.Kind {
	case "apps/v1 Deployment":
		obj = &appsv1.Deployment{}
	case "v1 Service":
		obj = &corev1.Service{}
	case "v1 PersistentVolumeClaim":
		obj = &corev1.PersistentVolumeClaim{}
	default:
		return nil, fmt.Errorf("unexpected object %s %s", head.APIVersion, head.Kind)
	}
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return nil, err
	}
	return obj, required(obj)
}

// required checks what the API server refuses an object without.
func required(obj any) error {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		if o.Name == "" {
			return fmt.Errorf("deployment: metadata.name missing")
		}
		if o.Spec.Selector == nil || len(o.Spec.Selector.MatchLabels) == 0 {
			return fmt.Errorf("deployment %s: spec.selector missing", o.Name)
		}
		for k, v := range o.Spec.Selector.MatchLabels {
			if o.Spec.Template.Labels[k] != v {
				return fmt.Errorf("deployment %s: selector %s=%s does not match the template's labels", o.Name, k, v)
			}
		}
		if len(o.Spec.Template.Spec.Containers) == 0 {
			return fmt.Errorf("deployment %s: no containers", o.Name)
		}
		for _, ct := range o.Spec.Template.Spec.Containers {
			if ct.Name == "" || ct.Image == "" {
				return fmt.Errorf("deployment %s: container name or image missing", o.Name)
			}
		}
		vols := map[string]bool{}
		for _, v := range o.Spec.Template.Spec.Volumes {
			vols[v.Name] = true
		}
		for _, m := range o.Spec.Template.Spec.Containers[0].VolumeMounts {
			if !vols[m.Name] {
				return fmt.Errorf("deployment %s: mount of unknown volume %s", o.Name, m.Name)
			}
		}
	case *corev1.Service:
		if o.Name == "" || len(o.Spec.Ports) == 0 {
			return fmt.Errorf("service: name or ports missing")
		}
		for _, p := range o.Spec.Ports {
			if p.Port == 0 {
				return fmt.Errorf("service %s: port missing", o.Name)
			}
		}
	case *corev1.PersistentVolumeClaim:
		if o.Name == "" || len(o.Spec.AccessModes) == 0 || o.Spec.Resources.Requests.Storage().IsZero() {
			return fmt.Errorf("pvc: name, access modes or storage request missing")
		}
	}
	return nil
}

// TestKubernetesShipped: the shipped agents export to objects that decode
// strictly with k8s.io/api's types, as the golden file shows them.
func TestKubernetesShipped(t *testing.T) {
	c := shipped(t)
	res, err := Export(c, Kubernetes, Options{})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "kubernetes.yaml", stream(res.Objects))
	if len(res.Objects) != 3*len(c.Agents) {
		t.Fatalf("%d objects for %d agents, want a PVC, Deployment and Service each", len(res.Objects), len(c.Agents))
	}
	for _, o := range res.Objects {
		obj, err := decodeKube(o.Data)
		if err != nil {
			t.Fatalf("%s: %v\n%s", o.Name, err, o.Data)
		}
		d, ok := obj.(*appsv1.Deployment)
		if !ok {
			continue
		}
		ct := d.Spec.Template.Spec.Containers[0]
		if ct.Image != "vllm/vllm-openai:v"+c.Engine.VLLMVersion {
			t.Errorf("%s: image %s", o.Name, ct.Image)
		}
		if got := ct.Resources.Limits["nvidia.com/gpu"]; got.String() != "1" {
			t.Errorf("%s: gpu limit %s", o.Name, got.String())
		}
		for _, p := range []*corev1.Probe{ct.ReadinessProbe, ct.LivenessProbe, ct.StartupProbe} {
			if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/health" {
				t.Errorf("%s: probe %+v, want GET /health", o.Name, p)
			}
		}
		secrets := map[string]string{}
		for _, e := range ct.Env {
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				secrets[e.Name] = e.ValueFrom.SecretKeyRef.Name
			}
		}
		if secrets["HF_TOKEN"] != HFTokenSecret || secrets["VLLM_API_KEY"] != EngineKeySecret {
			t.Errorf("%s: secrets %v", o.Name, secrets)
		}
		for _, w := range ct.Args {
			if w == "--host" || w == "--port" || w == "--enable-sleep-mode" || w == "serve" {
				t.Errorf("%s: args carry %s: %q", o.Name, w, ct.Args)
			}
		}
	}
}

// TestKubernetesArgsFromEngine: the container's arguments are the words
// of the agent's unit after the binary and "serve", less where it listens.
func TestKubernetesArgsFromEngine(t *testing.T) {
	c := agentFile(t, "model = \"Qwen/Qwen2.5-7B-Instruct\"\nport = 8001\ntensor_parallel_size = 2\ngpus = [0, 1]\nextra_args = [\"--max-num-batched-tokens\", \"8192\"]\n[sampling]\ntemperature = 0.2\nmax_tokens = 512\n")
	res, err := Export(c, Kubernetes, Options{})
	if err != nil {
		t.Fatal(err)
	}
	obj, err := decodeKube(res.Objects[1].Data)
	if err != nil {
		t.Fatal(err)
	}
	ct := obj.(*appsv1.Deployment).Spec.Template.Spec.Containers[0]
	want := []string{"Qwen/Qwen2.5-7B-Instruct", "--gpu-memory-utilization", "0.9",
		"--tensor-parallel-size", "2", "--override-generation-config", `{"temperature":0.2}`,
		"--max-num-batched-tokens", "8192"}
	if !slices.Equal(ct.Args, want) {
		t.Errorf("args %q\nwant %q", ct.Args, want)
	}
	if got := ct.Resources.Requests["nvidia.com/gpu"]; got.String() != "2" {
		t.Errorf("gpu request %s, want 2", got.String())
	}
	var keys []string
	for _, n := range res.NotCarried {
		keys = append(keys, n.Key)
	}
	if !slices.Contains(keys, "sampling.max_tokens") {
		t.Errorf("not carried %v, want sampling.max_tokens", keys)
	}
}

// TestKubernetesStrict: the decoder the tests trust refuses an unknown
// field and a missing required one.
func TestKubernetesStrict(t *testing.T) {
	res, err := Export(shipped(t), Kubernetes, Options{Agents: []string{"dev"}})
	if err != nil {
		t.Fatal(err)
	}
	deploy := res.Objects[1].Data
	for name, doc := range map[string][]byte{
		"unknown field": bytes.Replace(deploy, []byte("  replicas: 1\n"), []byte("  replicas: 1\n  replica: 1\n"), 1),
		"missing image": bytes.Replace(deploy, []byte("image: vllm/vllm-openai"), []byte("imag: vllm/vllm-openai"), 1),
		"no selector":   bytes.Replace(deploy, []byte("  selector:\n    matchLabels:\n      app.kubernetes.io/name: dev\n"), nil, 1),
	} {
		if bytes.Equal(doc, deploy) {
			t.Fatalf("%s: the edit did not apply", name)
		}
		if _, err := decodeKube(doc); err == nil {
			t.Errorf("%s: decoded without error", name)
		}
	}
}
