package archive

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Defaults applied to zero fields of a Config.
const (
	DefaultSpoolName         = ".archive"
	DefaultDatatype          = "pcap"
	DefaultMaxSize           = 20 << 20
	DefaultMaxAge            = time.Hour
	DefaultCompression       = "gzip"
	DefaultScanInterval      = time.Minute
	DefaultUploadConcurrency = 2
	DefaultRetryMin          = time.Second
	DefaultRetryMax          = 2 * time.Minute
	DefaultUploadTimeout     = 10 * time.Minute
	DefaultShutdownGrace     = time.Second

	// ThirdPartyNode is the ETL-accepted node name for hosts outside M-Lab.
	ThirdPartyNode = "third-party"

	// MaxMemberSize is the largest source file bundled; M-Lab's ETL skips
	// bigger members, so they are quarantined instead.
	MaxMemberSize = 200 << 20
)

// Config configures an Archiver. The zero value of every field but DataDir
// and Experiment selects a default.
type Config struct {
	// DataDir is the capture side's data dir: <DataDir>/YYYY/MM/DD/<UUID>.pcap.gz.
	DataDir string
	// SpoolDir holds tarballs, manifests and the quarantine. Default
	// <DataDir>/.archive. Inside DataDir it must be a dot-dir, which the
	// capture side and the scanner ignore. Moving files into the quarantine
	// is a rename when SpoolDir is on the same file system as DataDir.
	SpoolDir string

	// Watch adds an fsnotify watch on the data dir tree (sidecar mode). The
	// periodic scan runs in every mode and is enough for correctness; Add and
	// Watch only lower latency.
	Watch bool

	// Experiment names the experiment in object names: lowercase letters
	// only. Required.
	Experiment string
	// Datatype names the datatype in object names: lowercase letters and
	// digits. Default "pcap".
	Datatype string
	// Node is the node name in object names: mlabN-SITE (SITE: three
	// lowercase letters, a digit, a digit or 't', e.g. mlab1-lga03), a FQDN
	// such as mlab1.lga03.measurement-lab.org or
	// mlab1-lga03.mlab-oti.measurement-lab.org (converted to mlab1-lga03),
	// or "third-party". Default: derived from the host name the same way,
	// "third-party" when the host name is not of the M-Lab form. An explicit
	// name of any other form is rejected by Validate.
	Node string
	// Prefix is prepended to object names ("<Prefix>/<Experiment>/…"). It may
	// be empty, and must be for M-Lab's ETL, which expects the experiment at
	// the top of the bucket.
	Prefix string

	// MaxSize seals a bundle once its compressed size reaches it (bytes).
	// Default 20 MiB.
	MaxSize int64
	// MaxAge seals a bundle once it has been open this long, measured from
	// when it took its first file. Default 1h.
	MaxAge time.Duration
	// Compression is "gzip" (default; .tgz) or "zstd" (.tar.zst; not
	// accepted by M-Lab's ETL).
	Compression string

	// ScanInterval is the period of the full data dir scan. Default 1m.
	ScanInterval time.Duration
	// MinFileAge makes the archiver leave files younger than this (by
	// modification time) for a later scan. Default 0: final names are
	// published atomically.
	MinFileAge time.Duration

	// UploadConcurrency bounds concurrent uploads. Default 2.
	UploadConcurrency int
	// RetryMin and RetryMax bound the exponential back-off (with jitter)
	// between upload attempts. Defaults 1s and 2m. Uploads are retried
	// forever.
	RetryMin, RetryMax time.Duration
	// UploadTimeout bounds one upload attempt. Default 10m.
	UploadTimeout time.Duration
	// ShutdownGrace is how long the shutdown may take after the Run context
	// is cancelled (the daemon passes -sigtermwait): up to half of it to
	// bundle what was published last, the rest (and whatever that left) to
	// upload. Default 1s; negative means seal and leave everything for the
	// next start.
	ShutdownGrace time.Duration

	// Clock returns the current time; nil means time.Now. It stamps object
	// names and measures bundle and file ages. Timers use the time package
	// (tests use testing/synctest).
	Clock func() time.Time
	// Logger receives the archiver's logs; nil means slog.Default().
	Logger *slog.Logger
}

var (
	experimentRE = regexp.MustCompile(`^[a-z]+$`)
	datatypeRE   = regexp.MustCompile(`^[a-z0-9]+$`)
	// mlabNodeRE matches mlabN-SITE, optionally followed by a domain, and
	// mlabN.SITE.domain.
	mlabNodeRE  = regexp.MustCompile(`^(mlab[0-9])(?:-([a-z]{3}[0-9][0-9t])(?:\.[a-z0-9.-]+)?|\.([a-z]{3}[0-9][0-9t])\.[a-z0-9.-]+)$`)
	shortNodeRE = regexp.MustCompile(`^mlab[0-9]-[a-z]{3}[0-9][0-9t]$`)
	prefixRE    = regexp.MustCompile(`^[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*$`)
)

// hostname is os.Hostname, replaced in tests.
var hostname = os.Hostname

