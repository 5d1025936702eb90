//go:build linux

package archivee2e

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
)

// publishLog records, independently of the daemon and the archiver, every
// flow file the daemon publishes: it watches the date folders with inotify
// and hard-links each new <UUID>.pcap.gz into a shadow tree as soon as it
// appears. The link keeps the published bytes after the archiver deletes
// the file, so that each member in the bucket can be compared byte for byte
// with what the daemon published. (A link only adds a name; the file's
// content, and what the archiver does with its own name, are unchanged.)
type publishLog struct {
	datadir, shadow string
	w               *fsnotify.Watcher
	done            chan struct{} // closed when the event loop has exited

	mu        sync.Mutex
	published map[string]bool // rel path -> linked into shadow
	err       error
}

// watchPublished creates the date folders the daemon will use (today and
// tomorrow, UTC, so that the watches exist before any file does) and starts
// recording.
func watchPublished(t *testing.T, datadir, shadow string) *publishLog {
	t.Helper()
	w, err := fsnotify.NewWatcher()
	if err != nil {
		t.Fatalf("inotify: %v", err)
	}
	l := &publishLog{datadir: datadir, shadow: shadow, w: w, done: make(chan struct{}), published: map[string]bool{}}
	now := time.Now().UTC()
	for _, d := range []time.Time{now, now.Add(24 * time.Hour)} {
		dir := filepath.Join(datadir, d.Format("2006/01/02"))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := w.Add(dir); err != nil {
			t.Fatalf("watch %s: %v", dir, err)
		}
	}
	go l.loop()
	t.Cleanup(func() { l.stop() })
	return l
}

func (l *publishLog) loop() {
	defer close(l.done)
	for {
		select {
		case ev, ok := <-l.w.Events:
			if !ok {
				return
			}
			if ev.Has(fsnotify.Create) {
				l.created(ev.Name)
			}
		case err, ok := <-l.w.Errors:
			if !ok {
				return
			}
			l.fail(err)
		}
	}
}

func (l *publishLog) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err == nil {
		l.err = err
	}
}

func (l *publishLog) created(path string) {
	rel, err := filepath.Rel(l.datadir, path)
	if err != nil {
		return
	}
	rel = filepath.ToSlash(rel)
	if !isSource(rel) {
		return // temporary files (leading '.') and anything else
	}
	dst := filepath.Join(l.shadow, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		l.fail(err)
		return
	}
	err = os.Link(path, dst)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.published[rel] {
		// Published twice under one name: the daemon's contract says a
		// final name is created once.
		if l.err == nil {
			l.err = errors.New("published twice: " + rel)
		}
		return
	}
	// Gone already (archived between the event and the link): recorded,
	// but its bytes cannot be compared.
	l.published[rel] = err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) && l.err == nil {
		l.err = err
	}
}

// stop ends the recording and returns what was published: each rel path
// and whether its bytes were kept.
func (l *publishLog) stop() (map[string]bool, error) {
	l.w.Close()
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.published, l.err
}

// compare checks the bucket against what was published: the same set of
// files, and each kept file byte-identical to its member. It reports
// whether all was well.
func (l *publishLog) compare(t *testing.T, a *archived, rebuilt string) bool {
	t.Helper()
	published, err := l.stop()
	if err != nil {
		t.Errorf("recording published files: %v", err)
	}
	var missing, extra, differ []string
	kept := 0
	for rel, ok := range published {
		if _, in := a.object[rel]; !in {
			missing = append(missing, rel)
			continue
		}
		if !ok {
			continue
		}
		kept++
		want, err1 := os.ReadFile(filepath.Join(l.shadow, filepath.FromSlash(rel)))
		got, err2 := os.ReadFile(filepath.Join(rebuilt, filepath.FromSlash(rel)))
		if err1 != nil || err2 != nil || !bytes.Equal(want, got) {
			differ = append(differ, rel)
		}
	}
	for rel := range a.object {
		if _, ok := published[rel]; !ok {
			extra = append(extra, rel)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	sort.Strings(differ)
	if len(missing) > 0 {
		t.Errorf("%d of %d published flow files are not in the bucket: %s", len(missing), len(published), join(missing))
	}
	if len(extra) > 0 {
		t.Errorf("%d flow files in the bucket were never published in the data dir: %s", len(extra), join(extra))
	}
	if len(differ) > 0 {
		t.Errorf("%d members differ from the file the daemon published: %s", len(differ), join(differ))
	}
	if kept < len(published)*9/10 {
		t.Errorf("only %d of %d published files could be kept for comparison (archived before the link)", kept, len(published))
	}
	t.Logf("published flow files (inotify): %d, %d compared byte for byte with their members (%s)", len(published), kept,
		strings.TrimSpace(map[bool]string{true: "all", false: "the rest were archived before they could be linked"}[kept == len(published)]))
	return err == nil && len(missing)+len(extra)+len(differ) == 0
}
