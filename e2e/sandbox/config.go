package sandbox

import (
	"context"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// ConfigOverrides returns the settings of the main vagent.toml that keep a
// vagent inside this sandbox: units, state, cache and runtime files under
// Dir(), and the simulator from BinDir. Keys are "section.key". Every path
// is valid both inside the sandbox and outside it.
func (s *Sandbox) ConfigOverrides() map[string]any {
	return map[string]any{
		"engine.sim_binary": s.Path("bin", "vllm-sim"),
		"engine.venv":       s.Path("var/lib/vagent/engines/current"),
		"paths.unit_dir":    s.UnitDir(),
		"paths.state_dir":   s.Path("var/lib/vagent"),
		"paths.run_dir":     s.Path("run/vagent"),
		"paths.hf_home":     s.Path("var/lib/vagent/hf"),
		"paths.cache_dir":   s.Path("var/cache/vagent"),
		"gpu.sim_ledger":    s.Path("run/vagent/sim-ledger.json"),
	}
}

// InstallConfig copies the configuration tree src (a directory holding
// vagent.toml and agents/, like the shipped configs/) to Dir()/etc/vagent,
// sets ConfigOverrides and then set (which wins) in its vagent.toml, and
// points $VAGENT_CONFIG of commands run inside at it. It returns the path of
// the installed vagent.toml. Values in set may be string, bool, int, int64,
// uint64 or float64.
func (s *Sandbox) InstallConfig(src string, set map[string]any) (string, error) {
	dst := s.Path("etc", "vagent")
	if err := copyTree(src, dst); err != nil {
		return "", fmt.Errorf("install config %s: %w", src, err)
	}
	main := filepath.Join(dst, "vagent.toml")
	data, err := os.ReadFile(main)
	if err != nil && !os.IsNotExist(err) {
		return "", fmt.Errorf("install config: %w", err)
	}
	all := s.ConfigOverrides()
	for k, v := range set {
		all[k] = v
	}
	out, err := SetTOML(data, all)
	if err != nil {
		return "", fmt.Errorf("install config %s: %w", main, err)
	}
	if err := os.WriteFile(main, out, 0o644); err != nil {
		return "", fmt.Errorf("install config: %w", err)
	}
	s.SetEnv("VAGENT_CONFIG=" + main)
	return main, nil
}

// EditConfig sets keys (see SetTOML) in a file of the installed
// configuration, rel to Dir()/etc/vagent, e.g.
//
//	s.EditConfig("agents/dev.toml", map[string]any{"port": port})
func (s *Sandbox) EditConfig(rel string, set map[string]any) error {
	p := s.Path("etc", "vagent", rel)
	data, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("edit config: %w", err)
	}
	out, err := SetTOML(data, set)
	if err != nil {
		return fmt.Errorf("edit config %s: %w", p, err)
	}
	if err := os.WriteFile(p, out, 0o644); err != nil {
		return fmt.Errorf("edit config: %w", err)
	}
	return nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago and
// that no earlier call in this process returned. Sandboxes share the host's
// network, so tests that run agents or gateways must not use fixed ports;
// and a port handed out but not yet bound is free again for the kernel,
// which would give it out twice (an agent's listener and another agent's
// engine then got the same port, and config refused it).
func FreePort() (int, error) {
	freePorts.Lock()
	defer freePorts.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("free port: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !freePorts.given[port] {
			freePorts.given[port] = true
			return port, nil
		}
	}
	return 0, fmt.Errorf("free port: the kernel kept offering ports this process already gave out")
}

// freePorts are the ports FreePort has given out.
var freePorts = struct {
	sync.Mutex
	given map[int]bool
}{given: map[int]bool{}}

