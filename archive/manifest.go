package archive

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ManifestVersion is the version of the manifest format written here.
const ManifestVersion = 1

// manifestSuffix ends manifest file names in the spool dir.
const manifestSuffix = ".json"

// A Manifest describes a sealed bundle. It is written atomically into the
// spool dir as <id>.json once the tarball is complete and fsynced, and
// deleted last, after the upload is confirmed and the sources and the
// tarball are gone. Its presence means "sealed, not yet confirmed".
type Manifest struct {
	Version int `json:"version"`
	// Object is the object name, fixed at seal time; it changes only when
	// another writer took the name (upload.ErrConflict).
	Object string `json:"object"`
	// Tarball is the tarball's file name in the spool dir.
	Tarball string `json:"tarball"`
	// Date is the bundle's date folder, YYYY/MM/DD.
	Date string `json:"date"`
	// Compression is "gzip" or "zstd".
	Compression string `json:"compression"`
	// Sealed is when the bundle was (last) sealed; the object name's
	// timestamp.
	Sealed time.Time `json:"sealed"`
	// Size and CRC32C (Castagnoli) describe the tarball.
	Size   int64  `json:"size"`
	CRC32C uint32 `json:"crc32c"`
	// Members are the tarball's members in order.
	Members []Member `json:"members"`
}

// A Member is one source file in a bundle.
type Member struct {
	// Source is the source file's path relative to the data dir,
	// slash-separated; it is also the member's name in the tarball:
	// YYYY/MM/DD/<UUID>.pcap.gz.
	Source string `json:"source"`
	// Size is the source file's size in bytes.
	Size int64 `json:"size"`
}

// ReadManifest reads and checks a manifest file.
func ReadManifest(path string) (*Manifest, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", path, err)
	}
	if err := m.check(); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", path, err)
	}
	return &m, nil
}

// check validates fields that become paths or names: a manifest on disk is
// not trusted to stay inside the data and spool dirs.
func (m *Manifest) check() error {
	if m.Version != ManifestVersion {
		return fmt.Errorf("unsupported version %d", m.Version)
	}
	if _, err := ParseObjectName(m.Object); err != nil {
		return err
	}
	if m.Tarball == "" || m.Tarball != filepath.Base(m.Tarball) || strings.HasPrefix(m.Tarball, ".") ||
		(!strings.HasSuffix(m.Tarball, ".tgz") && !strings.HasSuffix(m.Tarball, ".tar.zst")) {
		return fmt.Errorf("bad tarball name %q", m.Tarball)
	}
	if !validDate(m.Date) {
		return fmt.Errorf("bad date %q", m.Date)
	}
	if m.Compression != "gzip" && m.Compression != "zstd" {
		return fmt.Errorf("bad compression %q", m.Compression)
	}
	if m.Size < 0 {
		return fmt.Errorf("bad size %d", m.Size)
	}
	if len(m.Members) == 0 {
		return fmt.Errorf("no members")
	}
	for _, mb := range m.Members {
		d, err := parseMember(mb.Source)
		if err != nil || d != m.Date {
			return fmt.Errorf("bad member %q", mb.Source)
		}
	}
	return nil
}

// writeManifest publishes m atomically as path.
func writeManifest(path string, m *Manifest) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(data, '\n'))
}
