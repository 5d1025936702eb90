package archive

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/headercap/headercap/upload"
)

// errBadTarball: the tarball on disk is missing or does not match its
// manifest's size and CRC32C.
var errBadTarball = errors.New("tarball does not match its manifest")

// deliver uploads s until the upload is confirmed, then deletes its files.
// It retries forever; it returns false, leaving s sealed, only when ctx is
// cancelled. It returns true once s's sources are released: deleted after a
// confirmed upload, or freed because the bundle had to be quarantined.
func (a *Archiver) deliver(ctx context.Context, s *sealed) bool {
	bo := a.newBackoff()
	conflicts := 0
	result := resultSuccess
	for attempt := 1; ; attempt++ {
		created, err := a.putOnce(ctx, s)
		if err == nil {
			if !created {
				result = resultExists
			}
			break
		}
		if ctx.Err() != nil {
			return false
		}
		var wait time.Duration
		switch reason := classify(err); {
		case errors.Is(err, upload.ErrConflict):
			a.m.uploads.WithLabelValues(resultConflict).Inc()
			old := s.man.Object
			if rerr := a.reseal(s); rerr != nil {
				a.log.Error("archive: cannot re-seal bundle after name conflict", "object", old, "err", rerr)
				wait = bo.next()
				break
			}
			a.log.Warn("archive: object name taken by different content; re-sealed under a new name", "old", old, "object", s.man.Object)
			if conflicts++; conflicts > 3 {
				wait = bo.next()
			}
		case errors.Is(err, errBadTarball):
			a.m.uploads.WithLabelValues(resultError).Inc()
			a.m.failures.WithLabelValues(reasonChecksum).Inc()
			a.log.Error("archive: sealed tarball is damaged; repairing", "object", s.man.Object, "err", err)
			var v verifier
			switch st, rerr := a.restore(&v, s); st {
			case restoreReady:
			case restoreDone, restoreQuarantined:
				return true
			default:
				a.log.Error("archive: cannot repair tarball; will retry", "object", s.man.Object, "err", rerr)
				wait = bo.next()
			}
		default:
			a.m.uploads.WithLabelValues(resultError).Inc()
			a.m.failures.WithLabelValues(reason).Inc()
			if reason == reasonPermanent {
				a.outage.fail(reason)
				a.log.Error("archive: upload failed permanently; an operator must fix the store or its credentials; still retrying",
					"object", s.man.Object, "attempt", attempt, "retry_in", a.cfg.RetryMax, "err", err)
				wait = a.cfg.RetryMax
			} else {
				wait = bo.next()
				if a.outage.fail(reason) {
					a.log.Warn("archive: upload failing; retrying with back-off (logged once per outage)",
						"reason", reason, "object", s.man.Object, "attempt", attempt, "retry_in", wait, "err", err)
				}
			}
		}
		if wait > 0 && !sleep(ctx, wait) {
			return false
		}
	}
	if failed := a.outage.clear(); len(failed) > 0 {
		a.log.Info("archive: uploads succeeding again", "failed_attempts", failed)
	}
	a.m.uploads.WithLabelValues(result).Inc()
	a.m.lastSuccess.Set(float64(a.cfg.Clock().UnixNano()) / 1e9)
	if result == resultExists {
		// An earlier attempt (or run) stored it; its answer was lost.
		a.log.Info("archive: bundle already in the store with the same checksum", "object", s.man.Object, "files", len(s.man.Members), "size", s.man.Size)
	} else {
		a.m.uploadedBytes.Add(float64(s.man.Size))
		a.log.Info("archive: uploaded bundle", "object", s.man.Object, "files", len(s.man.Members), "size", s.man.Size)
	}

	bo.reset()
	for {
		err := a.removeBundle(s)
		if err == nil {
			break
		}
		a.log.Error("archive: cannot delete uploaded files; will retry", "object", s.man.Object, "err", err)
		if !sleep(ctx, bo.next()) {
			return false
		}
	}
	var srcBytes int64
	for _, m := range s.man.Members {
		srcBytes += m.Size
	}
	a.m.filesArchived.Add(float64(len(s.man.Members)))
	a.m.bytesArchived.Add(float64(srcBytes))
	return true
}

