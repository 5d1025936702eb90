package capture

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestRingLayout(t *testing.T) {
	var h unix.Tpacket3Hdr
	var bd unix.TpacketBlockDesc
	var bh unix.TpacketHdrV1
	checks := []struct {
		name      string
		got, want uintptr
	}{
		{"tp_next_offset", unsafe.Offsetof(h.Next_offset), hdrNextOff},
		{"tp_sec", unsafe.Offsetof(h.Sec), hdrSecOff},
		{"tp_nsec", unsafe.Offsetof(h.Nsec), hdrNsecOff},
		{"tp_snaplen", unsafe.Offsetof(h.Snaplen), hdrSnapLenOff},
		{"tp_len", unsafe.Offsetof(h.Len), hdrLenOff},
		{"tp_status", unsafe.Offsetof(h.Status), hdrStatusOff},
		{"tp_mac", unsafe.Offsetof(h.Mac), hdrMacOff},
		{"tp_vlan_tci", unsafe.Offsetof(h.Hv1) + unsafe.Offsetof(h.Hv1.Vlan_tci), hdrVLANTCIOff},
		{"tp_vlan_tpid", unsafe.Offsetof(h.Hv1) + unsafe.Offsetof(h.Hv1.Vlan_tpid), hdrVLANTPIDOff},
		{"sizeof tpacket3_hdr", unsafe.Sizeof(h), hdrLen},
		{"block_status", unsafe.Offsetof(bd.Hdr) + unsafe.Offsetof(bh.Block_status), blkStatusOff},
		{"num_pkts", unsafe.Offsetof(bd.Hdr) + unsafe.Offsetof(bh.Num_pkts), blkNumPktsOff},
		{"offset_to_first_pkt", unsafe.Offsetof(bd.Hdr) + unsafe.Offsetof(bh.Offset_to_first_pkt), blkFirstPktOff},
		{"sizeof block desc", unsafe.Sizeof(bd), blkHeaderLen},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s at %d, package uses %d", c.name, c.got, c.want)
		}
	}
	var sll unix.RawSockaddrLinklayer
	if off := hdrLen + unsafe.Offsetof(sll.Pkttype); off != sllPktTypeOff {
		t.Errorf("sll_pkttype at %d, package uses %d", off, sllPktTypeOff)
	}
}

// ringFrame describes one frame of a synthetic block.
type ringFrame struct {
	data    []byte // bytes the kernel copied
	wireLen int
	status  uint32
	tci     uint16
	tpid    uint16
	pktType uint8
	ts      time.Time
}

// makeBlock lays frames out as the kernel does in a TPACKET_V3 block of
// size bytes: block header, then per frame tpacket3_hdr, sockaddr_ll, data at
// the 16-aligned offset the kernel uses for Ethernet, each frame 16-aligned.
func makeBlock(size int, frames []ringFrame) []byte {
	ne := binary.NativeEndian
	b := make([]byte, size)
	ne.PutUint32(b[blkStatusOff:], unix.TP_STATUS_USER)
	ne.PutUint32(b[blkNumPktsOff:], uint32(len(frames)))
	ne.PutUint32(b[blkFirstPktOff:], blkHeaderLen)
	off := blkHeaderLen
	const mac = 96 - ethHeaderLen
	for i, f := range frames {
		h := b[off:]
		total := (mac + len(f.data) + 15) &^ 15
		if i < len(frames)-1 {
			ne.PutUint32(h[hdrNextOff:], uint32(total))
		}
		ne.PutUint32(h[hdrSecOff:], uint32(f.ts.Unix()))
		ne.PutUint32(h[hdrNsecOff:], uint32(f.ts.Nanosecond()))
		ne.PutUint32(h[hdrSnapLenOff:], uint32(len(f.data)))
		ne.PutUint32(h[hdrLenOff:], uint32(f.wireLen))
		ne.PutUint32(h[hdrStatusOff:], f.status)
		ne.PutUint16(h[hdrMacOff:], mac)
		ne.PutUint32(h[hdrVLANTCIOff:], uint32(f.tci))
		ne.PutUint16(h[hdrVLANTPIDOff:], f.tpid)
		h[sllPktTypeOff] = f.pktType
		copy(h[mac:], f.data)
		off += total
	}
	return b
}

