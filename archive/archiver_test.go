package archive

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/headercap/headercap/upload"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// sources writes n random sources of size bytes into date and returns them.
func sources(t testing.TB, dir, date string, n, size int, seed uint64) map[string][]byte {
	rng := rand.New(rand.NewPCG(seed, 1))
	out := make(map[string][]byte)
	for i := range n {
		rel := fmt.Sprintf("%s/host_1700000000_%016x.pcap.gz", date, seed<<32|uint64(i))
		data := randomGz(rng, size)
		writeSource(t, dir, rel, data)
		out[rel] = data
	}
	return out
}

// checkStored checks that the store holds exactly want, each member once,
// byte for byte, under ETL-accepted names in the right date folders.
func checkStored(t *testing.T, store *fakeStore, want map[string][]byte) {
	t.Helper()
	got := store.members(t)
	for rel, data := range want {
		g, ok := got[rel]
		switch {
		case !ok:
			t.Errorf("member %s not stored", rel)
		case string(g) != string(data):
			t.Errorf("member %s: %d bytes stored differ from the %d-byte source", rel, len(g), len(data))
		}
	}
	for rel := range got {
		if _, ok := want[rel]; !ok {
			t.Errorf("unexpected member %s", rel)
		}
	}
	for _, name := range store.names() {
		if !ETLAccepts(name) {
			t.Errorf("ETL rejects %s", name)
		}
		n, err := ParseObjectName(name)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		for m := range untar(t, name, store.object(name).data) {
			if !strings.HasPrefix(m, n.Date.Format(dateLayout)+"/") {
				t.Errorf("member %s in %s: wrong date folder", m, name)
			}
		}
	}
}

func TestBundleBySizeThenAge(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		cfg := testConfig(t, dir)
		cfg.MaxSize = 200 << 10
		cfg.MaxAge = 10 * time.Minute
		want := sources(t, dir, "2024/05/06", 30, 20<<10, 1)
		store := newFakeStore()
		s := start(t, cfg, store)
		for rel := range want {
			if err := s.a.Add(t.Context(), filepath.Join(dir, rel)); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		bySize := store.names()
		if len(bySize) < 2 {
			t.Fatalf("after adding 600 KB with MaxSize 200 KB: %d bundles uploaded, want >= 2", len(bySize))
		}
		for _, name := range bySize {
			if size := store.object(name).size; size > cfg.MaxSize+64<<10 {
				t.Errorf("%s: %d bytes, MaxSize %d", name, size, cfg.MaxSize)
			}
		}
		if left := files(t, dir); len(left) == 0 || len(left) >= len(want) {
			t.Errorf("%d of %d sources left before MaxAge", len(left), len(want))
		}

		time.Sleep(cfg.MaxAge - time.Second)
		synctest.Wait()
		if n := len(store.names()); n != len(bySize) {
			t.Errorf("bundle sealed before MaxAge: %d uploads", n)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		byAge := store.names()
		if len(byAge) != len(bySize)+1 {
			t.Fatalf("after MaxAge: %d bundles, want %d", len(byAge), len(bySize)+1)
		}
		// The bundle sealed by age carries the seal time (synctest's clock
		// starts at 2000-01-01 00:00 UTC) and the data's date folder.
		aged := byAge[len(byAge)-1]
		if want := "ndt/pcap/2024/05/06/20000101T001000.000000Z-pcap-mlab1-lga03-ndt.tgz"; aged != want {
			t.Errorf("aged bundle %s, want %s", aged, want)
		}
		checkStored(t, store, want)
		if left := files(t, dir); len(left) != 0 {
			t.Errorf("data dir not empty: %v", left)
		}
		if left := spoolFiles(t, filepath.Join(dir, ".archive")); len(left) != 0 {
			t.Errorf("spool not empty: %v", left)
		}
		s.stop(t)
		if got := testutil.ToFloat64(s.a.m.filesArchived); got != float64(len(want)) {
			t.Errorf("files archived = %v", got)
		}
		if got := testutil.ToFloat64(s.a.m.uploads.WithLabelValues(resultSuccess)); got != float64(len(byAge)) {
			t.Errorf("successful uploads = %v", got)
		}
		if got := testutil.ToFloat64(s.a.m.bundlesSealed); got != float64(len(byAge)) {
			t.Errorf("bundles sealed = %v", got)
		}
		if testutil.ToFloat64(s.a.m.lastSuccess) != float64(time.Date(2000, 1, 1, 0, 10, 0, 0, time.UTC).Unix()) {
			t.Errorf("last success = %v", testutil.ToFloat64(s.a.m.lastSuccess))
		}
	})
}

