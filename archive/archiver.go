package archive

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
)

// Uploader stores a finished tarball under name. It is the part of an
// upload.Store the archiver needs. Put must be create-only: it returns
// created true if it created the object, false with a nil error if the
// object already exists with the same CRC32C (Castagnoli) and size, an
// error wrapping upload.ErrConflict if the name is taken by different
// content, and an error for which upload.IsPermanent reports true when
// retrying cannot help.
type Uploader interface {
	Put(ctx context.Context, name string, body io.ReadSeeker, size int64, crc32c uint32) (created bool, err error)
}

// Internal limits.
const (
	// candidateQueue is the buffer of candidate paths between Add, the scan
	// and fsnotify on one side and the bundler on the other.
	candidateQueue = 4096
	// maxOpenBundles bounds bundles being written at once (one per date
	// folder); the oldest is sealed early to open another.
	maxOpenBundles = 8
	// quarantineDir is the quarantine's name inside the spool dir.
	quarantineDir = "quarantine"
)

// An Archiver bundles finished pcap files, uploads the bundles and deletes
// what was uploaded. It is safe for concurrent use; Run may be called once.
type Archiver struct {
	cfg   Config
	up    Uploader
	log   *slog.Logger
	m     *metrics
	names namer

	// cand carries candidate sources (slash-separated paths relative to the
	// data dir) from Add, the scan and the watcher to the bundler. Never
	// closed.
	cand chan string

	outage  outageLog
	running atomic.Bool

	bufPool  sync.Pool // *bufio.Writer
	gzPool   sync.Pool // compressor
	zstdPool sync.Pool // compressor

	// createSpool creates tarball files; tests replace it to inject errors.
	createSpool func(path string) (spoolFile, error)
}

// New returns an Archiver for cfg that uploads through up and registers its
// metrics on reg (which may be nil).
func New(cfg Config, up Uploader, reg prometheus.Registerer) (*Archiver, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if up == nil {
		return nil, errors.New("archive: nil Uploader")
	}
	var err error
	if cfg.DataDir, err = filepath.Abs(cfg.DataDir); err != nil {
		return nil, fmt.Errorf("archive: data dir: %w", err)
	}
	if cfg.SpoolDir, err = filepath.Abs(cfg.SpoolDir); err != nil {
		return nil, fmt.Errorf("archive: spool dir: %w", err)
	}
	a := &Archiver{
		cfg:         cfg,
		up:          up,
		log:         cfg.Logger,
		m:           newMetrics(reg),
		names:       namer{clock: cfg.Clock},
		cand:        make(chan string, candidateQueue),
		createSpool: createSpoolFile,
	}
	a.bufPool.New = func() any { return bufio.NewWriterSize(io.Discard, 256<<10) }
	return a, nil
}

// Add hands over a file just published in the data dir (the daemon's
// in-process mode). path must name <DataDir>/YYYY/MM/DD/<UUID>.pcap.gz. Add
// never blocks: if the bundler is busy the hint is dropped and counted, and
// the next periodic scan finds the file.
func (a *Archiver) Add(ctx context.Context, path string) error {
	rel, err := a.relSource(path)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	a.offer(rel)
	return nil
}

// offer passes a candidate to the bundler unless its queue is full.
func (a *Archiver) offer(rel string) {
	select {
	case a.cand <- rel:
	default:
		a.m.hintsDropped.Inc()
	}
}

// relSource turns a path into a member name relative to the data dir.
func (a *Archiver) relSource(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("archive: %s: %w", path, err)
	}
	rel, err := filepath.Rel(a.cfg.DataDir, abs)
	if err != nil {
		return "", fmt.Errorf("archive: %s: %w", path, err)
	}
	rel = filepath.ToSlash(rel)
	if _, err := parseMember(rel); err != nil {
		return "", fmt.Errorf("archive: %s: not <datadir>/YYYY/MM/DD/<UUID>.pcap.gz", path)
	}
	return rel, nil
}

