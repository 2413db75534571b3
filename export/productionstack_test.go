package export

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"sigs.k8s.io/yaml"
)

// stackSchema compiles the chart's values.schema.json kept as test data,
// closed against unknown fields in the objects it describes (Helm would
// ignore a misspelt value silently), with the modelSpec fields the chart's
// templates `required` (helm/templates/_helpers.tpl and
// deployment-vllm-multi.yaml) marked required.
func stackSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "production-stack", "values.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	var schema map[string]any
	if err := json.Unmarshal(data, &schema); err != nil {
		t.Fatal(err)
	}
	closeObjects(schema)
	item := schema["properties"].(map[string]any)["servingEngineSpec"].(map[string]any)["properties"].(map[string]any)["modelSpec"].(map[string]any)["items"].(map[string]any)
	item["required"] = []any{"name", "repository", "tag", "modelURL", "requestCPU", "requestMemory", "requestGPU"}
	c := jsonschema.NewCompiler()
	if err := c.AddResource("values.schema.json", schema); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile("values.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestProductionStackShipped: the shipped agents export to one values file
// that the chart's schema accepts, as the golden file shows it.
func TestProductionStackShipped(t *testing.T) {
	s := stackSchema(t)
	c := shipped(t)
	res, err := Export(c, ProductionStack, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Objects) != 1 {
		t.Fatalf("%d files, want one values file", len(res.Objects))
	}
	golden(t, "production-stack.yaml", res.Objects[0].Data)
	if err := validateYAML(s, res.Objects[0].Data); err != nil {
		t.Fatalf("%v\n%s", err, res.Objects[0].Data)
	}
	var v struct {
		ServingEngineSpec struct {
			ModelSpec []struct {
				Name, ModelURL string
				VLLMConfig     struct {
					MaxModelLen int
					ExtraArgs   []string
				} `json:"vllmConfig"`
			}
		}
	}
	if err := yaml.Unmarshal(res.Objects[0].Data, &v); err != nil {
		t.Fatal(err)
	}
	if len(v.ServingEngineSpec.ModelSpec) != len(c.Agents) {
		t.Fatalf("%d model specs for %d agents", len(v.ServingEngineSpec.ModelSpec), len(c.Agents))
	}
	for i, m := range v.ServingEngineSpec.ModelSpec {
		a := c.Agents[i]
		if m.Name != a.Name || m.ModelURL != a.Model || m.VLLMConfig.MaxModelLen != a.MaxModelLen {
			t.Errorf("model spec %d: %+v for agent %s", i, m, a.Name)
		}
		// The chart renders these from vllmConfig; a second copy in
		// extraArgs would fight it.
		for _, f := range []string{"--max-model-len", "--gpu-memory-utilization", "--max-num-seqs", "--host", "--port", a.Model} {
			if slices.Contains(m.VLLMConfig.ExtraArgs, f) {
				t.Errorf("%s: extraArgs carry %s: %q", a.Name, f, m.VLLMConfig.ExtraArgs)
			}
		}
		if !slices.Contains(m.VLLMConfig.ExtraArgs, "--override-generation-config") || !slices.Contains(m.VLLMConfig.ExtraArgs, "--served-model-name") {
			t.Errorf("%s: extraArgs %q lack the sampling defaults or the served name", a.Name, m.VLLMConfig.ExtraArgs)
		}
	}
}

// TestProductionStackSchemaRefuses: the schema the test trusts refuses an
// unknown field and a missing required one.
func TestProductionStackSchemaRefuses(t *testing.T) {
	s := stackSchema(t)
	res, err := Export(shipped(t), ProductionStack, Options{Agents: []string{"dev"}})
	if err != nil {
		t.Fatal(err)
	}
	doc := res.Objects[0].Data
	for name, bad := range map[string][]byte{
		"unknown field":    bytes.Replace(doc, []byte("    name: dev\n"), []byte("    name: dev\n    systemPrompt: hi\n"), 1),
		"unknown vllm key": bytes.Replace(doc, []byte("      maxModelLen:"), []byte("      max_model_len:"), 1),
		"missing tag":      bytes.Replace(doc, []byte("    tag: v"), []byte("    tags: v"), 1),
		"wrong type":       bytes.Replace(doc, []byte("      maxModelLen: 12288"), []byte("      maxModelLen: long"), 1),
	} {
		if bytes.Equal(bad, doc) {
			t.Fatalf("%s: the edit did not apply", name)
		}
		if err := validateYAML(s, bad); err == nil {
			t.Errorf("%s: valid", name)
		}
	}
}
