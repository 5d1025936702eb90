// Package file is the upload backend that uses a local directory tree as a
// bucket: object "a/b/c" is the file <Dir>/a/b/c. It is the default
// destination for local use and the reference the conformance suite's other
// backends are compared with.
//
// Handoff contract. Put writes the body to a temporary file named
// ".upload-tmp-*" in the object's own directory, checks its CRC32C against the
// caller's, records the checksum in the extended attribute
// "user.headercap.crc32c" (where the file system supports it), fsyncs it and
// publishes it create-only with a hard link to the final name, then removes
// the temporary name and fsyncs the directory. An existing name is never
// replaced, so concurrent writers of one name (in this or another process)
// cannot clobber each other. Anything with a final name is complete and
// immutable; temporary files are never listed (valid object names cannot
// start with the temporary prefix) and are left behind only by a crash, for an
// operator to delete. When the attribute is missing (another file system, a
// file copied in by hand) Stat and List compute the checksum by reading the
// file.
//
// A Store holds only its root path and is safe for concurrent use. It never
// creates, removes or follows anything outside Dir, and never creates Dir
// itself: a missing root is a missing bucket (a permanent error).
package file

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/headercap/headercap/upload/internal/core"
)

// Config configures a file Store. There are no defaults: Dir is required.
type Config struct {
	// Dir is the absolute path of the root directory. It must exist.
	Dir string
}

// Validate reports whether the Config is usable.
func (c Config) Validate() error {
	if c.Dir == "" {
		return errors.New("file store: Dir is required")
	}
	if !filepath.IsAbs(c.Dir) {
		return fmt.Errorf("file store: Dir %q is not absolute", c.Dir)
	}
	return nil
}

// Store is a directory tree used as a bucket. Safe for concurrent use.
type Store struct {
	dir string // absolute, cleaned; immutable
}

var _ core.Store = (*Store)(nil)

// New returns a Store rooted at cfg.Dir, which must be an existing directory.
// Errors are permanent.
func New(_ context.Context, cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, core.Permanent(err)
	}
	s := &Store{dir: filepath.Clean(cfg.Dir)}
	if err := s.checkRoot(); err != nil {
		return nil, err
	}
	return s, nil
}

// checkRoot returns a permanent error if the root is missing or not a
// directory, nil otherwise (including when it cannot tell).
func (s *Store) checkRoot() error {
	fi, err := os.Stat(s.dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return core.Permanent(fmt.Errorf("file store %s: %w", s.dir, core.ErrBucketNotFound))
	case err != nil:
		return classify(fmt.Errorf("file store %s: %w", s.dir, err))
	case !fi.IsDir():
		return core.Permanent(fmt.Errorf("file store %s: not a directory: %w", s.dir, core.ErrBucketNotFound))
	}
	return nil
}

// classify marks errors no retry can fix as permanent.
func classify(err error) error {
	if errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS) {
		return core.Permanent(err)
	}
	return err
}

func (s *Store) path(name string) string {
	return filepath.Join(s.dir, filepath.FromSlash(name))
}

// notFound maps a missing path to ErrNotFound, or to a permanent
// ErrBucketNotFound if the root itself is gone.
func (s *Store) notFound(name string) error {
	if err := s.checkRoot(); err != nil {
		return err
	}
	return fmt.Errorf("%s: %w", name, core.ErrNotFound)
}

func isNotExist(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

// Put implements upload.Store.
func (s *Store) Put(ctx context.Context, name string, body io.ReadSeeker, size int64, crc uint32) (bool, error) {
	if err := core.CheckName(name); err != nil {
		return false, err
	}
	if size < 0 {
		return false, core.Permanent(fmt.Errorf("put %s: negative size %d", name, size))
	}
	// An earlier attempt may have succeeded; the create-only link below
	// decides races, this only saves rewriting the body.
	switch err := s.compare(ctx, name, size, crc); {
	case err == nil:
		return false, nil
	case !errors.Is(err, core.ErrNotFound):
		return false, fmt.Errorf("put: %w", err)
	}
	dir, err := s.mkdirs(name)
	if err != nil {
		return false, fmt.Errorf("put %s: %w", name, err)
	}
	tmp, err := s.writeTemp(ctx, dir, name, body, size, crc)
	if err != nil {
		return false, fmt.Errorf("put %s: %w", name, err)
	}
	defer os.Remove(tmp) // after the link, or on failure
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("put %s: %w", name, err)
	}
	if err := os.Link(tmp, s.path(name)); err != nil {
		if errors.Is(err, fs.ErrExist) {
			// Lost a race, or the name is a folder.
			switch err := s.compare(ctx, name, size, crc); {
			case errors.Is(err, core.ErrNotFound):
				return false, fmt.Errorf("put %s: name taken by a folder or removed while writing: %w", name, err)
			case err != nil:
				return false, fmt.Errorf("put: %w", err)
			}
			return false, nil
		}
		return false, classify(fmt.Errorf("put %s: publish: %w", name, err))
	}
	if err := os.Remove(tmp); err != nil {
		return false, classify(fmt.Errorf("put %s: remove temporary file: %w", name, err))
	}
	if err := syncDir(dir); err != nil {
		return false, classify(fmt.Errorf("put %s: %w", name, err))
	}
	return true, nil
}

