package doctor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"

	"github.com/vagent-dev/vagent/config"
	"github.com/vagent-dev/vagent/engine"
	"github.com/vagent-dev/vagent/gpu"
	"github.com/vagent-dev/vagent/models"
	"github.com/vagent-dev/vagent/plan"
	"github.com/vagent-dev/vagent/units"
)

var commitRE = regexp.MustCompile(`^[0-9a-f]{40}$`)

func (d *Doctor) checkModels(ctx context.Context) {
	for _, a := range d.cfg.Agents {
		check := "model " + a.Name
		if models.IsLocal(a.Model) {
			d.checkModelDir(check, a)
			continue
		}
		// Units run with HF_HUB_OFFLINE=1: vLLM fails without the snapshot;
		// the simulator does not need it.
		missing := Fail
		if d.cfg.Engine.Kind == config.EngineSim {
			missing = Warn
		}
		fix := "vagentctl pull " + a.Name
		snap, commit, err := d.snapshot(a, a.Model, a.Revision)
		if err != nil {
			d.add(check, missing, fix, "%s%s", err, d.simNote())
			continue
		}
		var problems []string
		if _, err := d.env.Stat(filepath.Join(snap, "config.json")); err != nil {
			problems = append(problems, "config.json is missing")
		}
		files, err := d.weightFiles(snap)
		if err != nil {
			problems = append(problems, err.Error())
		}
		var total uint64
		var absent []string
		for _, f := range files {
			st, err := d.env.Stat(filepath.Join(snap, f))
			if err != nil || st.Size() == 0 {
				absent = append(absent, f)
				continue
			}
			total += uint64(st.Size())
		}
		if len(absent) > 0 {
			problems = append(problems, fmt.Sprintf("%d of %d weight files missing (%s)", len(absent), len(files), strings.Join(absent, ", ")))
		}
		if len(problems) > 0 {
			d.add(check, missing, fix+" (resumes)", "%s@%s snapshot %s is incomplete: %s%s", a.Model, a.Revision, short(commit), strings.Join(problems, "; "), d.simNote())
			continue
		}
		d.add(check, Pass, "", "%s@%s snapshot %s: config.json and %d weight files (%s)", a.Model, a.Revision, short(commit), len(files), plan.GB(total))
	}
}

func (d *Doctor) simNote() string {
	if d.cfg.Engine.Kind == config.EngineSim {
		return "; the simulator does not need it, vLLM will"
	}
	return "; units run with HF_HUB_OFFLINE=1, so vLLM cannot start without it"
}

func short(commit string) string {
	if len(commit) > 12 {
		return commit[:12]
	}
	return commit
}

func (d *Doctor) checkModelDir(check string, a *config.Agent) {
	fix := fmt.Sprintf("put the model there, or change model in %s", a.File)
	st, err := d.env.Stat(a.Model)
	if err != nil || !st.IsDir() {
		d.add(check, Fail, fix, "model directory %s does not exist", a.Model)
		return
	}
	if _, err := d.env.Stat(filepath.Join(a.Model, "config.json")); err != nil {
		d.add(check, Fail, fix, "model directory %s has no config.json", a.Model)
		return
	}
	files, err := d.weightFiles(a.Model)
	if err != nil {
		d.add(check, Warn, "convert the weights to safetensors (vLLM loads .bin more slowly and vagent cannot size them)", "%s", err)
		return
	}
	for _, f := range files {
		if st, err := d.env.Stat(filepath.Join(a.Model, f)); err != nil || st.Size() == 0 {
			d.add(check, Fail, fix, "model directory %s lacks %s", a.Model, f)
			return
		}
	}
	d.add(check, Pass, "", "local directory %s: config.json and %d weight files", a.Model, len(files))
}