// SetTOML sets keys in a TOML document of the flat shape vagent's files
// have. A key is "section.key" for a key of table [section], or a bare "key"
// for one before the first table (an agent file's model, port, ...). It
// replaces the value of an existing "key = value" line, or adds the line at
// the end of its table, or adds the table. It keeps comments and order
// otherwise. It is a test helper for that shape, not a TOML editor: values
// that span lines are not understood.
func SetTOML(doc []byte, set map[string]any) ([]byte, error) {
	type kv struct{ key, val string }
	bySection := map[string][]kv{}
	var sections []string
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		sec, key, ok := strings.Cut(k, ".")
		if !ok {
			sec, key = "", k
		}
		if (ok && sec == "") || key == "" || strings.Contains(key, ".") {
			return nil, fmt.Errorf("set %q: want section.key or key", k)
		}
		val, err := tomlValue(set[k])
		if err != nil {
			return nil, fmt.Errorf("set %s: %w", k, err)
		}
		if _, seen := bySection[sec]; !seen {
			sections = append(sections, sec)
		}
		bySection[sec] = append(bySection[sec], kv{key, val})
	}

	lines := strings.Split(strings.TrimRight(string(doc), "\n"), "\n")
	if len(doc) == 0 {
		lines = nil
	}
	done := map[string]bool{} // "section.key" written
	var out []string
	cur := ""
	flush := func(sec string) {
		// Append the keys of sec not yet written, before trailing blank lines.
		var add []string
		for _, p := range bySection[sec] {
			if !done[sec+"."+p.key] {
				add = append(add, p.key+" = "+p.val)
				done[sec+"."+p.key] = true
			}
		}
		if len(add) == 0 {
			return
		}
		i := len(out)
		for i > 0 && strings.TrimSpace(out[i-1]) == "" {
			i--
		}
		tail := append([]string(nil), out[i:]...)
		out = append(append(out[:i], add...), tail...)
	}
	seen := map[string]bool{"": true}
	for _, line := range lines {
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "[") {
			flush(cur)
			if strings.HasPrefix(t, "[[") {
				cur = t // an array of tables: never one of ours
			} else {
				cur = strings.TrimSpace(strings.TrimPrefix(strings.SplitN(t, "]", 2)[0], "["))
			}
			seen[cur] = true
			out = append(out, line)
			continue
		}
		if k, _, ok := strings.Cut(t, "="); ok && !strings.HasPrefix(t, "#") {
			k = strings.TrimSpace(k)
			for _, p := range bySection[cur] {
				if p.key == k {
					line = p.key + " = " + p.val
					done[cur+"."+k] = true
				}
			}
		}
		out = append(out, line)
	}
	flush(cur)
	for _, sec := range sections {
		if seen[sec] {
			continue
		}
		out = append(out, "", "["+sec+"]")
		flush(sec)
	}
	return []byte(strings.Join(out, "\n") + "\n"), nil
}

func tomlValue(v any) (string, error) {
	switch x := v.(type) {
	case string:
		if strings.ContainsAny(x, "\n\r") {
			return "", fmt.Errorf("newline in value")
		}
		return strconv.Quote(x), nil
	case bool:
		return strconv.FormatBool(x), nil
	case int:
		return strconv.Itoa(x), nil
	case int64:
		return strconv.FormatInt(x, 10), nil
	case uint64:
		return strconv.FormatUint(x, 10), nil
	case []int:
		parts := make([]string, len(x))
		for i, n := range x {
			parts[i] = strconv.Itoa(n)
		}
		return "[" + strings.Join(parts, ", ") + "]", nil
	case float64:
		f := strconv.FormatFloat(x, 'f', -1, 64)
		if !strings.ContainsAny(f, ".eEn") { // keep it a TOML float, not an integer
			f += ".0"
		}
		return f, nil
	default:
		return "", fmt.Errorf("unsupported value type %T", v)
	}
}

func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case d.Type().IsRegular():
			return copyFile(p, target, 0o644)
		default:
			return nil // links and special files are not configuration
		}
	})
}

// GatewayUnit is the unit vagentd runs as.
const GatewayUnit = "vagentd.service"

// InstallGateway installs the packaged vagentd unit (serviceFile, the
// repository's packaging/vagentd.service) into the sandbox as GatewayUnit,
// changed only in what a sandbox needs: ExecStart runs the vagentd that
// Build put into BinDir, with $VAGENT_CONFIG set to config; more lists
// further old→new replacements, each of which must match. Then it reloads
// systemd; starting the unit is the caller's.
func (s *Sandbox) InstallGateway(ctx context.Context, serviceFile, config string, more ...[2]string) error {
	data, err := os.ReadFile(serviceFile)
	if err != nil {
		return fmt.Errorf("install vagentd unit: %w", err)
	}
	unit := string(data)
	repl := append([][2]string{{"ExecStart=/usr/bin/vagentd\n",
		"ExecStart=" + filepath.Join(s.BinDir(), "vagentd") + "\nEnvironment=VAGENT_CONFIG=" + config + "\n"}}, more...)
	for _, r := range repl {
		if !strings.Contains(unit, r[0]) {
			return fmt.Errorf("install vagentd unit: %s lacks %q", serviceFile, r[0])
		}
		unit = strings.Replace(unit, r[0], r[1], 1)
	}
	if err := os.WriteFile(filepath.Join(s.UnitDir(), GatewayUnit), []byte(unit), 0o644); err != nil {
		return fmt.Errorf("install vagentd unit: %w", err)
	}
	if _, err := s.Systemctl(ctx, "daemon-reload"); err != nil {
		return fmt.Errorf("install vagentd unit: %w", err)
	}
	return nil
}
