package s3_test

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"go.uber.org/goleak"

	"github.com/headercap/headercap/upload"
	"github.com/headercap/headercap/upload/s3"
	"github.com/headercap/headercap/upload/uploadtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var bucketSeq atomic.Int64

func newBucket(t *testing.T, g *uploadtest.VersityGW) string {
	t.Helper()
	name := fmt.Sprintf("bucket-%d", bucketSeq.Add(1))
	g.CreateBucket(t, name)
	return name
}

func config(g *uploadtest.VersityGW, bucket string) s3.Config {
	return s3.Config{
		Bucket:      bucket,
		Endpoint:    g.Endpoint,
		Region:      "us-east-1",
		Credentials: credentials.NewStaticCredentialsProvider(g.Access, g.Secret, ""),
	}
}

func newStore(t *testing.T, cfg s3.Config) *s3.Store {
	t.Helper()
	s, err := s3.New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// rawClient talks to the gateway without this package, to plant objects.
func rawClient(g *uploadtest.VersityGW) *awss3.Client {
	return awss3.New(awss3.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(g.Endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(g.Access, g.Secret, ""),
	})
}

func TestConformance(t *testing.T) {
	g := uploadtest.StartVersityGW(t)
	secrets := uploadtest.Secrets(g.Secret)
	t.Run("BucketRoot", func(t *testing.T) {
		uploadtest.Run(t, func(t *testing.T) upload.Store {
			return newStore(t, config(g, newBucket(t, g)))
		}, secrets)
	})
	t.Run("Prefixed", func(t *testing.T) {
		uploadtest.Run(t, func(t *testing.T) upload.Store {
			bucket := newBucket(t, g)
			outside := newStore(t, config(g, bucket))
			defer outside.Close()
			b := uploadtest.NewBlob(99, 10)
			for _, n := range []string{"outside", "archive/prefixsibling", "archive/prefixed-not"} {
				if _, err := outside.Put(t.Context(), n, bytes.NewReader(b.Data), b.Size(), b.CRC); err != nil {
					t.Fatal(err)
				}
			}
			cfg := config(g, bucket)
			cfg.Prefix = "archive/prefixed"
			return newStore(t, cfg)
		}, secrets)
	})
}

// TestOpenURL: upload.Open with credentials from the standard AWS
// environment variables, as deployments do.
func TestOpenURL(t *testing.T) {
	g := uploadtest.StartVersityGW(t)
	bucket := newBucket(t, g)
	isolateAWSEnv(t)
	t.Setenv("AWS_ACCESS_KEY_ID", g.Access)
	t.Setenv("AWS_SECRET_ACCESS_KEY", g.Secret)
	raw := "s3://" + bucket + "/pfx?endpoint=" + g.Endpoint + "&region=us-east-1"
	s, err := upload.Open(t.Context(), raw)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := s.String(); got != raw || strings.Contains(got, g.Secret) {
		t.Errorf("String() = %q, want %q", got, raw)
	}
	b := uploadtest.NewBlob(1, 1000)
	if _, err := s.Put(t.Context(), "a/b", bytes.NewReader(b.Data), b.Size(), b.CRC); err != nil {
		t.Fatal(err)
	}
	out, err := rawClient(g).HeadObject(t.Context(), &awss3.HeadObjectInput{
		Bucket: aws.String(bucket), Key: aws.String("pfx/a/b"), ChecksumMode: types.ChecksumModeEnabled,
	})
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToInt64(out.ContentLength) != 1000 || out.Metadata["crc32c"] != fmt.Sprintf("%08x", b.CRC) {
		t.Errorf("stored %d bytes, metadata %v", aws.ToInt64(out.ContentLength), out.Metadata)
	}
}

// isolateAWSEnv keeps the developer's AWS configuration out of a test.
func isolateAWSEnv(t *testing.T) {
	dir := t.TempDir()
	for k, v := range map[string]string{
		"AWS_CONFIG_FILE":             filepath.Join(dir, "config"),
		"AWS_SHARED_CREDENTIALS_FILE": filepath.Join(dir, "credentials"),
		"AWS_EC2_METADATA_DISABLED":   "true",
		"AWS_PROFILE":                 "",
		"AWS_REGION":                  "",
		"AWS_DEFAULT_REGION":          "",
		"AWS_SESSION_TOKEN":           "",
		"AWS_ENDPOINT_URL":            "",
		"AWS_ENDPOINT_URL_S3":         "",
	} {
		t.Setenv(k, v)
	}
}

func TestPermanentErrors(t *testing.T) {
	g := uploadtest.StartVersityGW(t)
	ctx := t.Context()
	bucket := newBucket(t, g)
	b := uploadtest.NewBlob(1, 100)
	good := newStore(t, config(g, bucket))
	defer good.Close()
	if _, err := good.Put(ctx, "exists", bytes.NewReader(b.Data), b.Size(), b.CRC); err != nil {
		t.Fatal(err)
	}
	type check struct {
		name string
		cfg  s3.Config
		is   error // also required, if set
	}
	wrongSecret := config(g, bucket)
	wrongSecret.Credentials = credentials.NewStaticCredentialsProvider(g.Access, "wrong-secret", "")
	wrongKey := config(g, bucket)
	wrongKey.Credentials = credentials.NewStaticCredentialsProvider("no-such-access-key", g.Secret, "")
	for _, c := range []check{
		{"MissingBucket", config(g, "no-such-bucket"), upload.ErrBucketNotFound},
		{"WrongSecret", wrongSecret, nil},
		{"WrongAccessKey", wrongKey, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newStore(t, c.cfg)
			defer s.Close()
			want := func(op string, err error) {
				t.Helper()
				if !upload.IsPermanent(err) || (c.is != nil && !errors.Is(err, c.is)) {
					t.Errorf("%s = %v, want permanent %v", op, err, c.is)
				}
			}
			_, err := s.Put(ctx, "x", bytes.NewReader(b.Data), b.Size(), b.CRC)
			want("Put", err)
			_, err = s.Stat(ctx, "exists")
			want("Stat", err)
			_, err = s.Stat(ctx, "missing")
			want("Stat(missing)", err)
			_, err = s.List(ctx, "")
			want("List", err)
			_, err = s.Get(ctx, "exists")
			want("Get", err)
			want("Delete", s.Delete(ctx, "exists"))
		})
	}
	// None of that touched the object.
	if _, err := good.Stat(ctx, "exists"); err != nil {
		t.Errorf("Stat after failed deletes: %v", err)
	}
}

