package archive

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// bundleAll streams the sources rels of dir into tarballs in spool the way
// the bundler does (verify, tar, compress, seal at MaxSize, fsync), without
// manifests or uploads. It returns the compressed bytes written.
func bundleAll(tb testing.TB, a *Archiver, rels []string) int64 {
	var v verifier
	open := make(map[string]*bundle)
	var out int64
	seal := func(bd *bundle) {
		if err := bd.finish(a); err != nil {
			tb.Fatal(err)
		}
		out += bd.size()
		os.Remove(bd.path)
		delete(open, bd.date)
	}
	for _, rel := range rels {
		s, err := a.openSource(&v, rel, false)
		if err != nil {
			tb.Fatal(err)
		}
		date := rel[:10]
		bd := open[date]
		if bd != nil && bd.size()+s.size > a.cfg.MaxSize {
			seal(bd)
			bd = nil
		}
		if bd == nil {
			if bd, err = a.newBundle(date, a.cfg.Compression); err != nil {
				tb.Fatal(err)
			}
			open[date] = bd
		}
		if err := bd.add(s); err != nil {
			tb.Fatal(err)
		}
		s.close()
	}
	for _, bd := range open {
		seal(bd)
	}
	return out
}

func BenchmarkBundle(b *testing.B) {
	dir := b.TempDir()
	rels := genCorpus(b, dir, 20<<20, 1)
	var total int64
	for _, rel := range rels {
		fi, err := os.Stat(filepath.Join(dir, rel))
		if err != nil {
			b.Fatal(err)
		}
		total += fi.Size()
	}
	for _, tc := range []struct {
		comp string
		disk bool
	}{{"gzip", false}, {"zstd", false}, {"gzip", true}} {
		name := tc.comp + "/cpu"
		if tc.disk {
			name = tc.comp + "/disk"
		}
		// cpu: tarballs go to a discarding file (verify, tar, compress,
		// checksum); disk: to real files, fsynced.
		b.Run(name, func(b *testing.B) {
			cfg := testConfig(b, dir)
			cfg.Compression = tc.comp
			cfg.MaxSize = DefaultMaxSize
			a, err := New(cfg, newFakeStore(), nil)
			if err != nil {
				b.Fatal(err)
			}
			if !tc.disk {
				a.createSpool = func(string) (spoolFile, error) { return discardFile{}, nil }
			}
			if err := os.MkdirAll(a.cfg.SpoolDir, 0o755); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(total)
			b.ReportAllocs()
			var out int64
			for b.Loop() {
				out = bundleAll(b, a, rels)
			}
			b.ReportMetric(100*float64(out)/float64(total), "%size")
			b.ReportMetric(float64(len(rels)), "files/op")
		})
	}
}

