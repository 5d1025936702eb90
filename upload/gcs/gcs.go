// Package gcs is the upload backend for Google Cloud Storage, and for
// emulators such as fake-gcs-server, through cloud.google.com/go/storage (the
// only package in the project that imports it).
//
// Credentials are Application Default Credentials, resolved by the client
// library; when STORAGE_EMULATOR_HOST is set in the environment the library
// talks to that emulator without authentication instead. Config.Endpoint does
// the same without touching the environment (tests use it).
//
// Put is one create-only request: a Writer with Conditions{DoesNotExist: true}
// (ifGenerationMatch=0), ChunkSize 0 (a single streamed request, so no body
// is buffered and the server checks the whole-object CRC32C we send; it also
// means the library does not retry a failed upload: the caller does), and
// the caller's CRC32C. A 412, or any retryable failure whose outcome is
// unknown, is decided by the object that now holds the name: same CRC32C
// and size is success, different is ErrConflict. GCS answers 400 both for
// a checksum mismatch and other bad requests; Put re-reads the body to tell
// them apart (ErrChecksum). After a successful upload the stored checksum
// is compared once more, because fake-gcs-server does not verify checksums
// on multi-chunk (resumable) uploads.
//
// A Store wraps one *storage.Client and is safe for concurrent use.
package gcs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"

	"cloud.google.com/go/auth"
	"cloud.google.com/go/storage"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"

	"github.com/headercap/headercap/upload/internal/core"
)

// Config configures a GCS Store. Bucket is required; the rest defaults to
// Google Cloud Storage with Application Default Credentials.
type Config struct {
	// Bucket is the bucket name.
	Bucket string
	// Prefix is prepended, with a '/', to every object name. Optional.
	Prefix string
	// Endpoint is the base URL of a storage emulator such as fake-gcs-server
	// ("http://127.0.0.1:4443"). Requests to it are not authenticated. Empty
	// means Google Cloud Storage, or the emulator named by
	// STORAGE_EMULATOR_HOST.
	Endpoint string
	// ClientOptions are appended to the options New derives from the fields
	// above (for example option.WithCredentialsFile).
	ClientOptions []option.ClientOption
}

// Validate reports whether the Config is usable.
func (c Config) Validate() error {
	if c.Bucket == "" {
		return errors.New("gcs store: Bucket is required")
	}
	if strings.ContainsAny(c.Bucket, "/?#") {
		return fmt.Errorf("gcs store: invalid bucket name %q", c.Bucket)
	}
	if _, err := core.CleanPrefix(c.Prefix); err != nil {
		return fmt.Errorf("gcs store: %w", err)
	}
	if c.Endpoint != "" {
		u, err := url.Parse(c.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
			return fmt.Errorf("gcs store: endpoint %q: want http(s)://host[:port] without credentials", c.Endpoint)
		}
	}
	return nil
}

// Store is a GCS bucket, optionally under a prefix. Safe for concurrent use.
type Store struct {
	client *storage.Client
	bucket *storage.BucketHandle
	cfg    Config // Prefix cleaned
}

var _ core.Store = (*Store)(nil)

// New returns a Store for cfg. It makes no request; a missing bucket or bad
// credentials surface on first use. Errors are permanent.
func New(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, core.Permanent(err)
	}
	cfg.Prefix, _ = core.CleanPrefix(cfg.Prefix)
	var opts []option.ClientOption
	if cfg.Endpoint != "" {
		opts = append(opts,
			option.WithEndpoint(strings.TrimSuffix(cfg.Endpoint, "/")+"/storage/v1/"),
			option.WithoutAuthentication())
	}
	// Reads use the JSON API: fake-gcs-server serves XML reads only for
	// its -public-host, which neither Endpoint nor STORAGE_EMULATOR_HOST
	// sets. Get is for verification and tooling; its speed hardly matters.
	opts = append(opts, storage.WithJSONReads())
	opts = append(opts, cfg.ClientOptions...)
	client, err := storage.NewClient(ctx, opts...)
	if err != nil {
		return nil, core.Permanent(fmt.Errorf("gcs store %s: %w", cfg.Bucket, err))
	}
	return &Store{client: client, bucket: client.Bucket(cfg.Bucket), cfg: cfg}, nil
}

func (s *Store) key(name string) string { return core.Join(s.cfg.Prefix, name) }

