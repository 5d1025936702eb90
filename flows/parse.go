package flows

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// Errors returned by Parse. They are counted, never fatal.
var (
	errShort     = errors.New("frame too short")
	errNotIP     = errors.New("not IPv4 or IPv6")
	errNotTCP    = errors.New("not TCP")
	errFragment  = errors.New("non-first IP fragment")
	errBadHeader = errors.New("malformed header")
)

// TCP flag bits as they appear in byte 13 of the TCP header.
const (
	flagFIN = 0x01
	flagSYN = 0x02
	flagRST = 0x04
	flagACK = 0x10
)

// Packet is what the flow table needs to know about one frame. All offsets
// index the frame it was parsed from.
type Packet struct {
	Src, Dst         [16]byte // IPv4 addresses use the first 4 bytes
	SrcPort, DstPort uint16
	IPv6             bool
	Flags            uint8
	Seq              uint32
	// AddrOff is the offset of the source address; the destination follows
	// it directly (4 bytes later for IPv4, 16 for IPv6).
	AddrOff int
	// HeaderEnd is the offset just past the TCP header, options included:
	// the number of bytes of the frame that may be saved. It may exceed the
	// captured length when the snap length cut the header.
	HeaderEnd int
}

// Parse decodes the Ethernet (with up to two 802.1Q/802.1ad tags), IPv4 or
// IPv6 (with extension headers) and TCP headers of frame by hand. It does not
// allocate. The TCP header's fixed part (20 bytes) must have been captured;
// options may be cut by the snap length.
func Parse(frame []byte, p *Packet) error {
	if len(frame) < 14 {
		return errShort
	}
	off := 12
	etype := binary.BigEndian.Uint16(frame[off:])
	off += 2
	for i := 0; i < 2 && (etype == 0x8100 || etype == 0x88a8); i++ {
		if len(frame) < off+4 {
			return errShort
		}
		etype = binary.BigEndian.Uint16(frame[off+2:])
		off += 4
	}
	var tcpOff int
	switch etype {
	case 0x0800:
		ip := frame[off:]
		if len(ip) < 20 {
			return errShort
		}
		if ip[0]>>4 != 4 {
			return errBadHeader
		}
		ihl := int(ip[0]&0x0f) * 4
		if ihl < 20 || len(ip) < ihl {
			return errBadHeader
		}
		if ip[9] != 6 {
			return errNotTCP
		}
		if binary.BigEndian.Uint16(ip[6:])&0x1fff != 0 {
			return errFragment
		}
		p.IPv6 = false
		p.Src = [16]byte{}
		p.Dst = [16]byte{}
		copy(p.Src[:4], ip[12:16])
		copy(p.Dst[:4], ip[16:20])
		p.AddrOff = off + 12
		tcpOff = off + ihl
	case 0x86dd:
		ip := frame[off:]
		if len(ip) < 40 {
			return errShort
		}
		if ip[0]>>4 != 6 {
			return errBadHeader
		}
		p.IPv6 = true
		copy(p.Src[:], ip[8:24])
		copy(p.Dst[:], ip[24:40])
		p.AddrOff = off + 8
		next := ip[6]
		pos := off + 40
		// At most 8 extension headers: more is an attack, not a packet.
		for i := 0; ; i++ {
			if next == 6 {
				break
			}
			if i == 8 {
				return errBadHeader
			}
			if len(frame) < pos+8 {
				return errShort
			}
			var hlen int
			switch next {
			case 0, 43, 60: // hop-by-hop, routing, destination options
				hlen = (int(frame[pos+1]) + 1) * 8
			case 44: // fragment
				if binary.BigEndian.Uint16(frame[pos+2:])&0xfff8 != 0 {
					return errFragment
				}
				hlen = 8
			case 51: // authentication header
				hlen = (int(frame[pos+1]) + 2) * 4
			default:
				return errNotTCP
			}
			next = frame[pos]
			pos += hlen
		}
		tcpOff = pos
	default:
		return errNotIP
	}
	if len(frame) < tcpOff+20 {
		return errShort
	}
	tcp := frame[tcpOff:]
	doff := int(tcp[12]>>4) * 4
	if doff < 20 {
		return errBadHeader
	}
	p.SrcPort = binary.BigEndian.Uint16(tcp[0:])
	p.DstPort = binary.BigEndian.Uint16(tcp[2:])
	p.Seq = binary.BigEndian.Uint32(tcp[4:])
	p.Flags = tcp[13]
	p.HeaderEnd = tcpOff + doff
	return nil
}

// Key identifies a TCP connection by its 4-tuple, independent of direction:
// the endpoint that sorts first is A. It is comparable and pointer-free.
type Key struct {
	A, B   [16]byte
	PA, PB uint16
	IPv6   bool
}

// AddrPorts returns the two endpoints of k.
func (k Key) AddrPorts() (a, b netip.AddrPort) {
	if k.IPv6 {
		return netip.AddrPortFrom(netip.AddrFrom16(k.A), k.PA), netip.AddrPortFrom(netip.AddrFrom16(k.B), k.PB)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(k.A[:4])), k.PA), netip.AddrPortFrom(netip.AddrFrom4([4]byte(k.B[:4])), k.PB)
}

// AddrPorts returns p's source and destination.
func (p *Packet) AddrPorts() (src, dst netip.AddrPort) {
	if p.IPv6 {
		return netip.AddrPortFrom(netip.AddrFrom16(p.Src), p.SrcPort), netip.AddrPortFrom(netip.AddrFrom16(p.Dst), p.DstPort)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(p.Src[:4])), p.SrcPort), netip.AddrPortFrom(netip.AddrFrom4([4]byte(p.Dst[:4])), p.DstPort)
}

// KeyOf returns the direction-independent key of p.
func KeyOf(p *Packet) Key {
	return makeKey(p.Src, p.SrcPort, p.Dst, p.DstPort, p.IPv6)
}

func makeKey(a [16]byte, pa uint16, b [16]byte, pb uint16, v6 bool) Key {
	if less(b, pb, a, pa) {
		a, b = b, a
		pa, pb = pb, pa
	}
	return Key{A: a, B: b, PA: pa, PB: pb, IPv6: v6}
}

func less(a [16]byte, pa uint16, b [16]byte, pb uint16) bool {
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return pa < pb
}
