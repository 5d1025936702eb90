// Package uploadtest is the conformance suite every upload backend must pass,
// and helpers that start the real servers the suite runs against
// (fake-gcs-server for upload/gcs, versitygw for upload/s3).
//
// Each backend's tests call Run with a constructor of fresh, empty Stores.
// The suite only uses the upload.Store interface; anything backend-specific
// (permanent-error classification, URL parsing, secrets in String) is tested
// next to the backend. Server helpers skip the test when the binary is
// missing, unless HEADERCAP_REQUIRE_SERVERS=1 (CI), where a skip would hide a
// broken backend, so they fail instead.
//
// Helpers are safe to call from parallel tests; each started server belongs
// to the test that started it and is killed when that test ends.
package uploadtest

import (
	"bytes"
	"context"
	"errors"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/headercap/headercap/upload"
)

// NestedName is a realistic archive name: pusher / M-Lab ETL layout.
const NestedName = "pcap/ndt/pcap/2026/11/25/20261125T120000.000000Z-pcap-mlab1-lga03-ndt.tgz"

// LargeSize is the size of the suite's large object.
const LargeSize = 25 << 20

// Option adjusts Run.
type Option func(*options)

type options struct {
	secrets []string
}

// Secrets lists strings (keys, passwords) that must never appear in a
// Store's String.
func Secrets(secrets ...string) Option {
	return func(o *options) { o.secrets = append(o.secrets, secrets...) }
}

// Run runs the conformance suite. newStore must return a new, empty Store
// each time it is called (a fresh bucket, prefix or directory); Run closes it
// when the subtest ends.
func Run(t *testing.T, newStore func(t *testing.T) upload.Store, opts ...Option) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	open := func(t *testing.T) upload.Store {
		t.Helper()
		s := newStore(t)
		t.Cleanup(func() {
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return s
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, s upload.Store)
	}{
		{"Roundtrip", testRoundtrip},
		{"ListPrefixSorted", testList},
		{"PutExistingSame", testPutExistingSame},
		{"PutExistingDifferent", testPutConflict},
		{"WrongChecksum", testWrongChecksum},
		{"ShortBody", testShortBody},
		{"Missing", testMissing},
		{"NestedName", testNested},
		{"Large", testLarge},
		{"RereadAfterFailure", testReread},
		{"CancelPrompt", testCancel},
		{"ConcurrentCreate", testConcurrent},
		{"InvalidNames", testInvalidNames},
		{"StringNoSecrets", func(t *testing.T, s upload.Store) { testString(t, s, o.secrets) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, open(t))
		})
	}
}

// Blob is test content with its checksum.
type Blob struct {
	Data []byte
	CRC  uint32
}

// NewBlob returns n pseudo-random bytes derived from seed.
func NewBlob(seed uint64, n int) Blob {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24)})
	_, _ = r.Read(b)
	return Blob{Data: b, CRC: crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli))}
}

// Size is len(Data).
func (b Blob) Size() int64 { return int64(len(b.Data)) }

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func put(t *testing.T, s upload.Store, name string, b Blob) {
	t.Helper()
	created, err := s.Put(ctxFor(t), name, bytes.NewReader(b.Data), b.Size(), b.CRC)
	if err != nil {
		t.Fatalf("Put(%s): %v", name, err)
	}
	if !created {
		t.Errorf("Put(%s) of a new name: created false", name)
	}
}

// checkStored verifies Stat and Get of name against b.
func checkStored(t *testing.T, s upload.Store, name string, b Blob) {
	t.Helper()
	ctx := ctxFor(t)
	o, err := s.Stat(ctx, name)
	if err != nil {
		t.Fatalf("Stat(%s): %v", name, err)
	}
	if want := (upload.Object{Name: name, Size: b.Size(), CRC32C: b.CRC}); o != want {
		t.Errorf("Stat(%s) = %+v, want %+v", name, o, want)
	}
	r, err := s.Get(ctx, name)
	if err != nil {
		t.Fatalf("Get(%s): %v", name, err)
	}
	got, err := io.ReadAll(r)
	if cerr := r.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("Get(%s): read: %v", name, err)
	}
	if !bytes.Equal(got, b.Data) {
		t.Errorf("Get(%s): %d bytes differ from the %d put", name, len(got), len(b.Data))
	}
}

func checkMissing(t *testing.T, s upload.Store, name string) {
	t.Helper()
	if o, err := s.Stat(ctxFor(t), name); !errors.Is(err, upload.ErrNotFound) {
		t.Errorf("Stat(%s) = %+v, %v; want ErrNotFound", name, o, err)
	}
}