// snapshot finds a repo's cached snapshot through the injected file access,
// in the cache agent a's engine loads from.
func (d *Doctor) snapshot(a *config.Agent, repo, rev string) (string, string, error) {
	dir := models.RepoFolder(models.HubCacheOf(d.cfg, a), repo)
	commit := rev
	if !commitRE.MatchString(rev) {
		b, err := d.env.ReadFile(filepath.Join(dir, "refs", filepath.FromSlash(rev)))
		if err != nil {
			return "", "", fmt.Errorf("%s@%s is not pulled (nothing in %s)", repo, rev, dir)
		}
		commit = strings.TrimSpace(string(b))
	}
	snap := filepath.Join(dir, "snapshots", commit)
	if st, err := d.env.Stat(snap); err != nil || !st.IsDir() {
		return "", "", fmt.Errorf("%s@%s: snapshot %s is missing from %s", repo, rev, short(commit), dir)
	}
	return snap, commit, nil
}

// weightFiles are the safetensors files vLLM would load from dir.
func (d *Doctor) weightFiles(dir string) ([]string, error) {
	if data, err := d.env.ReadFile(filepath.Join(dir, "model.safetensors.index.json")); err == nil {
		var idx struct {
			WeightMap map[string]string `json:"weight_map"`
		}
		if err := json.Unmarshal(data, &idx); err != nil || len(idx.WeightMap) == 0 {
			return nil, fmt.Errorf("model.safetensors.index.json is unreadable")
		}
		set := map[string]bool{}
		for _, f := range idx.WeightMap {
			set[f] = true
		}
		var files []string
		for f := range set {
			files = append(files, f)
		}
		sort.Strings(files)
		return files, nil
	}
	entries, err := d.env.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("cannot list %s: %v", dir, errText(err))
	}
	var files []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".safetensors") {
			files = append(files, e.Name())
		}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no *.safetensors weights in %s", dir)
	}
	return files, nil
}