// TestThroughput measures bundling against tar czf on the same files. It
// runs only with ARCHIVE_BENCH=1 (see bench.sh). ARCHIVE_BENCH_MB sets the
// backlog size (default 200), ARCHIVE_BENCH_DIR keeps the generated backlog
// there for later runs.
func TestThroughput(t *testing.T) {
	if os.Getenv("ARCHIVE_BENCH") == "" {
		t.Skip("set ARCHIVE_BENCH=1 (or run archive/bench.sh)")
	}
	mb := 200
	if s := os.Getenv("ARCHIVE_BENCH_MB"); s != "" {
		var err error
		if mb, err = strconv.Atoi(s); err != nil {
			t.Fatal(err)
		}
	}
	src := os.Getenv("ARCHIVE_BENCH_DIR")
	if src == "" {
		src = t.TempDir()
	}
	work := t.TempDir() // same file system as the data dir for the archiver runs
	marker := filepath.Join(src, fmt.Sprintf(".corpus-%dMB", mb))
	if _, err := os.Stat(marker); err != nil {
		os.RemoveAll(filepath.Join(src, "2024"))
		t0 := time.Now()
		genCorpus(t, src, int64(mb)<<20, 1)
		if err := os.WriteFile(marker, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("generated backlog in %v", time.Since(t0).Round(time.Millisecond))
	}
	var rels []string
	var total int64
	err := filepath.WalkDir(filepath.Join(src, "2024"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		rels = append(rels, filepath.ToSlash(rel))
		total += fi.Size()
		// Warm the page cache so that every contender reads from memory.
		_, err = io.Copy(io.Discard, mustOpen(t, p))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	rate := func(d time.Duration) float64 { return float64(total) / 1e6 / d.Seconds() }
	report := func(what string, wall, cpu time.Duration, out int64) {
		t.Logf("%-50s %6.1f MB/s wall %6.1f MB/cpu-s  %6.2fs wall %6.2fs cpu  out %5.1f%%",
			what, rate(wall), rate(cpu), wall.Seconds(), cpu.Seconds(), 100*float64(out)/float64(total))
	}
	t.Logf("backlog: %d files, %.1f MB of pcap.gz; %d CPUs; load %s", len(rels), float64(total)/1e6, runtime.NumCPU(), loadavg())
	t.Logf("%-50s %s", "", "(MB/s wall depends on other load; MB/cpu-s does not)")

	// tar czf on the same files.
	if _, err := exec.LookPath("tar"); err == nil {
		tgz := filepath.Join(work, "all.tgz")
		t0, c0 := time.Now(), cpuTime(syscall.RUSAGE_CHILDREN)
		var stderr bytes.Buffer
		cmd := exec.Command("tar", "czf", tgz, "-C", src, "2024")
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("tar czf: %v: %s", err, stderr.String())
		}
		d, c := time.Since(t0), cpuTime(syscall.RUSAGE_CHILDREN)-c0
		fi, _ := os.Stat(tgz)
		report("tar czf (tar + gzip -6)", d, c, fi.Size())
		os.Remove(tgz)
	}

	for _, comp := range []string{"gzip", "zstd"} {
		// The bundle writer alone: verify, tar, compress, checksum; then
		// the same writing real files with fsync.
		cfg := testConfig(t, src)
		cfg.SpoolDir = filepath.Join(work, "spool-"+comp)
		cfg.Compression = comp
		cfg.MaxSize = DefaultMaxSize
		a, err := New(cfg, newFakeStore(), nil)
		if err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(cfg.SpoolDir, 0o755)
		a.createSpool = func(string) (spoolFile, error) { return discardFile{}, nil }
		t0, c0 := time.Now(), cpuTime(syscall.RUSAGE_SELF)
		out := bundleAll(t, a, rels)
		report("bundle writer "+comp+": verify+tar+compress", time.Since(t0), cpuTime(syscall.RUSAGE_SELF)-c0, out)
		a.createSpool = createSpoolFile
		t0, c0 = time.Now(), cpuTime(syscall.RUSAGE_SELF)
		out = bundleAll(t, a, rels)
		report("bundle writer "+comp+": + write + fsync", time.Since(t0), cpuTime(syscall.RUSAGE_SELF)-c0, out)

		// The whole archiver on a hard-linked copy of the backlog: scan,
		// verify, bundle, seal, "upload" (CRC read), delete.
		data := filepath.Join(work, "data-"+comp)
		for _, rel := range rels {
			p := filepath.Join(data, filepath.FromSlash(rel))
			os.MkdirAll(filepath.Dir(p), 0o755)
			if err := os.Link(filepath.Join(src, filepath.FromSlash(rel)), p); err != nil {
				t.Fatal(err)
			}
		}
		cfg = testConfig(t, data)
		cfg.Compression = comp
		cfg.MaxSize = DefaultMaxSize
		cfg.MaxAge = 100 * time.Millisecond
		store := newFakeStore()
		store.discard = true
		a, err = New(cfg, store, nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		t0, c0 = time.Now(), cpuTime(syscall.RUSAGE_SELF)
		go func() { done <- a.Run(ctx) }()
		waitFor(t, "archiver", func() bool { return len(files(t, data)) == 0 }, 30*time.Minute)
		d, c := time.Since(t0), cpuTime(syscall.RUSAGE_SELF)-c0
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		var stored int64
		for _, n := range store.names() {
			stored += store.object(n).size
		}
		report("archiver end to end "+comp, d, c, stored)
	}
}

// cpuTime returns user+system CPU time of this process (RUSAGE_SELF) or of
// its waited-for children (RUSAGE_CHILDREN).
func cpuTime(who int) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

// discardFile is a spool file that keeps nothing.
type discardFile struct{}

func (discardFile) Write(p []byte) (int, error) { return len(p), nil }
func (discardFile) Sync() error                 { return nil }
func (discardFile) Close() error                { return nil }

func mustOpen(t *testing.T, p string) io.Reader {
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}
