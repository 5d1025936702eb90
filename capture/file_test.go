package capture

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// testPacket is an IP packet (or, for Ethernet, a frame) with whether the
// TCP filter should accept it.
type testPacket struct {
	ip     []byte
	accept bool
}

func testPackets() []testPacket {
	long := tcpHeader(443, 50000, bytes.Repeat([]byte{'p'}, 1000))
	return []testPacket{
		{ipv4(protoTCP, 0, 0, tcpHeader(40000, 80, nil)), true},
		{ipv4(protoTCP, 8, 0, long), true},
		{ipv4(17, 0, 0, udpHeader([]byte("dns"))), false},
		{ipv6(protoTCP, long), true},
		{ipv6(protoHopByHop, ext6(protoTCP, tcpHeader(1, 2, nil))), true},
		{ipv6(58, []byte{128, 0, 0, 0}), false},
		{ipv4(1, 0, 0, []byte{8, 0, 0, 0}), false},
	}
}

func etherTypeOf(ip []byte) uint16 {
	if ip[0]>>4 == 6 {
		return etherTypeIPv6
	}
	return etherTypeIPv4
}

// encapsulate returns ip as a record of link type lt, and the number of link
// header bytes.
func encapsulate(lt uint32, ip []byte) ([]byte, int) {
	et := etherTypeOf(ip)
	switch lt {
	case linkEthernet:
		return ether(et, ip), 14
	case linkSLL:
		h := make([]byte, 16)
		binary.BigEndian.PutUint16(h[2:], 1)
		binary.BigEndian.PutUint16(h[4:], 6)
		copy(h[6:], testMAC1)
		binary.BigEndian.PutUint16(h[14:], et)
		return append(h, ip...), 16
	case linkSLL2:
		h := make([]byte, 20)
		binary.BigEndian.PutUint16(h[0:], et)
		binary.BigEndian.PutUint32(h[4:], 3)
		binary.BigEndian.PutUint16(h[8:], 1)
		h[10] = 4 // outgoing
		h[11] = 6
		copy(h[12:], testMAC1)
		return append(h, ip...), 20
	case linkNull:
		af := uint32(2)
		if et == etherTypeIPv6 {
			af = 30
		}
		return append(binary.LittleEndian.AppendUint32(nil, af), ip...), 4
	case linkLoop:
		af := uint32(2)
		if et == etherTypeIPv6 {
			af = 24
		}
		return append(binary.BigEndian.AppendUint32(nil, af), ip...), 4
	default: // raw kinds
		return bytes.Clone(ip), 0
	}
}

// wantFrame is what ReadFile should hand over for ip read from link type lt.
func wantFrame(lt uint32, ip []byte, snap int) []byte {
	var f []byte
	if lt == linkEthernet {
		f = ether(etherTypeOf(ip), ip)
	} else {
		f = append(make([]byte, 12), 0, 0)
		binary.BigEndian.PutUint16(f[12:], etherTypeOf(ip))
		f = append(f, ip...)
	}
	return f[:min(len(f), snap)]
}

var testEpoch = time.Date(2024, 3, 1, 12, 0, 0, 123456789, time.UTC)

