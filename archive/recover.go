package archive

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// recoverSpool runs once before the bundler starts. Every manifest in the
// spool dir is a sealed bundle whose upload was not confirmed: it is
// verified (and repaired or quarantined), its sources are claimed so that
// the scan does not bundle them again, and it is queued for upload under its
// original name. Tarballs without a manifest and temporary files are
// deleted: their sources are still in the data dir.
func (a *Archiver) recoverSpool(b *bundler) error {
	entries, err := os.ReadDir(a.cfg.SpoolDir)
	if err != nil {
		return fmt.Errorf("archive: read spool dir: %w", err)
	}
	referenced := make(map[string]bool)
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !strings.HasSuffix(name, manifestSuffix) || !e.Type().IsRegular() {
			continue
		}
		path := filepath.Join(a.cfg.SpoolDir, name)
		man, err := ReadManifest(path)
		if err != nil {
			a.quarantineBundle(path, "", "manifest", err)
			continue
		}
		referenced[man.Tarball] = true
		s := &sealed{man: man, manPath: path, tarPath: filepath.Join(a.cfg.SpoolDir, man.Tarball)}
		switch st, err := a.restore(&b.v, s); st {
		case restoreDone, restoreQuarantined:
			continue
		case restoreFailed:
			// Queued anyway: the uploader finds the tarball bad and retries
			// the repair with back-off.
			a.log.Error("archive: cannot repair sealed bundle yet; will retry", "object", man.Object, "err", err)
		}
		for _, m := range s.man.Members {
			b.claimed[m.Source] = struct{}{}
		}
		a.names.observe(s.man.Sealed)
		b.queue = append(b.queue, s)
		a.log.Info("archive: recovered sealed bundle", "object", s.man.Object, "files", len(s.man.Members))
	}
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(a.cfg.SpoolDir, name)
		switch {
		case name == quarantineDir || name == lockName || strings.HasSuffix(name, manifestSuffix) && !strings.HasPrefix(name, "."):
		case strings.HasPrefix(name, ".") && strings.HasSuffix(name, ".tmp") ||
			(strings.HasSuffix(name, ".tgz") || strings.HasSuffix(name, ".tar.zst")) && !referenced[name]:
			// A manifest being written, or a tarball that was never sealed.
			if err := removeIfExists(path); err != nil {
				a.log.Error("archive: cannot remove unsealed spool file", "file", path, "err", err)
			} else {
				a.log.Info("archive: removed unsealed spool file; its sources will be bundled again", "file", name)
			}
		case !referenced[name]:
			a.log.Warn("archive: unknown file in spool dir left alone", "file", path)
		}
	}
	return syncDir(a.cfg.SpoolDir)
}

// Outcomes of restore.
type restoreState int

const (
	restoreReady       restoreState = iota // tarball good (or rebuilt): upload it
	restoreDone                            // everything was already deleted but the manifest: now removed
	restoreQuarantined                     // not recoverable: manifest and tarball quarantined, sources released
	restoreFailed                          // I/O error: try again later
)

