package archive

import (
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fullFile is a spool file on a file system that fills up after limit
// bytes.
type fullFile struct {
	*os.File
	limit int64
	n     int64
}

func (f *fullFile) Write(p []byte) (int, error) {
	if f.n+int64(len(p)) > f.limit {
		k := max(0, f.limit-f.n)
		n, _ := f.File.Write(p[:k])
		f.n += int64(n)
		return n, &os.PathError{Op: "write", Path: f.Name(), Err: syscall.ENOSPC}
	}
	n, err := f.File.Write(p)
	f.n += int64(n)
	return n, err
}

func TestENOSPCAbortsBundleAndKeepsSources(t *testing.T) {
	for _, tt := range []struct {
		name  string
		size  int   // of each source
		limit int64 // bytes the disk takes
	}{
		// Small bundle: the buffered bytes reach the file only when sealing.
		{"at seal", 2000, 1000},
		// Big bundle: the write fails while adding a member.
		{"while adding", 200 << 10, 300 << 10},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				dir := t.TempDir()
				cfg := testConfig(t, dir)
				cfg.ScanInterval = time.Minute
				cfg.MaxSize = 10 << 20
				want := sources(t, dir, "2024/05/06", 5, tt.size, 1)
				store := newFakeStore()
				var mu sync.Mutex
				fail := 1 // how many more tarballs fail
				var partial string
				r := start(t, cfg, store, func(a *Archiver) {
					a.createSpool = func(path string) (spoolFile, error) {
						f, err := createSpoolFile(path)
						mu.Lock()
						defer mu.Unlock()
						if err != nil || fail == 0 {
							return f, err
						}
						fail--
						partial = path
						return &fullFile{File: f.(*os.File), limit: tt.limit}, nil
					}
				})
				for rel := range want {
					r.a.Add(t.Context(), filepath.Join(dir, rel))
				}
				time.Sleep(cfg.MaxAge)
				synctest.Wait()
				// The first bundle failed: nothing stored, no partial
				// tarball, every source still in place.
				if n := testutil.ToFloat64(r.a.m.enospc); n != 1 {
					t.Fatalf("ENOSPC events = %v", n)
				}
				if n := testutil.ToFloat64(r.a.m.bundlesAborted.WithLabelValues("enospc")); n != 1 {
					t.Errorf("aborted{enospc} = %v", n)
				}
				if _, err := os.Stat(partial); !os.IsNotExist(err) {
					t.Errorf("partial tarball %s still there: %v", partial, err)
				}
				if got := files(t, dir); !slices.Equal(got, slices.Sorted(maps.Keys(want))) {
					t.Errorf("data dir after ENOSPC: %v", got)
				}
				// Space is back: the next scan bundles them again.
				time.Sleep(cfg.ScanInterval + cfg.MaxAge)
				synctest.Wait()
				r.stop(t)
				checkStored(t, store, want)
				if len(files(t, dir)) != 0 || len(spoolFiles(t, filepath.Join(dir, ".archive"))) != 0 {
					t.Error("files left")
				}
				if n := len(store.names()); n != 1 {
					t.Errorf("%d bundles stored, want 1", n)
				}
			})
		})
	}
}

func TestENOSPCBacksOff(t *testing.T) {
	// While the disk stays full, the bundler retries at most once per
	// back-off, not in a tight loop.
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		cfg := testConfig(t, dir)
		cfg.ScanInterval = time.Second
		cfg.RetryMin = time.Second
		cfg.RetryMax = time.Minute
		sources(t, dir, "2024/05/06", 3, 2000, 1)
		var mu sync.Mutex
		var created int
		r := start(t, cfg, newFakeStore(), func(a *Archiver) {
			a.createSpool = func(path string) (spoolFile, error) {
				mu.Lock()
				created++
				mu.Unlock()
				return nil, &os.PathError{Op: "open", Path: path, Err: syscall.ENOSPC}
			}
		})
		time.Sleep(10 * time.Minute)
		synctest.Wait()
		r.stop(t)
		t.Logf("%d tarballs attempted", created)
		// 1+2+4+…+60s back-offs (with jitter down to half) over 10 min.
		if created < 5 || created > 40 {
			t.Errorf("%d tarballs attempted in 10 minutes", created)
		}
		if got := files(t, dir); len(got) != 3 {
			t.Errorf("sources: %v", got)
		}
	})
}
