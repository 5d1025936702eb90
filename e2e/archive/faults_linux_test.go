//go:build linux

package archivee2e

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/headercap/headercap/archive"
	"github.com/headercap/headercap/upload/uploadtest"

	"github.com/headercap/headercap/internal/e2etest"
)

// checkNoLoss checks the safety invariant at any moment: every file of the
// data set is either still in the data dir or in the bucket (a source is
// deleted only after its upload was confirmed). It returns how many are in
// the bucket.
func checkNoLoss(t *testing.T, when string, set *synthSet, st *dirState, a *archived) int {
	t.Helper()
	var lost []string
	inBucket := 0
	for rel := range set.files {
		_, up := a.sum[rel]
		if up {
			inBucket++
		}
		if !up && !st.sources[rel] {
			lost = append(lost, rel)
		}
	}
	if len(lost) > 0 {
		sort.Strings(lost)
		t.Errorf("%s: %d files are neither in the data dir nor in the bucket (deleted before a confirmed upload): %s", when, len(lost), join(lost))
	}
	return inBucket
}

// TestArchiverKill9 kills pcap-archiver with SIGKILL at random points while
// it bundles and uploads a few thousand files to fake-gcs-server, restarts
// it each time, and checks after each kill that no file was lost and none is
// in the bucket twice, and in the end that every file is in the bucket
// exactly once, byte for byte, and the data dir is empty.
func TestArchiverKill9(t *testing.T) {
	seed := seedFor(t)
	r := rand.New(rand.NewPCG(seed, 0x6b696c6c))
	gcs := uploadtest.StartFakeGCS(t)
	gcs.CreateBucket(t, "kill")
	work := e2etest.WorkDir(t)
	datadir := filepath.Join(work, "data")
	set := writeSynth(t, r, datadir, 3000, 500)
	t.Logf("data set: %d files, %.1f MB in %v", len(set.files), float64(set.bytes)/1e6, synthDates)
	bk := gcsBucket{endpoint: gcs.Endpoint, bucket: "kill", fetch: httpGet}
	cfg := archiverConfig{
		datadir: datadir,
		url:     "gs://kill",
		size:    "64KB",
		maxage:  time.Second,
		metrics: "127.0.0.1:" + strconv.Itoa(freePort(t)),
		env:     []string{"STORAGE_EMULATOR_HOST=" + gcs.Endpoint},
	}
	want := naming{experiment, datatype, "third-party"}

	const kills = 8
	var points []string
	uploadedSealed := 0
	for i := range kills {
		p := startArchiver(t, work, cfg)
		// A kill point: a random moment after start (recovery, the first
		// scan and bundles), or just after the n-th bundle was sealed
		// (manifest written, upload starting) or uploaded (sources being
		// deleted), plus a random delay of up to 3 ms.
		var point string
		reached := true
		switch k := r.IntN(3); {
		case i == 0 || k == 0:
			d := time.Duration(r.Int64N(int64(400 * time.Millisecond)))
			time.Sleep(d)
			point = "after " + d.Round(time.Millisecond).String()
		case k == 1:
			n := 1 + r.IntN(25)
			reached = waitOutputOr(p, "archive: sealed bundle", n, 20*time.Second)
			point = "sealed #" + strconv.Itoa(n)
		default:
			n := 1 + r.IntN(25)
			reached = waitOutputOr(p, "archive: uploaded bundle", n, 20*time.Second)
			point = "uploaded #" + strconv.Itoa(n)
		}
		time.Sleep(time.Duration(r.Int64N(int64(3 * time.Millisecond))))
		if p.Exited() {
			t.Fatalf("pcap-archiver exited by itself (%v):\n%s", p.Err, e2etest.Tail(p.Out.Bytes(), 30))
		}
		p.Kill(t)
		checkLog(t, p)
		objs, junk := bk.read(t)
		if len(junk) > 0 {
			t.Errorf("after kill %d: junk in the bucket: %v", i+1, junk)
		}
		a := verifyObjects(t, objs, want, "")
		st := scanDir(t, datadir)
		in := checkNoLoss(t, "after kill "+strconv.Itoa(i+1), set, st, a)
		// Sealed bundles left for the restart, and how many of them were
		// already uploaded (killed before their files were deleted): the
		// restart must upload those again under the same name and find
		// them there, not store them twice.
		sealed, uploaded := 0, 0
		for _, f := range st.manifests() {
			man, err := archive.ReadManifest(filepath.Join(datadir, spoolName, f))
			if err != nil {
				t.Errorf("after kill %d: %v", i+1, err)
				continue
			}
			sealed++
			if slices.Contains(objectNames(objs), man.Object) {
				uploaded++
			}
		}
		uploadedSealed += uploaded
		points = append(points, point)
		t.Logf("kill %d (%s%s): %d objects, %d of %d files in the bucket; %d sealed bundles left, %d of them already uploaded; data dir: %d sources, %d spool files",
			i+1, point, map[bool]string{false: ", not reached"}[reached], len(objs), in, len(set.files), sealed, uploaded, len(st.sources), len(st.spool))
		if t.Failed() {
			t.FailNow()
		}
		if !reached || st.drained() {
			break
		}
	}

	// The last start finishes the job.
	p := startArchiver(t, work, cfg)
	waitMetrics(t, p, cfg.metrics)
	took := awaitDrained(t, p, datadir, 90*time.Second, nil)
	m := readMetrics(t, cfg.metrics)
	if code, _ := p.Stop(t, syscall.SIGTERM, 10*time.Second); code != 0 {
		t.Errorf("pcap-archiver exited with status %d after SIGTERM, want 0", code)
	}
	checkLog(t, p)
	t.Logf("after the last start: drained in %v; metrics:\n%s", took.Round(time.Millisecond), m.grep("pcap_archive_uploads_total", "pcap_archive_files_archived_total", "pcap_archive_quarantined", "pcap_archive_bundles_"))
	if q := m.value("pcap_archive_quarantined_files_total") + m.value("pcap_archive_quarantined_bundles_total"); q != 0 {
		t.Errorf("%v files or bundles quarantined; SIGKILL must not damage anything", q)
	}

	objs, junk := bk.read(t)
	if len(junk) > 0 {
		t.Errorf("junk in the bucket: %v", junk)
	}
	a := verifyObjects(t, objs, want, "")
	checkSynthArchived(t, set, a)
	st := scanDir(t, datadir)
	if !st.drained() || len(st.quarantine)+len(st.other) > 0 {
		t.Errorf("data dir not empty at the end: %s", st)
	}
	t.Logf("kill points: %v; %d bundles were uploaded but not yet deleted at a kill; bucket: %d objects, %d files, %.1f MB (%.1f MB of flow files)",
		points, uploadedSealed, len(objs), len(a.object), float64(a.compressed)/1e6, float64(a.source)/1e6)
}