func TestReadBlock(t *testing.T) {
	ts := time.Unix(1700000000, 123456789)
	tcp4 := ether(etherTypeIPv4, ipv4(protoTCP, 0, 0, tcpHeader(1, 2, bytes.Repeat([]byte{'x'}, 300))))
	tcp6 := ether(etherTypeIPv6, ipv6(protoTCP, tcpHeader(1, 2, nil)))
	const snap = 128
	tests := []struct {
		name     string
		loopback bool
		in       ringFrame
		want     []byte // nil: dropped
		wireLen  int
	}{
		{
			name:    "plain",
			in:      ringFrame{data: tcp6, wireLen: len(tcp6), ts: ts},
			want:    tcp6,
			wireLen: len(tcp6),
		},
		{
			name:    "snapped by kernel",
			in:      ringFrame{data: tcp4[:snap], wireLen: len(tcp4), ts: ts},
			want:    tcp4[:snap],
			wireLen: len(tcp4),
		},
		{
			name:    "vlan re-inserted, default tpid",
			in:      ringFrame{data: tcp6, wireLen: len(tcp6), status: unix.TP_STATUS_VLAN_VALID, tci: 0x2064, ts: ts},
			want:    ether(etherTypeIPv6, ipv6(protoTCP, tcpHeader(1, 2, nil)), 0x2064),
			wireLen: len(tcp6) + 4,
		},
		{
			name: "vlan re-inserted, tpid from header",
			in: ringFrame{data: tcp6, wireLen: len(tcp6), status: unix.TP_STATUS_VLAN_VALID | unix.TP_STATUS_VLAN_TPID_VALID,
				tci: 5, tpid: 0x88a8, ts: ts},
			want:    append(append(append([]byte{}, tcp6[:12]...), 0x88, 0xa8, 0, 5), tcp6[12:]...),
			wireLen: len(tcp6) + 4,
		},
		{
			name:    "vlan tci 0 (priority tag) re-inserted",
			in:      ringFrame{data: tcp6, wireLen: len(tcp6), status: unix.TP_STATUS_VLAN_VALID, ts: ts},
			want:    ether(etherTypeIPv6, ipv6(protoTCP, tcpHeader(1, 2, nil)), 0),
			wireLen: len(tcp6) + 4,
		},
		{
			name:    "vlan re-inserted then cut at snaplen",
			in:      ringFrame{data: tcp4[:snap], wireLen: len(tcp4), status: unix.TP_STATUS_VLAN_VALID, tci: 100, ts: ts},
			want:    ether(etherTypeIPv4, ipv4(protoTCP, 0, 0, tcpHeader(1, 2, bytes.Repeat([]byte{'x'}, 300))), 100)[:snap],
			wireLen: len(tcp4) + 4,
		},
		{
			name:     "loopback outgoing dropped",
			loopback: true,
			in:       ringFrame{data: tcp6, wireLen: len(tcp6), pktType: unix.PACKET_OUTGOING, ts: ts},
		},
		{
			name:     "loopback incoming kept",
			loopback: true,
			in:       ringFrame{data: tcp6, wireLen: len(tcp6), pktType: unix.PACKET_HOST, ts: ts},
			want:     tcp6,
			wireLen:  len(tcp6),
		},
		{
			name:    "outgoing kept on other interfaces",
			in:      ringFrame{data: tcp6, wireLen: len(tcp6), pktType: unix.PACKET_OUTGOING, ts: ts},
			want:    tcp6,
			wireLen: len(tcp6),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var rec recorder
			fr := newFrameReader(&rec, snap, 7, tc.loopback)
			blk := makeBlock(1<<16, []ringFrame{tc.in, tc.in})
			n := fr.readBlock(blk)
			if tc.want == nil {
				if n != 0 || len(rec.frames) != 0 {
					t.Fatalf("handed %d frames, want none", len(rec.frames))
				}
				return
			}
			if n != 2 || len(rec.frames) != 2 {
				t.Fatalf("readBlock = %d, handed %d frames, want 2", n, len(rec.frames))
			}
			for _, f := range rec.frames {
				if !bytes.Equal(f.Data, tc.want) {
					t.Errorf("data\n got % x\nwant % x", f.Data, tc.want)
				}
				if f.WireLen != tc.wireLen {
					t.Errorf("WireLen = %d, want %d", f.WireLen, tc.wireLen)
				}
				if !f.Timestamp.Equal(ts) {
					t.Errorf("Timestamp = %v, want %v", f.Timestamp, ts)
				}
				if f.Interface != 7 {
					t.Errorf("Interface = %d, want 7", f.Interface)
				}
			}
		})
	}
}

