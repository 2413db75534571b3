package e2e

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vagent-dev/vagent/models"
	"github.com/vagent-dev/vagent/models/hubtest"
)

// benchFileMiB is the size of the weights file the pull benchmarks fetch.
const benchFileMiB = 256

// Targets the pull benchmarks print their results against.
const (
	// targetPullRatio: a pull's throughput over curl's, fetching the same
	// file from the same server in the same run.
	targetPullRatio = 0.9
	// targetResumeLatency: from a dropped connection to the first byte of
	// the resumed download.
	targetResumeLatency = 500 * time.Millisecond
	// targetResumeNewPull: from the start of a pull that finds a partial
	// file to its resumed download.
	targetResumeNewPull = time.Second
)

func pullBenchRepo() *hubtest.Repo {
	r := hubtest.ModelRepo("Qwen/Bench-0.5B", benchFileMiB<<20)
	return r
}

// pullOnce pulls repo into a fresh HF home under dir, with the options
// vagentctl pull uses, and removes it afterwards.
func pullOnce(b *testing.B, srv *hubtest.Server, dir, repo string) time.Duration {
	b.Helper()
	home, err := os.MkdirTemp(dir, "hf-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(home)
	p, err := models.New(models.Options{HFHome: home, Endpoint: srv.URL, Jobs: 4, Durable: true})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(b.Context(), 5*time.Minute)
	defer cancel()
	t0 := time.Now()
	if _, err := p.Pull(ctx, "", repo, ""); err != nil {
		b.Fatal(err)
	}
	return time.Since(t0)
}

// curlOnce fetches the same file with curl the way a user would: through
// the resolve URL, following the redirect to the CDN, into a file.
func curlOnce(b *testing.B, curl, url, dir string) time.Duration {
	b.Helper()
	out := filepath.Join(dir, "curl.out")
	defer os.Remove(out)
	t0 := time.Now()
	if msg, err := exec.Command(curl, "-sSfL", "-o", out, url).CombinedOutput(); err != nil {
		b.Fatalf("curl %s: %v: %s", url, err, msg)
	}
	d := time.Since(t0)
	// curl leaves the data in the page cache like the pull; both are
	// measured to the point the file is written, and the pull also
	// fsyncs and verifies. Make curl's result durable too, outside the
	// timing, so that the next round starts from the same disk state.
	exec.Command("sync", out).Run()
	return d
}

func pullMedian(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkPullThroughput pulls a 256 MiB model file from a local
// Hub-speaking server and fetches the same file with curl in the same run,
// alternating, and reports the pull's throughput as a ratio of curl's
// (medians of several rounds). Target: at least 0.9.
func BenchmarkPullThroughput(b *testing.B) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		b.Skipf("curl not found: the pull/curl ratio needs curl in PATH (apt-get install curl); nothing measured")
	}
	repo := pullBenchRepo()
	srv := hubtest.New(repo)
	defer srv.Close()
	dir := b.TempDir()
	url := fmt.Sprintf("%s/%s/resolve/%s/model.safetensors", srv.URL, repo.ID, repo.Commit)
	const rounds = 5
	// Warm up both paths (page cache of the server's data, connections).
	curlOnce(b, curl, url, dir)
	pullOnce(b, srv, dir, repo.ID)
	b.ResetTimer()
	var pulls, curls []time.Duration
	for range b.N {
		for range rounds {
			curls = append(curls, curlOnce(b, curl, url, dir))
			pulls = append(pulls, pullOnce(b, srv, dir, repo.ID))
		}
	}
	b.StopTimer()
	size := float64(benchFileMiB << 20)
	pullT, curlT := pullMedian(pulls), pullMedian(curls)
	// A verified pull cannot beat sha256 on one core: where curl on
	// loopback is faster than that, the ratio is capped by the CPU.
	var hashes []time.Duration
	for range 3 {
		t0 := time.Now()
		sha256.Sum256(repo.File("model.safetensors").Data)
		hashes = append(hashes, time.Since(t0))
	}
	hashT := pullMedian(hashes)
	ratio := curlT.Seconds() / pullT.Seconds()
	mibs := func(d time.Duration) float64 { return size / (1 << 20) / d.Seconds() }
	b.ReportMetric(ratio, "pull/curl")
	b.ReportMetric(mibs(pullT), "pull-MiB/s")
	b.ReportMetric(mibs(curlT), "curl-MiB/s")
	verdict := "meets"
	if ratio < targetPullRatio {
		verdict = "BELOW"
	}
	b.ReportMetric(mibs(hashT), "sha256-MiB/s")
	fmt.Printf("pull throughput: %.0f MiB/s vs curl %.0f MiB/s on a %d MiB file: ratio %.2f (target >= %.2f: %s; medians of %d rounds; "+
		"unlike curl, the pull also verifies sha256 (%.0f MiB/s over one cold buffer on one core here) and fsyncs inside its timing, "+
		"and the test server shares its process: on a machine with few cores that CPU is the ceiling)\n",
		mibs(pullT), mibs(curlT), benchFileMiB, ratio, targetPullRatio, verdict, len(pulls), mibs(hashT))
}