// TestUnreachableIsRetryable: a server that is not there is a network error.
func TestUnreachableIsRetryable(t *testing.T) {
	s := newStore(t, s3.Config{
		Bucket: "bucket", Endpoint: "http://127.0.0.1:1",
		Credentials: credentials.NewStaticCredentialsProvider("a", "b", ""),
	})
	defer s.Close()
	b := uploadtest.NewBlob(1, 100)
	if _, err := s.Put(t.Context(), "x", bytes.NewReader(b.Data), b.Size(), b.CRC); err == nil || upload.IsPermanent(err) {
		t.Errorf("Put to an unreachable server = %v, want a retryable error", err)
	}
}

// TestForeignObjects: objects written by another client, without our
// metadata or a stored CRC32C, still report the right checksum (from the
// metadata if present, else by reading them), so Put of the same content
// still counts as success.
func TestForeignObjects(t *testing.T) {
	g := uploadtest.StartVersityGW(t)
	ctx := t.Context()
	bucket := newBucket(t, g)
	raw := rawClient(g)
	b := uploadtest.NewBlob(5, 3000)
	// Stored with a CRC32 (not C) checksum and no metadata.
	if _, err := raw.PutObject(ctx, &awss3.PutObjectInput{
		Bucket: aws.String(bucket), Key: aws.String("plain"), Body: bytes.NewReader(b.Data),
		ChecksumAlgorithm: types.ChecksumAlgorithmCrc32,
	}); err != nil {
		t.Fatal(err)
	}
	// Only metadata: it is trusted (here deliberately wrong, to show it is used).
	if _, err := raw.PutObject(ctx, &awss3.PutObjectInput{
		Bucket: aws.String(bucket), Key: aws.String("meta"), Body: bytes.NewReader(b.Data),
		ChecksumAlgorithm: types.ChecksumAlgorithmCrc32,
		Metadata:          map[string]string{"crc32c": "deadbeef"},
	}); err != nil {
		t.Fatal(err)
	}
	s := newStore(t, config(g, bucket))
	defer s.Close()
	if o, err := s.Stat(ctx, "plain"); err != nil || o.CRC32C != b.CRC || o.Size != b.Size() {
		t.Errorf("Stat(plain) = %+v, %v; want crc32c %08x", o, err, b.CRC)
	}
	if o, err := s.Stat(ctx, "meta"); err != nil || o.CRC32C != 0xdeadbeef {
		t.Errorf("Stat(meta) = %+v, %v; want the metadata's deadbeef", o, err)
	}
	if _, err := s.Put(ctx, "plain", bytes.NewReader(b.Data), b.Size(), b.CRC); err != nil {
		t.Errorf("Put over a foreign object with the same content = %v", err)
	}
	objs, err := s.List(ctx, "")
	if err != nil || len(objs) != 2 || objs[0].Name != "meta" || objs[1].CRC32C != b.CRC {
		t.Errorf("List = %+v, %v", objs, err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []s3.Config{
		{},
		{Bucket: "a/b"},
		{Bucket: "b", Prefix: "x/../y"},
		{Bucket: "b", Endpoint: "ftp://host"},
		{Bucket: "b", Endpoint: "http://"},
		{Bucket: "b", Endpoint: "http://key:secret@host"},
		{Bucket: "b", Endpoint: "http://host?x=1"},
		{Bucket: "b", Region: "us east"},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v: Validate() = nil", c)
		}
	}
}

// TestUploadRate reports Put throughput to versitygw for a 20 MB object.
func TestUploadRate(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	g := uploadtest.StartVersityGW(t)
	s := newStore(t, config(g, newBucket(t, g)))
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
	t.Logf("20 MB to versitygw: sequential %.1f MB/s, 4 in parallel %.1f MB/s aggregate",
		float64(rounds*size)/1e6/seq.Seconds(), float64(4*size)/1e6/par.Seconds())
}
