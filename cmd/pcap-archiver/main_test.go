package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/headercap/headercap/archive"
)

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-datadir", dir}, "-archive.url is required"},
		{[]string{"-datadir", dir, "-archive.url", "file:///tmp"}, ""},
		{[]string{"-datadir", filepath.Join(dir, "missing"), "-archive.url", "file:///tmp"}, "-datadir"},
		{[]string{"-datadir", dir, "-archive.url", "file:///tmp", "-sigtermwait=-1s"}, "must not be negative"},
	} {
		_, err := parseConfig(tc.args, io.Discard)
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%v: err = %v, want %q", tc.args, err, tc.want)
		}
	}
	t.Setenv("ARCHIVE_URL", "file:///tmp")
	t.Setenv("ARCHIVE_EXPERIMENT", "ndt")
	t.Setenv("DATADIR", dir)
	cfg, err := parseConfig(nil, io.Discard)
	if err != nil || cfg.Experiment != "ndt" || cfg.DataDir != dir {
		t.Errorf("from the environment: %+v, %v", cfg, err)
	}
}

// pcapGz returns a valid gzipped nanosecond pcap with no packets.
func pcapGz(t *testing.T) []byte {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	zw.Write([]byte{0x4d, 0x3c, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0})
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestRunArchivesTheDataDir(t *testing.T) {
	data, bucket := t.TempDir(), t.TempDir()
	day := filepath.Join(data, "2026/11/25")
	os.MkdirAll(day, 0o755)
	uuids := []string{"host_1_0000000000000001", "host_1_0000000000000002", "host_1_0000000000000003"}
	for _, u := range uuids {
		os.WriteFile(filepath.Join(day, u+".pcap.gz"), pcapGz(t), 0o644)
	}
	os.WriteFile(filepath.Join(day, ".host_1_0000000000000004.pcap.gz.tmp"), []byte("partial"), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-datadir", data, "-archive.url", "file://" + bucket, "-archive.experiment", "ndt",
			"-archive.node", "mlab1-lga03", "-prometheusx.listen-address", "127.0.0.1:0", "-sigtermwait", "5s"}, io.Discard)
	}()
	// Nothing is sealed before -archive.maxage (1h) or -archive.size, so the
	// files are uploaded at shutdown, within -sigtermwait.
	time.Sleep(500 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var objects []string
	filepath.WalkDir(bucket, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".tgz") {
			rel, _ := filepath.Rel(bucket, p)
			objects = append(objects, rel)
		}
		return nil
	})
	if len(objects) != 1 || !archive.ETLAccepts(objects[0]) || !strings.Contains(objects[0], "-pcap-mlab1-lga03-ndt.tgz") {
		t.Fatalf("objects = %v", objects)
	}
	f, _ := os.Open(filepath.Join(bucket, objects[0]))
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var members []string
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		members = append(members, h.Name)
	}
	sort.Strings(members)
	if len(members) != 3 || members[0] != "2026/11/25/"+uuids[0]+".pcap.gz" {
		t.Errorf("members = %v", members)
	}
	for _, u := range uuids {
		if _, err := os.Stat(filepath.Join(day, u+".pcap.gz")); err == nil {
			t.Errorf("%s not deleted after the upload", u)
		}
	}
	if _, err := os.Stat(filepath.Join(day, ".host_1_0000000000000004.pcap.gz.tmp")); err != nil {
		t.Error("a temporary file of the capture side was touched")
	}
}
