// Package core holds the types, errors and name rules shared by package upload
// and its backends (upload/file, upload/gcs, upload/s3). Package upload
// re-exports everything callers need; nothing outside upload/ can import core.
//
// It exists only to break the import cycle between upload.Open, which
// dispatches to the backends, and the backends, which return upload's types.
// It owns no state: only pure functions and sentinel errors, safe for
// concurrent use. It must not import a cloud SDK.
package core

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
	"unicode/utf8"
)

// Object describes a stored object.
type Object struct {
	// Name is relative to the Store's prefix.
	Name string
	// Size in bytes.
	Size int64
	// CRC32C is the Castagnoli CRC-32 of the object's bytes.
	CRC32C uint32
}

// Store is a bucket (or a directory tree used as one). See package upload for
// the full contract.
type Store interface {
	Put(ctx context.Context, name string, body io.ReadSeeker, size int64, crc32c uint32) (created bool, err error)
	Stat(ctx context.Context, name string) (Object, error)
	List(ctx context.Context, prefix string) ([]Object, error)
	Get(ctx context.Context, name string) (io.ReadCloser, error)
	Delete(ctx context.Context, name string) error
	String() string
	Close() error
}

var (
	// ErrNotFound: no object of that name.
	ErrNotFound = errors.New("object not found")
	// ErrConflict: the name is taken by an object whose checksum differs from ours.
	ErrConflict = errors.New("object exists with different content")
	// ErrChecksum: the bytes read from the body (or received by the server)
	// do not match the CRC32C given to Put. Nothing was stored. It is not
	// permanent by itself: corruption in transit goes away on retry, a
	// corrupt source does not; the caller decides.
	ErrChecksum = errors.New("checksum mismatch")
	// ErrInvalidName: an object name or prefix breaks the naming rules
	// (see ValidateName). Always returned wrapped in a PermanentError.
	ErrInvalidName = errors.New("invalid object name")
	// ErrBucketNotFound: the bucket (or the file store's root directory) does
	// not exist. Always returned wrapped in a PermanentError.
	ErrBucketNotFound = errors.New("bucket not found")
)

// PermanentError marks an error that retrying cannot fix: bad credentials,
// a missing bucket, access denied, an invalid name.
type PermanentError struct {
	Err error
}

func (e *PermanentError) Error() string { return e.Err.Error() }

// Unwrap returns the wrapped error.
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent wraps err in a PermanentError; nil stays nil, and an error that is
// already permanent is returned as is.
func Permanent(err error) error {
	if err == nil || IsPermanent(err) {
		return err
	}
	return &PermanentError{Err: err}
}

// IsPermanent reports whether err (or any error it wraps) is a PermanentError.
func IsPermanent(err error) bool {
	var p *PermanentError
	return errors.As(err, &p)
}

// MaxNameLen is the longest object name (with the store's prefix) accepted,
// in bytes: the S3 and GCS limit.
const MaxNameLen = 1024

// TempPrefix starts the base name of the file backend's temporary files.
// No segment of a valid object name may start with it, so a temporary file
// can never be mistaken for an object on any backend.
const TempPrefix = ".upload-tmp-"

// ValidateName checks an object name: non-empty, valid UTF-8 without control
// characters, at most MaxNameLen bytes, '/'-separated segments that are
// non-empty, not "." or "..", and do not start with TempPrefix. The rules are
// the same for every backend so that a name that works on one works on all.
// The error wraps ErrInvalidName; callers make it permanent.
func ValidateName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty", ErrInvalidName)
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrInvalidName, len(name), MaxNameLen)
	}
	if !utf8.ValidString(name) {
		return fmt.Errorf("%w: %q is not valid UTF-8", ErrInvalidName, name)
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%w: %q contains a control character", ErrInvalidName, name)
		}
	}
	for seg := range strings.SplitSeq(name, "/") {
		switch {
		case seg == "":
			return fmt.Errorf("%w: %q has an empty segment (leading, trailing or double '/')", ErrInvalidName, name)
		case seg == "." || seg == "..":
			return fmt.Errorf("%w: %q has a %q segment", ErrInvalidName, name, seg)
		case strings.HasPrefix(seg, TempPrefix):
			return fmt.Errorf("%w: %q has a segment starting with the reserved %q", ErrInvalidName, name, TempPrefix)
		}
	}
	return nil
}

// ValidatePrefix checks a List prefix: empty, or a valid name optionally
// followed by one '/'. The last segment may be partial ("pcap/2026/11/2").
func ValidatePrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	if err := ValidateName(strings.TrimSuffix(prefix, "/")); err != nil {
		return fmt.Errorf("prefix: %w", err)
	}
	return nil
}

