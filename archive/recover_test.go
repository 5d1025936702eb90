package archive

import (
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// sealDirect bundles rels and seals the bundle the way the bundler does,
// without running anything: the on-disk state right after a seal.
func sealDirect(t *testing.T, cfg Config, rels []string) *sealed {
	t.Helper()
	a, err := New(cfg, newFakeStore(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(a.cfg.SpoolDir, 0o755); err != nil {
		t.Fatal(err)
	}
	var v verifier
	date, err := parseMember(rels[0])
	if err != nil {
		t.Fatal(err)
	}
	bd, err := a.newBundle(date, a.cfg.Compression)
	if err != nil {
		t.Fatal(err)
	}
	for _, rel := range rels {
		s, err := a.openSource(&v, rel, false)
		if err != nil {
			t.Fatal(err)
		}
		if err := bd.add(s); err != nil {
			t.Fatal(err)
		}
		s.close()
	}
	if err := bd.finish(a); err != nil {
		t.Fatal(err)
	}
	s, err := a.writeSealed(bd)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestCrashRecovery(t *testing.T) {
	// Each case turns the state right after a seal into the state a crash
	// at some later point leaves behind. After a restart every source must
	// be stored exactly once, under the original name where that is still
	// possible, and the data and spool dirs must end empty.
	tests := []struct {
		name string
		// crash edits the on-disk state; it may pre-load the store.
		crash func(t *testing.T, s *sealed, dir string, store *fakeStore)
		// original: the bundle must be stored under its sealed name.
		original bool
		// lost: sources the crash deleted without an upload (not expected
		// in the store).
		lost int
		// puts: expected Put calls after the restart (-1: don't check).
		puts int
		// quarantined: expected quarantined bundles.
		quarantined int
	}{
		{
			name:     "after seal before upload",
			crash:    func(*testing.T, *sealed, string, *fakeStore) {},
			original: true, puts: 1,
		},
		{
			name: "after upload before delete",
			crash: func(t *testing.T, s *sealed, dir string, store *fakeStore) {
				storeBundle(t, s, store)
			},
			original: true, puts: 1,
		},
		{
			name: "mid-delete",
			crash: func(t *testing.T, s *sealed, dir string, store *fakeStore) {
				storeBundle(t, s, store)
				for _, m := range s.man.Members[:2] {
					rm(t, filepath.Join(dir, m.Source))
				}
			},
			original: true, puts: 1,
		},
		{
			name: "after deleting tarball before manifest",
			crash: func(t *testing.T, s *sealed, dir string, store *fakeStore) {
				storeBundle(t, s, store)
				for _, m := range s.man.Members {
					rm(t, filepath.Join(dir, m.Source))
				}
				rm(t, s.tarPath)
			},
			original: true, puts: 0,
		},
		{
			name: "tarball without manifest",
			crash: func(t *testing.T, s *sealed, dir string, store *fakeStore) {
				rm(t, s.manPath)
				// And a manifest that was being written.
				if err := os.WriteFile(filepath.Join(dir, ".archive", ".x.json.tmp"), []byte("{"), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			original: false, puts: 1,
		},
		{
			name: "torn tarball with manifest",
			crash: func(t *testing.T, s *sealed, dir string, store *fakeStore) {
				if err := os.Truncate(s.tarPath, s.man.Size/2); err != nil {
					t.Fatal(err)
				}
			},
			original: true, puts: 1,
		},
		{
			// Rebuilding is deterministic: the rebuilt tarball matches the
			// object an earlier run uploaded.
			name: "uploaded then tarball torn",
			crash: func(t *testing.T, s *sealed, dir string, store *fakeStore) {
				storeBundle(t, s, store)
				if err := os.Truncate(s.tarPath, s.man.Size-1); err != nil {
					t.Fatal(err)
				}
			},
			original: true, puts: 1,
		},
		{
			name: "manifest without tarball, sources present",
			crash: func(t *testing.T, s *sealed, dir string, store *fakeStore) {
				rm(t, s.tarPath)
			},
			original: true, puts: 1,
		},
		{
			name: "torn tarball and sources gone",
			crash: func(t *testing.T, s *sealed, dir string, store *fakeStore) {
				if err := os.Truncate(s.tarPath, 100); err != nil {
					t.Fatal(err)
				}
				rm(t, filepath.Join(dir, s.man.Members[0].Source))
			},
			original: false, lost: 1, puts: 1, quarantined: 1,
		},
		{
			name: "unreadable manifest",
			crash: func(t *testing.T, s *sealed, dir string, store *fakeStore) {
				if err := os.WriteFile(s.manPath, []byte(`{"version":1,"object":"../../etc"}`), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			original: false, puts: 1, quarantined: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				dir := t.TempDir()
				cfg := testConfig(t, dir)
				want := sources(t, dir, "2024/05/06", 5, 3000, 1)
				rels := slices.Sorted(maps.Keys(want))
				s := sealDirect(t, cfg, rels)
				original := s.man.Object
				store := newFakeStore()
				tt.crash(t, s, dir, store)
				before := len(store.putNames())
				for _, m := range s.man.Members[:tt.lost] {
					delete(want, m.Source)
				}

				time.Sleep(time.Second) // a later start: new names differ
				r := start(t, cfg, store)
				time.Sleep(cfg.MaxAge)
				synctest.Wait()
				r.stop(t)

				checkStored(t, store, want)
				names := store.names()
				if tt.original && !slices.Equal(names, []string{original}) {
					t.Errorf("stored %v, want only the original %s", names, original)
				}
				if !tt.original && slices.Contains(names, original) {
					t.Errorf("stored under the original name %s", original)
				}
				if got := len(store.putNames()) - before; tt.puts >= 0 && got != tt.puts {
					t.Errorf("%d Puts after restart, want %d", got, tt.puts)
				}
				if left := files(t, dir); len(left) != 0 {
					t.Errorf("data dir not empty: %v", left)
				}
				if left := spoolFiles(t, filepath.Join(dir, ".archive")); len(left) != 0 {
					t.Errorf("spool not empty: %v", left)
				}
				q, _ := os.ReadDir(filepath.Join(dir, ".archive", quarantineDir))
				if got := testutil.ToFloat64(r.a.m.quarantinedBundles.WithLabelValues("tarball")) +
					testutil.ToFloat64(r.a.m.quarantinedBundles.WithLabelValues("manifest")); got != float64(tt.quarantined) {
					t.Errorf("quarantined bundles = %v, want %d", got, tt.quarantined)
				}
				if tt.quarantined > 0 && len(q) == 0 {
					t.Error("nothing in the quarantine")
				}
			})
		})
	}
}

// storeBundle stores s's tarball under its name, as a run that crashed after
// the upload would have.
func storeBundle(t *testing.T, s *sealed, store *fakeStore) {
	t.Helper()
	f, err := os.Open(s.tarPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := store.Put(t.Context(), s.man.Object, f, s.man.Size, s.man.CRC32C); err != nil {
		t.Fatal(err)
	}
}

func rm(t *testing.T, p string) {
	t.Helper()
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
}

func TestRecoveredSourcesNotBundledTwice(t *testing.T) {
	// Two sealed bundles from a crashed run, plus new files in the same date
	// folder: the scan must not bundle the sealed bundles' members again.
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		cfg := testConfig(t, dir)
		want := sources(t, dir, "2024/05/06", 4, 1000, 1)
		rels := slices.Sorted(maps.Keys(want))
		s1 := sealDirect(t, cfg, rels[:2])
		s2 := sealDirect(t, cfg, rels[2:])
		more := sources(t, dir, "2024/05/06", 3, 1000, 2)
		maps.Copy(want, more)

		store := newFakeStore()
		store.block = make(chan struct{})
		r := start(t, cfg, store)
		time.Sleep(2 * cfg.MaxAge) // scans and seals while uploads hang
		synctest.Wait()
		close(store.block)
		synctest.Wait()
		r.stop(t)
		checkStored(t, store, want) // fails on a member stored twice
		names := store.names()
		if !slices.Contains(names, s1.man.Object) || !slices.Contains(names, s2.man.Object) || len(names) != 3 {
			t.Errorf("stored %v", names)
		}
		sort.Strings(names)
		if len(files(t, dir)) != 0 {
			t.Error("sources left")
		}
	})
}

func TestManifestDeletedLast(t *testing.T) {
	// A source that cannot be deleted after the upload keeps the tarball
	// and the manifest (deleted last) until a retry succeeds.
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		cfg := testConfig(t, dir)
		want := sources(t, dir, "2024/05/06", 3, 1000, 1)
		rels := slices.Sorted(maps.Keys(want))
		s := sealDirect(t, cfg, rels)
		// Make one source undeletable: a non-empty directory in its place.
		stuck := filepath.Join(dir, rels[1])
		rm(t, stuck)
		writeSource(t, dir, rels[1]+"/blocker", nil)

		store := newFakeStore()
		r := start(t, cfg, store)
		synctest.Wait()
		if names := store.names(); !slices.Equal(names, []string{s.man.Object}) {
			t.Fatalf("stored %v", names)
		}
		for _, p := range []string{filepath.Join(dir, rels[0]), filepath.Join(dir, rels[2])} {
			if _, err := os.Stat(p); !os.IsNotExist(err) {
				t.Errorf("deletable source %s not deleted: %v", p, err)
			}
		}
		for _, p := range []string{s.tarPath, s.manPath} {
			if _, err := os.Stat(p); err != nil {
				t.Errorf("%s deleted before every source was: %v", p, err)
			}
		}
		os.RemoveAll(stuck)
		time.Sleep(cfg.RetryMax)
		synctest.Wait()
		r.stop(t)
		if left := spoolFiles(t, filepath.Join(dir, ".archive")); len(left) != 0 {
			t.Errorf("spool not empty after the retry: %v", left)
		}
		if len(store.putNames()) != 1 {
			t.Errorf("puts: %v", store.putNames())
		}
	})
}
