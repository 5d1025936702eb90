//go:build linux

package archivee2e

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/headercap/headercap/upload/uploadtest"

	"github.com/headercap/headercap/internal/e2etest"
)

// TestThroughput reports how fast pcap-archiver drains a backlog: to the
// file backend (bundling dominates: read and verify each gzip, tar, gzip
// level 1, fsync) and to fake-gcs-server (upload rate per attempt from the
// archiver's metrics). It checks only that everything arrives; the numbers
// are for the log.
func TestThroughput(t *testing.T) {
	seed := seedFor(t)
	gcs := uploadtest.StartFakeGCS(t)
	gcs.CreateBucket(t, "speed")
	for _, tc := range []struct {
		name string
		url  func(work string) string
		env  []string
		read func(work string) bucket
	}{
		{
			name: "file",
			url:  func(work string) string { return "file://" + filepath.Join(work, "bucket") },
			read: func(work string) bucket {
				return dirBucket{dir: filepath.Join(work, "bucket"), tmpPrefix: []string{".upload-tmp-"}}
			},
		},
		{
			name: "gcs",
			url:  func(string) string { return "gs://speed" },
			env:  []string{"STORAGE_EMULATOR_HOST=" + gcs.Endpoint},
			read: func(string) bucket { return gcsBucket{endpoint: gcs.Endpoint, bucket: "speed", fetch: httpGet} },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 0x73706565))
			work := e2etest.WorkDir(t)
			datadir := filepath.Join(work, "data")
			if err := os.MkdirAll(filepath.Join(work, "bucket"), 0o755); err != nil {
				t.Fatal(err)
			}
			set := writeSynth(t, r, datadir, 2500, 125)
			cfg := archiverConfig{
				datadir: datadir,
				url:     tc.url(work),
				size:    "4MB",
				maxage:  time.Second,
				metrics: "127.0.0.1:" + strconv.Itoa(freePort(t)),
				env:     tc.env,
			}
			p := startArchiver(t, work, cfg)
			took := awaitDrained(t, p, datadir, 60*time.Second, nil)
			m := readMetrics(t, cfg.metrics)
			if code, _ := p.Stop(t, syscall.SIGTERM, 10*time.Second); code != 0 {
				t.Errorf("pcap-archiver exited with status %d after SIGTERM, want 0", code)
			}
			checkLog(t, p)
			objs, _ := tc.read(work).read(t)
			a := verifyObjects(t, objs, naming{experiment, datatype, "third-party"}, "")
			checkSynthArchived(t, set, a)
			up := m.value("pcap_archive_uploaded_bytes_total")
			upSecs := m.value("pcap_archive_upload_duration_seconds_sum")
			ups := m.value("pcap_archive_upload_duration_seconds_count")
			cpu := p.Cmd.ProcessState.UserTime() + p.Cmd.ProcessState.SystemTime()
			t.Logf("%s: %d files, %.1f MB archived into %d objects (%.1f MB) in %v (from start to empty data dir, backlog already there): %s of flow files; pcap-archiver used %v of CPU: %s per CPU-second",
				tc.name, len(set.files), float64(set.bytes)/1e6, len(objs), float64(a.compressed)/1e6, took.Round(time.Millisecond), rate(set.bytes, took),
				cpu.Round(time.Millisecond), rate(set.bytes, cpu))
			t.Logf("%s: %v upload attempts took %.3f s in all: %s per upload (up to 2 at once)",
				tc.name, ups, upSecs, rate(int64(up), time.Duration(upSecs*float64(time.Second))))
		})
	}
}
