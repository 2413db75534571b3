package vllmsim

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// cacheEnv is how the simulator finds models offline: vLLM with
// HF_HUB_OFFLINE=1 resolves a Hub id to its snapshot in the Hugging Face
// cache (vllm.transformers_utils.utils.get_model_path → huggingface_hub's
// snapshot_download(local_files_only=True)) and fails when it is not
// there. The simulator does the same only when VLLM_SIM_REQUIRE_CACHE=1,
// so that tests without a cache keep running any model name.
type cacheEnv struct {
	offline bool
	require bool
	hubDir  string // the hub cache: HF_HUB_CACHE, else HF_HOME/hub
}

// hfTrue is huggingface_hub's reading of a boolean variable.
func hfTrue(v string) bool {
	switch strings.ToUpper(strings.TrimSpace(v)) {
	case "1", "ON", "YES", "TRUE":
		return true
	}
	return false
}

func readCacheEnv(env func(string) string) cacheEnv {
	c := cacheEnv{offline: hfTrue(env("HF_HUB_OFFLINE")), require: env("VLLM_SIM_REQUIRE_CACHE") == "1"}
	switch {
	case env("HF_HUB_CACHE") != "":
		c.hubDir = env("HF_HUB_CACHE")
	case env("HUGGINGFACE_HUB_CACHE") != "":
		c.hubDir = env("HUGGINGFACE_HUB_CACHE")
	default:
		home := env("HF_HOME")
		if home == "" {
			xdg := env("XDG_CACHE_HOME")
			if xdg == "" {
				xdg = filepath.Join(env("HOME"), ".cache")
			}
			home = filepath.Join(xdg, "huggingface")
		}
		c.hubDir = filepath.Join(home, "hub")
	}
	return c
}

var (
	simCommitRE = regexp.MustCompile(`^[0-9a-f]{40}$`)
	simRepoIDRE = regexp.MustCompile(`^(?:[\w\-.]+/)?[\w\-.]{1,96}$`)
)

// Where the offline resolution fails, in vLLM 0.18 and huggingface_hub
// 0.36 (the line numbers of the frames are those releases').
const (
	snapshotNotFound = "huggingface_hub.errors.LocalEntryNotFoundError: Cannot find an appropriate cached snapshot folder for the specified revision on the local disk and outgoing traffic has been disabled. To enable repo look-ups and downloads online, pass 'local_files_only=False' as input."
)

// offlineFrames are the API server's frames from the command down to
// EngineArgs.__post_init__, where vLLM swaps the model id for its snapshot.
var offlineFrames = []string{
	"Traceback (most recent call last):",
	`  File "/opt/venv/bin/vllm", line 10, in <module>`,
	"    sys.exit(main())",
	"             ^^^^^^",
	`  File "/opt/venv/lib/python3.12/site-packages/vllm/entrypoints/cli/main.py", line 73, in main`,
	"    args.dispatch_function(args)",
	`  File "/opt/venv/lib/python3.12/site-packages/vllm/entrypoints/cli/serve.py", line 60, in cmd`,
	"    uvloop.run(run_server(args))",
	`  File "/opt/venv/lib/python3.12/site-packages/vllm/entrypoints/openai/api_server.py", line 1941, in run_server_worker`,
	"    async with build_async_engine_client(",
	`  File "/opt/venv/lib/python3.12/site-packages/vllm/entrypoints/openai/api_server.py", line 180, in build_async_engine_client`,
	"    engine_args = AsyncEngineArgs.from_cli_args(args)",
	"                  ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
	`  File "/opt/venv/lib/python3.12/site-packages/vllm/engine/arg_utils.py", line 1195, in from_cli_args`,
	"    engine_args = cls(**{attr: getattr(args, attr) for attr in attrs})",
	`  File "<string>", line 183, in __init__`,
	`  File "/opt/venv/lib/python3.12/site-packages/vllm/engine/arg_utils.py", line 598, in __post_init__`,
	"    self.model = get_model_path(self.model, self.revision)",
	"                 ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
	`  File "/opt/venv/lib/python3.12/site-packages/vllm/transformers_utils/utils.py", line 102, in get_model_path`,
	"    return snapshot_download(repo_id=model, **common_kwargs)",
	"           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
	`  File "/opt/venv/lib/python3.12/site-packages/huggingface_hub/utils/_validators.py", line 114, in _inner_fn`,
	"    return fn(*args, **kwargs)",
	"           ^^^^^^^^^^^^^^^^^^^",
}

