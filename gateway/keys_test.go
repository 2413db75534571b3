package gateway

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	aliceKey = "sk-alice-0123456789abcdef"
	bobKey   = "sk-bob-0123456789abcdef01"
	adminKey = "sk-admin-0123456789abcdef"
)

func writeKeys(t *testing.T, content string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "keys.toml")
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func testKeys(t *testing.T) *Keys {
	sum := sha256.Sum256([]byte(bobKey))
	p := writeKeys(t, `# client keys
[[key]]
name = "alice"
key = "`+aliceKey+`"
agents = ["a"]

[[key]]
name = "bob"
key_sha256 = "`+hex.EncodeToString(sum[:])+`"
agents = ["*"]
scope = "inference"

[[key]]
name = "ops"
key = "`+adminKey+`"
agents = ["*"]
scope = "admin"
`, 0o640)
	k, err := LoadKeys(p)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestLoadKeysRefusesLooseModes(t *testing.T) {
	for _, mode := range []os.FileMode{0o644, 0o604, 0o660, 0o602, 0o666} {
		p := writeKeys(t, "[[key]]\nname=\"x\"\nkey=\"0123456789abcdefg\"\nagents=[\"*\"]\n", mode)
		_, err := LoadKeys(p)
		if err == nil {
			t.Errorf("mode %#o accepted", mode)
			continue
		}
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not name the file", err)
		}
	}
	p := writeKeys(t, "[[key]]\nname=\"x\"\nkey=\"0123456789abcdefg\"\nagents=[\"*\"]\n", 0o600)
	if _, err := LoadKeys(p); err != nil {
		t.Errorf("0600: %v", err)
	}
}

func TestLoadKeysLocatesBadEntries(t *testing.T) {
	cases := []struct{ content, want string }{
		{"[[key]]\nname = \"a\"\nkey = \"0123456789abcdef0\"\nagents = [\"*\"]\nscope = \"root\"\n", ":5: key[0].scope:"},
		{"[[key]]\nname = \"a\"\nkey = \"0123456789abcdef0\"\nagents = [\"*\"]\n\n[[key]]\nname = \"b\"\nkey = \"short\"\nagents = [\"*\"]\n", ":8: key[1].key: too short"},
		{"[[key]]\nname = \"a\"\nkey_sha256 = \"zz\"\nagents = [\"*\"]\n", ":3: key[0].key_sha256:"},
		{"[[key]]\nname = \"a\"\nkey = \"0123456789abcdef0\"\n", ":1: key[0].agents: missing"},
		{"[[key]]\nname = \"a\"\nkey = \"0123456789abcdef0\"\nagents = [\"*\"]\ncolour = 1\n", ":5: key.colour: unknown key"},
		{"[[key]]\nname = \"a\"\nkey = \"0123456789abcdef0\"\nagents = [\"*\"]\n[[key]]\nname = \"a\"\nkey = \"0123456789abcdef1\"\nagents = [\"*\"]\n", ":6: key[1].name:"},
		{"[[key]\n", "delimiter"},
		{"", "no [[key]] entries"},
	}
	for _, c := range cases {
		p := writeKeys(t, c.content, 0o600)
		_, err := LoadKeys(p)
		if err == nil {
			t.Errorf("accepted:\n%s", c.content)
			continue
		}
		if !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("error %q, want the file and %q", err, c.want)
		}
	}
}

func TestKeysOnInferenceAndControl(t *testing.T) {
	e := newEnv(t, envOpts{keys: testKeys(t)})
	check := func(what string, got, want int, body []byte) {
		t.Helper()
		if got != want {
			t.Errorf("%s: status %d, want %d: %s", what, got, want, body)
		} else if want >= 400 {
			errorOf(t, body)
		}
	}
	st, b := e.chat("a")
	check("no key", st, 401, b)
	st, b = e.chat("a", "Authorization", "Bearer sk-wrong-0123456789abcdef")
	check("wrong key", st, 401, b)
	st, b = e.chat("b", "Authorization", "Bearer "+aliceKey)
	check("alice on b", st, 403, b)
	st, b = e.chat("a", "Authorization", "Bearer "+aliceKey)
	check("alice on a", st, 200, b)
	st, b = e.chat("b", "Authorization", "Bearer "+bobKey)
	check("bob (sha256) on b", st, 200, b)
	// The client's key never reaches the engine.
	for _, r := range append(e.engines["a"].requests(), e.engines["b"].requests()...) {
		if r.Auth != "Bearer "+testEngineKey {
			t.Errorf("engine saw %q", r.Auth)
		}
	}

	ctl := func(key string) (int, []byte) {
		req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/vagent/v1/status", nil)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	st, b = ctl("")
	check("control without key", st, 401, b)
	st, b = ctl(bobKey)
	check("control with inference key", st, 403, b)
	st, b = ctl(adminKey)
	check("control with admin key", st, 200, b)

	// /v1/models shows only what the key may use; /healthz and /metrics are open.
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/v1/models", nil)
	req.Header.Set("Authorization", "Bearer "+aliceKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), `"id":"a"`) || strings.Contains(string(b), `"id":"b"`) {
		t.Errorf("alice's models: %s", b)
	}
	for _, p := range []string{"/healthz", "/metrics"} {
		resp, err := http.Get(e.srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s: %d", p, resp.StatusCode)
		}
	}
}

func TestKeyLookupConstantTimeCompare(t *testing.T) {
	k := testKeys(t)
	if e := k.lookup(aliceKey); e == nil || e.name != "alice" {
		t.Errorf("alice not found")
	}
	if e := k.lookup(bobKey); e == nil || e.name != "bob" {
		t.Errorf("bob (by sha256) not found")
	}
	if e := k.lookup(aliceKey[:len(aliceKey)-1]); e != nil {
		t.Errorf("prefix accepted")
	}
	if _, ok := bearer("bearer " + aliceKey); !ok {
		t.Errorf("scheme is case-insensitive")
	}
}