func TestOneBundlePerDateAndZstd(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		cfg := testConfig(t, dir)
		cfg.Compression = "zstd"
		cfg.Node = "third-party"
		cfg.Prefix = "archive/v1"
		want := sources(t, dir, "2024/05/06", 3, 1000, 1)
		maps.Copy(want, sources(t, dir, "2024/05/07", 3, 1000, 2))
		store := newFakeStore()
		s := start(t, cfg, store) // the initial scan finds the files
		time.Sleep(cfg.MaxAge)
		synctest.Wait()
		s.stop(t)
		names := store.names()
		// Both sealed in the same instant: distinct timestamps.
		wantNames := []string{
			"archive/v1/ndt/pcap/2024/05/06/20000101T000100.000000Z-pcap-third-party-ndt.tar.zst",
			"archive/v1/ndt/pcap/2024/05/07/20000101T000100.000001Z-pcap-third-party-ndt.tar.zst",
		}
		if !slices.Equal(names, wantNames) {
			// Map order decides which date is sealed first.
			wantNames[0], wantNames[1] = strings.Replace(wantNames[0], "000100.000000Z", "000100.000001Z", 1),
				strings.Replace(wantNames[1], "000100.000001Z", "000100.000000Z", 1)
			if !slices.Equal(names, wantNames) {
				t.Fatalf("stored %v", names)
			}
		}
		got := store.members(t)
		if len(got) != len(want) {
			t.Fatalf("stored %d members, want %d", len(got), len(want))
		}
		for rel, data := range want {
			if string(got[rel]) != string(data) {
				t.Errorf("member %s differs", rel)
			}
		}
	})
}

func TestTornAndOversizedSourcesQuarantined(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		cfg := testConfig(t, dir)
		var logs logBuffer
		cfg.Logger = logs.logger()
		good := sources(t, dir, "2024/05/06", 2, 5000, 1)
		data := randomGz(rand.New(rand.NewPCG(9, 9)), 5000)
		badCRC := slices.Clone(data)
		badCRC[len(badCRC)-6] ^= 0xff // CRC-32 in the trailer
		badLen := slices.Clone(data)
		badLen[len(badLen)-1] ^= 0x01 // ISIZE in the trailer
		garbage := slices.Clone(data)
		garbage = append(garbage, "trailing garbage"...)
		torn := map[string][]byte{
			"2024/05/06/truncated.pcap.gz": data[:len(data)/2],
			"2024/05/06/empty.pcap.gz":     {},
			"2024/05/06/badcrc.pcap.gz":    badCRC,
			"2024/05/06/badlen.pcap.gz":    badLen,
			"2024/05/06/garbage.pcap.gz":   garbage,
			"2024/05/06/zeros.pcap.gz":     make([]byte, 4096),
		}
		for rel, d := range torn {
			writeSource(t, dir, rel, d)
		}
		// Too large for the ETL: a sparse file just over 200 MiB.
		big := writeSource(t, dir, "2024/05/06/big.pcap.gz", nil)
		if err := os.Truncate(big, MaxMemberSize+1); err != nil {
			t.Fatal(err)
		}
		store := newFakeStore()
		s := start(t, cfg, store)
		time.Sleep(cfg.MaxAge)
		synctest.Wait()
		s.stop(t)

		checkStored(t, store, good)
		if left := files(t, dir); len(left) != 0 {
			t.Errorf("left in data dir: %v", left)
		}
		q := filepath.Join(dir, ".archive", quarantineDir)
		for rel, d := range torn {
			b, err := os.ReadFile(filepath.Join(q, rel))
			if err != nil || string(b) != string(d) {
				t.Errorf("%s not quarantined intact: %v", rel, err)
			}
		}
		if fi, err := os.Stat(filepath.Join(q, "2024/05/06/big.pcap.gz")); err != nil || fi.Size() != MaxMemberSize+1 {
			t.Errorf("big file not quarantined: %v", err)
		}
		if got := testutil.ToFloat64(s.a.m.quarantinedFiles.WithLabelValues("torn")); got != float64(len(torn)) {
			t.Errorf("quarantined torn = %v, want %d", got, len(torn))
		}
		if got := testutil.ToFloat64(s.a.m.quarantinedFiles.WithLabelValues("too_large")); got != 1 {
			t.Errorf("quarantined too_large = %v", got)
		}
		if n := strings.Count(logs.String(), "quarantined source file"); n != len(torn)+1 {
			t.Errorf("%d quarantine log lines, want %d", n, len(torn)+1)
		}
	})
}

