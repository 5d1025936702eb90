// Package s3 is the upload backend for AWS S3 and S3-compatible servers
// (versitygw, MinIO, Ceph RGW, ...) through aws-sdk-go-v2 (the only package
// in the project that imports it).
//
// Credentials come from the SDK's default chain (AWS_ACCESS_KEY_ID /
// AWS_SECRET_ACCESS_KEY, shared config and credentials files, web identity,
// container and instance roles) unless Config.Credentials is set. The region
// is Config.Region, else the SDK's (AWS_REGION, shared config), else
// us-east-1. With Config.Endpoint set, requests go to that server with
// path-style addressing; its scheme picks http or https.
//
// Put first asks (HeadObject) whether the name is taken; if not, it sends
// one PutObject with If-None-Match: * (create-only) and the caller's CRC32C
// in x-amz-checksum-crc32c, so the server rejects a corrupted body; the
// checksum is also stored as user metadata (x-amz-meta-crc32c) for servers
// that do not keep checksums. The payload is sent unsigned
// (UNSIGNED-PAYLOAD) even over http: the CRC32C protects it, and the body is
// read once per attempt instead of twice. A taken name is decided by the
// stored CRC32C and size: equal is success, different is ErrConflict. The
// same decision follows a 412 or any retryable failure, because the outcome
// may be unknown: versitygw, for one, checks If-None-Match before reading
// the body, drains only 256 KiB of it and resets the connection, so a client
// sending a larger body sees "connection reset" instead of the 412 (the
// HEAD before the PUT keeps the common retry from getting there at all).
// There is no fallback for servers without conditional writes: one that
// answers 501 gets a permanent error, so a name can never be silently
// overwritten. (AWS S3 has honoured If-None-Match on PutObject since August
// 2024; versitygw v1.8.0 honours it atomically, under a per-key lock.)
//
// Stat reads the stored checksum from HeadObject (checksum mode), falling
// back to the metadata and, for objects written by someone else to a server
// that keeps neither, to reading the object. List issues one HeadObject per
// listed object (ListObjectsV2 does not return checksum values), eight at a
// time.
//
// A Store wraps one SDK client and is safe for concurrent use.
package s3

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"golang.org/x/sync/errgroup"

	"github.com/headercap/headercap/upload/internal/core"
)

// metaCRC is the user metadata key (x-amz-meta-crc32c) holding the object's
// CRC32C as eight lowercase hex digits.
const metaCRC = "crc32c"

// listConcurrency bounds the HeadObject calls List makes at once.
const listConcurrency = 8

// Config configures an S3 Store. Bucket is required; the rest defaults to
// AWS S3 with the SDK's default credentials and region.
type Config struct {
	// Bucket is the bucket name.
	Bucket string
	// Prefix is prepended, with a '/', to every object name. Optional.
	Prefix string
	// Region signs requests. Empty: the SDK's configured region, else
	// us-east-1.
	Region string
	// Endpoint is the base URL of an S3-compatible server,
	// "http(s)://host[:port]". Empty means AWS. When set, requests use
	// path-style addressing.
	Endpoint string
	// Credentials overrides the SDK's default credential chain.
	Credentials aws.CredentialsProvider
}

// Validate reports whether the Config is usable.
func (c Config) Validate() error {
	if c.Bucket == "" {
		return errors.New("s3 store: no bucket")
	}
	if strings.ContainsAny(c.Bucket, "/?#") {
		return fmt.Errorf("s3 store: invalid bucket name %q", c.Bucket)
	}
	if _, err := core.CleanPrefix(c.Prefix); err != nil {
		return fmt.Errorf("s3 store: %w", err)
	}
	if c.Endpoint != "" {
		u, err := url.Parse(c.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
			u.User != nil || u.RawQuery != "" || u.Fragment != "" || strings.ContainsAny(c.Endpoint, "&") {
			return fmt.Errorf("s3 store: endpoint %q: want http(s)://host[:port] without credentials or query", redactEndpoint(c.Endpoint))
		}
	}
	if strings.ContainsAny(c.Region, "&#/? ") {
		return fmt.Errorf("s3 store: invalid region %q", c.Region)
	}
	return nil
}

func redactEndpoint(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "…"
	}
	u.User = nil
	return u.String()
}

// Store is an S3 bucket, optionally under a prefix. Safe for concurrent use.
type Store struct {
	client *awss3.Client
	idle   *transports // Close closes their idle connections
	cfg    Config      // Prefix cleaned
}

