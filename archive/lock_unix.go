//go:build unix

package archive

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// lockName is the spool dir's lock file: one archiver per spool dir.
const lockName = ".lock"

// lockSpool takes an exclusive, non-blocking flock on the spool dir's lock
// file, so that a second archiver (say, a sidecar next to a daemon that
// archives in-process) fails at start instead of deleting the first one's
// tarballs. The lock goes with the returned file.
func lockSpool(dir string) (*os.File, error) {
	p := filepath.Join(dir, lockName)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("archive: open %s: %w", p, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("archive: another archiver is using spool dir %s", dir)
		}
		return nil, fmt.Errorf("archive: lock %s: %w", p, err)
	}
	return f, nil
}
