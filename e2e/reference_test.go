package e2e

import (
	"compress/gzip"
	"os"
	"path/filepath"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// writeReference writes into dir what a correct daemon would have written
// for the connections tcp-info reported, given a capture of the same
// interface: one gzip'd nanosecond pcap per reported UUID, packets cut at
// the end of the TCP header, the first CaptureDuration only, anonymized
// with cfg.Netblock. Tests mutate its output to prove Check catches each
// defect; the harness test feeds it a second tcpdump to validate the whole
// checking pipeline on real traffic.
func writeReference(t *testing.T, dir string, cfg CheckConfig, capture []Packet, opens []OpenEvent) {
	t.Helper()
	cfg = cfg.withDefaults()
	conns, _ := SplitConns(capture)
	matched := MatchConns(conns, opens)
	for _, ev := range opens {
		conn := matched[ev.UUID]
		if conn == nil {
			continue
		}
		cut := conn.Start.Add(cfg.CaptureDuration)
		var pkts []Packet
		for _, p := range conn.Packets {
			if !p.TS.Before(cut) {
				continue
			}
			h, err := ParseFrame(p.Data)
			if err != nil {
				t.Fatal(err)
			}
			data := anonymizeFrame(cfg, p.Data, h)
			p.Data = data[:min(h.HeaderEnd, cfg.MaxHeaderSize, len(data))]
			pkts = append(pkts, p)
		}
		path := filepath.Join(dir, ev.Time.UTC().Format("2006/01/02"), ev.UUID+".pcap.gz")
		writeFlowFile(t, path, pkts, true)
	}
}

// writeFlowFile writes pkts as a gzip'd pcap (nanosecond or microsecond).
func writeFlowFile(t *testing.T, path string, pkts []Packet, nano bool) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	zw := gzip.NewWriter(f)
	var w *pcapgo.Writer
	if nano {
		w = pcapgo.NewWriterNanos(zw)
	} else {
		w = pcapgo.NewWriter(zw)
	}
	if err := w.WriteFileHeader(65536, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	for _, p := range pkts {
		ci := gopacket.CaptureInfo{Timestamp: p.TS, CaptureLength: len(p.Data), Length: p.OrigLen}
		if err := w.WritePacket(ci, p.Data); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// writePcap writes pkts as a plain nanosecond pcap (a ground truth file).
func writePcap(t *testing.T, path string, pkts []Packet) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := pcapgo.NewWriterNanos(f)
	if err := w.WriteFileHeader(262144, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	for _, p := range pkts {
		ci := gopacket.CaptureInfo{Timestamp: p.TS, CaptureLength: len(p.Data), Length: p.OrigLen}
		if err := w.WritePacket(ci, p.Data); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// rewriteFlowFile applies edit to the packets of a flow file.
func rewriteFlowFile(t *testing.T, path string, edit func([]Packet) []Packet) {
	t.Helper()
	c, err := ReadFlowFile(path)
	if err != nil {
		t.Fatal(err)
	}
	writeFlowFile(t, path, edit(c.Packets), true)
}
