package archive

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// readBatch is how many directory entries a scan reads at a time, so that a
// date folder with a huge backlog does not have to fit in memory.
const readBatch = 512

// maxIgnored bounds the set of ignored names remembered to count and log
// each once; beyond it, new ignored names are neither counted nor logged.
const maxIgnored = 1 << 16

// walkVisitor receives the scan's findings. file gets a well-formed source
// (rel: YYYY/MM/DD/<UUID>.pcap.gz); returning an error stops the walk.
// ignored, if set, gets everything else.
type walkVisitor struct {
	file    func(rel string, de fs.DirEntry) error
	ignored func(rel, reason string)
}

func (v walkVisitor) ignore(rel, reason string) {
	if v.ignored != nil {
		v.ignored(rel, reason)
	}
}

// walkData walks the date folders of the data dir. Names starting with '.'
// at the top level (the spool dir, the capture side's own dot-dirs) are
// skipped silently.
func (a *Archiver) walkData(ctx context.Context, v walkVisitor) error {
	years, err := os.ReadDir(a.cfg.DataDir)
	if err != nil {
		return err
	}
	for _, y := range years {
		if strings.HasPrefix(y.Name(), ".") {
			continue
		}
		if !y.IsDir() || !isDigits(y.Name(), 4) {
			v.ignore(y.Name(), "layout")
			continue
		}
		months, err := os.ReadDir(filepath.Join(a.cfg.DataDir, y.Name()))
		if err != nil {
			continue
		}
		for _, m := range months {
			mrel := y.Name() + "/" + m.Name()
			if !m.IsDir() || !isDigits(m.Name(), 2) {
				v.ignore(mrel, "layout")
				continue
			}
			days, err := os.ReadDir(filepath.Join(a.cfg.DataDir, filepath.FromSlash(mrel)))
			if err != nil {
				continue
			}
			for _, d := range days {
				drel := mrel + "/" + d.Name()
				if !d.IsDir() || !isDigits(d.Name(), 2) || !validDate(drel) {
					v.ignore(drel, "layout")
					continue
				}
				if err := a.walkDay(ctx, drel, v); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// walkDay reads one date folder in batches.
func (a *Archiver) walkDay(ctx context.Context, drel string, v walkVisitor) error {
	dir, err := os.Open(filepath.Join(a.cfg.DataDir, filepath.FromSlash(drel)))
	if err != nil {
		return nil // gone meanwhile
	}
	defer dir.Close()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		batch, err := dir.ReadDir(readBatch)
		for _, de := range batch {
			rel := drel + "/" + de.Name()
			switch {
			case strings.HasPrefix(de.Name(), "."):
				v.ignore(rel, "temp")
			case !de.Type().IsRegular():
				v.ignore(rel, "type")
			case !memberRE.MatchString(rel):
				v.ignore(rel, "name")
			default:
				if err := v.file(rel, de); err != nil {
					return err
				}
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return nil // unreadable now; the next scan tries again
		}
	}
}

func isDigits(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// scanLoop offers every source in the data dir to the bundler, at start and
// every ScanInterval. Sends block (bounded by ctx): the bundler takes
// sources as fast as it can bundle and upload them.
func (a *Archiver) scanLoop(ctx context.Context) {
	ig := ignoreLog{a: a, seen: make(map[string]uint64)}
	t := time.NewTicker(a.cfg.ScanInterval)
	defer t.Stop()
	for {
		err := a.walkData(ctx, walkVisitor{
			file: func(rel string, _ fs.DirEntry) error {
				select {
				case a.cand <- rel:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			},
			ignored: ig.note,
		})
		if err != nil && ctx.Err() == nil {
			a.log.Warn("archive: scan of data dir failed", "dir", a.cfg.DataDir, "err", err)
		}
		if ctx.Err() == nil {
			ig.sweep()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// ignoreLog counts and logs each ignored name once while it exists. It is
// owned by the scan goroutine.
type ignoreLog struct {
	a    *Archiver
	gen  uint64
	seen map[string]uint64 // name → generation (scan) it was last seen in
}

func (l *ignoreLog) note(rel, reason string) {
	if _, ok := l.seen[rel]; !ok {
		if len(l.seen) >= maxIgnored {
			return
		}
		l.a.m.ignored.WithLabelValues(reason).Inc()
		if reason == "temp" {
			l.a.log.Debug("archive: ignoring temporary file", "file", rel)
		} else {
			l.a.log.Warn("archive: ignoring file that is not YYYY/MM/DD/<UUID>.pcap.gz (logged once)", "file", rel, "reason", reason)
		}
	}
	l.seen[rel] = l.gen
}

// sweep forgets names not seen in the scan that just ended.
func (l *ignoreLog) sweep() {
	for k, g := range l.seen {
		if g != l.gen {
			delete(l.seen, k)
		}
	}
	l.gen++
}

// censusLoop measures the backlog (sources not yet confirmed uploaded) every
// ScanInterval. It is separate from the scan, whose sends may block for a
// long time while uploads fail, which is exactly when the backlog matters.
func (a *Archiver) censusLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.ScanInterval)
	defer t.Stop()
	for {
		var files, bytes int64
		var oldest time.Time
		err := a.walkData(ctx, walkVisitor{file: func(_ string, de fs.DirEntry) error {
			fi, err := de.Info()
			if err != nil {
				return nil // gone meanwhile
			}
			files++
			bytes += fi.Size()
			if oldest.IsZero() || fi.ModTime().Before(oldest) {
				oldest = fi.ModTime()
			}
			return nil
		}})
		if err == nil {
			a.m.backlogFiles.Set(float64(files))
			a.m.backlogBytes.Set(float64(bytes))
			age := 0.0
			if !oldest.IsZero() {
				age = max(0, a.cfg.Clock().Sub(oldest).Seconds())
			}
			a.m.backlogAge.Set(age)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// watchLoop offers files as fsnotify reports them (sidecar mode). It
// watches the data dir and every date folder level, adding watches as new
// folders appear. Offers never block; the scan covers whatever is missed.
func (a *Archiver) watchLoop(ctx context.Context, w *fsnotify.Watcher) {
	defer func() {
		if err := w.Close(); err != nil {
			a.log.Warn("archive: close fsnotify watcher", "err", err)
		}
	}()
	a.watchTree(w, "")
	var loggedErr bool
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			if ev.Has(fsnotify.Create) {
				a.watchEvent(w, ev.Name)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			if !loggedErr {
				// Usually an event queue overflow: the scan catches up.
				a.log.Warn("archive: fsnotify error (logged once); the periodic scan covers missed events", "err", err)
				loggedErr = true
			}
		}
	}
}

// depth returns how many '/'-separated segments rel has ("" is 0).
func depth(rel string) int {
	if rel == "" {
		return 0
	}
	return strings.Count(rel, "/") + 1
}

// layoutDir reports whether rel, a directory, belongs to the date layout.
func layoutDir(rel string) bool {
	base := path.Base(rel)
	switch depth(rel) {
	case 0:
		return true
	case 1:
		return isDigits(base, 4)
	case 2:
		return isDigits(base, 2)
	case 3:
		return isDigits(base, 2) && validDate(rel)
	}
	return false
}

// watchTree watches the layout directory rel and everything below it, and
// offers the sources already in a date folder.
func (a *Archiver) watchTree(w *fsnotify.Watcher, rel string) {
	if !layoutDir(rel) {
		return
	}
	dir := filepath.Join(a.cfg.DataDir, filepath.FromSlash(rel))
	if err := w.Add(dir); err != nil {
		a.log.Warn("archive: cannot watch directory; the periodic scan covers it", "dir", dir, "err", err)
		return
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		child := path.Join(rel, e.Name())
		switch {
		case strings.HasPrefix(e.Name(), "."):
		case depth(rel) < 3 && e.IsDir():
			a.watchTree(w, child)
		case depth(rel) == 3 && e.Type().IsRegular() && memberRE.MatchString(child):
			a.offer(child)
		}
	}
}

// watchEvent handles the creation of name.
func (a *Archiver) watchEvent(w *fsnotify.Watcher, name string) {
	rel, err := filepath.Rel(a.cfg.DataDir, name)
	if err != nil {
		return
	}
	rel = filepath.ToSlash(rel)
	if strings.HasPrefix(path.Base(rel), ".") || strings.HasPrefix(rel, "../") {
		return
	}
	switch d := depth(rel); {
	case d <= 3:
		if fi, err := os.Lstat(name); err == nil && fi.IsDir() {
			a.watchTree(w, rel)
		}
	case d == 4 && memberRE.MatchString(rel):
		a.offer(rel)
	}
}
