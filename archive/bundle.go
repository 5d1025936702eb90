package archive

import (
	"archive/tar"
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// gzipLevel is the tarball's gzip level. The members are gzip files
// already, so compressing them again buys almost nothing. Measured on
// generated pcap.gz flows (one core): level 1 ran at ~300 MB/s for 100.4%
// of the input size, level 5 at ~50 MB/s for 100.2%, level 6 at ~22 MB/s
// for 97.4%. Level 0 (stored, ~3 GB/s) would leave every member's 512-byte
// tar header and padding uncompressed, which dominates for the many tiny
// flows; level 1 shrinks those to a few bytes.
const gzipLevel = gzip.BestSpeed

// smallMember is the largest source read into memory whole: it is read and
// verified once from memory. Larger sources are verified in a first pass
// and copied in a second.
const smallMember = 1 << 20

// spoolFile is what a tarball is written to; tests inject failures.
type spoolFile interface {
	io.Writer
	Sync() error
	Close() error
}

func createSpoolFile(path string) (spoolFile, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
}

// compressor is a gzip.Writer or a zstd.Encoder.
type compressor interface {
	io.WriteCloser
	Reset(io.Writer)
}

func newCompressor(kind string) (compressor, error) {
	if kind == "zstd" {
		return zstd.NewWriter(io.Discard,
			zstd.WithEncoderLevel(zstd.SpeedFastest),
			zstd.WithEncoderConcurrency(1),
			zstd.WithLowerEncoderMem(true),
			zstd.WithWindowSize(1<<20))
	}
	return gzip.NewWriterLevel(io.Discard, gzipLevel)
}

// countWriter counts and checksums (CRC32C) the bytes written through it.
type countWriter struct {
	w   io.Writer
	n   int64
	crc uint32
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	c.crc = crc32.Update(c.crc, castagnoli, p[:n])
	return n, err
}

// A bundle is a tarball being written: tar → compressor → count/CRC →
// buffer → spool file. It is owned by one goroutine.
type bundle struct {
	id          string
	date        string // YYYY/MM/DD
	compression string
	path        string    // tarball path in the spool dir
	opened      time.Time // when it took its first member

	f  spoolFile
	bw *bufio.Writer
	cw countWriter
	zw compressor
	tw *tar.Writer

	members  []Member
	srcBytes int64
	closed   bool // f closed (by finish or discard)
}

// newBundle creates the tarball file for a new bundle of date.
func (a *Archiver) newBundle(date, compression string) (*bundle, error) {
	var (
		id   string
		path string
		f    spoolFile
		err  error
	)
	for range 10 {
		id = fmt.Sprintf("%s-%016x", strings.ReplaceAll(date, "/", ""), rand.Uint64())
		path = filepath.Join(a.cfg.SpoolDir, id+suffixFor(compression))
		f, err = a.createSpool(path)
		if !errors.Is(err, fs.ErrExist) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("create tarball: %w", err)
	}
	return a.startBundle(id, date, compression, path, f)
}

// startBundle sets up the writer chain of a bundle on f.
func (a *Archiver) startBundle(id, date, compression, path string, f spoolFile) (*bundle, error) {
	b := &bundle{id: id, date: date, compression: compression, path: path, f: f}
	b.bw = a.bufPool.Get().(*bufio.Writer)
	b.bw.Reset(f)
	b.cw.w = b.bw
	pool := &a.gzPool
	if compression == "zstd" {
		pool = &a.zstdPool
	}
	if zw, ok := pool.Get().(compressor); ok {
		b.zw = zw
	} else {
		zw, err := newCompressor(compression)
		if err != nil {
			b.discard(a)
			return nil, fmt.Errorf("new %s writer: %w", compression, err)
		}
		b.zw = zw
	}
	b.zw.Reset(&b.cw)
	b.tw = tar.NewWriter(b.zw)
	return b, nil
}

// size is the compressed size so far (bytes that left the compressor).
func (b *bundle) size() int64 { return b.cw.n }

// add appends one verified source. On error the bundle is unusable.
func (b *bundle) add(s *source) error {
	hdr := &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     s.rel,
		Size:     s.size,
		Mode:     0o644,
		ModTime:  s.mtime.UTC().Truncate(time.Second),
	}
	if err := b.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("tar header %s: %w", s.rel, err)
	}
	if s.data != nil {
		if _, err := b.tw.Write(s.data); err != nil {
			return fmt.Errorf("tar %s: %w", s.rel, err)
		}
	} else {
		if _, err := s.f.Seek(0, io.SeekStart); err != nil {
			return fmt.Errorf("rewind %s: %w", s.rel, err)
		}
		if _, err := io.CopyN(b.tw, s.f, s.size); err != nil {
			return fmt.Errorf("tar %s: %w", s.rel, err)
		}
	}
	b.members = append(b.members, Member{Source: s.rel, Size: s.size})
	b.srcBytes += s.size
	return nil
}

// finish completes the tarball: tar trailer, compressor, buffer, fsync,
// close, each checked. On error the caller discards the bundle.
func (b *bundle) finish(a *Archiver) error {
	if err := b.tw.Close(); err != nil {
		return fmt.Errorf("close tar %s: %w", b.path, err)
	}
	if err := b.zw.Close(); err != nil {
		return fmt.Errorf("close %s %s: %w", b.compression, b.path, err)
	}
	if err := b.bw.Flush(); err != nil {
		return fmt.Errorf("write %s: %w", b.path, err)
	}
	if err := b.f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", b.path, err)
	}
	b.closed = true
	if err := b.f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", b.path, err)
	}
	b.release(a)
	return nil
}