// writePcap writes packets as a pcap file of link type lt with pcapgo,
// capturing at most fileSnap bytes per record, record i at testEpoch+i*10ms+i ns.
func writePcap(t testing.TB, path string, lt uint32, nanos bool, fileSnap int, pkts []testPacket) {
	t.Helper()
	var buf bytes.Buffer
	w := pcapgo.NewWriter(&buf)
	if nanos {
		w = pcapgo.NewWriterNanos(&buf)
	}
	if err := w.WriteFileHeader(uint32(fileSnap), layers.LinkType(lt)); err != nil {
		t.Fatal(err)
	}
	for i, p := range pkts {
		rec, _ := encapsulate(lt, p.ip)
		data := rec[:min(len(rec), fileSnap)]
		ci := gopacket.CaptureInfo{Timestamp: recordTime(i), CaptureLength: len(data), Length: len(rec)}
		if err := w.WritePacket(ci, data); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func recordTime(i int) time.Time {
	return testEpoch.Add(time.Duration(i)*10*time.Millisecond + time.Duration(i))
}

func readAll(t testing.TB, cfg FileConfig) (*recorder, FileStats, error) {
	t.Helper()
	var rec recorder
	st, err := ReadFile(context.Background(), cfg, &rec)
	return &rec, st, err
}

func TestReadFileLinkTypes(t *testing.T) {
	const snap = 96
	pkts := testPackets()
	linkTypes := []uint32{linkEthernet, linkSLL, linkSLL2, linkRaw, linkRawBSD12, linkRawBSD14, linkNull, linkLoop}
	for _, lt := range linkTypes {
		for _, nanos := range []bool{false, true} {
			for _, fileSnap := range []int{65535, 80} {
				name := fmt.Sprintf("%s/nanos=%v/filesnap=%d", layers.LinkType(lt), nanos, fileSnap)
				t.Run(name, func(t *testing.T) {
					path := filepath.Join(t.TempDir(), "in.pcap")
					writePcap(t, path, lt, nanos, fileSnap, pkts)
					rec, st, err := readAll(t, FileConfig{Path: path, SnapLen: snap})
					if err != nil {
						t.Fatal(err)
					}
					checkHanded(t, lt, pkts, rec, st, snap, fileSnap, nanos)
				})
			}
		}
	}
	// Raw IPv4 and IPv6 link types carry one IP version each.
	for _, lt := range []uint32{linkIPv4, linkIPv6} {
		t.Run(layers.LinkType(lt).String(), func(t *testing.T) {
			var only []testPacket
			for _, p := range pkts {
				if (etherTypeOf(p.ip) == etherTypeIPv6) == (lt == linkIPv6) {
					only = append(only, p)
				}
			}
			path := filepath.Join(t.TempDir(), "in.pcap")
			writePcap(t, path, lt, true, 65535, only)
			rec, st, err := readAll(t, FileConfig{Path: path, SnapLen: snap})
			if err != nil {
				t.Fatal(err)
			}
			checkHanded(t, lt, only, rec, st, snap, 65535, true)
		})
	}
}

// checkHanded compares what a recorder got with what pkts, written with link
// type lt, should give.
func checkHanded(t *testing.T, lt uint32, pkts []testPacket, rec *recorder, st FileStats, snap, fileSnap int, nanos bool) {
	t.Helper()
	var want []int
	bytesWant := int64(0)
	for i, p := range pkts {
		r, _ := encapsulate(lt, p.ip)
		bytesWant += int64(min(len(r), fileSnap))
		if p.accept {
			want = append(want, i)
		}
	}
	if st.Frames != int64(len(pkts)) || st.Handed != int64(len(want)) || st.Skipped != int64(len(pkts)-len(want)) || st.Bytes != bytesWant {
		t.Errorf("stats %+v, want %d frames, %d handed, %d bytes", st, len(pkts), len(want), bytesWant)
	}
	if len(rec.frames) != len(want) {
		t.Fatalf("handed %d frames, want %d", len(rec.frames), len(want))
	}
	for k, i := range want {
		f := rec.frames[k]
		r, hdr := encapsulate(lt, pkts[i].ip)
		full := wantFrame(lt, pkts[i].ip, 1<<20)
		limit := min(snap, fileSnap-hdr+14)
		if !bytes.Equal(f.Data, full[:min(len(full), limit)]) {
			t.Errorf("frame %d data\n got % x\nwant % x", i, f.Data, full[:min(len(full), limit)])
		}
		if wl := len(r) - hdr + 14; f.WireLen != wl {
			t.Errorf("frame %d WireLen = %d, want %d", i, f.WireLen, wl)
		}
		ts := recordTime(i)
		if !nanos {
			ts = ts.Truncate(time.Microsecond)
		}
		if !f.Timestamp.Equal(ts) {
			t.Errorf("frame %d timestamp %v, want %v", i, f.Timestamp, ts)
		}
		if f.Interface != 0 {
			t.Errorf("frame %d Interface = %d", i, f.Interface)
		}
	}
}

// bigEndianPcap returns a big-endian pcap file (pcapgo writes little-endian
// only) with the Ethernet frames of pkts.
func bigEndianPcap(nanos bool, pkts []testPacket) []byte {
	be := binary.BigEndian
	magic := uint32(magicPcapMicro)
	if nanos {
		magic = magicPcapNano
	}
	b := be.AppendUint32(nil, magic)
	b = be.AppendUint16(b, 2)
	b = be.AppendUint16(b, 4)
	b = append(b, make([]byte, 8)...)
	b = be.AppendUint32(b, 65535)
	b = be.AppendUint32(b, linkEthernet)
	for i, p := range pkts {
		ts := recordTime(i)
		frac := ts.Nanosecond()
		if !nanos {
			frac /= 1000
		}
		f := ether(etherTypeOf(p.ip), p.ip)
		b = be.AppendUint32(b, uint32(ts.Unix()))
		b = be.AppendUint32(b, uint32(frac))
		b = be.AppendUint32(b, uint32(len(f)))
		b = be.AppendUint32(b, uint32(len(f)))
		b = append(b, f...)
	}
	return b
}

func TestReadFileBigEndian(t *testing.T) {
	pkts := testPackets()
	for _, nanos := range []bool{false, true} {
		path := filepath.Join(t.TempDir(), "be.pcap")
		if err := os.WriteFile(path, bigEndianPcap(nanos, pkts), 0o644); err != nil {
			t.Fatal(err)
		}
		rec, st, err := readAll(t, FileConfig{Path: path, SnapLen: 1500})
		if err != nil {
			t.Fatal(err)
		}
		checkHanded(t, linkEthernet, pkts, rec, st, 1500, 65535, nanos)
	}
}

func TestReadFileGzip(t *testing.T) {
	pkts := testPackets()
	dir := t.TempDir()
	plain := filepath.Join(dir, "in.pcap")
	writePcap(t, plain, linkEthernet, true, 65535, pkts)
	raw, err := os.ReadFile(plain)
	if err != nil {
		t.Fatal(err)
	}
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	if _, err := zw.Write(raw); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	gz := filepath.Join(dir, "in.pcap.gz")
	if err := os.WriteFile(gz, z.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	rec, st, err := readAll(t, FileConfig{Path: gz, SnapLen: 200})
	if err != nil {
		t.Fatal(err)
	}
	checkHanded(t, linkEthernet, pkts, rec, st, 200, 65535, true)

	// A gzip file cut short hands over what came before and fails.
	cut := filepath.Join(dir, "cut.pcap.gz")
	if err := os.WriteFile(cut, z.Bytes()[:z.Len()*2/3], 0o644); err != nil {
		t.Fatal(err)
	}
	rec, st, err = readAll(t, FileConfig{Path: cut, SnapLen: 200})
	if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated gzip: err = %v, want unexpected EOF", err)
	}
	if int64(len(rec.frames)) != st.Handed {
		t.Errorf("handed %d frames, stats say %d", len(rec.frames), st.Handed)
	}
}

// ngBuilder writes pcapng blocks by hand, for what pcapgo's writer cannot
// produce (other timestamp resolutions, big-endian, obsolete blocks).
type ngBuilder struct {
	order ngOrder
	b     []byte
}

// ngOrder is a byte order that can append.
type ngOrder interface {
	binary.ByteOrder
	binary.AppendByteOrder
}

func (n *ngBuilder) block(typ uint32, body []byte) {
	for len(body)%4 != 0 {
		body = append(body, 0)
	}
	l := uint32(12 + len(body))
	n.b = n.order.AppendUint32(n.b, typ)
	n.b = n.order.AppendUint32(n.b, l)
	n.b = append(n.b, body...)
	n.b = n.order.AppendUint32(n.b, l)
}

func (n *ngBuilder) section() {
	body := n.order.AppendUint32(nil, ngByteOrderMagic)
	body = n.order.AppendUint16(body, 1)
	body = n.order.AppendUint16(body, 0)
	body = n.order.AppendUint64(body, ^uint64(0))
	n.block(ngBlockSHB, body)
}

// iface adds an interface; tsresol < 0 omits the option; offset 0 omits it.
func (n *ngBuilder) iface(lt uint16, tsresol int, offset int64) {
	body := n.order.AppendUint16(nil, lt)
	body = n.order.AppendUint16(body, 0)
	body = n.order.AppendUint32(body, 0)
	if tsresol >= 0 {
		body = n.order.AppendUint16(body, ngOptIfTsResol)
		body = n.order.AppendUint16(body, 1)
		body = append(body, byte(tsresol), 0, 0, 0)
	}
	if offset != 0 {
		body = n.order.AppendUint16(body, ngOptIfTsOffset)
		body = n.order.AppendUint16(body, 8)
		body = n.order.AppendUint64(body, uint64(offset))
	}
	body = n.order.AppendUint32(body, 0) // end of options
	n.block(ngBlockIDB, body)
}

func (n *ngBuilder) epb(id uint32, ts uint64, data []byte, wire int) {
	body := n.order.AppendUint32(nil, id)
	body = n.order.AppendUint32(body, uint32(ts>>32))
	body = n.order.AppendUint32(body, uint32(ts))
	body = n.order.AppendUint32(body, uint32(len(data)))
	body = n.order.AppendUint32(body, uint32(wire))
	body = append(body, data...)
	for len(body)%4 != 0 {
		body = append(body, 0)
	}
	// An epb_flags option with a short value: pcapgo panics on it.
	body = n.order.AppendUint16(body, 2)
	body = n.order.AppendUint16(body, 1)
	body = append(body, 1, 0, 0, 0)
	body = n.order.AppendUint32(body, 0)
	n.block(ngBlockEPB, body)
}

func (n *ngBuilder) pb(id uint16, ts uint64, data []byte) {
	body := n.order.AppendUint16(nil, id)
	body = n.order.AppendUint16(body, 0)
	body = n.order.AppendUint32(body, uint32(ts>>32))
	body = n.order.AppendUint32(body, uint32(ts))
	body = n.order.AppendUint32(body, uint32(len(data)))
	body = n.order.AppendUint32(body, uint32(len(data)))
	n.block(ngBlockPB, append(body, data...))
}

func (n *ngBuilder) spb(data []byte) {
	n.block(ngBlockSPB, append(n.order.AppendUint32(nil, uint32(len(data))), data...))
}

func TestReadFilePcapng(t *testing.T) {
	pkts := testPackets()
	tcp := ether(etherTypeIPv4, pkts[0].ip)
	tcp6raw := pkts[3].ip
	sec := uint64(testEpoch.Unix())
	ns := uint64(testEpoch.Nanosecond())
	for _, order := range []ngOrder{binary.LittleEndian, binary.BigEndian} {
		t.Run(order.String(), func(t *testing.T) {
			n := &ngBuilder{order: order}
			n.section()
			n.iface(linkEthernet, -1, 0)            // 0: microseconds by default
			n.iface(linkRaw, 9, 0)                  // 1: nanoseconds
			n.iface(linkEthernet, 0x80|20, 100)     // 2: 2^-20 s, offset 100 s
			n.iface(105, 6, 0)                      // 3: 802.11, unsupported
			n.iface(linkEthernet, 3, 0)             // 4: milliseconds
			n.epb(0, sec*1e6+ns/1e3, tcp, len(tcp)) // microseconds
			n.epb(1, sec*1e9+ns, tcp6raw, len(tcp6raw))
			n.epb(2, sec<<20|1<<19, tcp, len(tcp)) // +0.5 s
			n.epb(3, sec*1e6, tcp, len(tcp))
			n.pb(4, sec*1e3+7, tcp)
			n.spb(tcp)
			n.block(0x0bad, []byte("unknown block type is skipped"))
			// A second section resets the interfaces.
			n.section()
			n.iface(linkSLL2, 9, 0)
			sll2, _ := encapsulate(linkSLL2, tcp6raw)
			n.epb(0, sec*1e9, sll2, len(sll2)+100)

			path := filepath.Join(t.TempDir(), "in.pcapng")
			if err := os.WriteFile(path, n.b, 0o644); err != nil {
				t.Fatal(err)
			}
			rec, st, err := readAll(t, FileConfig{Path: path, SnapLen: 1500})
			if err != nil {
				t.Fatal(err)
			}
			if st.Frames != 7 || st.Handed != 5 || st.Skipped != 2 {
				t.Errorf("stats %+v, want 7 frames, 5 handed, 2 skipped", st)
			}
			want := []struct {
				ts   time.Time
				data []byte
				wire int
			}{
				{testEpoch.Truncate(time.Microsecond), tcp, len(tcp)},
				{testEpoch, wantFrame(linkRaw, tcp6raw, 1500), len(tcp6raw) + 14},
				{time.Unix(int64(sec)+100, 5e8), tcp, len(tcp)},
				{time.Unix(int64(sec), 7e6), tcp, len(tcp)},
				{time.Unix(int64(sec), 0), wantFrame(linkSLL2, tcp6raw, 1500), len(tcp6raw) + 14 + 100},
			}
			if len(rec.frames) != len(want) {
				t.Fatalf("handed %d frames, want %d", len(rec.frames), len(want))
			}
			for i, w := range want {
				f := rec.frames[i]
				if !f.Timestamp.Equal(w.ts) || !bytes.Equal(f.Data, w.data) || f.WireLen != w.wire {
					t.Errorf("frame %d: ts %v len %d wire %d, want ts %v len %d wire %d",
						i, f.Timestamp, len(f.Data), f.WireLen, w.ts, len(w.data), w.wire)
				}
			}
		})
	}
}

// TestReadersMatchPcapgo reads files written by pcapgo with both pcapgo's
// readers and this package's and compares every record.
func TestReadersMatchPcapgo(t *testing.T) {
	pkts := testPackets()
	dir := t.TempDir()
	pcapPath := filepath.Join(dir, "a.pcap")
	writePcap(t, pcapPath, linkEthernet, true, 65535, pkts)

	var ng bytes.Buffer
	w, err := pcapgo.NewNgWriter(&ng, layers.LinkTypeEthernet)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range pkts {
		f := ether(etherTypeOf(p.ip), p.ip)
		if err := w.WritePacket(gopacket.CaptureInfo{Timestamp: recordTime(i), CaptureLength: len(f), Length: len(f) + 3}, f); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	ngPath := filepath.Join(dir, "a.pcapng")
	if err := os.WriteFile(ngPath, ng.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}

	for _, path := range []string{pcapPath, ngPath} {
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var theirs gopacket.PacketDataSource
		if strings.HasSuffix(path, "ng") {
			theirs, err = pcapgo.NewNgReader(bytes.NewReader(raw), pcapgo.DefaultNgReaderOptions)
		} else {
			theirs, err = pcapgo.NewReader(bytes.NewReader(raw))
		}
		if err != nil {
			t.Fatal(err)
		}
		br := bytes.NewReader(raw)
		ours, err := newRecordReader(bufioReader(br), 1<<16)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; ; i++ {
			data, ci, terr := theirs.ReadPacketData()
			var rec record
			oerr := ours.next(&rec)
			if terr == io.EOF || oerr == io.EOF {
				if terr != oerr {
					t.Fatalf("%s record %d: pcapgo err %v, ours %v", path, i, terr, oerr)
				}
				break
			}
			if terr != nil || oerr != nil {
				t.Fatalf("%s record %d: pcapgo err %v, ours %v", path, i, terr, oerr)
			}
			if !ci.Timestamp.Equal(rec.ts) || !bytes.Equal(data, rec.data) || ci.Length != rec.wireLen || ci.CaptureLength != rec.capLen {
				t.Errorf("%s record %d differs: pcapgo %v %d/%d, ours %v %d/%d", path, i,
					ci.Timestamp, ci.CaptureLength, ci.Length, rec.ts, rec.capLen, rec.wireLen)
			}
		}
	}
}

func TestReadFileDamaged(t *testing.T) {
	pkts := testPackets()
	dir := t.TempDir()
	good := filepath.Join(dir, "good.pcap")
	writePcap(t, good, linkEthernet, true, 65535, pkts)
	raw, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	// Offsets of each record in the file.
	var offs []int
	off := pcapFileHeaderLen
	for off < len(raw) {
		offs = append(offs, off)
		off += pcapRecordHeaderLen + int(binary.LittleEndian.Uint32(raw[off+8:]))
	}
	acceptedBefore := func(i int) int {
		n := 0
		for _, p := range pkts[:i] {
			if p.accept {
				n++
			}
		}
		return n
	}
	corruptLen := bytes.Clone(raw)
	binary.LittleEndian.PutUint32(corruptLen[offs[4]+8:], 0x7fffffff)

	tests := []struct {
		name    string
		data    []byte
		handed  int
		wantErr string
	}{
		{"cut in record data", raw[:offs[4]+30], acceptedBefore(4), "truncated"},
		{"cut in record header", raw[:offs[3]+5], acceptedBefore(3), "truncated"},
		{"cut in file header", raw[:10], 0, "truncated"},
		{"huge captured length", corruptLen, acceptedBefore(4), "corrupt"},
		{"bad magic", append([]byte("GIF89a"), raw[6:]...), 0, "not a pcap or pcapng file"},
		{"empty", nil, 0, "too short"},
		{"not a capture", []byte("hello, world\n"), 0, "not a pcap or pcapng file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bad.pcap")
			if err := os.WriteFile(path, tc.data, 0o644); err != nil {
				t.Fatal(err)
			}
			rec, st, err := readAll(t, FileConfig{Path: path})
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the file", err)
			}
			if len(rec.frames) != tc.handed || st.Handed != int64(tc.handed) {
				t.Errorf("handed %d frames (stats %d), want %d", len(rec.frames), st.Handed, tc.handed)
			}
		})
	}

	// pcapng: a block whose trailing length does not match, after two good
	// packets.
	n := &ngBuilder{order: binary.LittleEndian}
	n.section()
	n.iface(linkEthernet, 9, 0)
	f := ether(etherTypeIPv4, pkts[0].ip)
	n.epb(0, 1, f, len(f))
	n.epb(0, 2, f, len(f))
	n.epb(0, 3, f, len(f))
	n.b[len(n.b)-1] ^= 0xff
	path := filepath.Join(dir, "bad.pcapng")
	if err := os.WriteFile(path, n.b, 0o644); err != nil {
		t.Fatal(err)
	}
	rec, _, err := readAll(t, FileConfig{Path: path})
	if err == nil || !strings.Contains(err.Error(), "trailing length") {
		t.Fatalf("err = %v, want trailing length mismatch", err)
	}
	if len(rec.frames) != 2 {
		t.Errorf("handed %d frames, want 2", len(rec.frames))
	}
	// Cut pcapng.
	if err := os.WriteFile(path, n.b[:len(n.b)-30], 0o644); err != nil {
		t.Fatal(err)
	}
	rec, _, err = readAll(t, FileConfig{Path: path})
	if !errors.Is(err, io.ErrUnexpectedEOF) || len(rec.frames) != 2 {
		t.Fatalf("cut pcapng: err = %v, %d frames; want unexpected EOF after 2", err, len(rec.frames))
	}
}

