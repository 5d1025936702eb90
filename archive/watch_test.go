package archive

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// publish writes data the way the capture side does: a temporary name in
// the date folder, then a link to the final name.
func publish(t *testing.T, dir, rel string, data []byte) {
	t.Helper()
	final := filepath.Join(dir, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(filepath.Dir(final), "."+filepath.Base(final)+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(tmp, final); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(tmp); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls cond until it holds; the optional timeout defaults to 20s.
func waitFor(t *testing.T, what string, cond func() bool, timeout ...time.Duration) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	if len(timeout) > 0 {
		deadline = time.Now().Add(timeout[0])
	}
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestWatchFindsNewFilesAndFolders(t *testing.T) {
	// Real fsnotify, real time. The scan runs only at start (ScanInterval
	// is an hour), so files created later are found by fsnotify alone,
	// including those in date folders created after the start.
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.Watch = true
	cfg.MaxAge = 50 * time.Millisecond
	cfg.RetryMin, cfg.RetryMax = 10*time.Millisecond, 100*time.Millisecond
	want := sources(t, dir, "2024/05/06", 2, 100, 1)
	store := newFakeStore()
	r := start(t, cfg, store)
	defer r.stop(t)
	waitFor(t, "files present at start", func() bool { return len(files(t, dir)) == 0 })

	rng := rand.New(rand.NewPCG(3, 3))
	for i, date := range []string{"2024/05/06", "2024/05/07", "2025/01/01"} {
		rel := fmt.Sprintf("%s/late_%d.pcap.gz", date, i)
		data := randomGz(rng, 100)
		publish(t, dir, rel, data)
		want[rel] = data
		waitFor(t, rel, func() bool { return len(files(t, dir)) == 0 })
	}
	checkStored(t, store, want)
}

func TestScanAloneIsEnough(t *testing.T) {
	// Neither Add nor fsnotify: the periodic scan finds new files.
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.ScanInterval = 50 * time.Millisecond
	cfg.MaxAge = 50 * time.Millisecond
	store := newFakeStore()
	r := start(t, cfg, store)
	defer r.stop(t)
	want := sources(t, dir, "2024/05/06", 3, 100, 1)
	waitFor(t, "scan", func() bool { return len(files(t, dir)) == 0 })
	checkStored(t, store, want)
}

func TestMinFileAge(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	cfg.ScanInterval = 20 * time.Millisecond
	cfg.MaxAge = 20 * time.Millisecond
	cfg.MinFileAge = time.Hour
	want := sources(t, dir, "2024/05/06", 2, 100, 1)
	old := time.Now().Add(-2 * time.Hour)
	var oldRel string
	for rel := range want {
		oldRel = rel
		break
	}
	if err := os.Chtimes(filepath.Join(dir, oldRel), old, old); err != nil {
		t.Fatal(err)
	}
	store := newFakeStore()
	r := start(t, cfg, store)
	waitFor(t, "old file", func() bool { return len(files(t, dir)) == 1 })
	time.Sleep(100 * time.Millisecond)
	r.stop(t)
	if left := files(t, dir); len(left) != 1 || left[0] == oldRel {
		t.Errorf("left %v; want only the young file", left)
	}
	delete(want, files(t, dir)[0])
	checkStored(t, store, want)
}