// discard closes and removes the tarball of a bundle that will not be
// sealed.
func (b *bundle) discard(a *Archiver) error {
	if !b.closed {
		b.closed = true
		b.f.Close()
	}
	b.release(a)
	return removeIfExists(b.path)
}

// release returns the buffer and compressor to their pools.
func (b *bundle) release(a *Archiver) {
	if b.bw != nil {
		b.bw.Reset(io.Discard)
		a.bufPool.Put(b.bw)
		b.bw = nil
	}
	if b.zw != nil {
		b.zw.Reset(io.Discard)
		if b.compression == "zstd" {
			a.zstdPool.Put(b.zw)
		} else {
			a.gzPool.Put(b.zw)
		}
		b.zw = nil
	}
}

// Errors of openSource that decide what happens to a source file.
var (
	errTorn     = errors.New("torn gzip stream")
	errTooLarge = fmt.Errorf("larger than %d bytes", MaxMemberSize)
	errTooYoung = errors.New("younger than MinFileAge")
	errNotFile  = errors.New("not a regular file")
)

// source is an open, verified source file.
type source struct {
	rel   string // YYYY/MM/DD/<UUID>.pcap.gz
	f     *os.File
	size  int64
	mtime time.Time
	data  []byte // the whole file if small, else nil; valid until the next openSource
}

func (s *source) close() { s.f.Close() }

// verifier reads and checks source files. It is owned by one goroutine.
type verifier struct {
	zr      gzip.Reader
	br      *bufio.Reader
	buf     []byte // holds small sources
	scratch []byte // decompressed bytes, discarded
}

// openSource opens and verifies the source rel of the data dir. Errors:
// fs.ErrNotExist (gone: skip), errTooYoung (later), errTooLarge and errTorn
// (quarantine), anything else (I/O: skip, retried by the next scan).
// checkAge applies MinFileAge.
func (a *Archiver) openSource(v *verifier, rel string, checkAge bool) (*source, error) {
	f, err := os.Open(filepath.Join(a.cfg.DataDir, filepath.FromSlash(rel)))
	if err != nil {
		return nil, err
	}
	s, err := a.checkSource(v, rel, f, checkAge)
	if err != nil {
		f.Close()
		return nil, err
	}
	return s, nil
}

func (a *Archiver) checkSource(v *verifier, rel string, f *os.File, checkAge bool) (*source, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, errNotFile
	}
	if checkAge && a.cfg.MinFileAge > 0 && a.cfg.Clock().Sub(fi.ModTime()) < a.cfg.MinFileAge {
		return nil, errTooYoung
	}
	s := &source{rel: rel, f: f, size: fi.Size(), mtime: fi.ModTime()}
	if s.size > MaxMemberSize {
		return nil, errTooLarge
	}
	if s.size <= smallMember {
		if cap(v.buf) < int(s.size) {
			v.buf = make([]byte, s.size, max(s.size, 64<<10))
		}
		s.data = v.buf[:s.size]
		if _, err := io.ReadFull(f, s.data); err != nil {
			return nil, fmt.Errorf("read %s: %w", rel, err)
		}
		return s, v.checkBytes(s.data)
	}
	if err := v.checkReader(f, s.size); err != nil {
		return nil, err
	}
	return s, nil
}

// readCounter remembers the first read error other than io.EOF.
type readCounter struct {
	r   io.Reader
	n   int64
	err error
}

func (r *readCounter) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.n += int64(n)
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
	return n, err
}

// checkBytes verifies a whole gzip file held in memory. A bytes.Reader
// lets the decompressor take its fastest path.
func (v *verifier) checkBytes(data []byte) error {
	br := bytes.NewReader(data)
	if err := v.inflate(br); err != nil {
		return fmt.Errorf("%w: %v", errTorn, err)
	}
	if br.Len() != 0 {
		return fmt.Errorf("%w: %d bytes after the gzip stream", errTorn, br.Len())
	}
	return nil
}

// checkReader verifies a whole gzip file of size bytes read from r. A
// broken stream is errTorn; a read error is returned as is.
func (v *verifier) checkReader(r io.Reader, size int64) error {
	rc := &readCounter{r: r}
	if v.br == nil {
		v.br = bufio.NewReaderSize(rc, 64<<10)
	} else {
		v.br.Reset(rc)
	}
	err := v.inflate(v.br)
	v.br.Reset(nil)
	switch {
	case rc.err != nil:
		return rc.err
	case err != nil:
		return fmt.Errorf("%w: %v", errTorn, err)
	case rc.n != size:
		return fmt.Errorf("%w: read %d bytes of %d", errTorn, rc.n, size)
	}
	return nil
}

// inflate decompresses every gzip member from r to the end, which checks
// each member's CRC-32 and length.
func (v *verifier) inflate(r io.Reader) error {
	if err := v.zr.Reset(r); err != nil {
		return err
	}
	if v.scratch == nil {
		v.scratch = make([]byte, 64<<10)
	}
	for {
		_, err := v.zr.Read(v.scratch)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