func TestReadFileConfig(t *testing.T) {
	if _, err := ReadFile(context.Background(), FileConfig{}, &recorder{}); err == nil {
		t.Error("no path: no error")
	}
	if _, err := ReadFile(context.Background(), FileConfig{Path: "x", SnapLen: 10}, &recorder{}); err == nil {
		t.Error("snaplen 10: no error")
	}
	_, err := ReadFile(context.Background(), FileConfig{Path: filepath.Join(t.TempDir(), "missing")}, &recorder{})
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: err = %v", err)
	}
}

// eventHandler records frames and ticks in one sequence.
type eventHandler struct {
	events  []string
	ticks   []time.Time
	frames  []time.Time
	onFrame func(n int)
}

func (h *eventHandler) HandleFrame(f *Frame) {
	h.events = append(h.events, "F")
	h.frames = append(h.frames, f.Timestamp)
	if h.onFrame != nil {
		h.onFrame(len(h.frames))
	}
}

func (h *eventHandler) Tick(now time.Time) {
	h.events = append(h.events, "T")
	h.ticks = append(h.ticks, now)
}

func TestReadFileTicks(t *testing.T) {
	// Records every 10ms (see recordTime), one going back in time.
	var pkts []testPacket
	for range 12 {
		pkts = append(pkts, testPacket{ipv4(protoTCP, 0, 0, tcpHeader(1, 2, nil)), true})
	}
	path := filepath.Join(t.TempDir(), "t.pcap")
	writePcap(t, path, linkRaw, true, 65535, pkts)
	raw, _ := os.ReadFile(path)
	// Record 8 (0-based) gets record 1's timestamp.
	off := pcapFileHeaderLen
	for i := 0; i < 8; i++ {
		off += pcapRecordHeaderLen + int(binary.LittleEndian.Uint32(raw[off+8:]))
	}
	ts1 := recordTime(1)
	binary.LittleEndian.PutUint32(raw[off:], uint32(ts1.Unix()))
	binary.LittleEndian.PutUint32(raw[off+4:], uint32(ts1.Nanosecond()))
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}

	var h eventHandler
	if _, err := ReadFile(context.Background(), FileConfig{Path: path, TickEvery: 30 * time.Millisecond}, &h); err != nil {
		t.Fatal(err)
	}
	// Ticks before records 3 and 6 (30ms after 0 and 3), then 9 (30ms after 6),
	// none for the record that went back, and one at the end with the latest
	// time (record 11).
	wantTicks := []time.Time{recordTime(3), recordTime(6), recordTime(9), recordTime(11)}
	if len(h.ticks) != len(wantTicks) {
		t.Fatalf("ticks %v, want %v", h.ticks, wantTicks)
	}
	for i := range wantTicks {
		if !h.ticks[i].Equal(wantTicks[i]) {
			t.Errorf("tick %d at %v, want %v", i, h.ticks[i], wantTicks[i])
		}
	}
	if got := strings.Join(h.events, ""); got != "FFFTFFFTFFFTFFFT" {
		t.Errorf("events %s", got)
	}
	if !h.frames[8].Equal(ts1) {
		t.Errorf("non-monotonic timestamp changed: %v", h.frames[8])
	}
}