func TestStrayAndTempFilesIgnored(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		cfg := testConfig(t, dir)
		cfg.ScanInterval = time.Minute
		var logs logBuffer
		cfg.Logger = logs.logger()
		good := sources(t, dir, "2024/05/06", 1, 100, 1)
		data := randomGz(rand.New(rand.NewPCG(1, 1)), 100)
		strays := map[string]string{
			"2024/05/06/.host_1.pcap.gz.tmp": "temp",
			"2024/05/06/.host_2.pcap.gz":     "temp",
			"2024/05/06/host_3.pcap":         "name",
			"2024/05/06/host_4.pcap.gz.bak":  "name",
			"2024/05/06/host 5.pcap.gz":      "name",
			"2024/05/06/sub/host_6.pcap.gz":  "type", // the directory sub
			"2024/13/01/host_7.pcap.gz":      "layout",
			"2024/05/host_8.pcap.gz":         "layout",
			"README":                         "layout",
			".hidden/2024/05/06/x.pcap.gz":   "",
		}
		for rel := range strays {
			writeSource(t, dir, rel, data)
		}
		if err := os.Symlink("host_3.pcap", filepath.Join(dir, "2024/05/06/link.pcap.gz")); err != nil {
			t.Fatal(err)
		}
		store := newFakeStore()
		s := start(t, cfg, store)
		if err := s.a.Add(t.Context(), filepath.Join(dir, "2024/05/06/.host_2.pcap.gz")); err == nil {
			t.Error("Add took a temporary file")
		}
		if err := s.a.Add(t.Context(), "/elsewhere/2024/05/06/x.pcap.gz"); err == nil {
			t.Error("Add took a file outside the data dir")
		}
		time.Sleep(5 * cfg.ScanInterval) // several scans
		synctest.Wait()
		s.stop(t)

		checkStored(t, store, good)
		left := files(t, dir)
		for rel := range strays {
			if !slices.Contains(left, rel) {
				t.Errorf("stray %s was touched", rel)
			}
		}
		want := map[string]float64{"temp": 2, "name": 3, "type": 2, "layout": 3}
		for reason, n := range want {
			if got := testutil.ToFloat64(s.a.m.ignored.WithLabelValues(reason)); got != n {
				t.Errorf("ignored{%s} = %v, want %v", reason, got, n)
			}
		}
		if n := strings.Count(logs.String(), "host_3.pcap "); n != 1 {
			t.Errorf("stray logged %d times, want once:\n%s", n, logs.String())
		}
	})
}