// transports records the HTTP transports built for one Store.
type transports struct {
	mu   sync.Mutex
	list []*http.Transport
}

func (t *transports) add(tr *http.Transport) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.list = append(t.list, tr)
}

func (t *transports) closeIdle() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, tr := range t.list {
		tr.CloseIdleConnections()
	}
}

var _ core.Store = (*Store)(nil)

// New returns a Store for cfg. It loads the SDK configuration but makes no
// request; a missing bucket or bad credentials surface on first use. Errors
// are permanent.
func New(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, core.Permanent(err)
	}
	cfg.Prefix, _ = core.CleanPrefix(cfg.Prefix)
	var opts []func(*config.LoadOptions) error
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.Credentials != nil {
		opts = append(opts, config.WithCredentialsProvider(cfg.Credentials))
	}
	// The SDK's buildable client, so that AWS_CA_BUNDLE keeps working; it
	// builds its transport lazily, possibly more than once (clones), and
	// every transport it builds is recorded for Close.
	idle := &transports{}
	hc := awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
		tr.MaxIdleConnsPerHost = 16
		idle.add(tr)
	})
	opts = append(opts, config.WithHTTPClient(hc))
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, core.Permanent(fmt.Errorf("s3 store %s: load AWS config: %w", cfg.Bucket, err))
	}
	if awsCfg.Region == "" {
		awsCfg.Region = "us-east-1"
	}
	client := awss3.NewFromConfig(awsCfg, func(o *awss3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
			o.UsePathStyle = true
		}
	})
	return &Store{client: client, idle: idle, cfg: cfg}, nil
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
	// Look first: a retry after an attempt that succeeded (the common
	// retry) then costs a HEAD instead of the body, and a server that
	// rejects a conditional PUT before reading the body (versitygw drains
	// only 256 KiB, then resets the connection) is never asked.
	o, found, err := s.head(ctx, name)
	if err != nil {
		return false, fmt.Errorf("put: %w", err)
	}
	if found {
		return false, compare(o, size, crc)
	}
	if err := core.Rewind(body); err != nil {
		return false, fmt.Errorf("put %s: %w", name, err)
	}
	_, err = s.client.PutObject(ctx, &awss3.PutObjectInput{
		Bucket:         aws.String(s.cfg.Bucket),
		Key:            aws.String(s.key(name)),
		Body:           core.NewSizedReader(body, size),
		ContentLength:  aws.Int64(size),
		ContentType:    aws.String("application/octet-stream"),
		IfNoneMatch:    aws.String("*"),
		ChecksumCRC32C: aws.String(core.EncodeCRC32C(crc)),
		Metadata:       map[string]string{metaCRC: fmt.Sprintf("%08x", crc)},
	}, awss3.WithAPIOptions(v4.SwapComputePayloadSHA256ForUnsignedPayloadMiddleware))
	switch {
	case err == nil:
		return true, nil
	case ctx.Err() != nil:
		return false, fmt.Errorf("put %s: %w", name, ctx.Err())
	case httpStatus(err) == http.StatusNotImplemented:
		return false, core.Permanent(fmt.Errorf("put %s: server does not support create-only writes (If-None-Match: *): %w", name, err))
	case httpStatus(err) == http.StatusNotFound:
		return false, s.missingBucket(ctx, fmt.Errorf("put %s: %w", name, err))
	}
	err = classify(fmt.Errorf("put %s: %w", name, err))
	if core.IsPermanent(err) || errors.Is(err, core.ErrChecksum) {
		return false, err
	}
	// 412, or an outcome we could not see (a reset connection, a lost
	// response): whatever holds the name now decides.
	o, found, herr := s.head(ctx, name)
	switch {
	case herr == nil && found:
		return false, compare(o, size, crc)
	case httpStatus(err) == http.StatusPreconditionFailed:
		return false, fmt.Errorf("%w; the object is gone since, retry", err)
	}
	return false, err
}

// compare decides a create that found the name taken by o.
func compare(o core.Object, size int64, crc uint32) error {
	if o.Size != size || o.CRC32C != crc {
		return fmt.Errorf("put %s: stored size %d crc32c %08x, ours size %d crc32c %08x: %w",
			o.Name, o.Size, o.CRC32C, size, crc, core.ErrConflict)
	}
	return nil
}

// Stat implements upload.Store.
func (s *Store) Stat(ctx context.Context, name string) (core.Object, error) {
	if err := core.CheckName(name); err != nil {
		return core.Object{}, err
	}
	return s.stat(ctx, name)
}