func (d *Doctor) checkUnits(ctx context.Context) {
	c := d.cfg
	files, err := units.Render(c, d.totals())
	if err != nil {
		d.add("units", Fail, "fix the configuration (vagentctl render shows the same errors)", "the configuration does not render: %s", strings.ReplaceAll(err.Error(), "\n", "; "))
		return
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var missing, differ, stale []string
	for _, n := range names {
		data, err := d.env.ReadFile(filepath.Join(c.Paths.UnitDir, n))
		if v := units.VendorPath(n); err != nil && v != "" {
			// apply leaves the package's copy alone when it is the same.
			data, err = d.env.ReadFile(v)
		}
		switch {
		case err != nil:
			missing = append(missing, n)
		case !bytes.Equal(data, files[n]):
			differ = append(differ, n)
		}
	}
	if entries, err := d.env.ReadDir(c.Paths.UnitDir); err == nil {
		for _, e := range entries {
			name, ok := strings.CutSuffix(e.Name(), ".service.d")
			if !ok || !strings.HasPrefix(name, "vagent@") {
				continue
			}
			agent := strings.TrimPrefix(name, "vagent@")
			if c.Agent(agent) != nil {
				continue
			}
			if _, err := d.env.Stat(filepath.Join(c.Paths.UnitDir, e.Name(), units.DropInName)); err == nil {
				stale = append(stale, filepath.Join(e.Name(), units.DropInName))
			}
		}
	}
	if len(missing)+len(differ)+len(stale) == 0 {
		d.add("units", Pass, "", "%d unit files in %s match the configuration", len(names), c.Paths.UnitDir)
		return
	}
	var parts []string
	if len(missing) > 0 {
		parts = append(parts, "missing "+strings.Join(missing, ", "))
	}
	if len(differ) > 0 {
		parts = append(parts, "out of date "+strings.Join(differ, ", "))
	}
	if len(stale) > 0 {
		parts = append(parts, "of agents no longer configured "+strings.Join(stale, ", "))
	}
	d.add("units", Warn, "run vagentctl apply", "units in %s differ from the configuration: %s", c.Paths.UnitDir, strings.Join(parts, "; "))
}

// vagentdUnit is the gateway's own unit.
const vagentdUnit = "vagentd.service"

func (d *Doctor) checkSystemd(ctx context.Context) {
	fix := "run vagentctl on the host as root (members of group vagent go through vagentd); systemd must be PID 1"
	d.sd, d.sdErr = d.env.Systemd(ctx)
	if d.sdErr != nil {
		d.sd = nil
		d.add("systemd", Fail, fix, "systemd is not reachable: %v", d.sdErr)
		return
	}
	st, err := d.sd.State(ctx, vagentdUnit)
	if err != nil {
		d.sdErr = err
		d.add("systemd", Fail, fix, "systemd answers but cannot be asked about units: %v", err)
		return
	}
	d.add("systemd", Pass, "", "reachable over D-Bus")
	switch {
	case st.LoadState != "loaded":
		d.add("vagentd", Warn, "install the vagent package (it ships vagentd.service), then vagentctl setup", "%s is not installed (%s)", vagentdUnit, st.LoadState)
	case st.Running():
		d.add("vagentd", Pass, "", "%s is %s (%s)", vagentdUnit, st.ActiveState, st.SubState)
	default:
		d.add("vagentd", Warn, "systemctl enable --now vagentd (or vagentctl setup)", "%s is %s (%s): the gateway is not serving", vagentdUnit, st.ActiveState, st.SubState)
	}
}

// checkSampling says what each [sampling] key an agent sets does on its
// engine: a default a request overrides, or a default the gateway adds.
func (d *Doctor) checkSampling(ctx context.Context) {
	for _, a := range d.cfg.Agents {
		keys := d.eng.Sampling(a)
		if len(keys) == 0 {
			continue
		}
		// Keys that do the same are named together.
		var parts, same []string
		for i, k := range keys {
			same = append(same, k.Key+" "+k.Value)
			if i == len(keys)-1 || keys[i+1].Effect != k.Effect {
				parts = append(parts, strings.Join(same, ", ")+": "+k.Effect)
				same = nil
			}
		}
		d.add("sampling "+a.Name, Pass, "", "%s", strings.Join(parts, "; "))
	}
}

func (d *Doctor) checkPorts(ctx context.Context) {
	if v := d.cfg.Engine.VLLMVersion; !engine.UnixSockets(v) {
		d.add("engine sockets", Warn, fmt.Sprintf("upgrade vLLM to 0.10.1 or later (engine.vllm_version in %s) and remove port from the agent files", d.cfg.Path),
			"vLLM %s has no --uds: engines listen on 127.0.0.1 with a key, which vLLM checks only on /v1 paths; every local user reaches their other routes (/sleep, /collective_rpc, ...)", v)
	}
	for _, a := range d.cfg.Agents {
		ep := d.eng.Endpoint(d.cfg, a)
		if ep.Network() == "unix" {
			d.add("socket "+a.Name, Pass, "", "the engine listens on %s, in a directory only the engine's user and group may enter, and opens no TCP port", ep.Address())
			continue
		}
		d.checkPort(ctx, "port "+a.Name, ep.Network(), ep.Address(), a.Unit(),
			fmt.Sprintf("change port in %s", a.File))
	}
	// vagentd.socket holds the endpoint even while vagentd is stopped.
	d.checkPort(ctx, "port gateway", "tcp", d.cfg.Gateway.Listen, vagentdUnit, fmt.Sprintf("change gateway.listen in %s", d.cfg.Path), units.SocketName)
}

// checkPort tries to bind addr; a busy port passes only when owner, the
// unit that should hold it, or one of also is running. The bind sets no
// SO_REUSEPORT, so an engine that set it (vLLM does) still shows as
// holding the port.
func (d *Doctor) checkPort(ctx context.Context, check, network, addr, owner, change string, also ...string) {
	l, err := d.env.Listen(network, addr)
	if err == nil {
		l.Close()
		d.add(check, Pass, "", "%s is free", addr)
		return
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		d.add(check, Warn, change, "cannot bind %s: %v", addr, err)
		return
	}
	_, port, _ := net.SplitHostPort(addr)
	fix := fmt.Sprintf("see what holds it: ss -ltnp 'sport = :%s'; stop that, or %s", port, change)
	if d.sd == nil || d.sdErr != nil {
		d.add(check, Warn, fix, "%s is in use, and without systemd doctor cannot tell whether %s holds it", addr, owner)
		return
	}
	for _, u := range also {
		if st, err := d.sd.State(ctx, u); err == nil && st.Running() {
			d.add(check, Pass, "", "%s is in use by %s (%s)", addr, u, st.ActiveState)
			return
		}
	}
	st, err := d.sd.State(ctx, owner)
	if err != nil {
		d.add(check, Warn, fix, "%s is in use; the state of %s is unknown: %v", addr, owner, err)
		return
	}
	if st.Running() {
		d.add(check, Pass, "", "%s is in use by %s (%s)", addr, owner, st.ActiveState)
		return
	}
	d.add(check, Fail, fix, "%s is in use by another program (%s is %s)", addr, owner, st.ActiveState)
}

func (d *Doctor) checkDisk(ctx context.Context) {
	for _, p := range []struct{ key, path string }{
		{"state_dir", d.cfg.Paths.StateDir},
		{"hf_home", d.cfg.Paths.HFHome},
	} {
		check := "disk " + p.key
		at := p.path
		note := ""
		// A directory not made yet lives on its nearest existing parent's
		// filesystem.
		for {
			if _, err := d.env.Stat(at); err == nil {
				break
			}
			parent := filepath.Dir(at)
			if parent == at {
				break
			}
			at, note = parent, fmt.Sprintf(" (%s does not exist yet; measured at %s)", p.path, parent)
		}
		free, err := d.env.FreeBytes(at)
		if err != nil {
			d.add(check, Warn, "check by hand: df -h "+at, "cannot measure free space at %s: %v", at, err)
			continue
		}
		fix := fmt.Sprintf("free space on the filesystem of %s, or move paths.%s to a larger one (a model takes 5-20 GB, a vLLM engine 7-10 GB)", p.path, p.key)
		switch {
		case free < DiskFailBytes:
			d.add(check, Fail, fix, "only %s free for %s%s", gpu.FormatBytes(free), p.path, note)
		case free < DiskWarnBytes:
			d.add(check, Warn, fix, "%s free for %s%s: less than 20 GiB", gpu.FormatBytes(free), p.path, note)
		default:
			d.add(check, Pass, "", "%s free for %s%s", gpu.FormatBytes(free), p.path, note)
		}
	}
}

func (d *Doctor) checkPlan(ctx context.Context) {
	totals := d.totals()
	source := "nvml"
	if d.cfg.GPU.Backend == config.GPUBackendSim {
		source = "gpu.sim_total_mib"
	}
	p := plan.Build(d.cfg, totals, source, d.facts)
	fix := "vagentctl plan shows the arithmetic: lower max_model_len or raise gpu_memory_utilization as it says, or use a larger GPU"
	if failing := p.Failing(); len(failing) > 0 {
		var parts []string
		for _, e := range failing {
			why := e.Why
			if e.Status == plan.Fits {
				why = e.MaxModelLenWhy
			}
			parts = append(parts, fmt.Sprintf("%s %s", e.Agent, strings.TrimPrefix(why, "does not fit: ")))
		}
		d.add("plan", Fail, fix, "cannot start alone: %s", strings.Join(parts, "; "))
		return
	}
	var unknown, fits []string
	for _, e := range p.Agents {
		if e.Status == plan.Unknown {
			unknown = append(unknown, fmt.Sprintf("%s (%s)", e.Agent, e.Why))
			continue
		}
		fits = append(fits, fmt.Sprintf("%s up to %d tokens", e.Agent, e.MaxModelLenFit))
	}
	if len(unknown) > 0 {
		d.add("plan", Warn, "vagentctl pull, or vagentctl plan --gpu-total-mib N", "cannot judge: %s", strings.Join(unknown, "; "))
		return
	}
	d.add("plan", Pass, "", "every agent fits its GPU alone: %s", strings.Join(fits, ", "))
}
