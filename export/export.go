// Package export writes the agents of one host's configuration as objects
// for engines that run vLLM on a cluster, so that a team that outgrows one
// host keeps its agent files as the one source. The engine's command line
// comes from engine.Command, the same words vagent puts into its units;
// what a target cannot express is an error naming the agent and key, and
// what it has no place for is reported as not carried.
package export

import (
	"fmt"
	"slices"
	"strings"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/engine"
)

// Targets.
const (
	Kubernetes      = "kubernetes"
	KubeAI          = "kubeai"
	ProductionStack = "production-stack"
)

// Targets are the targets Export writes, in the order the docs list them.
var Targets = []string{Kubernetes, KubeAI, ProductionStack}

// DefaultResourceProfile is the KubeAI resource profile Models ask for
// unless told otherwise: one of those KubeAI's chart defines.
const DefaultResourceProfile = "nvidia-gpu-l4"

// Options are what the configuration does not say about the cluster.
type Options struct {
	// Agents to export, all when empty.
	Agents []string
	// ResourceProfile is the KubeAI resource profile (kubeai target);
	// empty takes DefaultResourceProfile.
	ResourceProfile string
}

// Object is one file of an export: one cluster object, or one values file.
type Object struct {
	// Name is its file name under --out.
	Name  string
	Agent string
	Data  []byte
}

// NotCarried is an agent key the target has no place for: vagentd applies
// it on one host, the cluster will not.
type NotCarried struct {
	Agent, Key, Why string
}

func (n NotCarried) String() string {
	return fmt.Sprintf("agent %q: %s: %s", n.Agent, n.Key, n.Why)
}

// Result is what Export writes.
type Result struct {
	Objects    []Object
	NotCarried []NotCarried
}

// Export renders the agents of c that opt selects for target. Nothing is
// returned on any error, so a caller writes all or nothing.
func Export(c *config.Config, target string, opt Options) (*Result, error) {
	var render func(*config.Config, *config.Agent, *Result) config.Errors
	// finish writes what the agents make together, for targets with one
	// file for all of them.
	finish := func(*config.Config, *Result) error { return nil }
	switch target {
	case Kubernetes:
		render = kubernetes
	case KubeAI:
		profile := opt.ResourceProfile
		if profile == "" {
			profile = DefaultResourceProfile
		}
		render = func(c *config.Config, a *config.Agent, res *Result) config.Errors {
			return kubeai(c, a, profile, res)
		}
	case ProductionStack:
		var specs []any
		render = func(c *config.Config, a *config.Agent, res *Result) config.Errors {
			spec, errs := modelSpec(c, a, res)
			specs = append(specs, spec)
			return errs
		}
		finish = func(c *config.Config, res *Result) error { return stackValues(c, specs, res) }
	default:
		return nil, fmt.Errorf("export target %q: want one of %s", target, strings.Join(Targets, ", "))
	}
	sel, err := selectAgents(c, opt.Agents)
	if err != nil {
		return nil, err
	}
	res := &Result{}
	var errs config.Errors
	for _, a := range sel {
		errs = append(errs, render(c, a, res)...)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	if err := finish(c, res); err != nil {
		return nil, err
	}
	return res, nil
}

// selectAgents returns the agents named, in c's order, or all of them.
func selectAgents(c *config.Config, names []string) ([]*config.Agent, error) {
	if len(names) == 0 {
		if len(c.Agents) == 0 {
			return nil, fmt.Errorf("export: %s configures no agents", c.Path)
		}
		return c.Agents, nil
	}
	var out []*config.Agent
	for _, n := range names {
		i := slices.IndexFunc(c.Agents, func(a *config.Agent) bool { return a.Name == n })
		if i < 0 {
			known := make([]string, len(c.Agents))
			for j, a := range c.Agents {
				known[j] = a.Name
			}
			return nil, fmt.Errorf("export --agents: no agent %q (configured: %s)", n, strings.Join(known, ", "))
		}
		if !slices.Contains(out, c.Agents[i]) {
			out = append(out, c.Agents[i])
		}
	}
	slices.SortFunc(out, func(a, b *config.Agent) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// containerFlags are flags the container or the cluster sets: where the
// engine listens is the pod's business, and a Unix socket cannot be reached
// from a Service.
var containerFlags = map[string]bool{"--host": true, "--port": true, "--uds": true}

// serveArgs are agent a's engine arguments after "vllm serve": the model
// first, then the flags, without where it listens (the container's port)
// and without sleep mode (no supervisor drives it on a cluster).
func serveArgs(c *config.Config, a *config.Agent) (model string, flags []string, errs config.Errors) {
	fail := func(field, format string, args ...any) {
		errs = append(errs, &config.Error{File: a.File, Agent: a.Name, Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	if config.IsLocalModel(a.Model) {
		fail("model", "%q is a directory on this host, which a cluster cannot read: upload it to a Hugging Face repository and name that", a.Model)
	}
	if config.IsChatTemplateFile(a.ChatTemplate) {
		fail("chat_template", "%q is a file on this host, which a cluster cannot read: put the template itself into chat_template", a.ChatTemplate)
	}
	words, cerrs := engine.Of(c).Command(c, a)
	errs = append(errs, cerrs...)
	// words: binary, "serve", model, flags.
	for i := 2; i < len(words); i++ {
		w := words[i]
		switch {
		case w.Field == "model":
			model = w.Val
			continue
		case w.Field == "switch_mode":
			continue
		}
		name, _, hasVal := strings.Cut(w.Val, "=")
		if containerFlags[name] {
			if w.Field == "extra_args" {
				fail("extra_args", "%q: the container sets where the engine listens; a cluster cannot pass %s", w.Val, name)
			}
			// Skip its value too.
			if !hasVal && i+1 < len(words) && !config.IsOption(words[i+1].Val) {
				i++
			}
			continue
		}
		if w.Field == "extra_args" && strings.HasPrefix(w.Val, "/") ||
			w.Field == "extra_args" && strings.Contains(w.Val, "=/") {
			fail("extra_args", "%q names a path on this host, which a cluster cannot read", w.Val)
		}
		flags = append(flags, w.Val)
	}
	return model, flags, errs
}

// gpuCount is how many GPUs agent a's engine needs: its tensor-parallel
// degree, or the cards it is pinned to.
func gpuCount(a *config.Agent) int {
	return max(1, len(a.GPUs), a.TensorParallelSize)
}

// hostOnly lists the keys agent a sets that no target carries: vagentd's
// switching, which a cluster does with its own scheduler.
func hostOnly(c *config.Config, a *config.Agent) []NotCarried {
	var out []NotCarried
	if len(a.Aliases) > 0 {
		out = append(out, NotCarried{a.Name, "aliases", "vagentd's routing names; clients use served_names"})
	}
	if c.Sleeps(a) {
		out = append(out, NotCarried{a.Name, "switch_mode", "sleep mode needs vagentd to drive the engine's control routes"})
	}
	return out
}

// samplingNotCarried reports [sampling] max_tokens, which vagentd puts into
// requests (vLLM's own setting would cap every client instead).
func samplingNotCarried(a *config.Agent) []NotCarried {
	if a.Sampling.MaxTokens == nil {
		return nil
	}
	return []NotCarried{{a.Name, "sampling.max_tokens", "a default vagentd puts into requests; vLLM's own setting would cap every client"}}
}