// CheckName validates name and wraps a failure as permanent, for use at the
// top of every Store method.
func CheckName(name string) error {
	if err := ValidateName(name); err != nil {
		return Permanent(err)
	}
	return nil
}

// CheckPrefix is CheckName for List prefixes.
func CheckPrefix(prefix string) error {
	if err := ValidatePrefix(prefix); err != nil {
		return Permanent(err)
	}
	return nil
}

// Join returns the full key of name under the store prefix (which has no
// leading or trailing '/'). It does not validate.
func Join(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "/" + name
}

// CleanPrefix trims one leading and one trailing slash from a store prefix
// taken from a URL path or a Config and validates what is left.
func CleanPrefix(prefix string) (string, error) {
	if prefix == "" || prefix == "/" {
		return "", nil
	}
	p := strings.TrimSuffix(strings.TrimPrefix(prefix, "/"), "/")
	if err := ValidateName(p); err != nil {
		return "", fmt.Errorf("store prefix: %w", err)
	}
	return p, nil
}

// Castagnoli is the CRC-32C table.
var Castagnoli = crc32.MakeTable(crc32.Castagnoli)

// CRC32C returns the CRC-32C of b.
func CRC32C(b []byte) uint32 { return crc32.Checksum(b, Castagnoli) }

// EncodeCRC32C renders a CRC32C the way S3 and GCS headers carry it: the
// base64 of its four big-endian bytes.
func EncodeCRC32C(c uint32) string {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], c)
	return base64.StdEncoding.EncodeToString(b[:])
}

// DecodeCRC32C parses EncodeCRC32C's form.
func DecodeCRC32C(s string) (uint32, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != 4 {
		return 0, fmt.Errorf("bad crc32c %q", s)
	}
	return binary.BigEndian.Uint32(b), nil
}

// Rewind seeks body back to its start, as every Put attempt must.
func Rewind(body io.Seeker) error {
	if _, err := body.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("rewind body: %w", err)
	}
	return nil
}

// BodyCRC rewinds body and returns the CRC-32C of its first size bytes.
func BodyCRC(ctx context.Context, body io.ReadSeeker, size int64) (uint32, error) {
	if err := Rewind(body); err != nil {
		return 0, err
	}
	h := crc32.New(Castagnoli)
	n, err := io.Copy(h, ContextReader{Ctx: ctx, R: io.LimitReader(body, size)})
	if err != nil {
		return 0, err
	}
	if n != size {
		return 0, fmt.Errorf("body has %d bytes, want %d: %w", n, size, io.ErrUnexpectedEOF)
	}
	return h.Sum32(), nil
}

// SizedReader is an io.ReadSeeker over the first n bytes of a body that
// starts at offset 0. Reading stops at n; seeking is relative to those n
// bytes. It lets SDKs that rewind and measure bodies see exactly the size
// the caller declared. Not safe for concurrent use.
type SizedReader struct {
	rs  io.ReadSeeker
	n   int64
	pos int64
}

// NewSizedReader returns a SizedReader over rs, which must be at offset 0.
func NewSizedReader(rs io.ReadSeeker, n int64) *SizedReader {
	return &SizedReader{rs: rs, n: n}
}

func (r *SizedReader) Read(p []byte) (int, error) {
	if r.pos >= r.n {
		return 0, io.EOF
	}
	if rem := r.n - r.pos; int64(len(p)) > rem {
		p = p[:rem]
	}
	n, err := r.rs.Read(p)
	r.pos += int64(n)
	if err == io.EOF && r.pos < r.n {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// Seek implements io.Seeker within the first n bytes.
func (r *SizedReader) Seek(offset int64, whence int) (int64, error) {
	var abs int64
	switch whence {
	case io.SeekStart:
		abs = offset
	case io.SeekCurrent:
		abs = r.pos + offset
	case io.SeekEnd:
		abs = r.n + offset
	default:
		return 0, errors.New("sized reader: bad whence")
	}
	if abs < 0 || abs > r.n {
		return 0, fmt.Errorf("sized reader: seek to %d outside [0, %d]", abs, r.n)
	}
	if _, err := r.rs.Seek(abs, io.SeekStart); err != nil {
		return 0, err
	}
	r.pos = abs
	return abs, nil
}

// ContextReader fails Reads once ctx is done, so a copy loop over a local
// body stops promptly on cancellation.
type ContextReader struct {
	Ctx context.Context
	R   io.Reader
}

func (r ContextReader) Read(p []byte) (int, error) {
	if err := r.Ctx.Err(); err != nil {
		return 0, err
	}
	return r.R.Read(p)
}