func TestReadFileCancel(t *testing.T) {
	var pkts []testPacket
	for range 100 {
		pkts = append(pkts, testPacket{ipv4(protoTCP, 0, 0, tcpHeader(1, 2, nil)), true})
	}
	path := filepath.Join(t.TempDir(), "c.pcap")
	writePcap(t, path, linkRaw, true, 65535, pkts)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h := eventHandler{onFrame: func(n int) {
		if n == 3 {
			cancel()
		}
	}}
	st, err := ReadFile(ctx, FileConfig{Path: path}, &h)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if st.Handed != 3 {
		t.Errorf("handed %d frames after cancel at 3", st.Handed)
	}
}

func TestReadFileProgress(t *testing.T) {
	var pkts []testPacket
	for range 5000 {
		pkts = append(pkts, testPacket{ipv4(protoTCP, 0, 0, tcpHeader(1, 2, nil)), true})
	}
	path := filepath.Join(t.TempDir(), "p.pcap")
	writePcap(t, path, linkRaw, true, 65535, pkts)

	clock := time.Unix(0, 0)
	now := func() time.Time {
		clock = clock.Add(700 * time.Millisecond)
		return clock
	}
	var out bytes.Buffer
	st, err := ReadFile(context.Background(), FileConfig{Path: path, Progress: &out, now: now}, &nopHandler{})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	// Status every 1024 records, at most one a second: the clock moves
	// 0.7s per look, so every second look writes.
	if len(lines) != 3 {
		t.Fatalf("got %d lines:\n%s", len(lines), out.String())
	}
	for _, l := range lines[:2] {
		if !strings.HasPrefix(l, "p.pcap: ") || !strings.Contains(l, " packets, ") || !strings.Contains(l, "% of file read") {
			t.Errorf("status line %q", l)
		}
	}
	if strings.Contains(out.String(), "\r") {
		t.Error("carriage return written to a non-terminal")
	}
	sum := lines[2]
	if !strings.Contains(sum, "5000 packets read, 5000 handed over, 0 skipped") {
		t.Errorf("summary %q", sum)
	}
	if st.Frames != 5000 {
		t.Errorf("frames %d", st.Frames)
	}

	// On a terminal status lines overwrite each other.
	var tty bytes.Buffer
	p := newProgress(&tty, "x", 100, &countingReader{n: 50}, now)
	p.tty = true
	p.update(FileStats{Frames: 10})
	p.update(FileStats{Frames: 20})
	p.update(FileStats{Frames: 30})
	p.finish(FileStats{Frames: 30}, errors.New("boom"))
	s := tty.String()
	if strings.Count(s, "\n") != 1 || !strings.HasSuffix(s, "\n") || strings.Count(s, "\r") != 2 {
		t.Errorf("terminal output %q", s)
	}
	if !strings.Contains(s, "50% of file read") || !strings.Contains(s, "stopped: boom") {
		t.Errorf("terminal output %q", s)
	}
}