func testRoundtrip(t *testing.T, s upload.Store) {
	b := NewBlob(1, 100_000)
	put(t, s, "a/b/roundtrip.bin", b)
	checkStored(t, s, "a/b/roundtrip.bin", b)
	empty := NewBlob(2, 0)
	put(t, s, "empty", empty)
	checkStored(t, s, "empty", empty)
}

func testList(t *testing.T, s upload.Store) {
	names := []string{
		"pcap/ndt/2026/11/25/b.tgz",
		"pcap-x/d",
		"pcap/ndt/2026/11/26/c.tgz",
		"index/ndt/f.json.gz",
		"pcap.e",
		"pcap/ndt/2026/11/25/a.tgz",
		"pcapz",
	}
	want := map[string]upload.Object{}
	for i, n := range names {
		b := NewBlob(uint64(100+i), 10+i)
		put(t, s, n, b)
		want[n] = upload.Object{Name: n, Size: b.Size(), CRC32C: b.CRC}
	}
	for _, tc := range []struct {
		prefix string
		want   []string
	}{
		{"pcap/", []string{"pcap/ndt/2026/11/25/a.tgz", "pcap/ndt/2026/11/25/b.tgz", "pcap/ndt/2026/11/26/c.tgz"}},
		{"pcap/ndt/2026/11/2", []string{"pcap/ndt/2026/11/25/a.tgz", "pcap/ndt/2026/11/25/b.tgz", "pcap/ndt/2026/11/26/c.tgz"}},
		{"pcap/ndt/2026/11/25/", []string{"pcap/ndt/2026/11/25/a.tgz", "pcap/ndt/2026/11/25/b.tgz"}},
		{"pcap", []string{"pcap-x/d", "pcap.e", "pcap/ndt/2026/11/25/a.tgz", "pcap/ndt/2026/11/25/b.tgz", "pcap/ndt/2026/11/26/c.tgz", "pcapz"}},
		{"", []string{"index/ndt/f.json.gz", "pcap-x/d", "pcap.e", "pcap/ndt/2026/11/25/a.tgz", "pcap/ndt/2026/11/25/b.tgz", "pcap/ndt/2026/11/26/c.tgz", "pcapz"}},
		{"nothing/", nil},
		{"pcap/ndt/2026/11/25/a.tgz", []string{"pcap/ndt/2026/11/25/a.tgz"}},
	} {
		got, err := s.List(ctxFor(t), tc.prefix)
		if err != nil {
			t.Errorf("List(%q): %v", tc.prefix, err)
			continue
		}
		var wantObjs []upload.Object
		for _, n := range tc.want {
			wantObjs = append(wantObjs, want[n])
		}
		if !slices.Equal(got, wantObjs) {
			t.Errorf("List(%q) =\n%+v\nwant\n%+v", tc.prefix, got, wantObjs)
		}
	}
}

func testPutExistingSame(t *testing.T, s upload.Store) {
	// Larger than the 256 KiB some servers drain from a rejected body.
	b := NewBlob(3, 1<<20)
	put(t, s, "dir/same", b)
	if created, err := s.Put(ctxFor(t), "dir/same", bytes.NewReader(b.Data), b.Size(), b.CRC); err != nil || created {
		t.Errorf("second Put with the same content = created %v, %v; want false, nil", created, err)
	}
	checkStored(t, s, "dir/same", b)
}

func testPutConflict(t *testing.T, s upload.Store) {
	orig, other := NewBlob(4, 1<<20), NewBlob(5, 1<<20)
	put(t, s, "dir/taken", orig)
	_, err := s.Put(ctxFor(t), "dir/taken", bytes.NewReader(other.Data), other.Size(), other.CRC)
	if !errors.Is(err, upload.ErrConflict) {
		t.Errorf("Put with different content = %v, want ErrConflict", err)
	}
	// A different size is a conflict too.
	longer := NewBlob(6, 1<<20+1)
	_, err = s.Put(ctxFor(t), "dir/taken", bytes.NewReader(longer.Data), longer.Size(), longer.CRC)
	if !errors.Is(err, upload.ErrConflict) {
		t.Errorf("Put with different size = %v, want ErrConflict", err)
	}
	checkStored(t, s, "dir/taken", orig)
}

func testWrongChecksum(t *testing.T, s upload.Store) {
	b := NewBlob(7, 300_000)
	_, err := s.Put(ctxFor(t), "dir/bad-crc", bytes.NewReader(b.Data), b.Size(), b.CRC^0x5a5a)
	if err == nil {
		t.Fatal("Put with a wrong checksum succeeded")
	}
	if !errors.Is(err, upload.ErrChecksum) {
		t.Errorf("Put with a wrong checksum = %v, want ErrChecksum", err)
	}
	checkMissing(t, s, "dir/bad-crc")
	if objs, err := s.List(ctxFor(t), ""); err != nil || len(objs) != 0 {
		t.Errorf("List after a rejected Put = %+v, %v; want nothing", objs, err)
	}
	// The name is still free for the right content.
	put(t, s, "dir/bad-crc", b)
	checkStored(t, s, "dir/bad-crc", b)
}

