package export

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vagent-dev/vagent/config"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// shipped loads the configuration the repository ships (configs/).
func shipped(t *testing.T) *config.Config {
	t.Helper()
	c, err := config.Load(filepath.Join("..", "configs", "vagent.toml"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// stream joins objects as `vagentctl export` writes them to stdout.
func stream(objs []Object) []byte {
	var b bytes.Buffer
	for i, o := range objs {
		if i > 0 {
			b.WriteString("---\n")
		}
		b.Write(o.Data)
	}
	return b.Bytes()
}

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(p, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (go test ./export/ -update writes it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("export differs from %s (go test ./export/ -update rewrites it):\n%s", p, got)
	}
}

// agentFile writes a configuration with one agent dev whose file has body
// and loads it.
func agentFile(t *testing.T, body string) *config.Config {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "agents", "models", "local"), 0o755); err != nil {
		t.Fatal(err)
	}
	main := filepath.Join(dir, "vagent.toml")
	if err := os.WriteFile(main, []byte("[engine]\nkind = \"vllm\"\nvllm_version = \"0.18.0\"\n[gpu]\nsim_count = 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "agents", "dev.toml"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(main)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

const devAgent = "model = \"Qwen/Qwen2.5-7B-Instruct\"\nport = 8001\ngpus = [0]\n"

// TestBadInput: what a cluster cannot run is an error naming the agent and
// the key, and nothing is returned.
func TestBadInput(t *testing.T) {
	for _, tc := range []struct {
		name, body, field, want string
	}{
		{"local model", "model = \"./models/local\"\nserved_names = [\"dev\"]\nport = 8001\n", "model", "directory on this host"},
		{"socket", devAgent + "extra_args = [\"--uds\", \"/run/vllm.sock\"]\n", "extra_args", "cannot pass --uds"},
		{"host path", devAgent + "extra_args = [\"--lora-modules\", \"a=/srv/lora/a\"]\n", "extra_args", "path on this host"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := agentFile(t, tc.body)
			for _, target := range Targets {
				res, err := Export(c, target, Options{})
				if err == nil {
					t.Fatalf("%s: no error; wrote %d objects", target, len(res.Objects))
				}
				var errs config.Errors
				if !errors.As(err, &errs) {
					t.Fatalf("%s: %v: want config.Errors", target, err)
				}
				found := false
				for _, e := range errs {
					if e.Agent == "dev" && e.Field == tc.field && strings.Contains(e.Msg, tc.want) {
						found = true
					}
				}
				if !found || !strings.Contains(err.Error(), `agent "dev": `+tc.field+":") {
					t.Errorf("%s: %v: want agent dev, key %s, %q", target, err, tc.field, tc.want)
				}
			}
		})
	}
}

func TestUnknownTarget(t *testing.T) {
	_, err := Export(shipped(t), "nomad", Options{})
	if err == nil || !strings.Contains(err.Error(), `export target "nomad": want one of kubernetes, kubeai, production-stack`) {
		t.Errorf("got %v", err)
	}
}

func TestSelectAgents(t *testing.T) {
	c := shipped(t)
	res, err := Export(c, Kubernetes, Options{Agents: []string{"po", "dev", "po"}})
	if err != nil {
		t.Fatal(err)
	}
	var agents []string
	for _, o := range res.Objects {
		if len(agents) == 0 || agents[len(agents)-1] != o.Agent {
			agents = append(agents, o.Agent)
		}
	}
	if strings.Join(agents, ",") != "dev,po" {
		t.Errorf("agents %v, want dev,po", agents)
	}
	if _, err := Export(c, Kubernetes, Options{Agents: []string{"qa"}}); err == nil || !strings.Contains(err.Error(), `no agent "qa" (configured: architect, dev, po)`) {
		t.Errorf("unknown agent: %v", err)
	}
}

// TestSleepNotExported: sleep mode needs vagentd's supervisor, so the
// exported engine does not run with it, and the key is reported.
func TestSleepNotExported(t *testing.T) {
	c := agentFile(t, devAgent+"switch_mode = \"sleep\"\n")
	res, err := Export(c, Kubernetes, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if out := stream(res.Objects); bytes.Contains(out, []byte("sleep")) {
		t.Errorf("sleep mode exported:\n%s", out)
	}
	found := false
	for _, n := range res.NotCarried {
		found = found || n.Key == "switch_mode"
	}
	if !found {
		t.Errorf("switch_mode not reported: %v", res.NotCarried)
	}
}
