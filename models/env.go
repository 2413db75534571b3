package models

import (
	"os"
	"path/filepath"
	"strings"

	"github.com/vagent-dev/vagent/config"
)

// Env is one environment's Hugging Face Hub settings, resolved the way
// huggingface_hub resolves them, so that vagent reads and writes the cache
// vLLM (through huggingface_hub) will load from. The precedence is read
// from huggingface_hub's src/huggingface_hub/constants.py (GitHub
// huggingface/huggingface_hub at commit 03333b68) and utils/_auth.py
// (get_token: HF_TOKEN or HUGGING_FACE_HUB_TOKEN, then the token file):
//
//	HF_HOME      $HF_HOME, else $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface
//	hub cache    $HF_HUB_CACHE, else $HUGGINGFACE_HUB_CACHE, else HF_HOME/hub
//	endpoint     $HF_ENDPOINT with trailing "/" trimmed, else https://huggingface.co
//	token        $HF_TOKEN, else $HUGGING_FACE_HUB_TOKEN, else the file
//	             $HF_TOKEN_PATH (default HF_HOME/token); blank counts as none
//	offline      $HF_HUB_OFFLINE, else $TRANSFORMERS_OFFLINE, true when
//	             1, ON, YES or TRUE in any case
//
// Paths get "~" and $VAR expanded, as constants.py does with
// os.path.expanduser and os.path.expandvars.
type Env struct {
	// Home is HF_HOME.
	Home string
	// HubCache is the directory holding models--ORG--NAME folders.
	HubCache string
	// Endpoint is the Hub's base URL, without a trailing slash.
	Endpoint string
	// Token is sent as a bearer token; "" when there is none.
	Token string
	// TokenPath is the token file consulted when no variable holds one.
	TokenPath string
	// Offline forbids calls to the Hub.
	Offline bool
}

// EnvVars are the environment variables Env reads.
var EnvVars = []string{
	"HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ENDPOINT",
	"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH",
	"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
}

// cacheVars decide where the cache is: for an agent, only what its unit
// sets counts, since that is what the engine sees.
var cacheVars = []string{"HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", "HOME"}

// ResolveEnv resolves the Hub settings of one environment (getenv is
// os.Getenv outside tests). A variable set to "" counts as unset.
func ResolveEnv(getenv func(string) string) Env {
	expand := func(p string) string {
		if p == "~" || strings.HasPrefix(p, "~/") {
			p = getenv("HOME") + p[1:]
		}
		return os.Expand(p, getenv)
	}
	first := func(keys ...string) string {
		for _, k := range keys {
			if v := getenv(k); v != "" {
				return v
			}
		}
		return ""
	}
	var e Env
	if h := getenv("HF_HOME"); h != "" {
		e.Home = expand(h)
	} else if x := getenv("XDG_CACHE_HOME"); x != "" {
		e.Home = filepath.Join(expand(x), "huggingface")
	} else {
		e.Home = expand("~/.cache/huggingface")
	}
	if c := first("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"); c != "" {
		e.HubCache = expand(c)
	} else {
		e.HubCache = filepath.Join(e.Home, "hub")
	}
	e.Endpoint = DefaultEndpoint
	if ep := strings.TrimRight(strings.TrimSpace(getenv("HF_ENDPOINT")), "/"); ep != "" {
		e.Endpoint = ep
	}
	e.TokenPath = filepath.Join(e.Home, "token")
	if p := getenv("HF_TOKEN_PATH"); p != "" {
		e.TokenPath = expand(p)
	}
	e.Token = strings.TrimSpace(first("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"))
	if e.Token == "" {
		if data, err := os.ReadFile(e.TokenPath); err == nil {
			e.Token = strings.TrimSpace(string(data))
		}
	}
	switch strings.ToUpper(first("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")) {
	case "1", "ON", "YES", "TRUE":
		e.Offline = true
	}
	return e
}

// UnitEnv is the Hub-related environment an agent's engine runs with:
// HF_HOME is paths.hf_home (vagent sets it and configuration cannot
// override it), then engine.env and the agent's env (the agent wins), as
// units renders them; HOME is paths.state_dir there too. a may be nil for
// what every agent shares.
func UnitEnv(cfg *config.Config, a *config.Agent) map[string]string {
	env := map[string]string{}
	for k, v := range cfg.Engine.Env {
		env[k] = v
	}
	if a != nil {
		for k, v := range a.Env {
			env[k] = v
		}
	}
	env["HF_HOME"] = cfg.Paths.HFHome
	env["HOME"] = cfg.Paths.StateDir
	return env
}

// ForAgent is what vagent uses for agent a (nil: settings every agent
// shares): the cache the agent's engine will load from, decided by its
// unit's environment alone; the endpoint, token and offline mode of the
// caller's environment (getenv), then for the endpoint and token what the
// unit sets. The unit's own HF_HUB_OFFLINE=1 is not the caller's: it only
// keeps the engine from downloading.
func ForAgent(cfg *config.Config, a *config.Agent, getenv func(string) string) Env {
	unit := UnitEnv(cfg, a)
	return ResolveEnv(func(k string) string {
		for _, c := range cacheVars {
			if k == c {
				return unit[k]
			}
		}
		if v := getenv(k); v != "" {
			return v
		}
		if k == "HF_HUB_OFFLINE" || k == "TRANSFORMERS_OFFLINE" {
			return ""
		}
		return unit[k]
	})
}

// RepoFolder is the cache folder of a model repository, models--ORG--NAME
// in the hub cache.
func (e Env) RepoFolder(repo string) string { return RepoFolder(e.HubCache, repo) }

// HubCacheOf is the hub cache agent a's engine loads its model from (nil:
// the cache of an agent that sets no HF_* variable).
func HubCacheOf(cfg *config.Config, a *config.Agent) string {
	return ForAgent(cfg, a, func(string) string { return "" }).HubCache
}