// compare checks an existing object against size and crc: nil if equal,
// ErrConflict if not, ErrNotFound if there is none.
func (s *Store) compare(ctx context.Context, name string, size int64, crc uint32) error {
	o, err := s.Stat(ctx, name)
	if err != nil {
		return err
	}
	if o.Size != size || o.CRC32C != crc {
		return fmt.Errorf("%s has size %d crc32c %08x, ours size %d crc32c %08x: %w",
			name, o.Size, o.CRC32C, size, crc, core.ErrConflict)
	}
	return nil
}

// mkdirs creates the folders above name, one level at a time below the root
// so that a missing root is reported rather than recreated, and fsyncs the
// parent of every folder it creates. It returns the object's directory.
func (s *Store) mkdirs(name string) (string, error) {
	cur := s.dir
	parent, _ := path.Split(name)
	for seg := range strings.SplitSeq(strings.TrimSuffix(parent, "/"), "/") {
		if seg == "" {
			break
		}
		next := filepath.Join(cur, seg)
		err := os.Mkdir(next, 0o755)
		switch {
		case err == nil:
			if err := syncDir(cur); err != nil {
				return "", classify(err)
			}
		case errors.Is(err, fs.ErrExist):
			fi, err := os.Stat(next)
			if err != nil {
				return "", classify(err)
			}
			if !fi.IsDir() {
				return "", core.Permanent(fmt.Errorf("%s is an object, not a folder", next))
			}
		case errors.Is(err, fs.ErrNotExist) && cur == s.dir:
			if rerr := s.checkRoot(); rerr != nil {
				return "", rerr
			}
			return "", err
		default:
			return "", classify(err)
		}
		cur = next
	}
	return cur, nil
}