// Run recovers sealed bundles left by an earlier run, then bundles, uploads
// and deletes until ctx is cancelled. On cancellation it seals every open
// bundle, gives uploads ShutdownGrace to finish, and returns once all its
// goroutines have exited; what was not uploaded stays sealed in the spool
// dir for the next start. It returns an error only if it cannot start.
func (a *Archiver) Run(ctx context.Context) error {
	if !a.running.CompareAndSwap(false, true) {
		return errors.New("archive: Run called more than once")
	}
	if err := os.MkdirAll(filepath.Join(a.cfg.SpoolDir, quarantineDir), 0o755); err != nil {
		return fmt.Errorf("archive: create spool dir: %w", err)
	}
	lock, err := lockSpool(a.cfg.SpoolDir)
	if err != nil {
		return err
	}
	if lock != nil {
		defer lock.Close()
	}
	b := &bundler{
		a:       a,
		open:    make(map[string]*bundle),
		claimed: make(map[string]struct{}),
		work:    make(chan *sealed),
		done:    make(chan *sealed),
		pause:   a.newBackoff(),
	}
	if err := a.recoverSpool(b); err != nil {
		return err
	}

	upCtx, stopUploads := context.WithCancel(context.WithoutCancel(ctx))
	defer stopUploads()
	var wg sync.WaitGroup
	for range a.cfg.UploadConcurrency {
		wg.Go(func() {
			for s := range b.work {
				s.released = a.deliver(upCtx, s)
				b.done <- s
			}
		})
	}
	wg.Go(func() { a.scanLoop(ctx) })
	wg.Go(func() { a.censusLoop(ctx) })
	if a.cfg.Watch {
		if w, err := fsnotify.NewWatcher(); err != nil {
			a.log.Warn("archive: fsnotify unavailable; relying on the periodic scan", "err", err)
		} else {
			wg.Go(func() { a.watchLoop(ctx, w) })
		}
	}
	b.run(ctx, stopUploads)
	wg.Wait()
	return nil
}

// sealed is a sealed bundle on its way to the store. The uploader holding
// it may change man (re-seal); the bundler reads it only after it is done.
type sealed struct {
	man     *Manifest
	manPath string
	tarPath string
	// released is set by the uploader when the bundle's sources are gone
	// (uploaded and deleted) or no longer listed (bundle quarantined): the
	// bundler may forget their paths.
	released bool
}

// bundler owns the open bundles, the claimed source paths and the queue of
// sealed bundles. All its fields belong to the goroutine running run.
type bundler struct {
	a *Archiver
	v verifier

	open    map[string]*bundle  // by date folder
	claimed map[string]struct{} // sources in open or sealed, unreleased bundles
	queue   []*sealed           // sealed, not yet handed to an uploader

	inflight int          // handed to uploaders, not yet back on done
	work     chan *sealed // to the uploaders; closed by run when it returns
	done     chan *sealed // back from the uploaders; never closed

	pauseUntil time.Time // no new sources before this (after a write error)
	pause      backoff
}

func (b *bundler) maxPending() int { return 2 * b.a.cfg.UploadConcurrency }

func (b *bundler) run(ctx context.Context, stopUploads context.CancelFunc) {
	defer close(b.work)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := b.a.cfg.Clock()
		b.a.m.pending.Set(float64(len(b.queue) + b.inflight))
		var cand <-chan string
		if len(b.queue)+b.inflight < b.maxPending() && !now.Before(b.pauseUntil) {
			cand = b.a.cand
		}
		var work chan<- *sealed
		var head *sealed
		if len(b.queue) > 0 {
			work, head = b.work, b.queue[0]
		}
		if wake, ok := b.nextWake(); ok {
			timer.Reset(wake.Sub(now))
		} else {
			timer.Stop()
		}
		select {
		case <-ctx.Done():
			b.shutdown(stopUploads)
			return
		case rel := <-cand:
			b.add(rel)
		case work <- head:
			b.queue[0] = nil
			b.queue = b.queue[1:]
			b.inflight++
		case s := <-b.done:
			b.finished(s)
		case <-timer.C:
			b.sealAged()
		}
	}
}

// nextWake is when the oldest open bundle reaches MaxAge, or the pause
// ends.
func (b *bundler) nextWake() (time.Time, bool) {
	var t time.Time
	for _, bd := range b.open {
		if d := bd.opened.Add(b.a.cfg.MaxAge); t.IsZero() || d.Before(t) {
			t = d
		}
	}
	if !b.pauseUntil.IsZero() && (t.IsZero() || b.pauseUntil.Before(t)) {
		t = b.pauseUntil
	}
	return t, !t.IsZero()
}