// fuzzSeeds returns valid capture files of every supported kind.
func fuzzSeeds(t testing.TB) [][]byte {
	dir := t.TempDir()
	pkts := testPackets()
	var seeds [][]byte
	for _, lt := range []uint32{linkEthernet, linkSLL, linkSLL2, linkRaw, linkNull} {
		path := filepath.Join(dir, "s.pcap")
		writePcap(t, path, lt, lt%2 == 0, 65535, pkts[:3])
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	seeds = append(seeds, bigEndianPcap(true, pkts[:2]))
	n := &ngBuilder{order: binary.BigEndian}
	n.section()
	n.iface(linkEthernet, 0x80|10, 5)
	f := ether(etherTypeIPv4, pkts[0].ip)
	n.epb(0, 12345, f, len(f))
	n.pb(0, 1, f)
	n.spb(f)
	seeds = append(seeds, n.b)
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	_, _ = zw.Write(seeds[0])
	_ = zw.Close()
	return append(seeds, z.Bytes())
}

func FuzzReadFile(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	cfg, err := FileConfig{Path: "fuzz", SnapLen: MinSnapLen, TickEvery: time.Millisecond}.withDefaults()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h := &checkHandler{t: t, snap: cfg.SnapLen}
		st, _ := readFrom(context.Background(), bytes.NewReader(data), int64(len(data)), cfg, h)
		if st.Frames != st.Handed+st.Skipped {
			t.Fatalf("stats %+v do not add up", st)
		}
		if st.Handed != int64(h.n) {
			t.Fatalf("stats say %d handed, handler saw %d", st.Handed, h.n)
		}
	})
}

