package units

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// socketLines returns the values of key in the rendered vagentd.socket.
func socketLines(t *testing.T, files Files, key string) []string {
	t.Helper()
	data, ok := files[SocketName]
	if !ok {
		t.Fatalf("Render made no %s: %v", SocketName, keys(files))
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, key+"="); ok {
			out = append(out, v)
		}
	}
	return out
}

// The socket unit listens on exactly the addresses of the configuration:
// the endpoint, each agent's listener, the control socket.
func TestSocketListensWhereConfigured(t *testing.T) {
	cfg := loadConfig(t, "../configs/vagent.toml")
	files := render(t, cfg)
	want := []string{cfg.Gateway.Listen}
	for _, a := range cfg.Agents {
		want = append(want, a.Listen)
	}
	want = append(want, cfg.Gateway.ControlSocket)
	if got := socketLines(t, files, "ListenStream"); !slices.Equal(got, want) {
		t.Errorf("ListenStream= %q, want %q", got, want)
	}
	if got := socketLines(t, files, "SocketGroup"); len(got) != 0 {
		t.Errorf("no gateway.control_group, yet SocketGroup= %q", got)
	}
	for key, want := range map[string]string{"SocketMode": "0660", "FileDescriptorName": SocketFDName, "Backlog": "4096", "FreeBind": "yes"} {
		if got := socketLines(t, files, key); !slices.Equal(got, []string{want}) {
			t.Errorf("%s= %q, want %q", key, got, want)
		}
	}

	cfg.Gateway.ControlGroup = "vagent"
	cfg.Gateway.MaxConnections = 300
	cfg.Gateway.Listen = "[::1]:9090"
	cfg.Agent("dev").Listen = ":9091"
	cfg.Agent("po").Listen = "localhost:9092"
	cfg.Agent("architect").Listen = ""
	cfg.Gateway.ControlSocket = "/run/vagent 100%/ctl.sock"
	files = render(t, cfg)
	if got, want := socketLines(t, files, "ListenStream"), []string{"[::1]:9090", "9091", "/run/vagent 100%%/ctl.sock"}; !slices.Equal(got, want) {
		t.Errorf("ListenStream= %q, want %q", got, want)
	}
	if !strings.Contains(string(files[SocketName]), "# listen of agent po: localhost:9092 is not an IP address") {
		t.Errorf("a host name is left out without a word:\n%s", files[SocketName])
	}
	if got := socketLines(t, files, "SocketGroup"); !slices.Equal(got, []string{"vagent"}) {
		t.Errorf("SocketGroup= %q, want vagent", got)
	}
	if got := socketLines(t, files, "Backlog"); !slices.Equal(got, []string{"300"}) {
		t.Errorf("Backlog= %q, want gateway.max_connections 300", got)
	}
}

func TestSocketAddress(t *testing.T) {
	for in, want := range map[string]string{
		"127.0.0.1:8080":   "127.0.0.1:8080",
		":8080":            "8080",
		"0.0.0.0:80":       "0.0.0.0:80",
		"[::1]:8080":       "[::1]:8080",
		"[fe80::1%lo]:80":  "[fe80::1%lo]:80",
		"localhost:8080":   "",
		"example.org:8080": "",
		"8080":             "",
	} {
		got, ok := SocketAddress(in)
		if got != want || ok != (want != "") {
			t.Errorf("SocketAddress(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}

// A configuration value that would add a directive is refused, naming its
// field.
func TestSocketRefusesNewlines(t *testing.T) {
	cfg := loadConfig(t, "../configs/vagent.toml")
	cfg.Gateway.ControlGroup = "vagent\nExecStartPre=/bin/sh"
	_, err := Render(cfg, nil)
	if err == nil || !strings.Contains(err.Error(), "gateway.control_group") {
		t.Fatalf("a control group with a newline: %v", err)
	}
}

// vagentd.socket and the packaged vagentd.service it hands its sockets to
// pass systemd-analyze verify together.
func TestSocketVerifies(t *testing.T) {
	analyze := systemdAnalyze(t)
	for _, group := range []string{"", "root"} {
		cfg := loadConfig(t, "../configs/vagent.toml")
		cfg.Gateway.ControlGroup = group
		fakeEngine(t, cfg)
		dir := t.TempDir()
		if _, err := Write(dir, render(t, cfg)); err != nil {
			t.Fatal(err)
		}
		svc, err := os.ReadFile("../packaging/vagentd.service")
		if err != nil {
			t.Fatal(err)
		}
		// verify wants ExecStart= to exist: any executable will do.
		bin, err := exec.LookPath("true")
		if err != nil {
			t.Fatal(err)
		}
		svc = []byte(strings.Replace(string(svc), "ExecStart=/usr/bin/vagentd", "ExecStart="+bin, 1))
		if err := os.WriteFile(filepath.Join(dir, "vagentd.service"), svc, 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(analyze, "verify", "--man=no", SocketName, "vagentd.service")
		cmd.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+dir+":", "SYSTEMD_LOG_COLOR=0")
		out, err := cmd.CombinedOutput()
		var bad []string
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, "vagent") || strings.Contains(l, dir) {
				bad = append(bad, l)
			}
		}
		if err != nil || len(bad) > 0 {
			t.Errorf("control_group %q: systemd-analyze verify: %v\n%s", group, err, strings.Join(bad, "\n"))
		}
	}
}

// Write keeps vagentd.socket out of the unit directory when the package's
// copy is the same, and removes a copy it wrote there before.
func TestWriteSocketElsewhere(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(testAgent("dev", 0.4))
	files := render(t, cfg)
	if res := mustWrite(t, dir, files); !res.SocketChanged {
		t.Fatalf("first write: %+v", res)
	}
	res, err := WriteWith(dir, files, WriteOptions{SocketElsewhere: true})
	if err != nil {
		t.Fatal(err)
	}
	if !res.SocketChanged || res.TemplateChanged {
		t.Errorf("socket elsewhere: %+v, want only SocketChanged", res)
	}
	if _, err := os.Stat(filepath.Join(dir, SocketName)); !os.IsNotExist(err) {
		t.Errorf("%s still in the unit directory: %v", SocketName, err)
	}
	if _, err := os.Stat(filepath.Join(dir, TemplateName)); err != nil {
		t.Errorf("the template went with the socket: %v", err)
	}
	// An admin's own vagentd.socket (no vagent header) stays.
	own := "[Socket]\nListenStream=1234\n"
	if err := os.WriteFile(filepath.Join(dir, SocketName), []byte(own), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := WriteWith(dir, files, WriteOptions{SocketElsewhere: true}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, SocketName)); string(got) != own {
		t.Errorf("an admin's vagentd.socket was changed to %q", got)
	}
}