// waitOutputOr waits until p has printed s n times; false on timeout.
func waitOutputOr(p *e2etest.Proc, s string, n int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for p.Out.Count(s) < n {
		if p.Exited() || time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

// TestStorageOutage stops versitygw while pcap-archiver uploads to it:
// while the server is down nothing is deleted (sources, sealed tarballs and
// manifests stay, the bucket does not change) and uploads fail with
// back-off; once it is back on the same port and directory, uploads resume.
// During a second outage the archiver gets SIGTERM: it exits in time and
// leaves its sealed bundles, which the next start uploads under their
// original names. In the end every file is in the bucket exactly once.
func TestStorageOutage(t *testing.T) {
	seed := seedFor(t)
	r := rand.New(rand.NewPCG(seed, 0x6f757461))
	work := e2etest.WorkDir(t)
	v := newVersity(t, work)
	v.start(t)
	bk := v.createBucket(t, "outage")
	datadir := filepath.Join(work, "data")
	set := writeSynth(t, r, datadir, 3000, 0)
	t.Logf("data set: %d files, %.1f MB", len(set.files), float64(set.bytes)/1e6)
	cfg := archiverConfig{
		datadir: datadir,
		url:     v.url("outage"),
		node:    "mlab2-abc0t",
		size:    "64KB",
		maxage:  time.Second,
		metrics: "127.0.0.1:" + strconv.Itoa(freePort(t)),
		env:     v.env(),
	}
	want := naming{experiment, datatype, "mlab2-abc0t"}
	p := startArchiver(t, work, cfg)
	n := 2 + r.IntN(6)
	p.WaitOutput(t, "archive: uploaded bundle", n, 30*time.Second)
	v.stop(t)
	down := time.Now()
	t.Logf("versitygw stopped after %d uploads", n)

	// Uploads in flight when the server died end within a moment; one
	// confirmed just before may still delete its files.
	time.Sleep(time.Second)
	st1 := scanDir(t, datadir)
	objs1, _ := bk.read(t)
	outage := 3*time.Second + time.Duration(r.Int64N(int64(2*time.Second)))
	time.Sleep(outage)
	st2 := scanDir(t, datadir)
	objs2, _ := bk.read(t)
	m := readMetrics(t, cfg.metrics)

	var gone []string
	for rel := range st1.sources {
		if !st2.sources[rel] {
			gone = append(gone, rel)
		}
	}
	for _, f := range st1.spool {
		if !slices.Contains(st2.spool, f) {
			gone = append(gone, spoolName+"/"+f)
		}
	}
	if len(gone) > 0 {
		t.Errorf("deleted while the storage server was down: %s", join(gone))
	}
	if !slices.Equal(objectNames(objs1), objectNames(objs2)) {
		t.Errorf("bucket changed while the server was down: %v -> %v", objectNames(objs1), objectNames(objs2))
	}
	checkNoLoss(t, "during the outage", set, st2, verifyObjects(t, objs2, want, ""))
	if len(st2.manifests()) == 0 {
		t.Errorf("no sealed bundle waits in the spool during the outage: %s", st2)
	}
	if m.value(`pcap_archive_upload_failures_total{reason="network"}`) == 0 || m.value("pcap_archive_pending_bundles") == 0 {
		t.Errorf("metrics during the outage show no network failure or no pending bundle:\n%s", m.grep("pcap_archive_upload", "pcap_archive_pending"))
	}
	t.Logf("during the %v outage: %d objects, data dir %s; metrics:\n%s", (outage + time.Second).Round(time.Millisecond),
		len(objs2), st2, m.grep("pcap_archive_upload_failures_total", "pcap_archive_pending_bundles", `pcap_archive_uploads_total{result="error"}`))

	v.start(t)
	t.Logf("versitygw back after %v", time.Since(down).Round(time.Millisecond))

	// A second outage, and this time the archiver is stopped while the
	// server is down: it must exit in time, leaving its sealed bundles for
	// the next start, which uploads them under their original names.
	uploads := p.Out.Count("archive: uploaded bundle")
	p.WaitOutput(t, "archive: uploaded bundle", uploads+3, 30*time.Second)
	v.stop(t)
	time.Sleep(time.Second)
	st3 := scanDir(t, datadir)
	code, took := p.Stop(t, syscall.SIGTERM, 15*time.Second)
	if code != 0 {
		t.Errorf("pcap-archiver exited with status %d after SIGTERM during the outage, want 0", code)
	}
	if took > 2*time.Second+3*time.Second {
		t.Errorf("pcap-archiver took %v to exit after SIGTERM during the outage (-sigtermwait 2s)", took)
	}
	checkLog(t, p)
	st4 := scanDir(t, datadir)
	for rel := range st3.sources {
		if !st4.sources[rel] {
			t.Errorf("source %s deleted while the server was down", rel)
		}
	}
	var leftNames []string
	for _, f := range st4.manifests() {
		man, err := archive.ReadManifest(filepath.Join(datadir, spoolName, f))
		if err != nil {
			t.Fatalf("manifest left at SIGTERM: %v", err)
		}
		leftNames = append(leftNames, man.Object)
	}
	if len(leftNames) == 0 {
		t.Errorf("no sealed bundle left in the spool after a SIGTERM during the outage: %s", st4)
	}
	t.Logf("SIGTERM during the second outage: exited %v later with status %d, %d sealed bundles and %d sources left", took.Round(time.Millisecond), code, len(leftNames), len(st4.sources))
	v.start(t)
	p = startArchiver(t, work, cfg)
	drained := awaitDrained(t, p, datadir, 60*time.Second, nil)
	t.Logf("restarted: drained in %v", drained.Round(time.Millisecond))
	m = readMetrics(t, cfg.metrics)
	if code, _ := p.Stop(t, syscall.SIGTERM, 10*time.Second); code != 0 {
		t.Errorf("pcap-archiver exited with status %d after SIGTERM, want 0", code)
	}
	checkLog(t, p)
	objs, junk := bk.read(t)
	if len(junk) > 0 {
		// Not objects (S3 does not list them): what the gateway was
		// writing when it was killed.
		t.Logf("temporary files left in the gateway's directory by its SIGKILL: %v", junk)
	}
	a := verifyObjects(t, objs, want, "")
	for _, name := range leftNames {
		if _, ok := a.members[name]; !ok {
			t.Errorf("sealed bundle %s, left at SIGTERM, was not uploaded under its name", name)
		}
	}
	checkSynthArchived(t, set, a)
	st := scanDir(t, datadir)
	if !st.drained() || len(st.quarantine)+len(st.other) > 0 {
		t.Errorf("data dir not empty at the end: %s", st)
	}
	t.Logf("bucket: %d objects, %d files", len(objs), len(a.object))
	if q := m.value("pcap_archive_quarantined_files_total") + m.value("pcap_archive_quarantined_bundles_total"); q != 0 {
		t.Errorf("%v files or bundles quarantined", q)
	}
}

// keep returns the content of a file the archiver must leave alone.
func keep(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