// checkHandler checks the Frame invariants.
type checkHandler struct {
	t    *testing.T
	snap int
	n    int
}

func (h *checkHandler) HandleFrame(f *Frame) {
	h.n++
	if len(f.Data) > h.snap || f.WireLen < len(f.Data) || !acceptTCP(f.Data) {
		h.t.Fatalf("bad frame: %d bytes, wire %d, snap %d", len(f.Data), f.WireLen, h.snap)
	}
}

func (h *checkHandler) Tick(time.Time) {}

func BenchmarkReadFile(b *testing.B) {
	var pkts []testPacket
	for range 10000 {
		pkts = append(pkts, testPacket{ipv4(protoTCP, 0, 0, tcpHeader(1, 2, bytes.Repeat([]byte{'x'}, 1400))), true})
	}
	path := filepath.Join(b.TempDir(), "b.pcap")
	writePcap(b, path, linkEthernet, true, 65535, pkts)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ReadFile(context.Background(), FileConfig{Path: path}, &nopHandler{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(pkts)), "ns/frame")
}

func bufioReader(r io.Reader) *bufio.Reader { return bufio.NewReader(r) }

// TestReadFileAllocs checks that reading allocates per file, not per record.
func TestReadFileAllocs(t *testing.T) {
	allocs := func(n int, lt uint32, ng bool) float64 {
		var pkts []testPacket
		for range n {
			pkts = append(pkts, testPacket{ipv6(protoTCP, tcpHeader(1, 2, bytes.Repeat([]byte{'x'}, 500))), true})
		}
		var data []byte
		if ng {
			b := &ngBuilder{order: binary.LittleEndian}
			b.section()
			b.iface(uint16(lt), 9, 0)
			for i, p := range pkts {
				r, _ := encapsulate(lt, p.ip)
				b.epb(0, uint64(i), r, len(r))
			}
			data = b.b
		} else {
			path := filepath.Join(t.TempDir(), "a.pcap")
			writePcap(t, path, lt, true, 65535, pkts)
			var err error
			if data, err = os.ReadFile(path); err != nil {
				t.Fatal(err)
			}
		}
		cfg, _ := FileConfig{Path: "mem"}.withDefaults()
		return testing.AllocsPerRun(5, func() {
			st, err := readFrom(context.Background(), bytes.NewReader(data), int64(len(data)), cfg, &nopHandler{})
			if err != nil || st.Handed != int64(n) {
				t.Fatalf("readFrom: %+v %v", st, err)
			}
		})
	}
	for _, lt := range []uint32{linkEthernet, linkSLL2} {
		for _, ng := range []bool{false, true} {
			few, many := allocs(10, lt, ng), allocs(2000, lt, ng)
			if many > few {
				t.Errorf("link type %d pcapng=%v: %v allocations for 10 records, %v for 2000", lt, ng, few, many)
			}
		}
	}
}
