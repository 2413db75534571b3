package gpu

import (
	"os"
	"testing"
)

func TestUnitFromCgroup(t *testing.T) {
	cases := []struct {
		name, content, unit, agent string
	}{
		{"v2", "0::/system.slice/system-vagent.slice/vagent@dev.service\n", "vagent@dev.service", "dev"},
		{"v2 delegated sub-cgroup", "0::/system.slice/system-vagent.slice/vagent@po.service/engine/worker-1\n", "vagent@po.service", "po"},
		{"v2 under a container's prefix", "0::/machine.slice/test.scope/system.slice/system-vagent.slice/vagent@architect.service\n", "vagent@architect.service", "architect"},
		{"v1", "12:pids:/system.slice/system-vagent.slice/vagent@dev.service\n" +
			"11:cpuset:/\n" +
			"4:memory:/system.slice/system-vagent.slice/vagent@dev.service\n" +
			"1:name=systemd:/system.slice/system-vagent.slice/vagent@dev.service\n", "vagent@dev.service", "dev"},
		{"v1 hybrid trusts systemd's line", "5:memory:/system.slice/system-vagent.slice/vagent@stale.service\n" +
			"1:name=systemd:/system.slice/system-vagent.slice/vagent@qwen_7b.service\n" +
			"0::/system.slice/system-vagent.slice/vagent@qwen_7b.service\n", "vagent@qwen_7b.service", "qwen_7b"},
		{"v1 only a controller line names it", "3:cpu,cpuacct:/system.slice/system-vagent.slice/vagent@dev-2.service\n1:name=systemd:/\n", "vagent@dev-2.service", "dev-2"},
		{"not an agent", "0::/system.slice/vagentd.service\n", "", ""},
		{"the template itself is no agent", "0::/system.slice/vagent@.service\n", "", ""},
		{"another unit's instance", "0::/system.slice/system-getty.slice/getty@tty1.service\n", "", ""},
		{"a look-alike name", "0::/system.slice/myvagent@dev.service.d/x\n", "", ""},
		{"empty", "", "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			u, a := unitFromCgroup([]byte(c.content))
			if u != c.unit || a != c.agent {
				t.Errorf("got %q %q, want %q %q", u, a, c.unit, c.agent)
			}
		})
	}
}

func TestUnitOfPIDReadsProcRoot(t *testing.T) {
	root := fakeProcRoot(t, map[int]string{
		42: "0::/system.slice/system-vagent.slice/vagent@dev.service\n",
		43: "0::/init.scope\n",
	})
	if u, a := unitOfPID(root, 42); u != "vagent@dev.service" || a != "dev" {
		t.Errorf("pid 42: %q %q", u, a)
	}
	if u, a := unitOfPID(root, 43); u != "" || a != "" {
		t.Errorf("pid 43: %q %q", u, a)
	}
	if u, _ := unitOfPID(root, 44); u != "" {
		t.Errorf("missing pid: %q", u)
	}
	if u, _ := unitOfPID(root, 0); u != "" {
		t.Errorf("pid 0: %q", u)
	}
}

func TestUnitOfPIDThisProcess(t *testing.T) {
	// A test process runs in no vagent unit; the real /proc must be read
	// without error and give nothing.
	if u, a := UnitOfPID(os.Getpid()); u != "" || a != "" {
		t.Errorf("test process reported in unit %q (agent %q)", u, a)
	}
}
