//go:build linux

package archivee2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/gopacket/gopacket/layers"

	"github.com/headercap/headercap/archive"
	"github.com/headercap/headercap/e2e"
)

// memberRE is the contract for member names and source files:
// YYYY/MM/DD/<UUID>.pcap.gz. Written here from the design, not taken from
// package archive.
var memberRE = regexp.MustCompile(`^([0-9]{4}/[0-9]{2}/[0-9]{2})/([A-Za-z0-9_-][A-Za-z0-9._-]*)\.pcap\.gz$`)

// object is one stored object with its content.
type object struct {
	name string
	data []byte
	// size and crc are what the store reports, if it does (hasMeta).
	size    int64
	crc     uint32
	hasMeta bool
}

// bucket reads back everything a store holds.
type bucket interface {
	// read returns every object with its content, sorted by name, and the
	// store's files that are not objects (temporary uploads).
	read(t *testing.T) (objs []object, junk []string)
	String() string
}

// dirBucket is a bucket kept as a directory tree: the file backend's root,
// or a versitygw posix bucket directory. Files in directories or with names
// starting with tmpPrefix are junk.
type dirBucket struct {
	dir       string
	tmpPrefix []string
}

func (b dirBucket) String() string { return "dir " + b.dir }

func (b dirBucket) read(t *testing.T) ([]object, []string) {
	t.Helper()
	var objs []object
	var junk []string
	err := filepath.WalkDir(b.dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(b.dir, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if e.IsDir() {
			return nil
		}
		for _, seg := range strings.Split(rel, "/") {
			for _, p := range b.tmpPrefix {
				if strings.HasPrefix(seg, p) {
					junk = append(junk, rel)
					return nil
				}
			}
		}
		if !e.Type().IsRegular() {
			junk = append(junk, rel)
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		objs = append(objs, object{name: rel, data: data})
		return nil
	})
	if err != nil {
		t.Fatalf("read bucket %s: %v", b.dir, err)
	}
	return objs, junk
}

// gcsBucket reads a fake-gcs-server bucket through the JSON API, with its
// own requests (not the project's GCS client), so what is checked is what
// the server holds. fetch GETs a URL (from the namespace the server runs
// in).
type gcsBucket struct {
	endpoint, bucket string
	fetch            func(ctx context.Context, url string) ([]byte, error)
}

func (b gcsBucket) String() string { return fmt.Sprintf("gs://%s at %s", b.bucket, b.endpoint) }

func (b gcsBucket) read(t *testing.T) ([]object, []string) {
	t.Helper()
	ctx := t.Context()
	var objs []object
	token := ""
	for {
		u := fmt.Sprintf("%s/storage/v1/b/%s/o?maxResults=1000", b.endpoint, url.PathEscape(b.bucket))
		if token != "" {
			u += "&pageToken=" + url.QueryEscape(token)
		}
		body, err := b.fetch(ctx, u)
		if err != nil {
			t.Fatalf("list %s: %v", b, err)
		}
		var page struct {
			Items []struct {
				Name   string `json:"name"`
				Size   string `json:"size"`
				CRC32C string `json:"crc32c"`
			} `json:"items"`
			NextPageToken string `json:"nextPageToken"`
		}
		if err := json.Unmarshal(body, &page); err != nil {
			t.Fatalf("list %s: %v: %.200s", b, err, body)
		}
		for _, it := range page.Items {
			o := object{name: it.Name}
			size, err1 := strconv.ParseInt(it.Size, 10, 64)
			crc, err2 := base64.StdEncoding.DecodeString(it.CRC32C)
			if err := errors.Join(err1, err2); err != nil || len(crc) != 4 {
				t.Errorf("%s: object %s: size %q crc32c %q: %v", b, it.Name, it.Size, it.CRC32C, err)
			} else {
				o.size, o.crc, o.hasMeta = size, binary.BigEndian.Uint32(crc), true
			}
			o.data, err = b.fetch(ctx, fmt.Sprintf("%s/storage/v1/b/%s/o/%s?alt=media", b.endpoint, url.PathEscape(b.bucket), url.PathEscape(it.Name)))
			if err != nil {
				t.Fatalf("download %s from %s: %v", it.Name, b, err)
			}
			objs = append(objs, o)
		}
		if page.NextPageToken == "" {
			break
		}
		token = page.NextPageToken
	}
	sort.Slice(objs, func(i, j int) bool { return objs[i].name < objs[j].name })
	return objs, nil
}

// naming is what object names must say.
type naming struct {
	experiment, datatype, node string
}

// archived is what the bucket holds, member by member.
type archived struct {
	objects int
	// object names the object holding each member (rel path).
	object map[string]string
	// sum is each member's SHA-256.
	sum map[string][32]byte
	// members lists each object's members.
	members map[string][]string
	// compressed is the objects' total size, source the members'.
	compressed, source int64
}

func (a *archived) uuids() map[string]bool {
	out := make(map[string]bool, len(a.object))
	for rel := range a.object {
		out[memberRE.FindStringSubmatch(rel)[2]] = true
	}
	return out
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// verifyObjects checks every object: its name (archive.ParseObjectName,
// archive.ETLAccepts, under <experiment>/<datatype>/, the expected node),
// the store's size and CRC32C against the bytes, the tarball (a complete
// gzip of a tar of regular files), and each member: named
// YYYY/MM/DD/<UUID>.pcap.gz under the object's date folder, a complete gzip
// of a nanosecond Ethernet pcap, in no other object and not twice in this
// one. With rebuilt set, members are written there as a data dir
// (YYYY/MM/DD/<UUID>.pcap.gz), so the capture checker can read them.
func verifyObjects(t *testing.T, objs []object, want naming, rebuilt string) *archived {
	t.Helper()
	a := &archived{
		objects: len(objs),
		object:  map[string]string{},
		sum:     map[string][32]byte{},
		members: map[string][]string{},
	}
	prefix := want.experiment + "/" + want.datatype + "/"
	errs := 0
	bad := func(format string, args ...any) {
		t.Helper()
		if errs++; errs <= 30 {
			t.Errorf(format, args...)
		}
	}
	for _, o := range objs {
		a.compressed += int64(len(o.data))
		if !strings.HasPrefix(o.name, prefix) {
			bad("object %s is outside %s", o.name, prefix)
		}
		n, err := archive.ParseObjectName(o.name)
		if err != nil {
			bad("object %s: ParseObjectName: %v", o.name, err)
			continue
		}
		if n.Prefix != "" || n.Experiment != want.experiment || n.Datatype != want.datatype || n.Node != want.node || n.Compression != "gzip" {
			bad("object %s: parsed as %+v, want experiment %s, datatype %s, node %s, gzip, no prefix", o.name, n, want.experiment, want.datatype, want.node)
		}
		if !archive.ETLAccepts(o.name) {
			bad("object %s: archive.ETLAccepts says M-Lab's ETL would refuse it", o.name)
		}
		if o.hasMeta {
			if got := crc32.Checksum(o.data, castagnoli); o.size != int64(len(o.data)) || o.crc != got {
				bad("object %s: store says %d bytes crc32c %08x, content is %d bytes crc32c %08x", o.name, o.size, o.crc, len(o.data), got)
			}
		}
		date := n.Date.Format("2006/01/02")
		members, err := readTarball(o.data)
		if err != nil {
			bad("object %s: %v", o.name, err)
		}
		if len(members) == 0 && err == nil {
			bad("object %s: no members", o.name)
		}
		for _, m := range members {
			mm := memberRE.FindStringSubmatch(m.name)
			switch {
			case mm == nil:
				bad("object %s: member %q is not YYYY/MM/DD/<UUID>.pcap.gz", o.name, m.name)
				continue
			case mm[1] != date:
				bad("object %s: member %s is not in the object's date folder %s", o.name, m.name, date)
			}
			if prev, dup := a.object[m.name]; dup {
				bad("member %s is in %s and again in %s", m.name, prev, o.name)
				continue
			}
			a.object[m.name] = o.name
			a.members[o.name] = append(a.members[o.name], m.name)
			a.sum[m.name] = sha256.Sum256(m.data)
			a.source += int64(len(m.data))
			if err := checkFlowFile(m.data); err != nil {
				bad("object %s: member %s: %v", o.name, m.name, err)
			}
			if rebuilt != "" {
				p := filepath.Join(rebuilt, filepath.FromSlash(m.name))
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, m.data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if errs > 30 {
		t.Errorf("... %d more errors about the bucket's objects", errs-30)
	}
	return a
}

type member struct {
	name string
	data []byte
}

// readTarball reads a .tgz completely: every member must be a regular
// file, and the gzip stream must end with a valid CRC after the tar
// trailer.
func readTarball(data []byte) ([]member, error) {
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("not gzip: %w", err)
	}
	tr := tar.NewReader(zr)
	var out []member
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return out, fmt.Errorf("tar: %w", err)
		}
		if h.Typeflag != tar.TypeReg {
			return out, fmt.Errorf("member %s has type %q, want a regular file", h.Name, h.Typeflag)
		}
		if h.Size > 200<<20 {
			return out, fmt.Errorf("member %s is %d bytes, over the ETL's 200 MiB", h.Name, h.Size)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return out, fmt.Errorf("tar member %s: %w", h.Name, err)
		}
		out = append(out, member{name: h.Name, data: b})
	}
	if _, err := io.Copy(io.Discard, zr); err != nil {
		return out, fmt.Errorf("gzip after the tar trailer: %w", err)
	}
	if err := zr.Close(); err != nil {
		return out, fmt.Errorf("gzip: %w", err)
	}
	return out, nil
}

// checkFlowFile checks a flow file: a complete gzip of a nanosecond pcap,
// link type Ethernet, every record readable.
func checkFlowFile(data []byte) error {
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("not gzip: %w", err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		return fmt.Errorf("gzip: %w", err)
	}
	c, err := e2e.ReadPcap(bytes.NewReader(raw), 0)
	if err != nil {
		return fmt.Errorf("pcap: %w", err)
	}
	if !c.Nanosecond || c.LinkType != layers.LinkTypeEthernet {
		return fmt.Errorf("pcap with nanosecond=%v link type %v, want nanosecond Ethernet", c.Nanosecond, c.LinkType)
	}
	return nil
}

// checkSynthArchived checks a bucket against a synthetic data set: every
// file exactly once, byte for byte.
func checkSynthArchived(t *testing.T, set *synthSet, a *archived) {
	t.Helper()
	var missing, changed, extra []string
	for rel, sum := range set.files {
		got, ok := a.sum[rel]
		switch {
		case !ok:
			missing = append(missing, rel)
		case got != sum:
			changed = append(changed, rel)
		}
	}
	for rel := range a.sum {
		if _, ok := set.files[rel]; !ok {
			extra = append(extra, rel)
		}
	}
	sort.Strings(missing)
	sort.Strings(changed)
	sort.Strings(extra)
	if len(missing)+len(changed)+len(extra) > 0 {
		t.Errorf("bucket vs data set: %d of %d files missing %v, %d differ %v, %d unexpected %v",
			len(missing), len(set.files), short(missing), len(changed), short(changed), len(extra), short(extra))
	}
}