// Put implements upload.Store.
func (s *Store) Put(ctx context.Context, name string, body io.ReadSeeker, size int64, crc uint32) (bool, error) {
	if err := core.CheckName(name); err != nil {
		return false, err
	}
	if size < 0 {
		return false, core.Permanent(fmt.Errorf("put %s: negative size %d", name, size))
	}
	if err := core.Rewind(body); err != nil {
		return false, fmt.Errorf("put %s: %w", name, err)
	}
	obj := s.bucket.Object(s.key(name))
	// Cancelling wctx is the only way to abandon a Writer without
	// committing what was written.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := obj.If(storage.Conditions{DoesNotExist: true}).NewWriter(wctx)
	w.ChunkSize = 0
	w.SendCRC32C = true
	w.CRC32C = crc
	w.DisableAutoChecksum = true // we send our own
	w.ContentType = "application/octet-stream"

	n, err := io.Copy(w, io.LimitReader(body, size))
	if err == nil && n != size {
		err = fmt.Errorf("body has %d bytes, want %d: %w", n, size, io.ErrUnexpectedEOF)
	}
	var ge *googleapi.Error
	switch {
	case err == nil:
		err = w.Close()
	case errors.As(err, &ge):
		// The server answered early; Close returns the same answer.
		_ = w.Close()
	default:
		// Reading the body failed or ctx is done: abandon the upload.
		cancel()
		_ = w.Close()
		if cerr := ctx.Err(); cerr != nil {
			err = cerr
		}
		return false, s.classify(fmt.Errorf("put %s: %w", name, err))
	}
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return false, fmt.Errorf("put %s: %w", name, ctx.Err())
	case isStatus(err, http.StatusNotFound):
		return false, s.missingBucket(ctx, fmt.Errorf("put %s: %w", name, err))
	case isStatus(err, http.StatusBadRequest):
		// GCS says 400 for a checksum mismatch and for other bad
		// requests alike; the body itself tells which.
		if got, berr := core.BodyCRC(ctx, body, size); berr == nil && got != crc {
			return false, fmt.Errorf("put %s: body has crc32c %08x, want %08x: %w: %w", name, got, crc, core.ErrChecksum, err)
		}
		return false, s.classify(fmt.Errorf("put %s: %w", name, err))
	default:
		err = s.classify(fmt.Errorf("put %s: %w", name, err))
		if core.IsPermanent(err) {
			return false, err
		}
		// 412, or an outcome we could not see (a reset connection, a
		// lost response): whatever holds the name now decides.
		return false, s.resolveExisting(ctx, name, size, crc, err)
	}
	if a := w.Attrs(); a != nil && (a.CRC32C != crc || a.Size != size) {
		// The server stored something else; remove exactly that generation.
		derr := obj.If(storage.Conditions{GenerationMatch: a.Generation}).Delete(ctx)
		return false, fmt.Errorf("put %s: server stored size %d crc32c %08x, want size %d crc32c %08x (removed: %v): %w",
			name, a.Size, a.CRC32C, size, crc, derr == nil, core.ErrChecksum)
	}
	return true, nil
}

// resolveExisting decides a create that failed with err (412 or an unknown
// outcome) by what now holds the name: our content is success, other
// content is ErrConflict, nothing (or no answer) leaves err.
func (s *Store) resolveExisting(ctx context.Context, name string, size int64, crc uint32, err error) error {
	a, aerr := s.bucket.Object(s.key(name)).Attrs(ctx)
	if aerr != nil {
		if isStatus(err, http.StatusPreconditionFailed) && errors.Is(aerr, storage.ErrObjectNotExist) {
			return fmt.Errorf("%w; the object is gone since, retry", err)
		}
		return err
	}
	if a.Size != size || a.CRC32C != crc {
		return fmt.Errorf("put %s: stored size %d crc32c %08x, ours size %d crc32c %08x: %w",
			name, a.Size, a.CRC32C, size, crc, core.ErrConflict)
	}
	return nil
}

// Stat implements upload.Store.
func (s *Store) Stat(ctx context.Context, name string) (core.Object, error) {
	if err := core.CheckName(name); err != nil {
		return core.Object{}, err
	}
	a, err := s.bucket.Object(s.key(name)).Attrs(ctx)
	if errors.Is(err, storage.ErrObjectNotExist) {
		return core.Object{}, s.notFound(ctx, "stat", name)
	}
	if err != nil {
		return core.Object{}, s.classify(fmt.Errorf("stat %s: %w", name, err))
	}
	return core.Object{Name: name, Size: a.Size, CRC32C: a.CRC32C}, nil
}

