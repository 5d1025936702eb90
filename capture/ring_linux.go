package capture

import (
	"encoding/binary"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Layout of a TPACKET_V3 block and of the frames in it (linux/if_packet.h),
// in the host's byte order. ring_linux_test.go checks the offsets against
// golang.org/x/sys/unix's structs.
const (
	// struct tpacket_block_desc: version, offset_to_priv, then
	// struct tpacket_hdr_v1.
	blkStatusOff   = 8  // block_status
	blkNumPktsOff  = 12 // num_pkts
	blkFirstPktOff = 16 // offset_to_first_pkt
	blkHeaderLen   = 48

	// struct tpacket3_hdr, followed by struct sockaddr_ll at
	// TPACKET_ALIGN(sizeof(struct tpacket3_hdr)).
	hdrNextOff     = 0  // tp_next_offset
	hdrSecOff      = 4  // tp_sec
	hdrNsecOff     = 8  // tp_nsec
	hdrSnapLenOff  = 12 // tp_snaplen
	hdrLenOff      = 16 // tp_len
	hdrStatusOff   = 20 // tp_status
	hdrMacOff      = 24 // tp_mac
	hdrVLANTCIOff  = 32 // hv1.tp_vlan_tci
	hdrVLANTPIDOff = 36 // hv1.tp_vlan_tpid
	hdrLen         = 48
	sllPktTypeOff  = hdrLen + 10 // sockaddr_ll.sll_pkttype
	frameMetaLen   = sllPktTypeOff + 1
)

// ring is a mapped TPACKET_V3 receive ring: numBlocks blocks of blockSize
// bytes that the kernel and one worker hand back and forth through each
// block's status word.
type ring struct {
	mem       []byte
	blockSize int
	numBlocks int
}

func (r *ring) block(i int) []byte {
	return r.mem[i*r.blockSize : (i+1)*r.blockSize : (i+1)*r.blockSize]
}

// status returns the address of block i's block_status word. The ring is
// shared with the kernel, so the word is only accessed atomically.
func (r *ring) status(i int) *uint32 {
	return (*uint32)(unsafe.Pointer(&r.mem[i*r.blockSize+blkStatusOff]))
}

// ready reports whether block i belongs to userspace.
func (r *ring) ready(i int) bool {
	return atomic.LoadUint32(r.status(i))&unix.TP_STATUS_USER != 0
}

// release gives block i back to the kernel.
func (r *ring) release(i int) {
	atomic.StoreUint32(r.status(i), unix.TP_STATUS_KERNEL)
}

// frameReader turns the frames of ring blocks into Frames for one Handler. It
// owns the scratch buffer a stripped VLAN tag is re-inserted into, so reading
// a block allocates nothing.
type frameReader struct {
	h        Handler
	snapLen  int
	loopback bool
	frame    Frame
	// scratch holds a frame whose VLAN tag is re-inserted; snapLen+4 bytes.
	scratch []byte
}

func newFrameReader(h Handler, snapLen, ifindex int, loopback bool) *frameReader {
	return &frameReader{
		h:        h,
		snapLen:  snapLen,
		loopback: loopback,
		frame:    Frame{Interface: ifindex},
		scratch:  make([]byte, snapLen+vlanTagLen),
	}
}

// readBlock hands every frame of the retired block b to the handler and
// returns how many it handed over. It trusts the kernel's layout only as far
// as the bounds of b: a frame that does not fit ends the block.
func (fr *frameReader) readBlock(b []byte) int {
	ne := binary.NativeEndian
	if len(b) < blkHeaderLen {
		return 0
	}
	num := ne.Uint32(b[blkNumPktsOff:])
	off := uint64(ne.Uint32(b[blkFirstPktOff:]))
	handed := 0
	for range num {
		if off+frameMetaLen > uint64(len(b)) {
			break
		}
		h := b[off:]
		snap := uint64(ne.Uint32(h[hdrSnapLenOff:]))
		mac := uint64(ne.Uint16(h[hdrMacOff:]))
		if mac+snap > uint64(len(h)) {
			break
		}
		if !fr.loopback || h[sllPktTypeOff] != unix.PACKET_OUTGOING {
			fr.handOver(h, h[mac:mac+snap])
			handed++
		}
		next := ne.Uint32(h[hdrNextOff:])
		if next == 0 {
			break
		}
		off += uint64(next)
	}
	return handed
}

// handOver presents one frame (header h, captured bytes data) to the handler.
func (fr *frameReader) handOver(h, data []byte) {
	ne := binary.NativeEndian
	wire := int(ne.Uint32(h[hdrLenOff:]))
	status := ne.Uint32(h[hdrStatusOff:])
	if len(data) > fr.snapLen {
		data = data[:fr.snapLen]
	}
	if status&unix.TP_STATUS_VLAN_VALID != 0 && len(data) >= 2*6 {
		// The kernel stripped an 802.1Q tag into the frame's metadata;
		// put it back after the MAC addresses, as tcpdump does.
		tpid := uint16(etherTypeVLAN)
		if status&unix.TP_STATUS_VLAN_TPID_VALID != 0 {
			if t := ne.Uint16(h[hdrVLANTPIDOff:]); t != 0 {
				tpid = t
			}
		}
		tci := uint16(ne.Uint32(h[hdrVLANTCIOff:]))
		s := fr.scratch[:min(len(data)+vlanTagLen, fr.snapLen)]
		copy(s, data[:12])
		binary.BigEndian.PutUint16(s[12:], tpid)
		binary.BigEndian.PutUint16(s[14:], tci)
		copy(s[16:], data[12:])
		data = s
		wire += vlanTagLen
	}
	fr.frame.Timestamp = time.Unix(int64(ne.Uint32(h[hdrSecOff:])), int64(ne.Uint32(h[hdrNsecOff:])))
	fr.frame.Data = data
	fr.frame.WireLen = max(wire, len(data))
	fr.h.HandleFrame(&fr.frame)
}