func (s *Store) stat(ctx context.Context, name string) (core.Object, error) {
	o, found, err := s.head(ctx, name)
	if err != nil {
		return core.Object{}, fmt.Errorf("stat: %w", err)
	}
	if !found {
		return core.Object{}, s.missingBucket(ctx, fmt.Errorf("stat %s: %w", name, core.ErrNotFound))
	}
	return o, nil
}

// head returns the object's size and CRC32C, or found false on a 404 (which
// may also mean a missing bucket).
func (s *Store) head(ctx context.Context, name string) (o core.Object, found bool, err error) {
	out, err := s.client.HeadObject(ctx, &awss3.HeadObjectInput{
		Bucket:       aws.String(s.cfg.Bucket),
		Key:          aws.String(s.key(name)),
		ChecksumMode: types.ChecksumModeEnabled,
	})
	if httpStatus(err) == http.StatusNotFound {
		return core.Object{}, false, nil
	}
	if err != nil {
		return core.Object{}, false, classify(fmt.Errorf("head %s: %w", name, err))
	}
	o = core.Object{Name: name, Size: aws.ToInt64(out.ContentLength)}
	if c, ok := storedCRC(out); ok {
		o.CRC32C = c
		return o, true, nil
	}
	// Written by someone else to a server that keeps no checksum.
	o.CRC32C, err = s.readCRC(ctx, name)
	if errors.Is(err, core.ErrNotFound) {
		return core.Object{}, false, nil
	}
	if err != nil {
		return core.Object{}, false, err
	}
	return o, true, nil
}

// storedCRC returns the whole-object CRC32C the server keeps, or the one Put
// stored in the metadata.
func storedCRC(out *awss3.HeadObjectOutput) (uint32, bool) {
	if v := aws.ToString(out.ChecksumCRC32C); v != "" && out.ChecksumType != types.ChecksumTypeComposite && !strings.Contains(v, "-") {
		if c, err := core.DecodeCRC32C(v); err == nil {
			return c, true
		}
	}
	for k, v := range out.Metadata {
		if strings.EqualFold(k, metaCRC) {
			if c, err := strconv.ParseUint(v, 16, 32); err == nil && len(v) == 8 {
				return uint32(c), true
			}
		}
	}
	return 0, false
}

// readCRC computes an object's CRC32C by reading it.
func (s *Store) readCRC(ctx context.Context, name string) (uint32, error) {
	r, err := s.Get(ctx, name)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	h := crc32.New(core.Castagnoli)
	if _, err := io.Copy(h, r); err != nil {
		return 0, classify(fmt.Errorf("read %s for its checksum: %w", name, err))
	}
	return h.Sum32(), nil
}