func TestReadBlockCorrupt(t *testing.T) {
	tcp6 := ether(etherTypeIPv6, ipv6(protoTCP, tcpHeader(1, 2, nil)))
	good := makeBlock(4096, []ringFrame{{data: tcp6, wireLen: len(tcp6)}, {data: tcp6, wireLen: len(tcp6)}})
	mutate := map[string]func(b []byte){
		"num_pkts too large": func(b []byte) { binary.NativeEndian.PutUint32(b[blkNumPktsOff:], 1000) },
		"first offset out":   func(b []byte) { binary.NativeEndian.PutUint32(b[blkFirstPktOff:], 4090) },
		"first offset huge":  func(b []byte) { binary.NativeEndian.PutUint32(b[blkFirstPktOff:], 0xffffffff) },
		"snaplen huge": func(b []byte) {
			binary.NativeEndian.PutUint32(b[blkHeaderLen+hdrSnapLenOff:], 0xfffffff0)
		},
		"next offset huge": func(b []byte) {
			binary.NativeEndian.PutUint32(b[blkHeaderLen+hdrNextOff:], 0xfffffff0)
		},
	}
	for name, m := range mutate {
		t.Run(name, func(t *testing.T) {
			b := bytes.Clone(good)
			m(b)
			var h nopHandler
			newFrameReader(&h, 256, 1, false).readBlock(b) // must not panic
			if h.n > 2 {
				t.Errorf("handed %d frames from a block of 2", h.n)
			}
		})
	}
	var h nopHandler
	newFrameReader(&h, 256, 1, false).readBlock(good[:20])
}

// benchBlock is a block of 1 MiB filled with TCP frames, every fourth with a
// stripped VLAN tag.
func benchBlock(snap int) ([]byte, int) {
	tcp4 := ether(etherTypeIPv4, ipv4(protoTCP, 0, 0, tcpHeader(1, 2, bytes.Repeat([]byte{'x'}, 1400))))
	var frames []ringFrame
	const size = 1 << 20
	used := blkHeaderLen
	for i := 0; ; i++ {
		f := ringFrame{data: tcp4[:snap], wireLen: len(tcp4), ts: time.Unix(1700000000, int64(i))}
		if i%4 == 0 {
			f.status = unix.TP_STATUS_VLAN_VALID
			f.tci = 100
		}
		n := (82 + snap + 15) &^ 15
		if used+n > size {
			break
		}
		used += n
		frames = append(frames, f)
	}
	return makeBlock(size, frames), len(frames)
}

func TestReadBlockAllocs(t *testing.T) {
	blk, n := benchBlock(DefaultSnapLen)
	var h nopHandler
	fr := newFrameReader(&h, DefaultSnapLen, 1, true)
	allocs := testing.AllocsPerRun(10, func() {
		if got := fr.readBlock(blk); got != n {
			t.Fatalf("readBlock = %d, want %d", got, n)
		}
	})
	if allocs != 0 {
		t.Fatalf("readBlock allocates %.1f times per block of %d frames", allocs, n)
	}
}

func BenchmarkReadBlock(b *testing.B) {
	blk, n := benchBlock(DefaultSnapLen)
	var h nopHandler
	fr := newFrameReader(&h, DefaultSnapLen, 1, false)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		fr.readBlock(blk)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/frame")
}

func TestHorizon(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 1, 0, time.UTC)
	w := &worker{fr: &frameReader{}, blockTimeout: 10 * time.Millisecond}
	if got := w.horizon(now, true); !got.Equal(now.Add(-10 * time.Millisecond)) {
		t.Errorf("no frame yet: horizon %v", got)
	}
	w.fr.frame.Timestamp = now.Add(-time.Second)
	if got := w.horizon(now, true); !got.Equal(w.fr.frame.Timestamp) {
		t.Errorf("backlog: horizon %v, want the latest frame's time", got)
	}
	if got := w.horizon(now, false); !got.Equal(now.Add(-10 * time.Millisecond)) {
		t.Errorf("drained: horizon %v, want the wall clock minus the block timeout", got)
	}
}