func (b *bundler) sealAged() {
	now := b.a.cfg.Clock()
	if !now.Before(b.pauseUntil) {
		b.pauseUntil = time.Time{}
	}
	for _, bd := range b.open {
		if now.Sub(bd.opened) >= b.a.cfg.MaxAge {
			b.seal(bd)
		}
	}
}

func (b *bundler) finished(s *sealed) {
	b.inflight--
	if s.released {
		for _, m := range s.man.Members {
			delete(b.claimed, m.Source)
		}
	}
}

// shutdown seals every open bundle and hands sealed bundles to the
// uploaders until all are done or ShutdownGrace has passed.
func (b *bundler) shutdown(stopUploads context.CancelFunc) {
	grace := b.a.cfg.ShutdownGrace
	start := b.a.cfg.Clock()
	if grace > 0 {
		b.collect(start.Add(grace / 2))
	}
	for _, bd := range b.open {
		b.seal(bd)
	}
	if grace < 0 {
		stopUploads()
		grace = 0
	}
	// The grace counts from the start of the shutdown: collecting took
	// part of it.
	timer := time.NewTimer(max(0, grace-b.a.cfg.Clock().Sub(start)))
	defer timer.Stop()
	left := len(b.queue) // left sealed for the next start
	if grace == 0 {
		b.queue = nil
	}
	for len(b.queue) > 0 || b.inflight > 0 {
		var work chan<- *sealed
		var head *sealed
		if len(b.queue) > 0 {
			work, head = b.work, b.queue[0]
		}
		select {
		case work <- head:
			b.queue = b.queue[1:]
			b.inflight++
			left--
		case s := <-b.done:
			b.finished(s)
			if !s.released {
				left++
			}
		case <-timer.C:
			stopUploads()
			b.queue = nil
		}
	}
	b.a.m.pending.Set(float64(left))
	if left > 0 {
		b.a.log.Info("archive: sealed bundles left for the next start", "bundles", left)
	}
}

// collect bundles, before the shutdown seals everything, what was
// published until then: the candidates still queued, and with a walk of the
// data dir those whose hint was dropped (in-process, the capture side
// publishes its last flows just before it stops the archiver). It stops at
// deadline, leaving the rest for the next start.
func (b *bundler) collect(deadline time.Time) {
	// Bundling is paused after a failure (a full disk): leave it all.
	// Nor beyond the spool's bound on sealed bundles: what cannot be
	// uploaded now is better left as sources than sealed on the disk.
	stop := func() bool {
		now := b.a.cfg.Clock()
		return now.After(deadline) || now.Before(b.pauseUntil) || len(b.queue)+b.inflight >= b.maxPending()
	}
	for n := cap(b.a.cand); n > 0 && !stop(); n-- {
		select {
		case rel := <-b.a.cand:
			b.add(rel)
			continue
		default:
		}
		break
	}
	errStop := errors.New("stop")
	b.a.walkData(context.Background(), walkVisitor{file: func(rel string, _ fs.DirEntry) error {
		if stop() {
			return errStop
		}
		b.add(rel)
		return nil
	}})
}

// add takes one candidate source into the open bundle of its date.
func (b *bundler) add(rel string) {
	a := b.a
	if _, ok := b.claimed[rel]; ok {
		return
	}
	date, err := parseMember(rel)
	if err != nil {
		return
	}
	s, err := a.openSource(&b.v, rel, true)
	if err != nil {
		a.sourceError(rel, err)
		return
	}
	defer s.close()

	bd := b.open[date]
	if bd != nil && len(bd.members) > 0 && bd.size()+s.size > a.cfg.MaxSize {
		b.seal(bd)
		bd = nil
	}
	if bd == nil {
		if len(b.open) >= maxOpenBundles {
			b.seal(b.oldest())
		}
		if bd, err = a.newBundle(date, a.cfg.Compression); err != nil {
			b.failed(nil, err)
			return
		}
		bd.opened = a.cfg.Clock()
		b.open[date] = bd
	}
	if err := bd.add(s); err != nil {
		b.failed(bd, err)
		return
	}
	b.claimed[rel] = struct{}{}
	if bd.size() >= a.cfg.MaxSize {
		b.seal(bd)
	}
}

// sourceError deals with a source that could not be bundled.
func (a *Archiver) sourceError(rel string, err error) {
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, errTooYoung):
		// Gone (uploaded meanwhile) or not old enough: nothing to do.
	case errors.Is(err, errTorn):
		a.quarantineSource(rel, "torn", err)
	case errors.Is(err, errTooLarge):
		a.quarantineSource(rel, "too_large", err)
	default:
		a.log.Warn("archive: cannot read source; will retry on the next scan", "source", rel, "err", err)
	}
}