func TestUploadRetriesThenSucceeds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		cfg := testConfig(t, dir)
		var logs logBuffer
		cfg.Logger = logs.logger()
		want := sources(t, dir, "2024/05/06", 3, 100, 1)
		store := newFakeStore()
		store.fail = func(name string, call int) error {
			if call <= 4 {
				return &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
			}
			return nil
		}
		s := start(t, cfg, store)
		time.Sleep(cfg.MaxAge)
		synctest.Wait()
		if len(store.names()) != 0 {
			t.Fatal("stored despite failures")
		}
		if left := files(t, dir); len(left) != len(want) {
			t.Fatalf("sources deleted before a confirmed upload: %v", left)
		}
		time.Sleep(time.Hour)
		synctest.Wait()
		s.stop(t)
		checkStored(t, store, want)
		puts := store.putNames()
		if len(puts) != 5 || slices.Compact(slices.Clone(puts))[0] != puts[0] || len(slices.Compact(slices.Clone(puts))) != 1 {
			t.Errorf("puts %v: want 5 attempts under one name", puts)
		}
		if got := testutil.ToFloat64(s.a.m.failures.WithLabelValues(reasonNetwork)); got != 4 {
			t.Errorf("network failures = %v", got)
		}
		if got := testutil.ToFloat64(s.a.m.uploads.WithLabelValues(resultError)); got != 4 {
			t.Errorf("upload errors = %v", got)
		}
		if n := strings.Count(logs.String(), "upload failing"); n != 1 {
			t.Errorf("failure logged %d times, want once per outage", n)
		}
		if !strings.Contains(logs.String(), "uploads succeeding again") || !strings.Contains(logs.String(), "network=4") {
			t.Errorf("recovery not logged with the failure count:\n%s", logs.String())
		}
		if len(files(t, dir)) != 0 {
			t.Error("sources left")
		}
	})
}

func TestPermanentErrorLoudAndRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		cfg := testConfig(t, dir)
		var logs logBuffer
		cfg.Logger = logs.logger()
		want := sources(t, dir, "2024/05/06", 1, 100, 1)
		store := newFakeStore()
		var times []time.Time
		store.fail = func(name string, call int) error {
			times = append(times, time.Now())
			if call <= 3 {
				return fmt.Errorf("403: %w", upload.Permanent(errors.New("access denied")))
			}
			return nil
		}
		s := start(t, cfg, store)
		time.Sleep(cfg.MaxAge + 10*cfg.RetryMax)
		synctest.Wait()
		s.stop(t)
		checkStored(t, store, want)
		if n := strings.Count(logs.String(), "level=ERROR msg=\"archive: upload failed permanently"); n != 3 {
			t.Errorf("permanent error logged %d times at error level, want every time (3)", n)
		}
		for i := 1; i < len(times); i++ {
			if d := times[i].Sub(times[i-1]); d != cfg.RetryMax {
				t.Errorf("attempt %d came %v after the previous one, want RetryMax", i+1, d)
			}
		}
		if got := testutil.ToFloat64(s.a.m.failures.WithLabelValues(reasonPermanent)); got != 3 {
			t.Errorf("permanent failures = %v", got)
		}
	})
}