// List implements upload.Store.
func (s *Store) List(ctx context.Context, prefix string) ([]core.Object, error) {
	if err := core.CheckPrefix(prefix); err != nil {
		return nil, err
	}
	q := &storage.Query{Prefix: s.key(prefix)}
	if err := q.SetAttrSelection([]string{"Name", "Size", "CRC32C"}); err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	strip := s.key("")
	var objs []core.Object
	it := s.bucket.Objects(ctx, q)
	for {
		a, err := it.Next()
		if errors.Is(err, iterator.Done) {
			break
		}
		if err != nil {
			if isStatus(err, http.StatusNotFound) {
				return nil, s.missingBucket(ctx, fmt.Errorf("list %q: %w", prefix, err))
			}
			return nil, s.classify(fmt.Errorf("list %q: %w", prefix, err))
		}
		name, ok := strings.CutPrefix(a.Name, strip)
		if !ok || core.ValidateName(name) != nil {
			continue // folder placeholders and names this package cannot address
		}
		objs = append(objs, core.Object{Name: name, Size: a.Size, CRC32C: a.CRC32C})
	}
	sort.Slice(objs, func(i, j int) bool { return objs[i].Name < objs[j].Name })
	return objs, nil
}

// Get implements upload.Store. The reader verifies the CRC32C when read to
// the end and stops when ctx is done.
func (s *Store) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	if err := core.CheckName(name); err != nil {
		return nil, err
	}
	r, err := s.bucket.Object(s.key(name)).NewReader(ctx)
	if errors.Is(err, storage.ErrObjectNotExist) {
		return nil, s.notFound(ctx, "get", name)
	}
	if err != nil {
		return nil, s.classify(fmt.Errorf("get %s: %w", name, err))
	}
	return r, nil
}

// Delete implements upload.Store.
func (s *Store) Delete(ctx context.Context, name string) error {
	if err := core.CheckName(name); err != nil {
		return err
	}
	err := s.bucket.Object(s.key(name)).Delete(ctx)
	if errors.Is(err, storage.ErrObjectNotExist) {
		return s.notFound(ctx, "delete", name)
	}
	if err != nil {
		return s.classify(fmt.Errorf("delete %s: %w", name, err))
	}
	return nil
}

// String returns gs://bucket[/prefix].
func (s *Store) String() string {
	u := url.URL{Scheme: "gs", Host: s.cfg.Bucket}
	if s.cfg.Prefix != "" {
		u.Path = "/" + s.cfg.Prefix
	}
	return u.String()
}

// Close releases the client.
func (s *Store) Close() error { return s.client.Close() }

// notFound reports a missing object as ErrNotFound, unless the bucket is what
// is missing: GCS answers 404 for both.
func (s *Store) notFound(ctx context.Context, op, name string) error {
	return s.missingBucket(ctx, fmt.Errorf("%s %s: %w", op, name, core.ErrNotFound))
}

// missingBucket returns a permanent ErrBucketNotFound if the bucket is known
// not to exist, else err. A failure to ask (403 for lack of
// storage.buckets.get, a network error) keeps err.
func (s *Store) missingBucket(ctx context.Context, err error) error {
	if _, berr := s.bucket.Attrs(ctx); errors.Is(berr, storage.ErrBucketNotExist) {
		return core.Permanent(fmt.Errorf("gs://%s: %w", s.cfg.Bucket, core.ErrBucketNotFound))
	}
	return s.classify(err)
}

// classify marks errors that retrying cannot fix as permanent: 401 and 403
// from the bucket, a missing bucket, and token requests the token server
// rejected for good.
func (s *Store) classify(err error) error {
	if errors.Is(err, storage.ErrBucketNotExist) {
		return core.Permanent(fmt.Errorf("gs://%s: %w: %w", s.cfg.Bucket, core.ErrBucketNotFound, err))
	}
	if isStatus(err, http.StatusUnauthorized) || isStatus(err, http.StatusForbidden) {
		return core.Permanent(err)
	}
	var ae *auth.Error
	if errors.As(err, &ae) && ae.Response != nil && !ae.Temporary() {
		return core.Permanent(err)
	}
	return err
}

func isStatus(err error, code int) bool {
	var ge *googleapi.Error
	return errors.As(err, &ge) && ge.Code == code
}