// quarantineSource moves a source the ETL must not see into the quarantine.
func (a *Archiver) quarantineSource(rel, reason string, cause error) {
	src := filepath.Join(a.cfg.DataDir, filepath.FromSlash(rel))
	dst := filepath.Join(a.cfg.SpoolDir, quarantineDir, filepath.FromSlash(rel))
	to, err := moveAside(src, dst)
	if err != nil {
		a.log.Error("archive: cannot quarantine bad source; it stays in place and is not shipped", "source", rel, "reason", reason, "cause", cause, "err", err)
		return
	}
	a.m.quarantinedFiles.WithLabelValues(reason).Inc()
	a.log.Error("archive: quarantined source file", "source", rel, "reason", reason, "cause", cause, "to", to)
}

func (b *bundler) oldest() *bundle {
	var o *bundle
	for _, bd := range b.open {
		if o == nil || bd.opened.Before(o.opened) {
			o = bd
		}
	}
	return o
}

// seal finishes bd, writes its manifest and queues it for upload.
func (b *bundler) seal(bd *bundle) {
	a := b.a
	delete(b.open, bd.date)
	if err := bd.finish(a); err != nil {
		b.failed(bd, err)
		return
	}
	s, err := a.writeSealed(bd)
	if err != nil {
		b.failed(bd, err)
		return
	}
	b.queue = append(b.queue, s)
	b.pause.reset()
	a.m.bundlesSealed.Inc()
	a.log.Info("archive: sealed bundle", "object", s.man.Object, "files", len(s.man.Members), "size", s.man.Size, "source_bytes", bd.srcBytes)
}

// writeSealed names a finished bundle and writes its manifest.
func (a *Archiver) writeSealed(bd *bundle) (*sealed, error) {
	date, err := time.Parse(dateLayout, bd.date)
	if err != nil {
		return nil, err
	}
	ts := a.names.next()
	name := ObjectName{
		Prefix:      a.cfg.Prefix,
		Experiment:  a.cfg.Experiment,
		Datatype:    a.cfg.Datatype,
		Date:        date,
		Sealed:      ts,
		Node:        a.cfg.Node,
		Compression: bd.compression,
	}
	s := &sealed{
		man: &Manifest{
			Version:     ManifestVersion,
			Object:      name.String(),
			Tarball:     filepath.Base(bd.path),
			Date:        bd.date,
			Compression: bd.compression,
			Sealed:      ts,
			Size:        bd.cw.n,
			CRC32C:      bd.cw.crc,
			Members:     bd.members,
		},
		manPath: filepath.Join(a.cfg.SpoolDir, bd.id+manifestSuffix),
		tarPath: bd.path,
	}
	if err := writeManifest(s.manPath, s.man); err != nil {
		// The manifest must not outlive the tarball it describes.
		if rerr := removeIfExists(s.manPath); rerr != nil {
			a.log.Error("archive: cannot remove manifest of failed seal", "manifest", s.manPath, "err", rerr)
		}
		return nil, fmt.Errorf("write manifest: %w", err)
	}
	return s, nil
}

// failed abandons a bundle after a write error (bd nil: it could not even be
// created). Its sources stay in the data dir and are offered again by the
// next scan; new sources wait for a back-off.
func (b *bundler) failed(bd *bundle, err error) {
	a := b.a
	files := 0
	if bd != nil {
		if b.open[bd.date] == bd {
			delete(b.open, bd.date)
		}
		if rerr := bd.discard(a); rerr != nil {
			a.log.Error("archive: cannot remove partial tarball", "tarball", bd.path, "err", rerr)
		}
		for _, m := range bd.members {
			delete(b.claimed, m.Source)
		}
		files = len(bd.members)
	}
	reason := "io"
	if errors.Is(err, syscall.ENOSPC) {
		reason = "enospc"
		a.m.enospc.Inc()
	}
	a.m.bundlesAborted.WithLabelValues(reason).Inc()
	wait := b.pause.next()
	b.pauseUntil = a.cfg.Clock().Add(wait)
	a.log.Warn("archive: bundle aborted; its sources stay in the data dir and will be bundled again", "reason", reason, "files", files, "retry_in", wait, "err", err)
}
