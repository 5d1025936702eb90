package flows

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/headercap/headercap/events"
)

// RecoverStats counts what Recover found.
type RecoverStats struct {
	Salvaged int // spill files of a crashed run published as flow files
	Removed  int // temporary files removed
}

// Recover finishes what a crashed run left in the data dir: each spill file
// (the records of a flow that was still being captured) is published as its
// flow's file, cut at its last complete record, unless a file of that UUID
// exists; half-compressed temporary files are removed (their records are
// in a spill file or were lost with the process). Call it before capture
// starts; it must not run concurrently with Workers on the same data dir.
func (f *Flows) Recover() (RecoverStats, error) {
	var st RecoverStats
	err := filepath.WalkDir(f.cfg.DataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == f.cfg.DataDir {
				if errors.Is(err, fs.ErrNotExist) {
					return filepath.SkipAll
				}
				return err
			}
			return nil // unreadable subtrees are not ours to judge
		}
		name := d.Name()
		if d.IsDir() {
			if path != f.cfg.DataDir && strings.HasPrefix(name, ".") {
				return filepath.SkipDir // e.g. the archiver's spool
			}
			return nil
		}
		if !strings.HasPrefix(name, ".") {
			return nil
		}
		switch {
		case strings.HasSuffix(name, tmpSuffix):
			if os.Remove(path) == nil {
				st.Removed++
			}
		case strings.HasSuffix(name, spillSuffix):
			uuid := strings.TrimSuffix(strings.TrimPrefix(name, "."), spillSuffix)
			if events.ValidateUUID(uuid) != nil {
				return nil
			}
			if err := f.salvage(filepath.Dir(path), uuid, path); err != nil {
				f.logf("flows: recover %s: %v", path, err)
				f.m.saverErrors.WithLabelValues("recover").Inc()
				return nil
			}
			st.Salvaged++
		}
		return nil
	})
	return st, err
}

func (f *Flows) salvage(dir, uuid, spill string) error {
	if _, err := os.Stat(filepath.Join(dir, uuid+FileSuffix)); err == nil {
		// Already published; the crash came between publishing and removing.
		return os.Remove(spill)
	}
	b, err := os.ReadFile(spill)
	if err != nil {
		return err
	}
	n := completeRecords(b)
	if n == 0 {
		return os.Remove(spill)
	}
	if err := os.Truncate(spill, int64(n)); err != nil {
		return fmt.Errorf("truncate: %w", err)
	}
	_, err = f.writer.write(&job{uuid: uuid, dir: dir, spill: spill})
	if err == nil {
		f.m.filesWritten.Inc()
		if f.cfg.OnPublish != nil {
			f.cfg.OnPublish(filepath.Join(dir, uuid+FileSuffix))
		}
	}
	return err
}

// completeRecords returns the length of the prefix of b made of whole pcap
// records.
func completeRecords(b []byte) int {
	off := 0
	for off+recordHeaderLen <= len(b) {
		n := int(binary.LittleEndian.Uint32(b[off+8:]))
		if n > 65535 || off+recordHeaderLen+n > len(b) {
			break
		}
		off += recordHeaderLen + n
	}
	return off
}
