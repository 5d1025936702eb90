//go:build linux

package archivee2e

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// synthFlow returns a valid flow file as the daemon writes it: a gzip of a
// nanosecond pcap, link type Ethernet, of n TCP packets between
// documentation addresses. With junk > 0, each packet carries that many
// random bytes after its headers, so that the file does not compress (the
// archiver does not care what the packets hold; this makes files of a
// chosen size).
func synthFlow(r *rand.Rand, n, junk int) []byte {
	var pc bytes.Buffer
	w := pcapgo.NewWriterNanos(&pc)
	if err := w.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
		panic(err) // writes to a bytes.Buffer cannot fail
	}
	ts := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC).Add(time.Duration(r.Int64N(int64(time.Hour))))
	sport := uint16(1024 + r.IntN(60000))
	seq := r.Uint32()
	frame := make([]byte, 14+20+32+junk)
	for i := range n {
		f := frame
		copy(f[0:6], []byte{0x02, 0, 0, 0, 0, 1})
		copy(f[6:12], []byte{0x02, 0, 0, 0, 0, 2})
		binary.BigEndian.PutUint16(f[12:14], 0x0800)
		ip := f[14:34]
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:4], uint16(20+32+junk))
		binary.BigEndian.PutUint16(ip[4:6], uint16(i))
		ip[8], ip[9] = 64, 6
		copy(ip[12:16], []byte{192, 0, 2, 2})
		copy(ip[16:20], []byte{192, 0, 2, 1})
		tcp := f[34:66]
		binary.BigEndian.PutUint16(tcp[0:2], sport)
		binary.BigEndian.PutUint16(tcp[2:4], 8080)
		binary.BigEndian.PutUint32(tcp[4:8], seq)
		tcp[12] = 8 << 4
		tcp[13] = 0x10
		if i == 0 {
			tcp[13] = 0x02
		}
		seq += uint32(r.IntN(1500))
		for j := 66; j < len(f); j++ {
			f[j] = byte(r.Uint32())
		}
		ts = ts.Add(time.Duration(r.IntN(int(10 * time.Millisecond))))
		ci := gopacket.CaptureInfo{Timestamp: ts, CaptureLength: len(f), Length: len(f) + r.IntN(1400)}
		if err := w.WritePacket(ci, f); err != nil {
			panic(err)
		}
	}
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	zw.Write(pc.Bytes())
	zw.Close()
	return gz.Bytes()
}

// synthSet is a pre-generated data dir: every flow file by its path
// relative to the data dir, with its content's SHA-256.
type synthSet struct {
	files map[string][32]byte // rel -> sha256
	bytes int64
}

// synthDates are the date folders of the synthetic data.
var synthDates = []string{"2026/11/23", "2026/11/24", "2026/11/25"}

// writeSynth writes n flow files into datadir, spread over synthDates:
// mostly small flows (a few hundred bytes to a few KB), about 1 in 20 of
// 10-100 KB, and big ones (over 1 MiB, which the archiver streams in two
// passes instead of reading whole) every bigEvery files (0: none).
func writeSynth(t *testing.T, r *rand.Rand, datadir string, n, bigEvery int) *synthSet {
	t.Helper()
	s := &synthSet{files: make(map[string][32]byte, n)}
	for _, d := range synthDates {
		if err := os.MkdirAll(filepath.Join(datadir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		var data []byte
		switch {
		case bigEvery > 0 && i%bigEvery == bigEvery-1:
			data = synthFlow(r, 5000+r.IntN(2000), 200) // 1.1-1.6 MB
		case r.IntN(20) == 0:
			data = synthFlow(r, 100+r.IntN(800), 64+r.IntN(64))
		default:
			data = synthFlow(r, 2+r.IntN(60), 0)
		}
		rel := fmt.Sprintf("%s/synth-e2e_%d_%016X.pcap.gz", synthDates[r.IntN(len(synthDates))], 1764000000+i%7, r.Uint64())
		if err := os.WriteFile(filepath.Join(datadir, filepath.FromSlash(rel)), data, 0o644); err != nil {
			t.Fatal(err)
		}
		s.files[rel] = sha256.Sum256(data)
		s.bytes += int64(len(data))
	}
	return s
}

// dirState is what a walk of the data dir found.
type dirState struct {
	// sources are YYYY/MM/DD/<UUID>.pcap.gz files (relative paths).
	sources map[string]bool
	// spool are the spool dir's files (relative to the data dir), the lock
	// and the quarantine excepted.
	spool []string
	// quarantine are the files under the spool dir's quarantine.
	quarantine []string
	// other is everything else: temporary and stray files.
	other []string
}

const spoolName = ".archive"

// scanDir walks a data dir.
func scanDir(t *testing.T, datadir string) *dirState {
	t.Helper()
	st := &dirState{sources: map[string]bool{}}
	err := filepath.WalkDir(datadir, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil // removed while walking
			}
			return err
		}
		if e.IsDir() {
			return nil
		}
		rel, err := filepath.Rel(datadir, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		switch {
		case rel == spoolName+"/.lock":
		case strings.HasPrefix(rel, spoolName+"/quarantine/"):
			st.quarantine = append(st.quarantine, strings.TrimPrefix(rel, spoolName+"/quarantine/"))
		case strings.HasPrefix(rel, spoolName+"/"):
			st.spool = append(st.spool, strings.TrimPrefix(rel, spoolName+"/"))
		case isSource(rel) && e.Type().IsRegular():
			st.sources[rel] = true
		default:
			st.other = append(st.other, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("scan %s: %v", datadir, err)
	}
	sort.Strings(st.spool)
	sort.Strings(st.quarantine)
	sort.Strings(st.other)
	return st
}

// isSource reports whether rel is YYYY/MM/DD/<UUID>.pcap.gz with a real
// date.
func isSource(rel string) bool {
	m := memberRE.FindStringSubmatch(rel)
	if m == nil {
		return false
	}
	d, err := time.Parse("2006/01/02", m[1])
	return err == nil && d.Format("2006/01/02") == m[1]
}

// manifests returns the spool's manifests (<id>.json).
func (st *dirState) manifests() []string {
	var out []string
	for _, f := range st.spool {
		if strings.HasSuffix(f, ".json") && !strings.HasPrefix(f, ".") {
			out = append(out, f)
		}
	}
	return out
}

// drained reports whether no source, no spool file and nothing else is
// left: what a data dir looks like once everything was archived.
func (st *dirState) drained() bool {
	return len(st.sources) == 0 && len(st.spool) == 0
}

func (st *dirState) String() string {
	return fmt.Sprintf("%d sources, spool %v, quarantine %v, other %v", len(st.sources), short(st.spool), short(st.quarantine), short(st.other))
}

func short(l []string) []string {
	if len(l) > 8 {
		return append(l[:8:8], fmt.Sprintf("... %d more", len(l)-8))
	}
	return l
}
