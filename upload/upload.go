// Package upload is the archiver's view of object storage: a Store interface
// with create-only, checksummed writes, and Open, which turns a destination URL
// into one of three sibling backends of identical shape:
//
//	file:///abs/path                    upload/file: a directory tree used as a bucket
//	gs://bucket[/prefix]                upload/gcs:  Google Cloud Storage (or fake-gcs-server)
//	s3://bucket[/prefix][?endpoint=http://host:port][&region=us-east-1]
//	                                    upload/s3:   AWS S3 or an S3-compatible server
//
// upload owns the contract (Object, Store, the sentinel errors and the
// permanent/retryable split) and the URL syntax; each backend owns its client
// and nothing else. The conformance suite in upload/uploadtest holds every
// backend to the same contract against real servers.
//
// # Naming
//
// Object names are relative to the store's prefix and follow one rule set on
// every backend: non-empty '/'-separated segments, none "." or "..", no
// control characters, at most 1024 bytes with the prefix, and no segment
// starting with ".upload-tmp-" (the file backend's temporary files). A name
// that breaks them fails with ErrInvalidName wrapped as permanent.
//
// # Errors
//
// Permanent errors (IsPermanent) are those retrying cannot fix: bad or missing
// credentials, access denied, a missing bucket, an invalid name, a server that
// lacks conditional writes. Everything else (network errors, 5xx, timeouts,
// throttling, checksum mismatches in transit, context cancellation) is
// retryable; callers own the retry loop and its backoff. Errors are
// classified by type and status code, never by message text.
//
// # Concurrency
//
// Stores are safe for concurrent use by multiple goroutines, including
// concurrent Puts of the same name: exactly one content is stored, the
// others get nil (same content) or ErrConflict. A Store must not be used
// after Close.
//
// upload keeps no global state and records no metrics (the archiver counts);
// credentials come from each SDK's standard sources, never from the URL.
package upload

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/headercap/headercap/upload/file"
	"github.com/headercap/headercap/upload/gcs"
	"github.com/headercap/headercap/upload/internal/core"
	"github.com/headercap/headercap/upload/s3"
)

// Object describes a stored object.
type Object = core.Object

// Store is a bucket (or a directory tree used as one), holding immutable
// objects addressed by name relative to the store's prefix.
//
//   - Put creates name with size bytes read from body, only if no object of
//     that name exists (GCS ifGenerationMatch=0; S3 If-None-Match: *; file:
//     link without replace), sending crc32c so that the server rejects a
//     corrupted body where it can. It reports whether it created the
//     object: if the name already exists with the same CRC32C and size, Put
//     returns false and a nil error (an earlier attempt succeeded, though
//     its answer may have been lost); with different content, ErrConflict
//     and the stored object is untouched.
//     Put seeks body to 0 before reading it, so the same body can be passed
//     to a retry. Put makes a single attempt (plus whatever the SDK retries
//     within one request).
//   - Stat returns the object's size and CRC32C, or ErrNotFound.
//   - List returns the objects whose names start with prefix, sorted by name.
//   - Get opens the object for reading, or returns ErrNotFound. The reader is
//     bound to ctx; the caller closes it.
//   - Delete removes the object, or returns ErrNotFound. For tests and tooling.
//   - String returns the store's URL without credentials, for logs.
//   - Close releases the client.
type Store = core.Store

// PermanentError marks an error that retrying cannot fix.
type PermanentError = core.PermanentError

var (
	// ErrNotFound: no object of that name.
	ErrNotFound = core.ErrNotFound
	// ErrConflict: the name is taken by an object whose checksum differs from ours.
	ErrConflict = core.ErrConflict
	// ErrChecksum: the body did not match the CRC32C given to Put; nothing
	// was stored. Retryable (corruption in transit); if it repeats, the
	// source itself is corrupt.
	ErrChecksum = core.ErrChecksum
	// ErrInvalidName: an object name or prefix breaks the naming rules.
	// Always wrapped as permanent.
	ErrInvalidName = core.ErrInvalidName
	// ErrBucketNotFound: the bucket, or the file store's root directory, does
	// not exist. Always wrapped as permanent.
	ErrBucketNotFound = core.ErrBucketNotFound
)

// Permanent wraps err as a PermanentError (nil stays nil).
func Permanent(err error) error { return core.Permanent(err) }

// IsPermanent reports whether err wraps a PermanentError.
func IsPermanent(err error) bool { return core.IsPermanent(err) }

// ValidateName reports whether name is a valid object name on every backend.
func ValidateName(name string) error { return core.ValidateName(name) }

// ErrBadURL is wrapped by every URL parsing error from Open.
var ErrBadURL = errors.New("bad destination URL")

