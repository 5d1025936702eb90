package file_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/headercap/headercap/upload"
	"github.com/headercap/headercap/upload/file"
	"github.com/headercap/headercap/upload/uploadtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newStore(t *testing.T) *file.Store {
	t.Helper()
	s, err := file.New(t.Context(), file.Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	uploadtest.Run(t, func(t *testing.T) upload.Store { return newStore(t) })
}

func TestNewErrors(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		dir  string
	}{
		{"empty", ""},
		{"relative", "some/dir"},
		{"missing", filepath.Join(t.TempDir(), "missing")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := file.New(ctx, file.Config{Dir: tc.dir}); !upload.IsPermanent(err) {
				t.Errorf("New(%q) = %v, want a permanent error", tc.dir, err)
			}
		})
	}
	f := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := file.New(ctx, file.Config{Dir: f}); !errors.Is(err, upload.ErrBucketNotFound) || !upload.IsPermanent(err) {
		t.Errorf("New(file) = %v, want a permanent ErrBucketNotFound", err)
	}
}

// TestRootRemoved: a root that disappears is a missing bucket, not a missing
// object, and is never recreated by Put.
func TestRootRemoved(t *testing.T) {
	ctx := t.Context()
	dir := filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s, err := file.New(ctx, file.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	b := uploadtest.NewBlob(1, 10)
	if _, err := s.Put(ctx, "a/b", bytes.NewReader(b.Data), 10, b.CRC); !errors.Is(err, upload.ErrBucketNotFound) || !upload.IsPermanent(err) {
		t.Errorf("Put = %v, want a permanent ErrBucketNotFound", err)
	}
	if _, err := s.Stat(ctx, "a/b"); !errors.Is(err, upload.ErrBucketNotFound) || !upload.IsPermanent(err) {
		t.Errorf("Stat = %v, want a permanent ErrBucketNotFound", err)
	}
	if _, err := s.List(ctx, ""); !errors.Is(err, upload.ErrBucketNotFound) {
		t.Errorf("List = %v, want ErrBucketNotFound", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("root recreated: %v", err)
	}
}

// TestLayout checks the on-disk handoff contract: the object is a plain file
// at its name, no temporary file is left, leftovers from a crash are not
// listed, and a file without the checksum attribute still reports its CRC32C.
func TestLayout(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	s, err := file.New(ctx, file.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	b := uploadtest.NewBlob(2, 1000)
	if _, err := s.Put(ctx, "x/y/z.tgz", bytes.NewReader(b.Data), b.Size(), b.CRC); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "x", "y", "z.tgz"))
	if err != nil || !bytes.Equal(got, b.Data) {
		t.Fatalf("file content: %v", err)
	}
	entries, err := os.ReadDir(filepath.Join(dir, "x", "y"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the object", len(entries))
	}
	// A crash leftover and a file copied in by hand (no attribute).
	if err := os.WriteFile(filepath.Join(dir, "x", "y", ".upload-tmp-123"), []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	hand := uploadtest.NewBlob(3, 500)
	if err := os.WriteFile(filepath.Join(dir, "x", "hand"), hand.Data, 0o644); err != nil {
		t.Fatal(err)
	}
	objs, err := s.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	want := []upload.Object{{Name: "x/hand", Size: 500, CRC32C: hand.CRC}, {Name: "x/y/z.tgz", Size: 1000, CRC32C: b.CRC}}
	if len(objs) != 2 || objs[0] != want[0] || objs[1] != want[1] {
		t.Errorf("List = %+v, want %+v", objs, want)
	}
}

func TestString(t *testing.T) {
	dir := t.TempDir()
	s, err := file.New(t.Context(), file.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s.String(), "file://"+filepath.ToSlash(dir); got != want || !strings.HasPrefix(got, "file:///") {
		t.Errorf("String() = %q, want %q", got, want)
	}
}
