package models_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/models"
)

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// TestResolveEnvPrecedence follows huggingface_hub's constants.py and
// _auth.py variable by variable.
func TestResolveEnvPrecedence(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "tok")
	os.WriteFile(tokenFile, []byte(" from-file\n"), 0o600)
	for _, tc := range []struct {
		name string
		env  map[string]string
		want models.Env
	}{
		{"defaults", map[string]string{"HOME": "/u"},
			models.Env{Home: "/u/.cache/huggingface", HubCache: "/u/.cache/huggingface/hub", Endpoint: models.DefaultEndpoint, TokenPath: "/u/.cache/huggingface/token"}},
		{"XDG_CACHE_HOME", map[string]string{"HOME": "/u", "XDG_CACHE_HOME": "/x"},
			models.Env{Home: "/x/huggingface", HubCache: "/x/huggingface/hub", Endpoint: models.DefaultEndpoint, TokenPath: "/x/huggingface/token"}},
		{"HF_HOME beats XDG", map[string]string{"HF_HOME": "/h", "XDG_CACHE_HOME": "/x"},
			models.Env{Home: "/h", HubCache: "/h/hub", Endpoint: models.DefaultEndpoint, TokenPath: "/h/token"}},
		{"legacy cache", map[string]string{"HF_HOME": "/h", "HUGGINGFACE_HUB_CACHE": "/old"},
			models.Env{Home: "/h", HubCache: "/old", Endpoint: models.DefaultEndpoint, TokenPath: "/h/token"}},
		{"HF_HUB_CACHE beats legacy", map[string]string{"HF_HOME": "/h", "HUGGINGFACE_HUB_CACHE": "/old", "HF_HUB_CACHE": "/new"},
			models.Env{Home: "/h", HubCache: "/new", Endpoint: models.DefaultEndpoint, TokenPath: "/h/token"}},
		{"tilde and vars", map[string]string{"HOME": "/u", "HF_HOME": "~/hf", "D": "/d", "HF_HUB_CACHE": "$D/hub"},
			models.Env{Home: "/u/hf", HubCache: "/d/hub", Endpoint: models.DefaultEndpoint, TokenPath: "/u/hf/token"}},
		{"endpoint trimmed", map[string]string{"HF_HOME": "/h", "HF_ENDPOINT": "https://mirror.example/"},
			models.Env{Home: "/h", HubCache: "/h/hub", Endpoint: "https://mirror.example", TokenPath: "/h/token"}},
		{"HF_TOKEN first", map[string]string{"HF_HOME": "/h", "HF_TOKEN": "a", "HUGGING_FACE_HUB_TOKEN": "b", "HF_TOKEN_PATH": tokenFile},
			models.Env{Home: "/h", HubCache: "/h/hub", Endpoint: models.DefaultEndpoint, Token: "a", TokenPath: tokenFile}},
		{"legacy token", map[string]string{"HF_HOME": "/h", "HUGGING_FACE_HUB_TOKEN": "b", "HF_TOKEN_PATH": tokenFile},
			models.Env{Home: "/h", HubCache: "/h/hub", Endpoint: models.DefaultEndpoint, Token: "b", TokenPath: tokenFile}},
		{"token file", map[string]string{"HF_HOME": "/h", "HF_TOKEN_PATH": tokenFile},
			models.Env{Home: "/h", HubCache: "/h/hub", Endpoint: models.DefaultEndpoint, Token: "from-file", TokenPath: tokenFile}},
		{"offline values", map[string]string{"HF_HOME": "/h", "HF_HUB_OFFLINE": "yes"},
			models.Env{Home: "/h", HubCache: "/h/hub", Endpoint: models.DefaultEndpoint, TokenPath: "/h/token", Offline: true}},
		{"TRANSFORMERS_OFFLINE", map[string]string{"HF_HOME": "/h", "TRANSFORMERS_OFFLINE": "On"},
			models.Env{Home: "/h", HubCache: "/h/hub", Endpoint: models.DefaultEndpoint, TokenPath: "/h/token", Offline: true}},
		{"offline 0", map[string]string{"HF_HOME": "/h", "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "1"},
			models.Env{Home: "/h", HubCache: "/h/hub", Endpoint: models.DefaultEndpoint, TokenPath: "/h/token"}},
	} {
		if got := models.ResolveEnv(envOf(tc.env)); got != tc.want {
			t.Errorf("%s:\n got %+v\nwant %+v", tc.name, got, tc.want)
		}
	}
}

// TestForAgentCacheIsTheUnits: the cache is where the agent's engine looks
// (its unit's HF_HOME and [env]), whatever the caller's shell says; the
// token and endpoint come from the caller first, the unit's HF_HUB_OFFLINE=1
// never makes the caller offline.
func TestForAgentCacheIsTheUnits(t *testing.T) {
	cfg := &config.Config{}
	cfg.Paths.HFHome = "/var/lib/vagent/hf"
	cfg.Paths.StateDir = "/var/lib/vagent"
	cfg.Engine.Env = map[string]string{"HF_ENDPOINT": "https://engine.example", "HUGGINGFACE_HUB_CACHE": "/legacy"}
	a := &config.Agent{Name: "dev", Env: map[string]string{"HF_HUB_CACHE": "/data/hub"}}
	shell := envOf(map[string]string{"HF_HOME": "/home/u/hf", "HF_HUB_CACHE": "/home/u/hub", "HF_TOKEN": "t"})
	e := models.ForAgent(cfg, a, shell)
	if e.HubCache != "/data/hub" || e.Home != cfg.Paths.HFHome || e.Token != "t" || e.Endpoint != "https://engine.example" || e.Offline {
		t.Errorf("dev: %+v", e)
	}
	if e := models.ForAgent(cfg, &config.Agent{Name: "po"}, shell); e.HubCache != "/legacy" {
		t.Errorf("po (engine.env legacy cache): %+v", e)
	}
	cfg.Engine.Env = nil
	if e := models.ForAgent(cfg, nil, envOf(map[string]string{"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "https://m.example"})); e.HubCache != "/var/lib/vagent/hf/hub" || !e.Offline || e.Endpoint != "https://m.example" {
		t.Errorf("shared: %+v", e)
	}
}
