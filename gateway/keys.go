package gateway

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/vagent-dev/vagent/config"
)

// Key scopes.
const (
	// ScopeInference may use the OpenAI API for the key's agents.
	ScopeInference = "inference"
	// ScopeAdmin may also use the control API (/vagent/v1/).
	ScopeAdmin = "admin"
)

// Keys are the client API keys from the keys file. Only SHA-256 digests are
// kept in memory, and a presented key is compared with every digest in
// constant time.
type Keys struct {
	file    string
	entries []*keyEntry
}

type keyEntry struct {
	name   string
	sum    [sha256.Size]byte
	agents []string // agent names or aliases; "*" for all
	all    bool
	admin  bool
}

// allows reports whether the key may use agent a.
func (k *keyEntry) allows(a *config.Agent) bool {
	if k.all {
		return true
	}
	for _, n := range k.agents {
		for _, an := range a.Names() {
			if n == an {
				return true
			}
		}
	}
	return false
}

// keyFile is the keys file's TOML shape:
//
//	[[key]]
//	name = "alice"
//	key = "sk-..."          # or key_sha256 = "<64 hex digits>"
//	agents = ["dev", "po"]  # or ["*"]
//	scope = "inference"     # or "admin"
type keyFile struct {
	Key []struct {
		Name      string   `toml:"name"`
		Key       string   `toml:"key"`
		KeySHA256 string   `toml:"key_sha256"`
		Agents    []string `toml:"agents"`
		Scope     string   `toml:"scope"`
	} `toml:"key"`
}

// LoadKeys reads the keys file at path. It refuses a file that others may
// read or that group or others may write, since it holds secrets and grants
// access; every bad entry is reported with the file, line and field.
func LoadKeys(path string) (*Keys, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("keys file: %w", err)
	}
	if mode := fi.Mode().Perm(); mode&0o004 != 0 || mode&0o022 != 0 {
		return nil, fmt.Errorf("keys file %s: mode %#o lets other users read or change API keys: "+
			"chmod 0640 %s (owner root, group vagent) or 0600", path, mode, path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("keys file: %w", err)
	}
	return parseKeys(path, data)
}

func parseKeys(path string, data []byte) (*Keys, error) {
	var f keyFile
	md, err := toml.Decode(string(data), &f)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("%s:%d: %s", path, pe.Position.Line, pe.Message)
		}
		return nil, fmt.Errorf("%s: %s", path, strings.TrimPrefix(err.Error(), "toml: "))
	}
	var errs []error
	fail := func(idx int, field, format string, a ...any) {
		line := keyLine(data, idx, field)
		loc := path
		if line > 0 {
			loc = fmt.Sprintf("%s:%d", path, line)
		}
		errs = append(errs, fmt.Errorf("%s: key[%d].%s: %s", loc, idx, field, fmt.Sprintf(format, a...)))
	}
	for _, k := range md.Undecoded() {
		field := k.String()
		if len(k) > 0 {
			field = k[len(k)-1]
		}
		line := keyLine(data, -1, field)
		loc := path
		if line > 0 {
			loc = fmt.Sprintf("%s:%d", path, line)
		}
		errs = append(errs, fmt.Errorf("%s: %s: unknown key", loc, k.String()))
	}
	ks := &Keys{file: path}
	names := map[string]int{}
	sums := map[[sha256.Size]byte]int{}
	for i, k := range f.Key {
		e := &keyEntry{name: k.Name, agents: k.Agents}
		if k.Name == "" {
			fail(i, "name", "missing: every key needs a name (it appears in logs)")
		} else if j, dup := names[k.Name]; dup {
			fail(i, "name", "%q is also the name of key[%d]", k.Name, j)
		} else {
			names[k.Name] = i
		}
		switch {
		case k.Key != "" && k.KeySHA256 != "":
			fail(i, "key_sha256", "set key or key_sha256, not both")
		case k.Key != "":
			if len(k.Key) < 16 {
				fail(i, "key", "too short: use at least 16 characters (e.g. openssl rand -hex 24)")
			}
			e.sum = sha256.Sum256([]byte(k.Key))
		case k.KeySHA256 != "":
			b, err := hex.DecodeString(k.KeySHA256)
			if err != nil || len(b) != sha256.Size {
				fail(i, "key_sha256", "want 64 hex digits (sha256sum of the key)")
			}
			copy(e.sum[:], b)
		default:
			fail(i, "key", "missing: set key or key_sha256")
		}
		if j, dup := sums[e.sum]; dup && e.sum != ([sha256.Size]byte{}) {
			fail(i, "key", "the same key as key[%d]", j)
		}
		sums[e.sum] = i
		switch k.Scope {
		case "", ScopeInference:
		case ScopeAdmin:
			e.admin = true
		default:
			fail(i, "scope", "%q: want %q or %q", k.Scope, ScopeInference, ScopeAdmin)
		}
		if len(k.Agents) == 0 {
			fail(i, "agents", "missing: list the agents this key may use, or [\"*\"] for all")
		}
		for _, a := range k.Agents {
			if a == "*" {
				e.all = true
			} else if a == "" {
				fail(i, "agents", "empty agent name")
			}
		}
		ks.entries = append(ks.entries, e)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if len(ks.entries) == 0 {
		return nil, fmt.Errorf("%s: no [[key]] entries: every request would be refused", path)
	}
	return ks, nil
}

// keyLine finds the line of field in the idx-th [[key]] table (any table
// when idx < 0), or of the table's header when the field is not written; 0
// when not found.
func keyLine(data []byte, idx int, field string) int {
	table, header := -1, 0
	for i, raw := range strings.Split(string(data), "\n") {
		line := strings.TrimSpace(raw)
		if strings.HasPrefix(line, "[[") {
			if strings.Trim(line, "[] \t") == "key" {
				table++
				if table == idx {
					header = i + 1
				}
			}
			continue
		}
		if idx >= 0 && table != idx {
			continue
		}
		k, _, ok := strings.Cut(line, "=")
		if ok && strings.Trim(strings.TrimSpace(k), `"'`) == field {
			return i + 1
		}
	}
	return header
}

// lookup returns the entry for a presented key, or nil. Every entry is
// compared, in constant time, so timing does not tell how close a guess was.
func (k *Keys) lookup(token string) *keyEntry {
	sum := sha256.Sum256([]byte(token))
	var found *keyEntry
	for _, e := range k.entries {
		if subtle.ConstantTimeCompare(sum[:], e.sum[:]) == 1 {
			found = e
		}
	}
	return found
}

// unknownAgents lists, for a warning, agent names the keys grant that the
// configuration does not define.
func (k *Keys) unknownAgents(cfg *config.Config) []string {
	known := map[string]bool{}
	for _, a := range cfg.Agents {
		for _, n := range a.Names() {
			known[n] = true
		}
	}
	var out []string
	for _, e := range k.entries {
		for _, a := range e.agents {
			if a != "*" && !known[a] {
				out = append(out, fmt.Sprintf("%s (key %s)", a, e.name))
			}
		}
	}
	return out
}

// bearer returns the token of an "Authorization: Bearer TOKEN" header.
func bearer(h string) (string, bool) {
	const p = "Bearer "
	if len(h) > len(p) && strings.EqualFold(h[:len(p)], p) {
		return strings.TrimSpace(h[len(p):]), true
	}
	return "", false
}

// named returns the entry called name, or nil.
func (k *Keys) named(name string) *keyEntry {
	for _, e := range k.entries {
		if e.name == name {
			return e
		}
	}
	return nil
}
