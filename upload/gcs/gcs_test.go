package gcs_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/storage"
	"go.uber.org/goleak"
	"google.golang.org/api/option"

	"github.com/headercap/headercap/upload"
	"github.com/headercap/headercap/upload/gcs"
	"github.com/headercap/headercap/upload/uploadtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var bucketSeq atomic.Int64

// newBucket creates a uniquely named bucket on the fake.
func newBucket(t *testing.T, f *uploadtest.FakeGCS) string {
	t.Helper()
	name := fmt.Sprintf("bucket-%d", bucketSeq.Add(1))
	f.CreateBucket(t, name)
	return name
}

func newStore(t *testing.T, cfg gcs.Config) *gcs.Store {
	t.Helper()
	s, err := gcs.New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	f := uploadtest.StartFakeGCS(t)
	t.Run("BucketRoot", func(t *testing.T) {
		uploadtest.Run(t, func(t *testing.T) upload.Store {
			return newStore(t, gcs.Config{Bucket: newBucket(t, f), Endpoint: f.Endpoint})
		})
	})
	t.Run("Prefixed", func(t *testing.T) {
		uploadtest.Run(t, func(t *testing.T) upload.Store {
			bucket := newBucket(t, f)
			// Objects outside the prefix must stay invisible.
			outside := newStore(t, gcs.Config{Bucket: bucket, Endpoint: f.Endpoint})
			defer outside.Close()
			b := uploadtest.NewBlob(99, 10)
			for _, n := range []string{"outside", "archive/prefixsibling", "archive/prefixed"} {
				if _, err := outside.Put(t.Context(), n, bytes.NewReader(b.Data), b.Size(), b.CRC); err != nil {
					t.Fatal(err)
				}
			}
			return newStore(t, gcs.Config{Bucket: bucket, Prefix: "/archive/prefixed/", Endpoint: f.Endpoint})
		})
	})
}

// TestOpenEmulatorHost: upload.Open of a gs:// URL reaches the emulator named
// by STORAGE_EMULATOR_HOST, as deployments with fake-gcs-server do.
func TestOpenEmulatorHost(t *testing.T) {
	f := uploadtest.StartFakeGCS(t)
	bucket := newBucket(t, f)
	t.Setenv("STORAGE_EMULATOR_HOST", f.Endpoint)
	s, err := upload.Open(t.Context(), "gs://"+bucket+"/pfx/")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got, want := s.String(), "gs://"+bucket+"/pfx"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	b := uploadtest.NewBlob(1, 1000)
	if _, err := s.Put(t.Context(), "a/b", bytes.NewReader(b.Data), b.Size(), b.CRC); err != nil {
		t.Fatal(err)
	}
	r, err := s.Get(t.Context(), "a/b")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	r.Close()
	if err != nil || !bytes.Equal(got, b.Data) {
		t.Errorf("Get: %d bytes, %v", len(got), err)
	}
	// Check with the raw client where it landed.
	c, err := storage.NewClient(t.Context(), option.WithEndpoint(f.Endpoint+"/storage/v1/"), option.WithoutAuthentication())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a, err := c.Bucket(bucket).Object("pfx/a/b").Attrs(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if a.Size != 1000 || a.CRC32C != b.CRC {
		t.Errorf("stored %d bytes crc %08x, want 1000 %08x", a.Size, a.CRC32C, b.CRC)
	}
}

func TestPermanentErrors(t *testing.T) {
	f := uploadtest.StartFakeGCS(t)
	ctx := t.Context()
	s := newStore(t, gcs.Config{Bucket: "no-such-bucket", Endpoint: f.Endpoint})
	defer s.Close()
	b := uploadtest.NewBlob(1, 100)
	check := func(op string, err error) {
		t.Helper()
		if !upload.IsPermanent(err) || !errors.Is(err, upload.ErrBucketNotFound) {
			t.Errorf("%s on a missing bucket = %v, want a permanent ErrBucketNotFound", op, err)
		}
	}
	_, err := s.Put(ctx, "x", bytes.NewReader(b.Data), b.Size(), b.CRC)
	check("Put", err)
	_, err = s.Stat(ctx, "x")
	check("Stat", err)
	_, err = s.List(ctx, "")
	check("List", err)
	_, err = s.Get(ctx, "x")
	check("Get", err)
	check("Delete", s.Delete(ctx, "x"))
}

// TestUnreachableIsRetryable: a server that is not there is a network error,
// which a retry may fix.
func TestUnreachableIsRetryable(t *testing.T) {
	s := newStore(t, gcs.Config{Bucket: "bucket", Endpoint: "http://127.0.0.1:1"})
	defer s.Close()
	b := uploadtest.NewBlob(1, 100)
	if _, err := s.Put(t.Context(), "x", bytes.NewReader(b.Data), b.Size(), b.CRC); err == nil || upload.IsPermanent(err) {
		t.Errorf("Put to an unreachable server = %v, want a retryable error", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []gcs.Config{
		{},
		{Bucket: "a/b"},
		{Bucket: "b", Prefix: "../x"},
		{Bucket: "b", Endpoint: "ftp://host"},
		{Bucket: "b", Endpoint: "http://user:pw@host"},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v: Validate() = nil", c)
		}
	}
}

// TestUploadRate measures Put throughput to fake-gcs-server for a 20 MB
// object, one at a time and four in parallel. It reports, not asserts.
func TestUploadRate(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	f := uploadtest.StartFakeGCS(t)
	s := newStore(t, gcs.Config{Bucket: newBucket(t, f), Endpoint: f.Endpoint})
	defer s.Close()
	const size = 20 << 20
	b := uploadtest.NewBlob(7, size)
	ctx := t.Context()
	const rounds = 3
	start := time.Now()
	for i := range rounds {
		if _, err := s.Put(ctx, fmt.Sprintf("seq/%d", i), bytes.NewReader(b.Data), b.Size(), b.CRC); err != nil {
			t.Fatal(err)
		}
	}
	seq := time.Since(start)
	start = time.Now()
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range 4 {
		wg.Go(func() {
			_, errs[i] = s.Put(ctx, fmt.Sprintf("par/%d", i), bytes.NewReader(b.Data), b.Size(), b.CRC)
		})
	}
	wg.Wait()
	par := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	t.Logf("20 MB to fake-gcs-server: sequential %.1f MB/s (%v per object), 4 in parallel %.1f MB/s aggregate (%v)",
		float64(rounds*size)/1e6/seq.Seconds(), (seq / rounds).Round(time.Millisecond),
		float64(4*size)/1e6/par.Seconds(), par.Round(time.Millisecond))
}
