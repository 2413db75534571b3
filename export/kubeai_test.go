package export

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"sigs.k8s.io/yaml"
)

// closeObjects makes every object schema without additionalProperties
// refuse unknown fields: the API server prunes them from a custom
// resource (and refuses them with strict field validation), so a field the
// CRD does not name would silently not reach KubeAI.
func closeObjects(s any) {
	switch v := s.(type) {
	case map[string]any:
		if v["type"] == "object" && v["properties"] != nil && v["additionalProperties"] == nil &&
			v["x-kubernetes-preserve-unknown-fields"] != true {
			v["additionalProperties"] = false
		}
		for _, x := range v {
			closeObjects(x)
		}
	case []any:
		for _, x := range v {
			closeObjects(x)
		}
	}
}

// crdSchema compiles the openAPIV3Schema of the CRD kept in file.
func crdSchema(t *testing.T, file string) *jsonschema.Schema {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var crd struct {
		Spec struct {
			Versions []struct {
				Name   string
				Schema struct {
					OpenAPIV3Schema map[string]any `json:"openAPIV3Schema"`
				}
			}
		}
	}
	if err := yaml.Unmarshal(data, &crd); err != nil {
		t.Fatal(err)
	}
	if len(crd.Spec.Versions) != 1 || crd.Spec.Versions[0].Name != "v1" {
		t.Fatalf("%s: want one version v1", file)
	}
	schema := crd.Spec.Versions[0].Schema.OpenAPIV3Schema
	closeObjects(schema)
	// metadata is the API server's ObjectMeta; the Model sets name and labels.
	schema["properties"].(map[string]any)["metadata"] = map[string]any{
		"type": "object", "required": []any{"name"}, "additionalProperties": false,
		"properties": map[string]any{"name": map[string]any{"type": "string"},
			"labels": map[string]any{"type": "object", "additionalProperties": map[string]any{"type": "string"}}},
	}
	schema["required"] = []any{"apiVersion", "kind", "metadata", "spec"}
	c := jsonschema.NewCompiler()
	if err := c.AddResource("crd.json", schema); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile("crd.json")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func validateYAML(s *jsonschema.Schema, doc []byte) error {
	j, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return err
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(j))
	if err != nil {
		return err
	}
	return s.Validate(v)
}

var kubeaiCRD = filepath.Join("testdata", "kubeai", "kubeai.org_models.yaml")

// TestKubeAIShipped: the shipped agents export to Models that KubeAI's
// published CRD schema accepts, as the golden file shows them.
func TestKubeAIShipped(t *testing.T) {
	s := crdSchema(t, kubeaiCRD)
	c := shipped(t)
	res, err := Export(c, KubeAI, Options{})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "kubeai.yaml", stream(res.Objects))
	if len(res.Objects) != len(c.Agents) {
		t.Fatalf("%d objects for %d agents", len(res.Objects), len(c.Agents))
	}
	for _, o := range res.Objects {
		if err := validateYAML(s, o.Data); err != nil {
			t.Errorf("%s: %v\n%s", o.Name, err, o.Data)
		}
		var m struct {
			Spec struct {
				URL                   string
				Args                  []string
				MinReplicas           *int
				ScaleDownDelaySeconds int
				ResourceProfile       string
			}
		}
		if err := yaml.Unmarshal(o.Data, &m); err != nil {
			t.Fatal(err)
		}
		a := c.Agents[0]
		for _, x := range c.Agents {
			if x.Name == o.Agent {
				a = x
			}
		}
		if m.Spec.URL != "hf://"+a.Model || m.Spec.MinReplicas == nil || *m.Spec.MinReplicas != 0 ||
			m.Spec.ScaleDownDelaySeconds != int(a.IdleTimeout.Seconds()) || m.Spec.ResourceProfile != DefaultResourceProfile+":1" {
			t.Errorf("%s: spec %+v", o.Name, m.Spec)
		}
		for _, w := range m.Spec.Args {
			if w == a.Model || w == "--served-model-name" || w == "--port" || w == "--host" {
				t.Errorf("%s: args carry %s, which KubeAI sets: %q", o.Name, w, m.Spec.Args)
			}
		}
	}
}

// TestKubeAISchemaRefuses: the schema the test trusts refuses an unknown
// field and a missing required one.
func TestKubeAISchemaRefuses(t *testing.T) {
	s := crdSchema(t, kubeaiCRD)
	res, err := Export(shipped(t), KubeAI, Options{Agents: []string{"dev"}})
	if err != nil {
		t.Fatal(err)
	}
	doc := res.Objects[0].Data
	for name, bad := range map[string][]byte{
		"unknown field":  bytes.Replace(doc, []byte("  engine: VLLM\n"), []byte("  engine: VLLM\n  systemPrompt: hi\n"), 1),
		"missing url":    bytes.Replace(doc, []byte("  url: hf://"), []byte("  uri: hf://"), 1),
		"missing engine": bytes.Replace(doc, []byte("  engine: VLLM\n"), nil, 1),
		"bad engine":     bytes.Replace(doc, []byte("  engine: VLLM\n"), []byte("  engine: vllm\n"), 1),
	} {
		if bytes.Equal(bad, doc) {
			t.Fatalf("%s: the edit did not apply", name)
		}
		if err := validateYAML(s, bad); err == nil {
			t.Errorf("%s: valid", name)
		}
	}
}

// TestKubeAIPinned: an agent vagentd never stops keeps one replica.
func TestKubeAIPinned(t *testing.T) {
	c := agentFile(t, devAgent+"pinned = true\nidle_timeout = \"5m\"\n")
	res, err := Export(c, KubeAI, Options{ResourceProfile: "nvidia-gpu-h100"})
	if err != nil {
		t.Fatal(err)
	}
	out := string(res.Objects[0].Data)
	if !strings.Contains(out, "minReplicas: 1\n") || !strings.Contains(out, "resourceProfile: nvidia-gpu-h100:1\n") {
		t.Errorf("pinned agent:\n%s", out)
	}
	if err := validateYAML(crdSchema(t, kubeaiCRD), res.Objects[0].Data); err != nil {
		t.Error(err)
	}
	for _, n := range res.NotCarried {
		if n.Key == "pinned" {
			t.Errorf("pinned reported as not carried: %v", n)
		}
	}
}
