package archive

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"
)

// timestampLayout is the seal timestamp in object names: UTC, microseconds.
const timestampLayout = "20060102T150405.000000Z"

// dateLayout is the date folder of the data: YYYY/MM/DD.
const dateLayout = "2006/01/02"

// ObjectName is the parsed form of an object name:
//
//	<Prefix>/<Experiment>/<Datatype>/YYYY/MM/DD/<YYYYMMDDTHHMMSS.ffffffZ>-<Datatype>-<Node>-<Experiment>.tgz
//
// (".tar.zst" for zstd; no Prefix segment when Prefix is empty).
type ObjectName struct {
	Prefix     string
	Experiment string
	Datatype   string
	// Date is the date folder, the date of the data (UTC midnight).
	Date time.Time
	// Sealed is the seal timestamp (UTC, microsecond resolution).
	Sealed time.Time
	Node   string
	// Compression is "gzip" (.tgz) or "zstd" (.tar.zst).
	Compression string
}

// String formats n as an object name.
func (n ObjectName) String() string {
	var b strings.Builder
	if n.Prefix != "" {
		b.WriteString(n.Prefix)
		b.WriteByte('/')
	}
	fmt.Fprintf(&b, "%s/%s/%s/%s-%s-%s-%s%s",
		n.Experiment, n.Datatype, n.Date.UTC().Format(dateLayout),
		n.Sealed.UTC().Format(timestampLayout), n.Datatype, n.Node, n.Experiment,
		suffixFor(n.Compression))
	return b.String()
}

func suffixFor(compression string) string {
	if compression == "zstd" {
		return ".tar.zst"
	}
	return ".tgz"
}

var objectNameRE = regexp.MustCompile(`^(?:(.+)/)?([a-z]+)/([a-z0-9]+)/([0-9]{4}/[0-9]{2}/[0-9]{2})/` +
	`([0-9]{8}T[0-9]{6}\.[0-9]{6}Z)-([a-z0-9]+)-(mlab[0-9]-[a-z]{3}[0-9][0-9t]|third-party)-([a-z]+)(\.tgz|\.tar\.zst)$`)

// ParseObjectName parses an object name written by this package. It checks
// that the dates are valid and that the experiment and datatype in the path
// match those in the file name.
func ParseObjectName(name string) (ObjectName, error) {
	m := objectNameRE.FindStringSubmatch(name)
	if m == nil {
		return ObjectName{}, fmt.Errorf("object name %q: not <prefix>/<experiment>/<datatype>/YYYY/MM/DD/<YYYYMMDDTHHMMSS.ffffffZ>-<datatype>-<node>-<experiment>.tgz", name)
	}
	n := ObjectName{Prefix: m[1], Experiment: m[2], Datatype: m[3], Node: m[7], Compression: "gzip"}
	if m[9] == ".tar.zst" {
		n.Compression = "zstd"
	}
	if m[6] != n.Datatype || m[8] != n.Experiment {
		return ObjectName{}, fmt.Errorf("object name %q: path says %s/%s, file name says %s/%s", name, n.Experiment, n.Datatype, m[8], m[6])
	}
	var err error
	if n.Date, err = time.Parse(dateLayout, m[4]); err != nil {
		return ObjectName{}, fmt.Errorf("object name %q: date folder: %w", name, err)
	}
	if n.Sealed, err = time.Parse(timestampLayout, m[5]); err != nil {
		return ObjectName{}, fmt.Errorf("object name %q: timestamp: %w", name, err)
	}
	return n, nil
}

// etlRE is M-Lab ETL's rule for archive names (m-lab/etl): the bucket path
// EXPERIMENT/DATATYPE/YYYY/MM/DD/, then YYYYMMDDTHHMMSS[.ffffff]Z, an
// optional -DATATYPE, -mlabN-SITE- or -third-party-, the experiment, and
// .tgz, .tar.gz or .tar.
var etlRE = regexp.MustCompile(`^(?:gs://[^/]+/)?[a-z]+/[a-z0-9-]+/[0-9]{4}/[01][0-9]/[0-3][0-9]/` +
	`[0-9]{4}[01][0-9][0-3][0-9]T[0-9]{6}(?:\.[0-9]{6})?Z(?:-[a-z0-9-]+)?-(?:mlab[0-9]-[a-z]{3}[0-9][0-9t]|third-party)-[a-z]+(?:\.tgz|\.tar\.gz|\.tar)$`)

// ETLAccepts reports whether M-Lab's ETL would accept an object of this name
// (relative to the bucket, or as gs://bucket/name). Names under a non-empty
// Prefix and zstd tarballs are not accepted.
func ETLAccepts(name string) bool {
	return etlRE.MatchString(name)
}

// namer hands out seal timestamps that are strictly increasing at
// microsecond resolution, so two bundles sealed within the same microsecond
// get distinct names. It is safe for concurrent use.
type namer struct {
	clock func() time.Time

	mu   sync.Mutex
	last time.Time // latest timestamp handed out or observed
}

// next returns a fresh timestamp: now, or 1µs after the last one.
func (n *namer) next() time.Time {
	t := n.clock().UTC().Truncate(time.Microsecond)
	n.mu.Lock()
	defer n.mu.Unlock()
	if !t.After(n.last) {
		t = n.last.Add(time.Microsecond)
	}
	n.last = t
	return t
}

// observe makes later timestamps come after t (a recovered bundle's).
func (n *namer) observe(t time.Time) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if t.After(n.last) {
		n.last = t.UTC().Truncate(time.Microsecond)
	}
}

// memberRE matches member names, YYYY/MM/DD/<UUID>.pcap.gz: the UUID is
// [A-Za-z0-9._-], does not start with '.', and is at most 247 bytes so that
// the file name fits in 255.
var memberRE = regexp.MustCompile(`^([0-9]{4}/[0-9]{2}/[0-9]{2})/[A-Za-z0-9_-][A-Za-z0-9._-]{0,246}\.pcap\.gz$`)

var errMemberName = errors.New("not YYYY/MM/DD/<UUID>.pcap.gz")

// parseMember checks a slash-separated path relative to the data dir and
// returns its date folder.
func parseMember(rel string) (date string, err error) {
	m := memberRE.FindStringSubmatch(rel)
	if m == nil || !validDate(m[1]) {
		return "", errMemberName
	}
	return m[1], nil
}

// validDate reports whether d (YYYY/MM/DD) is a real date.
func validDate(d string) bool {
	t, err := time.Parse(dateLayout, d)
	return err == nil && t.Format(dateLayout) == d
}