// BenchmarkPullResume cuts the connection half way through a 256 MiB file
// and measures how soon the download continues: within the same pull (the
// connection dropped and retried; target: at most 500 ms from the cut to
// the resumed request), and in a new pull after the first one was stopped
// at the cut, as by Ctrl-C (target: at most 1 s from the new pull's start to
// its resumed request, which includes listing the repository and re-reading
// the 128 MiB already on disk to continue its sha256). Each resumed request
// must ask for exactly the missing bytes: a resume, not a restart.
func BenchmarkPullResume(b *testing.B) {
	repo := pullBenchRepo()
	w := repo.File("model.safetensors")
	srv := hubtest.New(repo)
	defer srv.Close()
	dir := b.TempDir()
	const cut = benchFileMiB << 19 // half the file
	pullOnce(b, srv, dir, repo.ID)
	want := fmt.Sprintf("bytes=%d-", cut)
	// cdn returns the first plain and the first ranged download of the
	// file since the log was reset.
	cdn := func() (plain, ranged *hubtest.Request) {
		reqs := srv.Requests()
		for i := range reqs {
			r := &reqs[i]
			switch {
			case !strings.HasPrefix(r.Path, "/cdn/"):
			case r.Range == "" && plain == nil:
				plain = r
			case r.Range != "" && ranged == nil:
				ranged = r
			}
		}
		if ranged == nil {
			b.Fatalf("no resumed download: %+v", reqs)
		}
		if ranged.Range != want {
			b.Fatalf("resumed with %q, want %s", ranged.Range, want)
		}
		return plain, ranged
	}
	b.ResetTimer()
	var inPull, newPull []time.Duration
	for range b.N {
		for range 3 {
			// The connection drops; the same pull resumes.
			srv.ResetLog()
			srv.DropAfter(w, cut)
			pullOnce(b, srv, dir, repo.ID)
			dropped, resumed := cdn()
			inPull = append(inPull, resumed.Start.Sub(dropped.End))

			// The connection drops and the pull is stopped there; a new
			// pull continues the partial file.
			home, err := os.MkdirTemp(dir, "hf-")
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(b.Context())
			p, _ := models.New(models.Options{HFHome: home, Endpoint: srv.URL, Durable: true,
				Progress: func(e models.Event) {
					if e.Event == models.EventError && e.Retry {
						cancel()
					}
				}})
			srv.DropAfter(w, cut)
			if _, err := p.Pull(ctx, "", repo.ID, ""); err == nil {
				b.Fatal("the stopped pull finished")
			}
			cancel()
			srv.ResetLog()
			p, _ = models.New(models.Options{HFHome: home, Endpoint: srv.URL, Durable: true})
			t0 := time.Now()
			if _, err := p.Pull(b.Context(), "", repo.ID, ""); err != nil {
				b.Fatal(err)
			}
			_, resumed = cdn()
			newPull = append(newPull, resumed.Start.Sub(t0))
			os.RemoveAll(home)
		}
	}
	b.StopTimer()
	in, next := pullMedian(inPull), pullMedian(newPull)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(in), "resume-ms")
	b.ReportMetric(ms(next), "resume-new-pull-ms")
	verdict := func(ok bool) string {
		if ok {
			return "meets"
		}
		return "MISSES"
	}
	fmt.Printf("pull resume after a connection cut half way through a %d MiB file: %.1f ms to the resumed request within the pull (target <= %d ms: %s); "+
		"%.1f ms from a new pull's start to its resumed request (target <= %d ms: %s); both asked for exactly the missing %d MiB\n",
		benchFileMiB, ms(in), targetResumeLatency.Milliseconds(), verdict(in <= targetResumeLatency),
		ms(next), targetResumeNewPull.Milliseconds(), verdict(next <= targetResumeNewPull), benchFileMiB/2)
}