func TestConflictResealsUnderNewName(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		cfg := testConfig(t, dir)
		want := sources(t, dir, "2024/05/06", 2, 100, 1)
		store := newFakeStore()
		// Another host with the same node name took the name first.
		taken := "ndt/pcap/2024/05/06/20000101T000100.000000Z-pcap-mlab1-lga03-ndt.tgz"
		store.objs[taken] = fakeObj{data: []byte("theirs"), size: 6, crc: 1}
		var manifestAtRetry string
		store.fail = func(name string, call int) error {
			if call == 2 {
				ms, _ := filepath.Glob(filepath.Join(dir, ".archive", "*.json"))
				if len(ms) == 1 {
					m, err := ReadManifest(ms[0])
					if err == nil {
						manifestAtRetry = m.Object
					}
				}
			}
			return nil
		}
		s := start(t, cfg, store)
		time.Sleep(cfg.MaxAge)
		synctest.Wait()
		s.stop(t)
		puts := store.putNames()
		renamed := "ndt/pcap/2024/05/06/20000101T000100.000001Z-pcap-mlab1-lga03-ndt.tgz"
		if !slices.Equal(puts, []string{taken, renamed}) {
			t.Fatalf("puts %v", puts)
		}
		if manifestAtRetry != renamed {
			t.Errorf("manifest at retry names %q, want %q", manifestAtRetry, renamed)
		}
		if o := store.object(taken); string(o.data) != "theirs" {
			t.Error("the other writer's object was overwritten")
		}
		delete(store.objs, taken)
		checkStored(t, store, want)
		if got := testutil.ToFloat64(s.a.m.uploads.WithLabelValues(resultConflict)); got != 1 {
			t.Errorf("conflicts = %v", got)
		}
		if len(files(t, dir)) != 0 {
			t.Error("sources left")
		}
	})
}

func TestExistsWithSameChecksumIsSuccess(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		cfg := testConfig(t, dir)
		want := sources(t, dir, "2024/05/06", 2, 100, 1)
		store := newFakeStore()
		// The first attempt stores the object but its answer is lost.
		store.after = func(name string, call int) error {
			if call == 1 {
				return fmt.Errorf("read response: %w", syscall.ECONNRESET)
			}
			return nil
		}
		s := start(t, cfg, store)
		time.Sleep(cfg.MaxAge + time.Minute)
		synctest.Wait()
		s.stop(t)
		checkStored(t, store, want)
		if puts := store.putNames(); len(puts) != 2 || puts[0] != puts[1] {
			t.Errorf("puts %v", puts)
		}
		if len(files(t, dir)) != 0 || len(spoolFiles(t, filepath.Join(dir, ".archive"))) != 0 {
			t.Error("files left")
		}
		// Counted as found there, not as a second upload.
		for r, want := range map[string]float64{resultError: 1, resultExists: 1, resultSuccess: 0} {
			if got := testutil.ToFloat64(s.a.m.uploads.WithLabelValues(r)); got != want {
				t.Errorf("uploads{result=%q} = %v, want %v", r, got, want)
			}
		}
	})
}

func TestShutdownSealsAndUploadsWithinGrace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		cfg := testConfig(t, dir)
		cfg.MaxAge = time.Hour
		want := sources(t, dir, "2024/05/06", 2, 100, 1)
		store := newFakeStore()
		s := start(t, cfg, store)
		synctest.Wait()
		s.stop(t) // seals the open bundle and uploads it
		checkStored(t, store, want)
		if len(files(t, dir)) != 0 {
			t.Error("sources left")
		}
	})
}

// The grace bounds the whole shutdown: the time spent collecting what was
// published last comes out of it.
func TestShutdownGraceIncludesCollecting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		cfg := testConfig(t, dir)
		cfg.MaxAge = time.Hour
		cfg.ShutdownGrace = 3 * time.Second
		sources(t, dir, "2024/05/06", 2, 100, 1)
		// Once stopping, every reading of the clock finds it 200ms later:
		// collecting and sealing take a while.
		var stopping atomic.Bool
		var skew atomic.Int64
		cfg.Clock = func() time.Time {
			if stopping.Load() {
				skew.Add(int64(200 * time.Millisecond))
			}
			return time.Now().Add(time.Duration(skew.Load()))
		}
		hung := newFakeStore()
		hung.block = make(chan struct{}) // never answers
		s := start(t, cfg, hung)
		synctest.Wait()
		t0 := time.Now()
		stopping.Store(true)
		s.stop(t)
		spent := time.Duration(skew.Load())
		if d := time.Since(t0); d+spent > cfg.ShutdownGrace+200*time.Millisecond || spent == 0 {
			t.Errorf("Run returned %v after cancel, after %v spent collecting; want both within the grace %v", d, spent, cfg.ShutdownGrace)
		}
	})
}