// NormalizeNode returns the ETL form of a node or host name: "mlabN-SITE"
// for M-Lab names (short or fully qualified), "third-party" for
// "third-party". ok is false for anything else.
func NormalizeNode(name string) (node string, ok bool) {
	name = strings.TrimSuffix(strings.ToLower(name), ".")
	if name == ThirdPartyNode {
		return name, true
	}
	m := mlabNodeRE.FindStringSubmatch(name)
	if m == nil {
		return "", false
	}
	site := m[2]
	if site == "" {
		site = m[3]
	}
	return m[1] + "-" + site, true
}

// defaultNode derives the node name from the host name.
func defaultNode() string {
	h, err := hostname()
	if err != nil {
		return ThirdPartyNode
	}
	if n, ok := NormalizeNode(h); ok {
		return n
	}
	return ThirdPartyNode
}

// withDefaults returns c with defaults in place of zero fields and the node
// name normalized.
func (c Config) withDefaults() Config {
	if c.DataDir != "" {
		c.DataDir = filepath.Clean(c.DataDir)
	}
	if c.SpoolDir == "" && c.DataDir != "" {
		c.SpoolDir = filepath.Join(c.DataDir, DefaultSpoolName)
	}
	if c.SpoolDir != "" {
		c.SpoolDir = filepath.Clean(c.SpoolDir)
	}
	if c.Datatype == "" {
		c.Datatype = DefaultDatatype
	}
	if c.Node == "" {
		c.Node = defaultNode()
	} else if n, ok := NormalizeNode(c.Node); ok {
		c.Node = n
	}
	if c.MaxSize == 0 {
		c.MaxSize = DefaultMaxSize
	}
	if c.MaxAge == 0 {
		c.MaxAge = DefaultMaxAge
	}
	if c.Compression == "" {
		c.Compression = DefaultCompression
	}
	if c.ScanInterval == 0 {
		c.ScanInterval = DefaultScanInterval
	}
	if c.UploadConcurrency == 0 {
		c.UploadConcurrency = DefaultUploadConcurrency
	}
	if c.RetryMin == 0 {
		c.RetryMin = DefaultRetryMin
	}
	if c.RetryMax == 0 {
		c.RetryMax = max(DefaultRetryMax, c.RetryMin)
	}
	if c.UploadTimeout == 0 {
		c.UploadTimeout = DefaultUploadTimeout
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = DefaultShutdownGrace
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Validate reports whether c, with defaults applied, is usable.
func (c Config) Validate() error {
	return c.withDefaults().validate()
}

func (c Config) validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.DataDir == "" {
		bad("archive: DataDir is required")
	} else if rel, err := filepath.Rel(c.DataDir, c.SpoolDir); err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		// SpoolDir is inside DataDir (or equal to it).
		if rel == "." || !strings.HasPrefix(rel, ".") {
			bad("archive: SpoolDir %q inside DataDir must be a dot-dir such as %q", c.SpoolDir, filepath.Join(c.DataDir, DefaultSpoolName))
		}
	}
	if !experimentRE.MatchString(c.Experiment) {
		bad("archive: Experiment %q must be lowercase letters only (required)", c.Experiment)
	}
	if !datatypeRE.MatchString(c.Datatype) {
		bad("archive: Datatype %q must be lowercase letters and digits", c.Datatype)
	}
	if c.Node != ThirdPartyNode && !shortNodeRE.MatchString(c.Node) {
		bad("archive: Node %q is not of the M-Lab form mlabN-SITE (e.g. mlab1-lga03, or mlab1.lga03.measurement-lab.org); leave it empty or use %q for a host outside M-Lab", c.Node, ThirdPartyNode)
	}
	if c.Prefix != "" && (!prefixRE.MatchString(c.Prefix) || hasDotSegment(c.Prefix)) {
		bad("archive: Prefix %q must be '/'-separated segments of [A-Za-z0-9._-], without leading or trailing '/', '.' or '..'", c.Prefix)
	}
	if c.MaxSize < 0 {
		bad("archive: MaxSize %d must be positive", c.MaxSize)
	}
	if c.MaxAge < 0 {
		bad("archive: MaxAge %v must be positive", c.MaxAge)
	}
	if c.Compression != "gzip" && c.Compression != "zstd" {
		bad(`archive: Compression %q must be "gzip" or "zstd"`, c.Compression)
	}
	if c.ScanInterval < 0 {
		bad("archive: ScanInterval %v must be positive", c.ScanInterval)
	}
	if c.MinFileAge < 0 {
		bad("archive: MinFileAge %v must not be negative", c.MinFileAge)
	}
	if c.UploadConcurrency < 0 {
		bad("archive: UploadConcurrency %d must be positive", c.UploadConcurrency)
	}
	if c.RetryMin < 0 || c.RetryMax < c.RetryMin {
		bad("archive: need 0 < RetryMin (%v) <= RetryMax (%v)", c.RetryMin, c.RetryMax)
	}
	if c.UploadTimeout < 0 {
		bad("archive: UploadTimeout %v must be positive", c.UploadTimeout)
	}
	return errors.Join(errs...)
}

func hasDotSegment(p string) bool {
	for s := range strings.SplitSeq(p, "/") {
		if s == "." || s == ".." {
			return true
		}
	}
	return false
}
