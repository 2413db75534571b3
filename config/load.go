package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Error is a configuration problem, located as precisely as the input allows.
type Error struct {
	File  string
	Line  int    // 0 when unknown
	Agent string // empty for the main file
	Field string // TOML key path, e.g. "sampling.temperature"
	Msg   string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	b.WriteString(": ")
	if e.Agent != "" {
		fmt.Fprintf(&b, "agent %q: ", e.Agent)
	}
	if e.Field != "" {
		fmt.Fprintf(&b, "%s: ", e.Field)
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors collects every problem found, so that one run shows them all.
type Errors []*Error

func (es Errors) Error() string {
	parts := make([]string, len(es))
	for i, e := range es {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "\n")
}

// Path resolves the main configuration file: the flag value if set, else
// $VAGENT_CONFIG, else DefaultPath.
func Path(flag string) string {
	if flag != "" {
		return flag
	}
	if p := os.Getenv(EnvPath); p != "" {
		return p
	}
	return DefaultPath
}

// Defaults returns the configuration used for every key a file leaves out.
func Defaults() Config {
	return Config{
		Engine: Engine{
			Kind:        EngineSim,
			VLLMVersion: "0.18.0",
			Venv:        "/var/lib/vagent/engines/current",
			SimBinary:   "/usr/bin/vllm-sim",
		},
		Paths: Paths{
			UnitDir:   "/etc/systemd/system",
			StateDir:  "/var/lib/vagent",
			RunDir:    "/run/vagent",
			HFHome:    "/var/lib/vagent/hf",
			CacheDir:  "/var/cache/vagent",
			AgentsDir: "agents",
		},
		GPU: GPU{
			Backend:     GPUBackendAuto,
			ReserveMiB:  256,
			SimLedger:   "/run/vagent/sim-ledger.json",
			SimCount:    1,
			SimTotalMiB: 16376, // what a "16 GB" card reports: 15.99 GiB
		},
		Gateway: Gateway{
			Listen:        "127.0.0.1:8080",
			ControlSocket: "/run/vagent/vagentd.sock",
			QueueLength:   256,
			MaxWait:       Duration{10 * time.Minute},
			DrainTimeout:  Duration{60 * time.Second},
			// Under vagentd.service's TimeoutStopSec=90s, with room for
			// the cut requests to end.
			ShutdownTimeout: Duration{60 * time.Second},
			FairnessWindow:  Duration{30 * time.Second},
			RequestTimeout:  Duration{30 * time.Minute},

			MaxBodyMiB:        64,
			HeaderTimeout:     Duration{10 * time.Second},
			BodyTimeout:       Duration{60 * time.Second},
			KeepaliveTimeout:  Duration{2 * time.Minute},
			MaxConnections:    4096,
			MaxRequestsPerKey: 1024,
		},
		Units: Units{
			RestartSec:         Duration{5 * time.Second},
			StartTimeout:       Duration{15 * time.Minute},
			StopTimeout:        Duration{30 * time.Second},
			StartLimitBurst:    3,
			StartLimitInterval: Duration{10 * time.Minute},
		},
		Supervisor: Supervisor{
			HealthTimeout:   Duration{15 * time.Minute},
			HealthInterval:  Duration{10 * time.Millisecond},
			ReleaseTimeout:  Duration{30 * time.Second},
			DBusTimeout:     Duration{10 * time.Second},
			SwitchMode:      SwitchRestart,
			StartBackoff:    Duration{5 * time.Second},
			StartBackoffMax: Duration{5 * time.Minute},
		},
		// OpenAI's own bound on a batch input file.
		Batch: Batch{MaxFileMiB: 200},
		Work: Work{
			Concurrency: 4,
			MaxAttempts: 3,
			Retention:   Duration{30 * 24 * time.Hour},
			MaxYield:    Duration{2 * time.Minute},
		},
	}
}

func agentDefaults() Agent {
	return Agent{
		Revision:             "main",
		GPUs:                 []int{0},
		GPUMemoryUtilization: 0.9,
		Dtype:                "auto",
		KVCacheDtype:         "auto",
		TensorParallelSize:   1,
		SleepLevel:           1,
	}
}

// Load reads the main file at path and every *.toml file in its agents
// directory, decodes them strictly and validates the result. Every problem
// found is returned at once as Errors.
func Load(path string) (*Config, error) {
	c := Defaults()
	c.Path = path
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	// Every file is checked whatever the others hold, so that one run
	// shows every problem; checks that need the main file's values run only
	// when it decoded.
	errs, decoded := decodeStrict(path, data, &c, true)
	if decoded {
		errs = append(errs, c.validateMain(data)...)
	}

	dir := c.Paths.AgentsDir
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(filepath.Dir(path), dir)
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.toml"))
	if err != nil {
		return nil, fmt.Errorf("list agents in %s: %w", dir, err)
	}
	sort.Strings(files)
	for _, f := range files {
		a, aerrs := loadAgent(f)
		errs = append(errs, aerrs...)
		if a != nil {
			c.Agents = append(c.Agents, a)
		}
	}
	if decoded {
		errs = append(errs, c.validateAcrossAgents()...)
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return &c, nil
}

func loadAgent(file string) (*Agent, Errors) {
	a := agentDefaults()
	a.File = file
	a.Name = strings.TrimSuffix(filepath.Base(file), ".toml")
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, Errors{{File: file, Agent: a.Name, Msg: err.Error()}}
	}
	errs, decoded := decodeStrict(file, data, &a, false)
	for _, e := range errs {
		e.Agent = a.Name
	}
	if !decoded {
		return nil, errs
	}
	// With only unknown keys the values decoded: check them too.
	return &a, append(errs, a.validate(data)...)
}

// decodeStrict decodes data into v (the main file's Config when main, else
// an Agent) and turns syntax errors, type errors and unknown keys into
// located Errors; an unknown key near a known one gets a "did you mean".
// decoded is false when the values could not be read (syntax or type
// errors), true when at most unknown keys were found.
func decodeStrict(file string, data []byte, v any, main bool) (errs Errors, decoded bool) {
	md, err := toml.Decode(string(data), v)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return Errors{{File: file, Line: pe.Position.Line, Field: pe.LastKey, Msg: pe.Message}}, false
		}
		if m := typeErrRE.FindStringSubmatch(err.Error()); m != nil {
			line, _ := strconv.Atoi(m[1])
			return Errors{{File: file, Line: line, Field: m[2], Msg: m[3]}}, false
		}
		return Errors{{File: file, Msg: strings.TrimPrefix(err.Error(), "toml: ")}}, false
	}
	var known []string
	for _, k := range md.Undecoded() {
		if known == nil {
			known = knownKeys(main)
		}
		msg := "unknown key"
		if s := suggest(k.String(), known); s != "" {
			msg += fmt.Sprintf("; did you mean %q?", s)
		}
		errs = append(errs, &Error{File: file, Line: lineOf(data, k), Field: k.String(), Msg: msg})
	}
	return errs, true
}

