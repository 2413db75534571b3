package gpu

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vagent-dev/vagent/config"
)

const (
	mib = 1 << 20
	gib = 1 << 30
)

// fakeProcRoot writes PID/cgroup files under a temporary proc root.
func fakeProcRoot(t *testing.T, cgroups map[int]string) string {
	t.Helper()
	root := t.TempDir()
	for pid, content := range cgroups {
		dir := filepath.Join(root, strconv.Itoa(pid))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestCheckComputeCapability(t *testing.T) {
	cases := []struct {
		name         string
		major, minor int
		awq          bool
		wantErr      string
	}{
		{"Pascal P100", 6, 0, false, "compute capability 6.0: vLLM needs 7.0 or newer"},
		{"GTX 1080 with AWQ", 6, 1, true, "vLLM needs 7.0 or newer"},
		{"V100", 7, 0, false, ""},
		{"V100 with AWQ", 7, 0, true, "compute capability 7.0: vLLM's AWQ kernels need 7.5 or newer"},
		{"T4 with AWQ", 7, 5, true, ""},
		{"A100 with AWQ", 8, 0, true, ""},
		{"H200", 9, 0, false, ""},
		{"Blackwell 10.0 with AWQ", 10, 0, true, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := CheckComputeCapability(Device{Index: 3, Name: c.name, ComputeMajor: c.major, ComputeMinor: c.minor}, c.awq)
			if c.wantErr == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted, want %q", c.wantErr)
			}
			if !strings.Contains(err.Error(), c.wantErr) || !strings.Contains(err.Error(), "GPU 3 ("+c.name+")") {
				t.Errorf("error %q lacks %q or the GPU", err, c.wantErr)
			}
		})
	}
}

func TestFits(t *testing.T) {
	info := Info{Devices: []Device{
		{Index: 0, Name: "NVIDIA GeForce RTX 4080", TotalBytes: 16 * gib, FreeBytes: 15 * gib},
		{Index: 1, Name: "NVIDIA GeForce RTX 4080", TotalBytes: 16 * gib, FreeBytes: 3 * gib},
	}}
	if err := Fits(info, []int{0}, 14*gib, 512*mib); err != nil {
		t.Errorf("14 GiB + 512 MiB reserve in 15 GiB free: %v", err)
	}
	if err := Fits(info, []int{0}, 15*gib, 0); err != nil {
		t.Errorf("exact fit refused: %v", err)
	}
	err := Fits(info, []int{0}, 14*gib+768*mib, 512*mib)
	if err == nil || err.Error() != "gpu: GPU 0 (NVIDIA GeForce RTX 4080) has 15.00 GiB free, needs 14.75 GiB plus 512 MiB reserve" {
		t.Errorf("over by the reserve: %v", err)
	}
	err = Fits(info, []int{0, 1}, 4*gib, 0)
	if err == nil || !strings.Contains(err.Error(), "GPU 1") || !strings.Contains(err.Error(), "3.00 GiB free, needs 4.00 GiB") {
		t.Errorf("second GPU too full: %v", err)
	}
	err = Fits(info, []int{2}, 1, 0)
	if err == nil || err.Error() != "gpu: GPU 2 does not exist (this host has 2)" {
		t.Errorf("missing GPU: %v", err)
	}
	// A reserve larger than what is free must not wrap around.
	if err := Fits(info, []int{1}, 0, 4*gib); err == nil {
		t.Error("reserve above free accepted")
	}
}

func TestFreeAndDevice(t *testing.T) {
	info := Info{Devices: []Device{{Index: 0, FreeBytes: 7}, {Index: 1, FreeBytes: 9}}}
	if Free(info, 1) != 9 || Free(info, 0) != 7 || Free(info, 5) != 0 {
		t.Errorf("Free: %d %d %d", Free(info, 0), Free(info, 1), Free(info, 5))
	}
	if _, ok := info.Device(-1); ok {
		t.Error("Device(-1) found")
	}
}

func TestFormatBytes(t *testing.T) {
	for in, want := range map[uint64]string{
		0:                "0 B",
		1023:             "1023 B",
		896 * mib:        "896 MiB",
		15440406429:      "14.38 GiB",
		16376 * mib:      "15.99 GiB",
		(3 << 10) + 1000: "4 KiB",
	} {
		if got := FormatBytes(in); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", in, got, want)
		}
	}
}

func TestOpenUnknownBackend(t *testing.T) {
	_, err := Open(&config.Config{GPU: config.GPU{Backend: "rocm"}})
	if err == nil || !strings.Contains(err.Error(), `unknown backend "rocm"`) {
		t.Errorf("err = %v", err)
	}
}
