package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/headercap/headercap/archive"
)

// tcpFrame builds an Ethernet/IPv4/TCP frame with n payload bytes.
func tcpFrame(src, dst netip.AddrPort, flags byte, seq uint32, n int) []byte {
	b := make([]byte, 14+20+20+n)
	b[12], b[13] = 0x08, 0x00
	ip := b[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(40+n))
	ip[8], ip[9] = 64, 6
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	tcp := ip[20:]
	binary.BigEndian.PutUint16(tcp[0:], src.Port())
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], seq)
	tcp[12] = 5 << 4
	tcp[13] = flags
	for i := range n {
		tcp[20+i] = 0xEE
	}
	return b
}

func writeTrace(t *testing.T, path string, start time.Time, conns int) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := pcapgo.NewWriterNanos(f)
	if err := w.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	srv := netip.MustParseAddrPort("192.0.2.1:443")
	for i := range conns {
		cli := netip.AddrPortFrom(netip.MustParseAddr("198.51.100.7"), uint16(30000+i))
		ts := start.Add(time.Duration(i) * 10 * time.Millisecond)
		for j, fr := range [][]byte{
			tcpFrame(cli, srv, 0x02, 1, 0),
			tcpFrame(srv, cli, 0x12, 100, 0),
			tcpFrame(cli, srv, 0x18, 2, 300),
			tcpFrame(srv, cli, 0x11, 101, 0),
		} {
			ci := gopacket.CaptureInfo{Timestamp: ts.Add(time.Duration(j) * time.Millisecond), CaptureLength: len(fr), Length: len(fr)}
			if err := w.WritePacket(ci, fr); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func pcapFiles(t *testing.T, dir string) []string {
	var out []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

func TestReadFileSynthetic(t *testing.T) {
	dir := t.TempDir()
	trace := filepath.Join(dir, "trace.pcap")
	start := time.Date(2026, 11, 25, 23, 59, 59, 0, time.UTC)
	writeTrace(t, trace, start, 50)
	out := filepath.Join(dir, "out")
	args := []string{"-read", trace, "-datadir", out, "-prometheusx.listen-address="}
	if err := run(context.Background(), args); err != nil {
		t.Fatal(err)
	}
	files := pcapFiles(t, out)
	if len(files) != 50 {
		t.Fatalf("%d files, want 50: %v", len(files), files)
	}
	for _, f := range files {
		if !strings.HasPrefix(f, "2026/11/25/trace_") || !strings.HasSuffix(f, ".pcap.gz") {
			t.Errorf("unexpected file %s", f)
		}
	}
	// Deterministic: a second run names the flows the same.
	out2 := filepath.Join(dir, "out2")
	if err := run(context.Background(), []string{"-read", trace, "-datadir", out2, "-prometheusx.listen-address="}); err != nil {
		t.Fatal(err)
	}
	if got := pcapFiles(t, out2); strings.Join(got, " ") != strings.Join(files, " ") {
		t.Error("synthetic names differ between runs")
	}
}

func TestReadFileWithEvents(t *testing.T) {
	dir := t.TempDir()
	trace := filepath.Join(dir, "trace.pcap")
	start := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	writeTrace(t, trace, start, 20)
	// Events as tcp-info would send them: ~10ms after the SYN, for all but
	// the last connection.
	var lines []string
	for i := range 19 {
		ev := map[string]any{
			"Event":     0,
			"Timestamp": start.Add(time.Duration(i)*10*time.Millisecond + 5*time.Millisecond).Format(time.RFC3339Nano),
			"UUID":      fmt.Sprintf("host_1_%016X", i),
			"ID": map[string]any{"SPort": 443, "DPort": 30000 + i, "SrcIP": "192.0.2.1", "DstIP": "198.51.100.7",
				"Interface": 2, "Cookie": i},
		}
		b, _ := json.Marshal(ev)
		lines = append(lines, string(b))
	}
	lines = append(lines, `{"Event":0,"UUID":"../../etc/passwd"}`, "garbage")
	evFile := filepath.Join(dir, "events.jsonl")
	os.WriteFile(evFile, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
	out := filepath.Join(dir, "out")
	args := []string{"-read", trace, "-read.events", evFile, "-datadir", out, "-prometheusx.listen-address=", "-uuidwaitduration=1s"}
	if err := run(context.Background(), args); err != nil {
		t.Fatal(err)
	}
	files := pcapFiles(t, out)
	if len(files) != 19 {
		t.Fatalf("%d files, want 19: %v", len(files), files)
	}
	for i := range 19 {
		want := fmt.Sprintf("2026/11/25/host_1_%016X.pcap.gz", i)
		if _, err := os.Stat(filepath.Join(out, want)); err != nil {
			t.Errorf("missing %s", want)
		}
	}
}

func TestReadFileArchives(t *testing.T) {
	dir := t.TempDir()
	trace := filepath.Join(dir, "trace.pcap")
	writeTrace(t, trace, time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC), 30)
	bucket := filepath.Join(dir, "bucket")
	os.Mkdir(bucket, 0o755)
	out := filepath.Join(dir, "out")
	args := []string{"-read", trace, "-datadir", out, "-archive.url", "file://" + bucket, "-archive.experiment", "ndt"}
	if err := run(context.Background(), args); err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, f := range pcapFiles(t, out) {
		if strings.HasSuffix(f, ".pcap.gz") {
			left = append(left, f)
		}
	}
	if len(left) != 0 {
		t.Errorf("not archived: %v", left)
	}
	objects := pcapFiles(t, bucket)
	if len(objects) == 0 {
		t.Fatal("no object in the bucket")
	}
	for _, o := range objects {
		if !archive.ETLAccepts(o) {
			t.Errorf("object %s is not accepted by the ETL's rules", o)
		}
	}
}
