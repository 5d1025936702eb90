package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/headercap/headercap/upload"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// genPcapGz returns a gzipped nanosecond pcap of one TCP flow with the given
// number of header-only packets, shaped like the capture side's output.
func genPcapGz(rng *rand.Rand, packets int) []byte {
	var raw bytes.Buffer
	hdr := make([]byte, 24)
	binary.LittleEndian.PutUint32(hdr[0:], 0xa1b23c4d) // nanosecond pcap
	binary.LittleEndian.PutUint16(hdr[4:], 2)
	binary.LittleEndian.PutUint16(hdr[6:], 4)
	binary.LittleEndian.PutUint32(hdr[16:], 256) // snaplen
	binary.LittleEndian.PutUint32(hdr[20:], 1)   // Ethernet
	raw.Write(hdr)

	ts := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC).Add(time.Duration(rng.Int64N(int64(time.Hour))))
	seq := [2]uint32{rng.Uint32(), rng.Uint32()}
	sport := uint16(1024 + rng.IntN(60000))
	rec := make([]byte, 16+14+20+32)
	for i := range packets {
		dir := 0
		if rng.IntN(3) == 0 {
			dir = 1
		}
		ts = ts.Add(time.Duration(rng.Int64N(int64(5 * time.Millisecond))))
		payload := 0
		if dir == 0 {
			payload = 1448
		}
		clear(rec)
		binary.LittleEndian.PutUint32(rec[0:], uint32(ts.Unix()))
		binary.LittleEndian.PutUint32(rec[4:], uint32(ts.Nanosecond()))
		binary.LittleEndian.PutUint32(rec[8:], uint32(len(rec)-16))
		binary.LittleEndian.PutUint32(rec[12:], uint32(len(rec)-16+payload))
		e := rec[16:]
		copy(e[0:6], []byte{2, 0, 0, 0, 0, byte(1 + dir)})
		copy(e[6:12], []byte{2, 0, 0, 0, 0, byte(2 - dir)})
		binary.BigEndian.PutUint16(e[12:], 0x0800)
		ip := e[14:]
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+32+payload))
		binary.BigEndian.PutUint16(ip[4:], uint16(i))
		ip[8], ip[9] = 64, 6
		copy(ip[12:16], []byte{192, 0, 2, byte(1 + dir)})
		copy(ip[16:20], []byte{192, 0, 2, byte(2 - dir)})
		tcp := ip[20:]
		if dir == 0 {
			binary.BigEndian.PutUint16(tcp[0:], sport)
			binary.BigEndian.PutUint16(tcp[2:], 443)
		} else {
			binary.BigEndian.PutUint16(tcp[0:], 443)
			binary.BigEndian.PutUint16(tcp[2:], sport)
		}
		binary.BigEndian.PutUint32(tcp[4:], seq[dir])
		binary.BigEndian.PutUint32(tcp[8:], seq[1-dir])
		seq[dir] += uint32(payload)
		tcp[12] = 8 << 4
		tcp[13] = 0x10
		binary.BigEndian.PutUint16(tcp[14:], uint16(rng.IntN(65535)))
		binary.BigEndian.PutUint16(tcp[16:], uint16(rng.IntN(65535)))
		copy(tcp[20:], []byte{1, 1, 8, 10})
		binary.BigEndian.PutUint32(tcp[24:], uint32(ts.UnixMilli()))
		binary.BigEndian.PutUint32(tcp[28:], uint32(ts.UnixMilli()-20))
		raw.Write(rec)
	}
	var out bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&out, gzip.DefaultCompression)
	zw.Write(raw.Bytes())
	zw.Close()
	return out.Bytes()
}

// randomGz returns a gzip file of n incompressible bytes (stored blocks).
func randomGz(rng *rand.Rand, n int) []byte {
	raw := make([]byte, (n+7)/8*8)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(raw[i:], rng.Uint64())
	}
	raw = raw[:n]
	var out bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&out, gzip.NoCompression)
	zw.Write(raw)
	zw.Close()
	return out.Bytes()
}