// checkCache resolves the model as vLLM does offline. With the cache not
// required (or online) it changes nothing. It returns exit status 1 and true
// after printing vLLM's error when the model cannot be found.
func (s *sim) checkCache() (int, bool) {
	c := s.env.cache
	if !c.offline || !c.require {
		return 0, false
	}
	model, lg := s.opts.model, s.log
	if _, err := os.Stat(model); err == nil {
		// A local directory: vLLM uses it as is and reads its config.json.
		return s.checkConfigJSON(model)
	}
	if !simRepoIDRE.MatchString(model) || strings.Contains(model, "--") || strings.Contains(model, "..") {
		lines := append(append([]string(nil), offlineFrames...),
			`  File "/opt/venv/lib/python3.12/site-packages/huggingface_hub/utils/_validators.py", line 106, in _inner_fn`,
			"    validate_repo_id(arg_value)",
			`  File "/opt/venv/lib/python3.12/site-packages/huggingface_hub/utils/_validators.py", line 154, in validate_repo_id`,
			"    raise HFValidationError(",
			fmt.Sprintf("huggingface_hub.errors.HFValidationError: Repo id must be in the form 'repo_name' or 'namespace/repo_name': '%s'. Use `repo_type` argument if needed.", model))
		lg.raw(s.stderr, procAPI, lines...)
		return 1, true
	}
	revision := s.cmd.str("--revision", "")
	if revision == "" {
		revision = "main"
	}
	folder := filepath.Join(c.hubDir, "models--"+strings.ReplaceAll(model, "/", "--"))
	commit := ""
	if simCommitRE.MatchString(revision) {
		commit = revision
	} else if data, err := os.ReadFile(filepath.Join(folder, "refs", revision)); err == nil {
		commit = strings.TrimSpace(string(data))
	}
	snap := ""
	if commit != "" {
		if st, err := os.Stat(filepath.Join(folder, "snapshots", commit)); err == nil && st.IsDir() {
			snap = filepath.Join(folder, "snapshots", commit)
		}
	}
	if snap == "" {
		lines := append(append([]string(nil), offlineFrames...),
			`  File "/opt/venv/lib/python3.12/site-packages/huggingface_hub/_snapshot_download.py", line 235, in snapshot_download`,
			"    raise LocalEntryNotFoundError(",
			snapshotNotFound)
		lg.raw(s.stderr, procAPI, lines...)
		return 1, true
	}
	lg.info("arg_utils.py:599", "HF_HUB_OFFLINE is True, replace model_id [%s] to model_path [%s]", model, snap)
	return s.checkConfigJSON(snap)
}

// checkConfigJSON fails as vLLM's get_config does for a directory without
// config.json (an incomplete snapshot, a wrong local path).
func (s *sim) checkConfigJSON(dir string) (int, bool) {
	if _, err := os.Stat(filepath.Join(dir, "config.json")); err == nil {
		return 0, false
	}
	s.log.raw(s.stderr, procAPI, append(pyTraceback("vllm/engine/arg_utils.py", 1190, "create_model_config",
		"return ModelConfig(",
		"pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig"),
		fmt.Sprintf("  Value error, Invalid repository ID or local directory specified: '%s'.", dir),
		"Please verify the following requirements:",
		"1. Provide a valid Hugging Face repository ID.",
		"2. Specify a local directory that contains a recognized configuration file.",
		"   - For Hugging Face models: ensure the presence of a 'config.json'.",
		"   - For Mistral models: ensure the presence of a 'params.json'.",
		" [type=value_error, input_value=ArgsKwargs((), {...}), input_type=ArgsKwargs]",
		"    For further information visit https://errors.pydantic.dev/2.12/v/value_error")...)
	return 1, true
}
