package upload_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/headercap/headercap/upload"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestOpen(t *testing.T) {
	dir := t.TempDir()
	// No network is touched by Open; keep the SDKs away from any real
	// configuration anyway.
	t.Setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:1")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "none"))
	t.Setenv("AWS_PROFILE", "")
	for _, tc := range []struct {
		url  string
		want string // String() of the store; "" means an error is expected
		err  string // substring of the error
	}{
		{url: "file://" + dir, want: "file://" + dir},
		{url: "file://" + dir + "/", want: "file://" + dir},
		{url: "file://localhost" + dir, want: "file://" + dir},
		{url: "file://" + dir + "/sub/..", want: "file://" + dir},
		{url: "gs://my-bucket", want: "gs://my-bucket"},
		{url: "gs://my-bucket/", want: "gs://my-bucket"},
		{url: "gs://my-bucket/archive/v1/", want: "gs://my-bucket/archive/v1"},
		{url: "gs://my_bucket.example.com/x", want: "gs://my_bucket.example.com/x"},
		{url: "s3://bucket", want: "s3://bucket"},
		{url: "s3://bucket/pre/fix?region=eu-west-1", want: "s3://bucket/pre/fix?region=eu-west-1"},
		{url: "s3://bucket?endpoint=http://127.0.0.1:7070&region=us-east-1", want: "s3://bucket?endpoint=http://127.0.0.1:7070&region=us-east-1"},
		{url: "s3://bucket?region=us-east-1&endpoint=https://s3.example.com", want: "s3://bucket?endpoint=https://s3.example.com&region=us-east-1"},
		{url: "s3://bucket?endpoint=http%3A%2F%2F127.0.0.1%3A7070", want: "s3://bucket?endpoint=http://127.0.0.1:7070"},

		{url: "", err: "no scheme"},
		{url: "/abs/path", err: "no scheme"},
		{url: "ftp://host/x", err: `unknown scheme "ftp"`},
		{url: "GS://bucket", want: "gs://bucket"}, // schemes are case-insensitive
		{url: "file:relative/path", err: "must be absolute"},
		{url: "file://relative/path", err: `has host "relative"`},
		{url: "file://", err: "must be absolute"},
		{url: "file:///abs?x=1", err: "no query"},
		{url: "file://" + filepath.Join(dir, "missing"), err: "bucket not found"},
		{url: "gs://", err: "no bucket"},
		{url: "gs:///prefix", err: "no bucket"},
		{url: "gs://Bucket", err: "invalid bucket name"},
		{url: "gs://b", err: "invalid bucket name"},
		{url: "gs://bucket:80/x", err: "invalid bucket name"},
		{url: "gs://bucket/a/../b", err: "invalid object name"},
		{url: "gs://bucket//x", err: "invalid object name"},
		{url: "gs://bucket?endpoint=http://x", err: "no query parameters"},
		{url: "gs://user:pass@bucket", err: "credentials in the URL"},
		{url: "s3://", err: "no bucket"},
		{url: "s3:///pcap", err: "no bucket"},
		{url: "s3:bucket", err: "want s3://bucket"},
		{url: "s3://under_score", err: "invalid bucket name"},
		{url: "s3://AKIA:SECRETKEY@bucket", err: "credentials in the URL"},
		{url: "s3://bucket?region=a&region=b", err: "given 2 times"},
		{url: "s3://bucket?secret=hunter2", err: `unknown query parameter "secret"`},
		{url: "s3://bucket?endpoint=ftp://host", err: "endpoint"},
		{url: "s3://bucket?endpoint=127.0.0.1:7070", err: "endpoint"},
		{url: "s3://bucket?endpoint=http://k:s@host", err: "endpoint"},
		{url: "s3://bucket#frag", err: "fragment"},
		{url: "s3://bucket/%zz", err: "bad destination URL"},
	} {
		t.Run(tc.url, func(t *testing.T) {
			s, err := upload.Open(context.Background(), tc.url)
			if tc.want != "" {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				defer s.Close()
				if got := s.String(); got != tc.want {
					t.Errorf("String() = %q, want %q", got, tc.want)
				}
				return
			}
			if err == nil {
				s.Close()
				t.Fatalf("Open succeeded (%s), want an error containing %q", s, tc.err)
			}
			if !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Open error %q does not contain %q", err, tc.err)
			}
			if !upload.IsPermanent(err) {
				t.Errorf("Open error %v is not permanent", err)
			}
			for _, secret := range []string{"SECRETKEY", "hunter2", "pass"} {
				if strings.Contains(err.Error(), secret) {
					t.Errorf("Open error %q leaks %q", err, secret)
				}
			}
		})
	}
}

func TestOpenErrorsWrapBadURL(t *testing.T) {
	_, err := upload.Open(context.Background(), "nope://x")
	if !errors.Is(err, upload.ErrBadURL) {
		t.Errorf("Open(nope://x) = %v, want ErrBadURL", err)
	}
}

func TestIsPermanent(t *testing.T) {
	base := errors.New("access denied")
	perm := upload.Permanent(base)
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{base, false},
		{upload.ErrNotFound, false},
		{upload.ErrConflict, false},
		{context.Canceled, false},
		{perm, true},
		{fmt.Errorf("put x: %w", perm), true},
		{errors.Join(errors.New("other"), perm), true},
		{upload.Permanent(perm), true},
	} {
		if got := upload.IsPermanent(tc.err); got != tc.want {
			t.Errorf("IsPermanent(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
	if !errors.Is(perm, base) {
		t.Error("Permanent does not unwrap")
	}
	var pe *upload.PermanentError
	if !errors.As(fmt.Errorf("wrapped: %w", perm), &pe) || pe.Err != base {
		t.Errorf("errors.As(*PermanentError) = %v", pe)
	}
	if upload.Permanent(nil) != nil {
		t.Error("Permanent(nil) != nil")
	}
	if upload.Permanent(perm) != perm {
		t.Error("Permanent re-wrapped a permanent error")
	}
}

// TestOpenFileRoundtrip: the file backend through Open (the other backends'
// Open paths are tested next to them, against their servers).
func TestOpenFileRoundtrip(t *testing.T) {
	dir := t.TempDir()
	s, err := upload.Open(t.Context(), "file://"+dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	data := []byte("hello")
	if _, err := s.Put(t.Context(), "a/b.txt", strings.NewReader(string(data)), 5, 0x9a71bb4c); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "a", "b.txt"))
	if err != nil || string(got) != "hello" {
		t.Errorf("file content %q, %v", got, err)
	}
}