// writeTemp copies size bytes of body into a new temporary file in dir,
// verifies the checksum, records it, fsyncs and closes the file, and returns
// its path. On error nothing is left behind.
func (s *Store) writeTemp(ctx context.Context, dir, name string, body io.ReadSeeker, size int64, crc uint32) (_ string, err error) {
	if err := core.Rewind(body); err != nil {
		return "", err
	}
	f, err := os.CreateTemp(dir, core.TempPrefix+"*")
	if err != nil {
		return "", classify(err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	h := crc32.New(core.Castagnoli)
	buf := make([]byte, 256<<10)
	n, err := io.CopyBuffer(io.MultiWriter(f, h), core.ContextReader{Ctx: ctx, R: io.LimitReader(body, size)}, buf)
	if err != nil {
		return "", classify(fmt.Errorf("write: %w", err))
	}
	if n != size {
		return "", fmt.Errorf("body has %d bytes, want %d: %w", n, size, io.ErrUnexpectedEOF)
	}
	if got := h.Sum32(); got != crc {
		return "", fmt.Errorf("body has crc32c %08x, want %08x: %w", got, crc, core.ErrChecksum)
	}
	if err := f.Chmod(0o644); err != nil {
		return "", classify(err)
	}
	if err := setCRCAttr(f, crc); err != nil {
		return "", classify(fmt.Errorf("record checksum: %w", err))
	}
	if err := f.Sync(); err != nil {
		return "", classify(err)
	}
	if err := f.Close(); err != nil {
		return "", classify(err)
	}
	return f.Name(), nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	serr := d.Sync()
	cerr := d.Close()
	if serr != nil {
		return fmt.Errorf("sync %s: %w", dir, serr)
	}
	return cerr
}

// Stat implements upload.Store.
func (s *Store) Stat(ctx context.Context, name string) (core.Object, error) {
	if err := core.CheckName(name); err != nil {
		return core.Object{}, err
	}
	p := s.path(name)
	fi, err := os.Stat(p)
	if isNotExist(err) || (err == nil && !fi.Mode().IsRegular()) {
		return core.Object{}, fmt.Errorf("stat: %w", s.notFound(name))
	}
	if err != nil {
		return core.Object{}, classify(fmt.Errorf("stat %s: %w", name, err))
	}
	crc, err := fileCRC(ctx, p)
	if err != nil {
		if isNotExist(err) {
			return core.Object{}, fmt.Errorf("stat: %w", s.notFound(name))
		}
		return core.Object{}, classify(fmt.Errorf("stat %s: %w", name, err))
	}
	return core.Object{Name: name, Size: fi.Size(), CRC32C: crc}, nil
}

// fileCRC returns the recorded checksum of a published file, or computes it.
func fileCRC(ctx context.Context, p string) (uint32, error) {
	if crc, ok := getCRCAttr(p); ok {
		return crc, nil
	}
	f, err := os.Open(p)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	h := crc32.New(core.Castagnoli)
	if _, err := io.Copy(h, core.ContextReader{Ctx: ctx, R: f}); err != nil {
		return 0, err
	}
	return h.Sum32(), nil
}

// List implements upload.Store.
func (s *Store) List(ctx context.Context, prefix string) ([]core.Object, error) {
	if err := core.CheckPrefix(prefix); err != nil {
		return nil, err
	}
	if err := s.checkRoot(); err != nil {
		return nil, err
	}
	// Walk only the deepest folder that contains every match.
	start := s.dir
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		start = s.path(prefix[:i])
	}
	var objs []core.Object
	err := filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == start && isNotExist(err) {
				return fs.SkipAll
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(s.dir, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		if d.IsDir() {
			if p != start && !strings.HasPrefix(name+"/", prefix) && !strings.HasPrefix(prefix, name+"/") {
				return fs.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || !strings.HasPrefix(name, prefix) || core.ValidateName(name) != nil {
			return nil // temporary files, symlinks, sockets
		}
		fi, err := d.Info()
		if isNotExist(err) {
			return nil // deleted meanwhile
		}
		if err != nil {
			return err
		}
		crc, err := fileCRC(ctx, p)
		if isNotExist(err) {
			return nil
		}
		if err != nil {
			return err
		}
		objs = append(objs, core.Object{Name: name, Size: fi.Size(), CRC32C: crc})
		return nil
	})
	if err != nil {
		return nil, classify(fmt.Errorf("list %q: %w", prefix, err))
	}
	// Walk order is per folder ("a/x" before "a-b"); the contract is byte order.
	sort.Slice(objs, func(i, j int) bool { return objs[i].Name < objs[j].Name })
	return objs, nil
}

// Get implements upload.Store. The returned *os.File ignores ctx once open.
func (s *Store) Get(_ context.Context, name string) (io.ReadCloser, error) {
	if err := core.CheckName(name); err != nil {
		return nil, err
	}
	f, err := os.Open(s.path(name))
	if isNotExist(err) {
		return nil, fmt.Errorf("get: %w", s.notFound(name))
	}
	if err != nil {
		return nil, classify(fmt.Errorf("get %s: %w", name, err))
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, classify(fmt.Errorf("get %s: %w", name, err))
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("get: %w", s.notFound(name))
	}
	return f, nil
}

// Delete implements upload.Store. Empty folders are left in place.
func (s *Store) Delete(_ context.Context, name string) error {
	if err := core.CheckName(name); err != nil {
		return err
	}
	p := s.path(name)
	fi, err := os.Lstat(p)
	if isNotExist(err) || (err == nil && fi.IsDir()) {
		return fmt.Errorf("delete: %w", s.notFound(name))
	}
	if err != nil {
		return classify(fmt.Errorf("delete %s: %w", name, err))
	}
	if err := os.Remove(p); err != nil {
		if isNotExist(err) {
			return fmt.Errorf("delete: %w", s.notFound(name))
		}
		return classify(fmt.Errorf("delete %s: %w", name, err))
	}
	return nil
}

// String returns the store's file:// URL.
func (s *Store) String() string {
	return (&url.URL{Scheme: "file", Path: filepath.ToSlash(s.dir)}).String()
}

// Close implements upload.Store; a file Store holds no resources.
func (s *Store) Close() error { return nil }