// typeErrRE parses the decoder's type errors, whose position is only in the text.
var typeErrRE = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]*)"\): (.*)$`)

// lineOf finds the line defining key in a TOML document: its table header
// line for a table, else the line assigning its last part inside the table
// (or dotted prefix) that holds it. It returns 0 when the key is not written
// literally, e.g. for inline tables.
func lineOf(data []byte, key toml.Key) int {
	if len(key) == 0 {
		return 0
	}
	want := key.String()
	var table string
	for i, raw := range strings.Split(string(data), "\n") {
		line := strings.TrimSpace(raw)
		if line == "" || line[0] == '#' {
			continue
		}
		if strings.HasPrefix(line, "[") {
			h := strings.Trim(strings.SplitN(line, "]", 2)[0], "[ ")
			table = normalizeKey(h)
			if table == want {
				return i + 1
			}
			continue
		}
		eq := strings.IndexByte(line, '=')
		if eq < 0 {
			continue
		}
		k := normalizeKey(line[:eq])
		if table != "" {
			k = table + "." + k
		}
		if k == want || strings.HasPrefix(want, k+".") {
			return i + 1
		}
	}
	return 0
}

func normalizeKey(s string) string {
	parts := strings.Split(s, ".")
	for i, p := range parts {
		parts[i] = strings.Trim(strings.TrimSpace(p), `"'`)
	}
	return strings.Join(parts, ".")
}