func testShortBody(t *testing.T, s upload.Store) {
	b := NewBlob(8, 1000)
	if _, err := s.Put(ctxFor(t), "short", bytes.NewReader(b.Data[:600]), b.Size(), b.CRC); err == nil {
		t.Error("Put with a body shorter than size succeeded")
	}
	checkMissing(t, s, "short")
}

func testMissing(t *testing.T, s upload.Store) {
	ctx := ctxFor(t)
	put(t, s, "other/object", NewBlob(9, 10)) // the bucket is not empty
	const name = "no/such/object"
	if _, err := s.Stat(ctx, name); !errors.Is(err, upload.ErrNotFound) || upload.IsPermanent(err) {
		t.Errorf("Stat(missing) = %v, want a retryable ErrNotFound", err)
	}
	if r, err := s.Get(ctx, name); !errors.Is(err, upload.ErrNotFound) {
		if err == nil {
			r.Close()
		}
		t.Errorf("Get(missing) = %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, name); !errors.Is(err, upload.ErrNotFound) {
		t.Errorf("Delete(missing) = %v, want ErrNotFound", err)
	}
	// A folder is not an object.
	if _, err := s.Stat(ctx, "other"); !errors.Is(err, upload.ErrNotFound) {
		t.Errorf("Stat(folder) = %v, want ErrNotFound", err)
	}
	// Delete removes, then reports missing.
	if err := s.Delete(ctx, "other/object"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	checkMissing(t, s, "other/object")
	if err := s.Delete(ctx, "other/object"); !errors.Is(err, upload.ErrNotFound) {
		t.Errorf("second Delete = %v, want ErrNotFound", err)
	}
}

func testNested(t *testing.T, s upload.Store) {
	b := NewBlob(10, 4096)
	put(t, s, NestedName, b)
	checkStored(t, s, NestedName, b)
	objs, err := s.List(ctxFor(t), "pcap/ndt/pcap/2026/11/25/")
	if err != nil {
		t.Fatal(err)
	}
	if want := []upload.Object{{Name: NestedName, Size: b.Size(), CRC32C: b.CRC}}; !slices.Equal(objs, want) {
		t.Errorf("List = %+v, want %+v", objs, want)
	}
	// A sibling index under its own datatype does not show up in pcap/.
	idx := "pcap/ndt/pcap-index/2026/11/25/20261125T120000.000000Z-pcap-index-mlab1-lga03-ndt.json.gz"
	put(t, s, idx, NewBlob(11, 100))
	objs, err = s.List(ctxFor(t), "pcap/ndt/pcap/")
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 1 || objs[0].Name != NestedName {
		t.Errorf("List(pcap/ndt/pcap/) = %+v, want only %s", objs, NestedName)
	}
}

func testLarge(t *testing.T, s upload.Store) {
	b := NewBlob(12, LargeSize)
	start := time.Now()
	put(t, s, "large/object.tgz", b)
	d := time.Since(start)
	t.Logf("Put %d MB in %v (%.1f MB/s)", LargeSize>>20, d.Round(time.Millisecond), float64(LargeSize)/1e6/d.Seconds())
	checkStored(t, s, "large/object.tgz", b)
}

// flakyBody fails every Read past failAt while failing is set.
type flakyBody struct {
	*bytes.Reader
	mu      sync.Mutex
	failing bool
	failAt  int64
}

var errFlaky = errors.New("injected read failure")

func (f *flakyBody) Read(p []byte) (int, error) {
	f.mu.Lock()
	failing := f.failing
	f.mu.Unlock()
	pos := f.Size() - int64(f.Len())
	if failing && pos >= f.failAt {
		return 0, errFlaky
	}
	if failing && pos+int64(len(p)) > f.failAt {
		p = p[:f.failAt-pos]
	}
	return f.Reader.Read(p)
}

func testReread(t *testing.T, s upload.Store) {
	b := NewBlob(13, 2<<20)
	body := &flakyBody{Reader: bytes.NewReader(b.Data), failing: true, failAt: 700_000}
	if _, err := s.Put(ctxFor(t), "reread", body, b.Size(), b.CRC); err == nil {
		t.Fatal("Put with a failing body succeeded")
	}
	checkMissing(t, s, "reread")
	// Leave the body somewhere in the middle: Put must rewind it.
	if _, err := body.Seek(12345, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	body.mu.Lock()
	body.failing = false
	body.mu.Unlock()
	if _, err := s.Put(ctxFor(t), "reread", body, b.Size(), b.CRC); err != nil {
		t.Fatalf("Put with the same body after a failure: %v", err)
	}
	checkStored(t, s, "reread", b)
}

// slowBody delivers at most chunk bytes per Read, pausing before each, like
// a slow link.
type slowBody struct {
	*bytes.Reader
	chunk int
	pause time.Duration
}

func (r *slowBody) Read(p []byte) (int, error) {
	time.Sleep(r.pause)
	if len(p) > r.chunk {
		p = p[:r.chunk]
	}
	return r.Reader.Read(p)
}

func testCancel(t *testing.T, s upload.Store) {
	b := NewBlob(14, LargeSize)
	// About 6 MB/s: the Put would take several seconds.
	body := &slowBody{Reader: bytes.NewReader(b.Data), chunk: 32 << 10, pause: 5 * time.Millisecond}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := s.Put(ctx, "cancelled", body, b.Size(), b.CRC)
		done <- err
	}()
	time.Sleep(300 * time.Millisecond)
	cancel()
	cancelled := time.Now()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Put after cancel = %v, want context.Canceled", err)
		}
		if upload.IsPermanent(err) {
			t.Errorf("Put after cancel = %v, marked permanent", err)
		}
		if d := time.Since(cancelled); d > 2*time.Second {
			t.Errorf("Put returned %v after cancel", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Put did not return 10s after cancel")
	}
	checkMissing(t, s, "cancelled")
}

func testConcurrent(t *testing.T, s upload.Store) {
	const writers = 8
	blobs := [2]Blob{NewBlob(15, 2<<20), NewBlob(16, 2<<20)}
	const name = "race/object"
	errs := make([]error, writers)
	var wg sync.WaitGroup
	start := make(chan struct{})
	ctx := ctxFor(t)
	for i := range writers {
		wg.Go(func() {
			<-start
			b := blobs[i%2]
			_, errs[i] = s.Put(ctx, name, bytes.NewReader(b.Data), b.Size(), b.CRC)
		})
	}
	close(start)
	wg.Wait()
	o, err := s.Stat(ctxFor(t), name)
	if err != nil {
		t.Fatalf("Stat after racing Puts: %v", err)
	}
	winner := -1
	for i, b := range blobs {
		if o.CRC32C == b.CRC && o.Size == b.Size() {
			winner = i
		}
	}
	if winner < 0 {
		t.Fatalf("stored object %+v matches neither content", o)
	}
	checkStored(t, s, name, blobs[winner])
	for i, err := range errs {
		if i%2 == winner && err != nil {
			t.Errorf("writer %d (winning content): %v, want nil", i, err)
		}
		if i%2 != winner && !errors.Is(err, upload.ErrConflict) {
			t.Errorf("writer %d (losing content): %v, want ErrConflict", i, err)
		}
	}
}

func testInvalidNames(t *testing.T, s upload.Store) {
	ctx := ctxFor(t)
	b := NewBlob(17, 10)
	for _, name := range []string{"", "/abs", "a//b", "a/", "../escape", "a/../../b", "a/./b", ".", "bad\nname", ".upload-tmp-x", "a/.upload-tmp-1/b", strings.Repeat("x", 1025)} {
		_, err := s.Put(ctx, name, bytes.NewReader(b.Data), b.Size(), b.CRC)
		if !errors.Is(err, upload.ErrInvalidName) || !upload.IsPermanent(err) {
			t.Errorf("Put(%q) = %v, want a permanent ErrInvalidName", name, err)
		}
		if _, err := s.Stat(ctx, name); !errors.Is(err, upload.ErrInvalidName) {
			t.Errorf("Stat(%q) = %v, want ErrInvalidName", name, err)
		}
	}
	if _, err := s.List(ctx, "../"); !errors.Is(err, upload.ErrInvalidName) {
		t.Errorf("List(../) = %v, want ErrInvalidName", err)
	}
	if objs, err := s.List(ctx, ""); err != nil || len(objs) != 0 {
		t.Errorf("List after invalid Puts = %+v, %v; want nothing", objs, err)
	}
}

func testString(t *testing.T, s upload.Store, secrets []string) {
	str := s.String()
	u, err := url.Parse(str)
	if err != nil {
		t.Fatalf("String() = %q: %v", str, err)
	}
	if u.User != nil {
		t.Errorf("String() = %q has user info", str)
	}
	if !slices.Contains([]string{"file", "gs", "s3"}, u.Scheme) {
		t.Errorf("String() = %q: scheme %q", str, u.Scheme)
	}
	for k := range u.Query() {
		if k != "endpoint" && k != "region" {
			t.Errorf("String() = %q: query parameter %q", str, k)
		}
	}
	for _, secret := range secrets {
		if secret != "" && strings.Contains(str, secret) {
			t.Errorf("String() = %q contains the secret %q", str, secret)
		}
	}
}