// writeSource publishes data as <dataDir>/<rel> and returns its path.
func writeSource(t testing.TB, dataDir, rel string, data []byte) string {
	t.Helper()
	p := filepath.Join(dataDir, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// fakeStore is an in-memory create-only store with injectable failures. It
// is safe for concurrent use.
type fakeStore struct {
	discard bool // keep only size and CRC of objects

	mu    sync.Mutex
	objs  map[string]fakeObj
	puts  []string                          // every Put's name, in order
	fail  func(name string, call int) error // returns an error to fail Put number call (1-based)
	after func(name string, call int) error // like fail, but after storing
	block chan struct{}                     // if set, Put waits for it (or ctx)
}

type fakeObj struct {
	data []byte
	size int64
	crc  uint32
}

func newFakeStore() *fakeStore { return &fakeStore{objs: make(map[string]fakeObj)} }

func (s *fakeStore) Put(ctx context.Context, name string, body io.ReadSeeker, size int64, crc uint32) (bool, error) {
	s.mu.Lock()
	s.puts = append(s.puts, name)
	call, fail, after, block := len(s.puts), s.fail, s.after, s.block
	s.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	if fail != nil {
		if err := fail(name, call); err != nil {
			return false, err
		}
	}
	if _, err := body.Seek(0, io.SeekStart); err != nil {
		return false, err
	}
	h := crc32.New(castagnoli)
	var buf bytes.Buffer
	w := io.Writer(h)
	if !s.discard {
		w = io.MultiWriter(h, &buf)
	}
	n, err := io.Copy(w, body)
	if err != nil {
		return false, err
	}
	if n != size || h.Sum32() != crc {
		return false, fmt.Errorf("fake: %w", upload.ErrChecksum)
	}
	s.mu.Lock()
	if o, ok := s.objs[name]; ok {
		s.mu.Unlock()
		if o.crc == crc && o.size == size {
			return false, nil
		}
		return false, fmt.Errorf("fake: %s: %w", name, upload.ErrConflict)
	}
	s.objs[name] = fakeObj{data: buf.Bytes(), size: n, crc: crc}
	s.mu.Unlock()
	if after != nil {
		if err := after(name, call); err != nil {
			return false, err
		}
	}
	return true, nil
}

func (s *fakeStore) names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for n := range s.objs {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func (s *fakeStore) putNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.puts...)
}

func (s *fakeStore) object(name string) fakeObj {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.objs[name]
}

// members returns every member of every stored tarball: name → contents.
// It fails the test if a member appears twice.
func (s *fakeStore) members(t testing.TB) map[string][]byte {
	t.Helper()
	out := make(map[string][]byte)
	for _, name := range s.names() {
		for m, data := range untar(t, name, s.object(name).data) {
			if _, dup := out[m]; dup {
				t.Errorf("member %s stored twice (again in %s)", m, name)
			}
			out[m] = data
		}
	}
	return out
}

// untar reads a stored tarball.
func untar(t testing.TB, name string, data []byte) map[string][]byte {
	t.Helper()
	var r io.Reader
	if strings.HasSuffix(name, ".tar.zst") {
		zr, err := zstd.NewReader(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		defer zr.Close()
		r = zr
	} else {
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		r = zr
	}
	out := make(map[string][]byte)
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("%s: %s: %v", name, h.Name, err)
		}
		if h.Typeflag != tar.TypeReg {
			t.Errorf("%s: member %s has type %c", name, h.Name, h.Typeflag)
		}
		out[h.Name] = b
	}
}

// testConfig is a Config for tests: quiet logs, small sizes.
func testConfig(t testing.TB, dataDir string) Config {
	return Config{
		DataDir:      dataDir,
		Experiment:   "ndt",
		Node:         "mlab1-lga03",
		MaxSize:      1 << 20,
		MaxAge:       time.Minute,
		ScanInterval: time.Hour,
		RetryMin:     time.Second,
		RetryMax:     time.Minute,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

// logBuffer collects log output; safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// started is a running Archiver.
type started struct {
	a      *Archiver
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
}

// start runs an Archiver; setup, if any, may change it before Run.
func start(t testing.TB, cfg Config, up Uploader, setup ...func(*Archiver)) *started {
	t.Helper()
	reg := prometheus.NewRegistry()
	a, err := New(cfg, up, reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range setup {
		f(a)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &started{a: a, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- a.Run(ctx) }()
	return s
}

// stop cancels Run and waits for it.
func (s *started) stop(t testing.TB) {
	t.Helper()
	s.cancel()
	if err := <-s.done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// files lists the regular files under dir (slash paths relative to dir),
// skipping the spool dir.
func files(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == DefaultSpoolName {
			return filepath.SkipDir
		}
		if d.Type().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// spoolFiles lists the spool dir's files, quarantine excluded.
func spoolFiles(t testing.TB, spool string) []string {
	t.Helper()
	es, err := os.ReadDir(spool)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		if e.Name() != quarantineDir && e.Name() != lockName {
			out = append(out, e.Name())
		}
	}
	return out
}