// putOnce verifies the tarball against its manifest and makes one upload
// attempt. created is false when the store already held the bundle.
func (a *Archiver) putOnce(ctx context.Context, s *sealed) (created bool, err error) {
	f, err := os.Open(s.tarPath)
	if errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("%w: %v", errBadTarball, err)
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	size, crc, err := checksum(f)
	if err != nil {
		return false, err
	}
	if size != s.man.Size || crc != s.man.CRC32C {
		return false, fmt.Errorf("%w: %s is %d bytes, crc32c %08x; manifest says %d, %08x", errBadTarball, s.tarPath, size, crc, s.man.Size, s.man.CRC32C)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return false, err
	}
	actx, cancel := context.WithTimeout(ctx, a.cfg.UploadTimeout)
	defer cancel()
	start := time.Now()
	created, err = a.up.Put(actx, s.man.Object, f, size, crc)
	a.m.uploadDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		return false, fmt.Errorf("put %s: %w", s.man.Object, err)
	}
	return created, nil
}

// checksum returns the size and CRC32C of r's content.
func checksum(r io.Reader) (int64, uint32, error) {
	h := crc32.New(castagnoli)
	n, err := io.Copy(h, r)
	return n, h.Sum32(), err
}

// classify maps an upload error to a failure reason.
func classify(err error) string {
	var ne net.Error
	switch {
	case upload.IsPermanent(err):
		return reasonPermanent
	case errors.Is(err, upload.ErrChecksum), errors.Is(err, errBadTarball):
		return reasonChecksum
	case errors.As(err, &ne),
		errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE),
		errors.Is(err, syscall.ETIMEDOUT),
		errors.Is(err, syscall.EHOSTUNREACH),
		errors.Is(err, syscall.ENETUNREACH):
		return reasonNetwork
	}
	return reasonOther
}

// reseal gives s a new object name (same date folder, new timestamp) and
// rewrites its manifest atomically.
func (a *Archiver) reseal(s *sealed) error {
	n, err := ParseObjectName(s.man.Object)
	if err != nil {
		return err
	}
	n.Sealed = a.names.next()
	m := *s.man
	m.Object = n.String()
	m.Sealed = n.Sealed
	if err := writeManifest(s.manPath, &m); err != nil {
		return err
	}
	s.man = &m
	return nil
}

// removeBundle deletes a confirmed bundle's files: sources (then their
// directories are fsynced), tarball, manifest last. Missing files are fine:
// an earlier attempt or run may have deleted them.
func (a *Archiver) removeBundle(s *sealed) error {
	dirs := make(map[string]struct{})
	var errs []error
	for _, m := range s.man.Members {
		p := filepath.Join(a.cfg.DataDir, filepath.FromSlash(m.Source))
		if err := removeIfExists(p); err != nil {
			errs = append(errs, err)
		}
		dirs[filepath.Dir(p)] = struct{}{}
	}
	for d := range dirs {
		if err := syncDir(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if err := removeIfExists(s.tarPath); err != nil {
		return err
	}
	if err := removeIfExists(s.manPath); err != nil {
		return err
	}
	return syncDir(a.cfg.SpoolDir)
}

// outageLog remembers which failure reasons have been logged since the last
// successful upload, so that each is logged once per outage. It is safe for
// concurrent use.
type outageLog struct {
	mu       sync.Mutex
	failures map[string]int // failed attempts by reason since the last success
}

// fail records a failed attempt and reports whether it is the first of its
// reason in this outage.
func (o *outageLog) fail(reason string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.failures == nil {
		o.failures = make(map[string]int)
	}
	o.failures[reason]++
	return o.failures[reason] == 1
}

// clear ends the outage and returns its failure counts ("reason=n" sorted),
// or nil if there was none.
func (o *outageLog) clear() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []string
	for r, n := range o.failures {
		out = append(out, fmt.Sprintf("%s=%d", r, n))
	}
	sort.Strings(out)
	o.failures = nil
	return out
}

// backoff yields exponentially growing waits with jitter between min and
// max. It is owned by one goroutine.
type backoff struct {
	min, max time.Duration
	cur      time.Duration
}

func (a *Archiver) newBackoff() backoff {
	return backoff{min: a.cfg.RetryMin, max: a.cfg.RetryMax}
}

// next returns a wait drawn uniformly from [cur/2, cur], at least min,
// where cur doubles from min up to max.
func (b *backoff) next() time.Duration {
	switch {
	case b.cur == 0:
		b.cur = b.min
	case b.cur > b.max/2:
		b.cur = b.max
	default:
		b.cur *= 2
	}
	d := b.cur/2 + rand.N(b.cur/2+1)
	return max(d, b.min)
}

func (b *backoff) reset() { b.cur = 0 }

// sleep waits for d or until ctx is done; it reports whether it slept the
// whole time.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
