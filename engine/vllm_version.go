package engine

import (
	"strconv"
	"strings"

	"github.com/vagent-dev/vagent/engine/vllmflags"
)

// What differs between vLLM releases that vagent acts on. The flags each
// release accepts are in vllmflags; the rest is here.

// graphsInBudgetMinor is the first vLLM 0.x release that profiles CUDA
// graphs inside the gpu_memory_utilization budget.
const graphsInBudgetMinor = 21

// cuda13Minor is the first vLLM 0.x release whose default wheels are built
// for CUDA 13.
const cuda13Minor = 20

// udsSince is the first vLLM release with --uds (0.10.1, "Add unix domain
// socket support", vllm/entrypoints/openai/cli_args.py): earlier ones listen
// on TCP only.
var udsSince = [3]int{0, 10, 1}

// UnixSockets reports whether vLLM version v can listen on a unix socket
// (--uds). A version that does not parse is taken as new, like
// GraphsInBudget: config refuses those when it loads.
func UnixSockets(v string) bool {
	var nums [3]int
	for i, part := range strings.SplitN(v, ".", 3) {
		j := 0
		for j < len(part) && part[j] >= '0' && part[j] <= '9' {
			j++
		}
		if j == 0 {
			if i < 2 {
				return true
			}
			break
		}
		nums[i], _ = strconv.Atoi(part[:j])
		if j < len(part) {
			break
		}
	}
	for i := range nums {
		if nums[i] != udsSince[i] {
			return nums[i] > udsSince[i]
		}
	}
	return true
}

// VLLMFlags is the flag set of vLLM version (vllmflags.For).
func VLLMFlags(version string) (*vllmflags.Set, error) { return vllmflags.For(version) }

// GraphsInBudget reports whether vLLM version v counts CUDA graphs inside
// its gpu_memory_utilization budget (0.21 and later). A version that does
// not parse is taken as new.
func GraphsInBudget(v string) bool {
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return true
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(strings.TrimFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	if err1 != nil || err2 != nil {
		return true
	}
	return major > 0 || minor >= graphsInBudgetMinor
}

// CUDA13Wheels reports whether vLLM version v's default wheels are built
// for CUDA 13 (0.20 and later; "0.20rc1" counts as 0.20). A version that
// does not parse is taken as old.
func CUDA13Wheels(v string) bool { return versionAtLeast(v, 0, cuda13Minor) }

// VLLMRequirement is the pip requirement that installs vLLM version v.
func VLLMRequirement(v string) string { return "vllm==" + v }

// VLLMVersionScript is the Python that prints the version of the vLLM a
// venv imports.
const VLLMVersionScript = "import vllm; print(vllm.__version__)"

// versionAtLeast reports whether version's first two numbers are at least
// major.minor ("0.20rc1" counts as 0.20).
func versionAtLeast(version string, major, minor int) bool {
	var nums []int
	for _, part := range strings.Split(version, ".") {
		i := 0
		for i < len(part) && part[i] >= '0' && part[i] <= '9' {
			i++
		}
		if i == 0 {
			break
		}
		n, _ := strconv.Atoi(part[:i])
		nums = append(nums, n)
		if len(nums) == 2 || i < len(part) {
			break
		}
	}
	if len(nums) < 2 {
		return false
	}
	return nums[0] > major || nums[0] == major && nums[1] >= minor
}
