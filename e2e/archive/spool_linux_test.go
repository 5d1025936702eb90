//go:build linux

package archivee2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/headercap/headercap/archive"

	"github.com/headercap/headercap/internal/e2etest"
)

// TestDamagedSpool starts pcap-archiver on a data dir and spool dir left in
// a bad state: a half-written tarball without a manifest, manifests whose
// tarball is missing or torn (with all their sources present, or with one
// gone), an unreadable manifest, a manifest being written, a sealed bundle
// already in the bucket, a sealed bundle whose name another writer took, a
// torn flow file, stray files and temporary files. It checks what archive's package
// documentation promises for each, that everything else is archived exactly
// once, and that the archiver neither crashes nor touches what is not its
// own.
func TestDamagedSpool(t *testing.T) {
	seed := seedFor(t)
	r := rand.New(rand.NewPCG(seed, 0x73706f6f))
	work := e2etest.WorkDir(t)
	datadir := filepath.Join(work, "data")
	spool := filepath.Join(datadir, spoolName)
	bucketDir := filepath.Join(work, "bucket")
	for _, d := range []string{spool, bucketDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	set := writeSynth(t, r, datadir, 300, 0)
	byDate := map[string][]string{}
	for rel := range set.files {
		d := rel[:10]
		byDate[d] = append(byDate[d], rel)
	}
	for _, l := range byDate {
		sort.Strings(l)
	}
	size := func(rel string) int64 {
		fi, err := os.Stat(filepath.Join(datadir, filepath.FromSlash(rel)))
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	// manifest returns a sealed bundle's manifest. tarball is its tarball's
	// content (nil: a size and checksum that match nothing).
	manifest := func(id, date, object string, tarball []byte, members []string, extra ...archive.Member) []byte {
		m := archive.Manifest{
			Version: archive.ManifestVersion, Object: object, Tarball: id + ".tgz", Date: date,
			Compression: "gzip", Sealed: time.Date(2026, 11, 25, 1, 2, 3, 0, time.UTC), Size: 4096, CRC32C: 0x1234,
		}
		if tarball != nil {
			m.Size, m.CRC32C = int64(len(tarball)), crc32.Checksum(tarball, castagnoli)
		}
		for _, rel := range members {
			m.Members = append(m.Members, archive.Member{Source: rel, Size: size(rel)})
		}
		m.Members = append(m.Members, extra...)
		b, err := json.MarshalIndent(m, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	spoolFile := func(name string, data []byte) { keep(t, filepath.Join(spool, name), data) }
	d1, d2, d3 := synthDates[0], synthDates[1], synthDates[2]
	compact := func(d string) string { return strings.ReplaceAll(d, "/", "") }

	// A: a half-written tarball, never sealed: deleted at start.
	idA := compact(d1) + "-00000000000000a1"
	spoolFile(idA+".tgz", synthFlow(r, 50, 0)[:100])
	// B: sealed, tarball missing, all sources there: rebuilt and uploaded
	// under the manifest's name.
	idB := compact(d1) + "-00000000000000b1"
	objB := experiment + "/" + datatype + "/" + d1 + "/" + compact(d1) + "T010203.000001Z-pcap-third-party-ndt.tgz"
	membersB := byDate[d1][:10]
	spoolFile(idB+".json", manifest(idB, d1, objB, nil, membersB))
	// C: sealed, tarball torn, all sources there: rebuilt too.
	idC := compact(d2) + "-00000000000000c1"
	objC := experiment + "/" + datatype + "/" + d2 + "/" + compact(d2) + "T010203.000002Z-pcap-third-party-ndt.tgz"
	membersC := byDate[d2][:5]
	spoolFile(idC+".json", manifest(idC, d2, objC, nil, membersC))
	spoolFile(idC+".tgz", synthFlow(r, 80, 0)[:300])
	// D: sealed, tarball missing and a source gone: quarantined; its other
	// sources are bundled again.
	idD := compact(d3) + "-00000000000000d1"
	objD := experiment + "/" + datatype + "/" + d3 + "/" + compact(d3) + "T010203.000003Z-pcap-third-party-ndt.tgz"
	membersD := byDate[d3][:4]
	spoolFile(idD+".json", manifest(idD, d3, objD, nil, membersD, archive.Member{Source: d3 + "/ghost-e2e_1_0000000000000001.pcap.gz", Size: 321}))
	// J: sealed and already uploaded (the last run died before deleting
	// its files): uploaded again, found there with the same checksum,
	// files deleted, nothing stored twice.
	idJ := compact(d1) + "-00000000000000a2"
	objJ := experiment + "/" + datatype + "/" + d1 + "/" + compact(d1) + "T010203.000004Z-pcap-third-party-ndt.tgz"
	membersJ := byDate[d1][10:16]
	tgzJ := makeTarball(t, datadir, membersJ)
	spoolFile(idJ+".tgz", tgzJ)
	spoolFile(idJ+".json", manifest(idJ, d1, objJ, tgzJ, membersJ))
	keep(t, filepath.Join(bucketDir, filepath.FromSlash(objJ)), tgzJ)
	// K: sealed, and its name is taken in the bucket by another writer's
	// object (hosts sharing the node name third-party): re-sealed under a
	// new name, the other object untouched.
	idK := compact(d2) + "-00000000000000a3"
	objK := experiment + "/" + datatype + "/" + d2 + "/" + compact(d2) + "T010203.000005Z-pcap-third-party-ndt.tgz"
	membersK := byDate[d2][5:10]
	tgzK := makeTarball(t, datadir, membersK)
	spoolFile(idK+".tgz", tgzK)
	spoolFile(idK+".json", manifest(idK, d2, objK, tgzK, membersK))
	foreign := d2 + "/foreign-e2e_1_00000000000000FF.pcap.gz"
	foreignDir := t.TempDir()
	keep(t, filepath.Join(foreignDir, filepath.FromSlash(foreign)), synthFlow(r, 5, 0))
	foreignTgz := makeTarball(t, foreignDir, []string{foreign})
	keep(t, filepath.Join(bucketDir, filepath.FromSlash(objK)), foreignTgz)

	// E: a manifest that is not JSON: quarantined.
	idE := compact(d3) + "-00000000000000e1"
	spoolFile(idE+".json", []byte("{not json"))
	// F: a manifest being written when the last run died: deleted.
	spoolFile("."+compact(d3)+"-00000000000000f1.json.tmp", []byte(`{"version":1`))

	// G: a torn flow file: quarantined, never shipped.
	torn := d3 + "/torn-e2e_1_00000000000000AB.pcap.gz"
	tornData := synthFlow(r, 300, 0)
	tornData = tornData[:len(tornData)/2]
	keep(t, filepath.Join(datadir, filepath.FromSlash(torn)), tornData)
	// H, I: stray and temporary files, left alone.
	leave := map[string][]byte{
		"README.txt":                             []byte("not a flow\n"),
		d3 + "/notes.txt":                        []byte("not a flow either\n"),
		d3 + "/subdir/deep-e2e_1_01.pcap.gz":     synthFlow(r, 3, 0),
		"2026/13/01/baddate-e2e_1_02.pcap.gz":    synthFlow(r, 3, 0),
		d3 + "/.live-e2e_1_03.pcap.spill":        []byte("spill records"),
		d3 + "/.live-e2e_1_04.pcap.gz.tmp":       synthFlow(r, 3, 0)[:20],
		".hidden/2026/11/25/x-e2e_1_05.pcap.gz":  synthFlow(r, 3, 0),
		d2 + "/bad name-e2e_1_06.pcap.gz":        synthFlow(r, 3, 0),
		d1 + "/trailing-e2e_1_07.pcap.gz.backup": synthFlow(r, 3, 0),
	}
	for rel, data := range leave {
		keep(t, filepath.Join(datadir, filepath.FromSlash(rel)), data)
	}

	cfg := archiverConfig{
		datadir: datadir,
		url:     "file://" + bucketDir,
		size:    "64KB",
		maxage:  time.Second,
		metrics: "127.0.0.1:" + strconv.Itoa(freePort(t)),
	}
	p := startArchiver(t, work, cfg)
	took := awaitDrained(t, p, datadir, 60*time.Second, set.files)
	time.Sleep(200 * time.Millisecond) // the ignored-file census runs with the first scan
	m := readMetrics(t, cfg.metrics)
	if code, _ := p.Stop(t, syscall.SIGTERM, 10*time.Second); code != 0 {
		t.Errorf("pcap-archiver exited with status %d after SIGTERM, want 0", code)
	}
	checkLog(t, p)
	t.Logf("drained in %v; metrics:\n%s", took.Round(time.Millisecond),
		m.grep("pcap_archive_quarantined", "pcap_archive_ignored", "pcap_archive_files_archived_total", "pcap_archive_uploads_total"))

	objs, junk := dirBucket{dir: bucketDir, tmpPrefix: []string{".upload-tmp-"}}.read(t)
	if len(junk) > 0 {
		t.Errorf("junk in the bucket: %v", junk)
	}
	a := verifyObjects(t, objs, naming{experiment, datatype, "third-party"}, "")
	if a.object[foreign] != objK {
		t.Errorf("the other writer's object %s holds %v, want its own member %s", objK, a.members[objK], foreign)
	}
	if b, err := os.ReadFile(filepath.Join(bucketDir, filepath.FromSlash(objK))); err != nil || !bytes.Equal(b, foreignTgz) {
		t.Errorf("the other writer's object %s was changed or removed (%v)", objK, err)
	}
	delete(a.sum, foreign)
	delete(a.object, foreign)
	checkSynthArchived(t, set, a)
	if got := a.members[objJ]; !slices.Equal(got, membersJ) {
		t.Errorf("manifest J (already uploaded): object %s holds %v, want %v", objJ, got, membersJ)
	}
	if b, err := os.ReadFile(filepath.Join(bucketDir, filepath.FromSlash(objJ))); err != nil || !bytes.Equal(b, tgzJ) {
		t.Errorf("object %s was changed (%v)", objJ, err)
	}
	resealed := a.object[membersK[0]]
	if n, err := archive.ParseObjectName(resealed); err != nil || resealed == objK || n.Date.Format("2006/01/02") != d2 || !slices.Equal(a.members[resealed], membersK) {
		t.Errorf("manifest K (name taken): its members are in %q (%v), want one new object in %s holding exactly %v", resealed, a.members[resealed], d2, membersK)
	}
	if _, ok := a.sum[torn]; ok {
		t.Errorf("the torn file %s was shipped", torn)
	}
	for _, c := range []struct {
		what, object string
		members      []string
	}{{"B (tarball missing)", objB, membersB}, {"C (tarball torn)", objC, membersC}} {
		if got := a.members[c.object]; !slices.Equal(got, c.members) {
			t.Errorf("manifest %s: object %s holds %v, want the manifest's members %v", c.what, c.object, got, c.members)
		}
	}
	if got := a.members[objD]; got != nil {
		t.Errorf("manifest D (a source gone) was uploaded as %s with %v; want it quarantined", objD, got)
	}

	st := scanDir(t, datadir)
	if len(st.sources) > 0 || len(st.spool) > 0 {
		t.Errorf("left in the data dir: %s", st)
	}
	wantQ := []string{torn, idD + ".json", idE + ".json"}
	sort.Strings(wantQ)
	if !slices.Equal(st.quarantine, wantQ) {
		t.Errorf("quarantine holds %v, want %v", st.quarantine, wantQ)
	}
	if b, err := os.ReadFile(filepath.Join(spool, "quarantine", filepath.FromSlash(torn))); err != nil || !bytes.Equal(b, tornData) {
		t.Errorf("quarantined torn file: %v, content changed: %v", err, !bytes.Equal(b, tornData))
	}
	var wantOther []string
	for rel, data := range leave {
		wantOther = append(wantOther, rel)
		if b, err := os.ReadFile(filepath.Join(datadir, filepath.FromSlash(rel))); err != nil || !bytes.Equal(b, data) {
			t.Errorf("%s: the archiver touched a file it does not own: %v", rel, err)
		}
	}
	sort.Strings(wantOther)
	if !slices.Equal(st.other, wantOther) {
		t.Errorf("other files in the data dir: %v, want exactly %v", st.other, wantOther)
	}

	for series, want := range map[string]float64{
		`pcap_archive_quarantined_files_total{reason="torn"}`:       1,
		`pcap_archive_quarantined_bundles_total{reason="tarball"}`:  1,
		`pcap_archive_quarantined_bundles_total{reason="manifest"}`: 1,
		`pcap_archive_files_archived_total`:                         float64(len(set.files)),
		`pcap_archive_uploads_total{result="conflict"}`:             1,
	} {
		if got := m.value(series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	// Counted once each while they exist: 2 temporary files in a date
	// folder (.hidden is skipped silently at the top), names that are not
	// <UUID>.pcap.gz, a directory in a date folder, and files outside the
	// date layout.
	for series, atLeast := range map[string]float64{
		`pcap_archive_ignored_files_total{reason="temp"}`:   2,
		`pcap_archive_ignored_files_total{reason="name"}`:   3,
		`pcap_archive_ignored_files_total{reason="type"}`:   1,
		`pcap_archive_ignored_files_total{reason="layout"}`: 2,
	} {
		if got := m.value(series); got < atLeast {
			t.Errorf("%s = %v, want at least %v", series, got, atLeast)
		}
	}
	for _, s := range []string{"removed unsealed spool file", "rebuilt damaged tarball", "QUARANTINED sealed bundle", "quarantined source file", "re-sealed under a new name"} {
		if !bytes.Contains(p.Out.Bytes(), []byte(s)) {
			t.Errorf("pcap-archiver did not log %q", s)
		}
	}
}

// makeTarball returns a .tgz of the given files of dir, as the archiver
// writes them: members named by their paths relative to dir.
func makeTarball(t *testing.T, dir string, members []string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, rel := range members {
		data, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(rel)))
		if err != nil {
			t.Fatal(err)
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: rel, Size: int64(len(data)), Mode: 0o644, ModTime: time.Now().UTC().Truncate(time.Second)}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