func TestShutdownLeavesSealedBundleForNextStart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		cfg := testConfig(t, dir)
		cfg.MaxAge = time.Hour
		cfg.ShutdownGrace = 3 * time.Second
		want := sources(t, dir, "2024/05/06", 2, 100, 1)
		hung := newFakeStore()
		hung.block = make(chan struct{}) // never answers
		s := start(t, cfg, hung)
		synctest.Wait()
		t0 := time.Now()
		s.stop(t)
		if d := time.Since(t0); d != cfg.ShutdownGrace {
			t.Errorf("Run returned %v after cancel, want the grace %v", d, cfg.ShutdownGrace)
		}
		ms, _ := filepath.Glob(filepath.Join(dir, ".archive", "*.json"))
		if len(ms) != 1 {
			t.Fatalf("manifests left: %v", ms)
		}
		m, err := ReadManifest(ms[0])
		if err != nil {
			t.Fatal(err)
		}
		if len(files(t, dir)) != len(want) {
			t.Fatal("sources deleted without an upload")
		}

		store := newFakeStore()
		s = start(t, cfg, store)
		synctest.Wait()
		s.stop(t)
		if names := store.names(); !slices.Equal(names, []string{m.Object}) {
			t.Errorf("stored %v, want the original name %s", names, m.Object)
		}
		checkStored(t, store, want)
		if len(files(t, dir)) != 0 || len(spoolFiles(t, filepath.Join(dir, ".archive"))) != 0 {
			t.Error("files left")
		}
	})
}

func TestNegativeGraceSealsWithoutUploading(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		cfg := testConfig(t, dir)
		cfg.MaxAge = time.Hour
		cfg.ShutdownGrace = -1
		sources(t, dir, "2024/05/06", 2, 100, 1)
		sources(t, dir, "2024/05/07", 2, 100, 2)
		store := newFakeStore()
		s := start(t, cfg, store)
		synctest.Wait()
		t0 := time.Now()
		s.stop(t)
		if time.Since(t0) != 0 {
			t.Errorf("shutdown took %v", time.Since(t0))
		}
		if len(store.putNames()) != 0 {
			t.Errorf("uploaded %v", store.putNames())
		}
		ms, _ := filepath.Glob(filepath.Join(dir, ".archive", "*.json"))
		if len(ms) != 2 || len(files(t, dir)) != 4 {
			t.Errorf("manifests %v, sources %v", ms, files(t, dir))
		}
		if got := testutil.ToFloat64(s.a.m.pending); got != 2 {
			t.Errorf("pending bundles = %v, want 2", got)
		}
	})
}

func TestRunTwice(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := start(t, testConfig(t, t.TempDir()), newFakeStore())
		synctest.Wait()
		if err := s.a.Run(t.Context()); err == nil {
			t.Error("second Run succeeded")
		}
		s.stop(t)
	})
}

func TestSecondArchiverOnSpoolDirRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		s := start(t, testConfig(t, dir), newFakeStore())
		synctest.Wait()
		b, err := New(testConfig(t, dir), newFakeStore(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "another archiver") {
			t.Errorf("second Run on the spool dir: %v", err)
		}
		s.stop(t)
	})
}

func TestAddDropsWhenBusy(t *testing.T) {
	dir := t.TempDir()
	a, err := New(testConfig(t, dir), newFakeStore(), nil)
	if err != nil {
		t.Fatal(err)
	}
	// Nobody runs the bundler: the queue fills, then hints are dropped.
	p := filepath.Join(dir, "2024/05/06/x.pcap.gz")
	for range candidateQueue + 10 {
		if err := a.Add(context.Background(), p); err != nil {
			t.Fatal(err)
		}
	}
	if got := testutil.ToFloat64(a.m.hintsDropped); got != 10 {
		t.Errorf("dropped = %v", got)
	}
}