// restore checks a sealed bundle's tarball against its manifest. A missing
// or torn tarball is rebuilt from the sources if they all still exist with
// their recorded sizes. If none exists and the tarball is gone too, the
// bundle was confirmed and its deletion interrupted: the manifest is removed.
// Otherwise the bundle is quarantined.
func (a *Archiver) restore(v *verifier, s *sealed) (restoreState, error) {
	tarOK, tarExists, err := verifyTarball(s)
	if err != nil {
		return restoreFailed, err
	}
	if tarOK {
		return restoreReady, nil
	}
	var present, missing int
	for _, m := range s.man.Members {
		fi, err := os.Stat(filepath.Join(a.cfg.DataDir, filepath.FromSlash(m.Source)))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			missing++
		case err != nil:
			return restoreFailed, err
		case fi.Size() == m.Size:
			present++
		}
	}
	switch {
	case present == 0 && missing == len(s.man.Members) && !tarExists:
		// Sources go first, the tarball second, the manifest last: the
		// upload was confirmed and only the manifest is left.
		if err := removeIfExists(s.manPath); err != nil {
			return restoreFailed, err
		}
		a.log.Info("archive: finished interrupted deletion of uploaded bundle", "object", s.man.Object)
		return restoreDone, syncDir(a.cfg.SpoolDir)
	case present == len(s.man.Members):
		err := a.rebuild(v, s)
		if err == nil {
			a.log.Warn("archive: rebuilt damaged tarball from its sources", "object", s.man.Object, "size", s.man.Size)
			return restoreReady, nil
		}
		if !errors.Is(err, errTorn) && !errors.Is(err, errTooLarge) && !errors.Is(err, errMemberChanged) {
			return restoreFailed, err
		}
		a.quarantineBundle(s.manPath, s.tarPath, "tarball", err)
		return restoreQuarantined, nil
	}
	a.quarantineBundle(s.manPath, s.tarPath, "tarball",
		fmt.Errorf("tarball damaged or missing and %d of %d sources gone or changed", len(s.man.Members)-present, len(s.man.Members)))
	return restoreQuarantined, nil
}

// verifyTarball reports whether s's tarball exists and matches its manifest.
func verifyTarball(s *sealed) (ok, exists bool, err error) {
	f, err := os.Open(s.tarPath)
	if errors.Is(err, fs.ErrNotExist) {
		return false, false, nil
	}
	if err != nil {
		return false, false, err
	}
	defer f.Close()
	size, crc, err := checksum(f)
	if err != nil {
		return false, true, err
	}
	return size == s.man.Size && crc == s.man.CRC32C, true, nil
}

var errMemberChanged = errors.New("source differs from its manifest entry")

// rebuild writes s's tarball again from its sources, in manifest order, and
// rewrites the manifest with the new size and CRC32C. The name is kept.
func (a *Archiver) rebuild(v *verifier, s *sealed) error {
	if err := removeIfExists(s.tarPath); err != nil {
		return err
	}
	f, err := a.createSpool(s.tarPath)
	if err != nil {
		return err
	}
	id := strings.TrimSuffix(filepath.Base(s.manPath), manifestSuffix)
	bd, err := a.startBundle(id, s.man.Date, s.man.Compression, s.tarPath, f)
	if err != nil {
		return err
	}
	for _, m := range s.man.Members {
		if err := a.rebuildMember(v, bd, m); err != nil {
			bd.discard(a)
			return err
		}
	}
	if err := bd.finish(a); err != nil {
		bd.discard(a)
		return err
	}
	man := *s.man
	man.Size, man.CRC32C = bd.cw.n, bd.cw.crc
	if err := writeManifest(s.manPath, &man); err != nil {
		return err
	}
	s.man = &man
	return nil
}

func (a *Archiver) rebuildMember(v *verifier, bd *bundle, m Member) error {
	src, err := a.openSource(v, m.Source, false)
	if err != nil {
		return fmt.Errorf("%s: %w", m.Source, err)
	}
	defer src.close()
	if src.size != m.Size {
		return fmt.Errorf("%s: %w: %d bytes, manifest says %d", m.Source, errMemberChanged, src.size, m.Size)
	}
	return bd.add(src)
}

// quarantineBundle moves an unrecoverable manifest (and its tarball, if
// any) into the quarantine. Its remaining sources are no longer claimed and
// will be bundled again.
func (a *Archiver) quarantineBundle(manPath, tarPath, reason string, cause error) {
	q := filepath.Join(a.cfg.SpoolDir, quarantineDir)
	var moved []string
	for _, p := range []string{tarPath, manPath} {
		if p == "" {
			continue
		}
		to, err := moveAside(p, filepath.Join(q, filepath.Base(p)))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			a.log.Error("archive: cannot quarantine spool file", "file", p, "err", err)
			continue
		}
		moved = append(moved, to)
	}
	a.m.quarantinedBundles.WithLabelValues(reason).Inc()
	a.log.Error("archive: QUARANTINED sealed bundle that cannot be recovered; its remaining sources will be bundled again", "reason", reason, "cause", cause, "moved", moved)
}
