package units

import (
	"testing"

	"github.com/vagent-dev/vagent/models"
)

// TestRenderedHubCacheIsModelsHubCache: the hub cache an engine resolves
// from its rendered environment (huggingface_hub's rules, in models) is the
// one pull, plan and doctor use for that agent, whichever of engine.env and
// the agent's env names it, in either spelling.
func TestRenderedHubCacheIsModelsHubCache(t *testing.T) {
	plain := testAgent("plain", 0.3)
	own := testAgent("own", 0.3)
	own.Env = map[string]string{"HF_HUB_CACHE": "/data/hub"}
	legacy := testAgent("legacy", 0.3)
	legacy.Env = map[string]string{"HUGGINGFACE_HUB_CACHE": "/data/legacy"}
	cfg := testConfig(plain, own, legacy)
	cfg.Engine.Env = map[string]string{"HUGGINGFACE_HUB_CACHE": "/srv/shared-hub"}
	files, err := Render(cfg, map[int]uint64{0: 80 << 30})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"plain": "/srv/shared-hub", "own": "/data/hub", "legacy": "/data/legacy"}
	for _, a := range cfg.Agents {
		u := readDropIn(t, files, a.Name)
		got := models.ResolveEnv(func(k string) string { return u.env[k] }).HubCache
		if got != models.HubCacheOf(cfg, a) || got != want[a.Name] {
			t.Errorf("%s: engine reads %s, vagent uses %s, want %s", a.Name, got, models.HubCacheOf(cfg, a), want[a.Name])
		}
	}
}