// List implements upload.Store.
func (s *Store) List(ctx context.Context, prefix string) ([]core.Object, error) {
	if err := core.CheckPrefix(prefix); err != nil {
		return nil, err
	}
	strip := s.key("")
	var names []string
	p := awss3.NewListObjectsV2Paginator(s.client, &awss3.ListObjectsV2Input{
		Bucket: aws.String(s.cfg.Bucket),
		Prefix: aws.String(s.key(prefix)),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if httpStatus(err) == http.StatusNotFound {
			return nil, s.missingBucket(ctx, fmt.Errorf("list %q: %w", prefix, err))
		}
		if err != nil {
			return nil, classify(fmt.Errorf("list %q: %w", prefix, err))
		}
		for _, o := range page.Contents {
			name, ok := strings.CutPrefix(aws.ToString(o.Key), strip)
			if !ok || core.ValidateName(name) != nil {
				continue // folder markers and names this package cannot address
			}
			names = append(names, name)
		}
	}
	objs := make([]core.Object, len(names))
	found := make([]bool, len(names))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(listConcurrency)
	for i, name := range names {
		g.Go(func() error {
			o, err := s.stat(gctx, name)
			if errors.Is(err, core.ErrNotFound) {
				return nil // deleted since the listing
			}
			if err != nil {
				return err
			}
			objs[i], found[i] = o, true
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("list %q: %w", prefix, err)
	}
	out := objs[:0]
	for i, o := range objs {
		if found[i] {
			out = append(out, o)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Get implements upload.Store. With checksum mode enabled the SDK verifies
// the stored CRC32C when the body is read to the end; reading stops when ctx
// is done.
func (s *Store) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	if err := core.CheckName(name); err != nil {
		return nil, err
	}
	out, err := s.client.GetObject(ctx, &awss3.GetObjectInput{
		Bucket:       aws.String(s.cfg.Bucket),
		Key:          aws.String(s.key(name)),
		ChecksumMode: types.ChecksumModeEnabled,
	})
	if httpStatus(err) == http.StatusNotFound {
		return nil, s.missingBucket(ctx, fmt.Errorf("get %s: %w", name, core.ErrNotFound))
	}
	if err != nil {
		return nil, classify(fmt.Errorf("get %s: %w", name, err))
	}
	return out.Body, nil
}

// Delete implements upload.Store. S3 deletes of missing keys succeed, so it
// asks first; the answer can be stale under concurrent deletes.
func (s *Store) Delete(ctx context.Context, name string) error {
	if err := core.CheckName(name); err != nil {
		return err
	}
	_, err := s.client.HeadObject(ctx, &awss3.HeadObjectInput{
		Bucket: aws.String(s.cfg.Bucket),
		Key:    aws.String(s.key(name)),
	})
	if httpStatus(err) == http.StatusNotFound {
		return s.missingBucket(ctx, fmt.Errorf("delete %s: %w", name, core.ErrNotFound))
	}
	if err != nil {
		return classify(fmt.Errorf("delete %s: %w", name, err))
	}
	_, err = s.client.DeleteObject(ctx, &awss3.DeleteObjectInput{
		Bucket: aws.String(s.cfg.Bucket),
		Key:    aws.String(s.key(name)),
	})
	if err != nil {
		return classify(fmt.Errorf("delete %s: %w", name, err))
	}
	return nil
}

// String returns s3://bucket[/prefix][?endpoint=…&region=…]. Credentials
// never appear in it.
func (s *Store) String() string {
	u := "s3://" + s.cfg.Bucket
	if s.cfg.Prefix != "" {
		u += "/" + (&url.URL{Path: s.cfg.Prefix}).EscapedPath()
	}
	var q []string
	if s.cfg.Endpoint != "" {
		q = append(q, "endpoint="+s.cfg.Endpoint)
	}
	if s.cfg.Region != "" {
		q = append(q, "region="+s.cfg.Region)
	}
	if len(q) > 0 {
		u += "?" + strings.Join(q, "&")
	}
	return u
}

// Close closes idle connections; in-flight requests are not interrupted.
func (s *Store) Close() error {
	s.idle.closeIdle()
	return nil
}

// missingBucket returns a permanent ErrBucketNotFound if the bucket is known
// not to exist (HEAD answers 404 for a missing key and a missing bucket
// alike), else err. A failure to ask keeps err.
func (s *Store) missingBucket(ctx context.Context, err error) error {
	_, berr := s.client.HeadBucket(ctx, &awss3.HeadBucketInput{Bucket: aws.String(s.cfg.Bucket)})
	if httpStatus(berr) == http.StatusNotFound {
		return core.Permanent(fmt.Errorf("s3://%s: %w", s.cfg.Bucket, core.ErrBucketNotFound))
	}
	return classify(err)
}

// permanentCodes are S3 error codes that no retry can fix.
var permanentCodes = map[string]bool{
	"AccessDenied":                 true,
	"AccountProblem":               true,
	"AllAccessDisabled":            true,
	"AuthorizationHeaderMalformed": true, // wrong region
	"InvalidAccessKeyId":           true,
	"InvalidBucketName":            true,
	"InvalidSecurity":              true,
	"InvalidToken":                 true,
	"NoSuchBucket":                 true,
	"NotImplemented":               true,
	"NotSignedUp":                  true,
	"PermanentRedirect":            true, // wrong region or endpoint
	"SignatureDoesNotMatch":        true, // wrong secret
}

// checksumCodes are S3 error codes for a body that did not match its checksum.
var checksumCodes = map[string]bool{
	"BadDigest":                   true,
	"InvalidDigest":               true,
	"XAmzContentChecksumMismatch": true,
}

// classify marks errors that retrying cannot fix as permanent, and tags
// checksum rejections with ErrChecksum. Everything else stays retryable.
func classify(err error) error {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		code := ae.ErrorCode()
		if code == "NoSuchBucket" {
			return core.Permanent(fmt.Errorf("%w: %w", core.ErrBucketNotFound, err))
		}
		if permanentCodes[code] {
			return core.Permanent(err)
		}
		if checksumCodes[code] {
			return fmt.Errorf("%w: %w", core.ErrChecksum, err)
		}
	}
	switch httpStatus(err) {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusNotImplemented:
		return core.Permanent(err)
	}
	return err
}

// httpStatus returns the HTTP status of a failed request, or 0.
func httpStatus(err error) int {
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}