// Open parses a destination URL and returns its backend. The URL forms are
// listed in the package documentation. Open makes no request that touches
// the bucket: a missing bucket or bad credentials surface on first use as
// permanent errors. URL errors wrap ErrBadURL and are permanent.
func Open(ctx context.Context, rawURL string) (Store, error) {
	cfg, err := parse(rawURL)
	if err != nil {
		return nil, core.Permanent(err)
	}
	switch c := cfg.(type) {
	case file.Config:
		return file.New(ctx, c)
	case gcs.Config:
		return gcs.New(ctx, c)
	case s3.Config:
		return s3.New(ctx, c)
	}
	return nil, fmt.Errorf("upload: internal error: no backend for %T", cfg)
}

// parse turns a destination URL into one backend's Config.
func parse(rawURL string) (any, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w %q: %s", ErrBadURL, redact(rawURL), fmt.Sprintf(format, args...))
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, bad("%v", errors.Unwrap(err))
	}
	if u.User != nil {
		return nil, bad("credentials in the URL are not supported; use the backend's standard credential sources")
	}
	if u.Fragment != "" {
		return nil, bad("fragment not allowed")
	}
	switch u.Scheme {
	case "file":
		if u.Opaque != "" {
			return nil, bad("file path must be absolute (file:///abs/path)")
		}
		if u.Host != "" && u.Host != "localhost" {
			return nil, bad("file URL has host %q; write file:///abs/path (three slashes)", u.Host)
		}
		if u.RawQuery != "" {
			return nil, bad("file URL takes no query parameters")
		}
		if u.Path == "" || !filepath.IsAbs(u.Path) {
			return nil, bad("file path must be absolute (file:///abs/path)")
		}
		return file.Config{Dir: filepath.Clean(u.Path)}, nil

	case "gs":
		bucket, prefix, err := bucketAndPrefix(u, gcsBucket)
		if err != nil {
			return nil, bad("%v", err)
		}
		if u.RawQuery != "" {
			return nil, bad("gs URL takes no query parameters (set STORAGE_EMULATOR_HOST for an emulator)")
		}
		return gcs.Config{Bucket: bucket, Prefix: prefix}, nil

	case "s3":
		bucket, prefix, err := bucketAndPrefix(u, s3Bucket)
		if err != nil {
			return nil, bad("%v", err)
		}
		q, err := url.ParseQuery(u.RawQuery)
		if err != nil {
			return nil, bad("query: %v", err)
		}
		cfg := s3.Config{Bucket: bucket, Prefix: prefix}
		for k, v := range q {
			if len(v) != 1 {
				return nil, bad("query parameter %q given %d times", k, len(v))
			}
			switch k {
			case "endpoint":
				cfg.Endpoint = v[0]
			case "region":
				cfg.Region = v[0]
			default:
				return nil, bad("unknown query parameter %q (known: endpoint, region)", k)
			}
		}
		if err := cfg.Validate(); err != nil {
			return nil, bad("%v", err)
		}
		return cfg, nil

	case "":
		return nil, bad("no scheme; want file:///abs/path, gs://bucket[/prefix] or s3://bucket[/prefix]")
	default:
		return nil, bad("unknown scheme %q; want file, gs or s3", u.Scheme)
	}
}

var (
	// gcsBucket: 3-63 characters (up to 222 with dots, not checked here),
	// lowercase letters, digits, '-', '_' and '.', starting and ending with a
	// letter or digit.
	gcsBucket = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$`)
	// s3Bucket: 3-63 characters, lowercase letters, digits, '-' and '.',
	// starting and ending with a letter or digit.
	s3Bucket = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)
)

func bucketAndPrefix(u *url.URL, valid *regexp.Regexp) (bucket, prefix string, err error) {
	if u.Opaque != "" {
		return "", "", fmt.Errorf("want %s://bucket[/prefix]", u.Scheme)
	}
	if u.Host == "" {
		return "", "", errors.New("no bucket")
	}
	if u.Port() != "" || !valid.MatchString(u.Host) {
		return "", "", fmt.Errorf("invalid bucket name %q", u.Host)
	}
	prefix, err = core.CleanPrefix(u.Path)
	if err != nil {
		return "", "", err
	}
	return u.Host, prefix, nil
}

// redact removes userinfo from a URL for error messages.
func redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		// Unparseable: keep the scheme only, the rest may hold anything.
		if i := strings.Index(rawURL, "://"); i >= 0 {
			return rawURL[:i] + "://…"
		}
		return "…"
	}
	u.User = nil
	if u.RawQuery != "" {
		q := u.Query()
		for k := range q {
			if k != "endpoint" && k != "region" {
				q.Set(k, "REDACTED")
			}
		}
		u.RawQuery = q.Encode()
	}
	return u.String()
}
