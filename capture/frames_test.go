package capture

import (
	"encoding/binary"
)

// Builders of test frames. Addresses come from the documentation ranges.

var (
	testMAC1 = []byte{0x02, 0, 0, 0, 0, 1}
	testMAC2 = []byte{0x02, 0, 0, 0, 0, 2}
	testIP4a = []byte{192, 0, 2, 1}
	testIP4b = []byte{192, 0, 2, 2}
	testIP6a = []byte{0x20, 0x01, 0x0d, 0xb8, 15: 1}
	testIP6b = []byte{0x20, 0x01, 0x0d, 0xb8, 15: 2}
)

// ether returns an Ethernet frame; tags are 802.1Q TCIs inserted in order.
func ether(etherType uint16, payload []byte, tags ...uint16) []byte {
	b := append([]byte{}, testMAC2...)
	b = append(b, testMAC1...)
	for _, tci := range tags {
		b = binary.BigEndian.AppendUint16(b, etherTypeVLAN)
		b = binary.BigEndian.AppendUint16(b, tci)
	}
	b = binary.BigEndian.AppendUint16(b, etherType)
	return append(b, payload...)
}

// tcpHeader returns a 20-byte TCP header followed by payload.
func tcpHeader(sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint32(b[4:], 1000)
	b[12] = 5 << 4
	b[13] = 0x18 // PSH ACK
	binary.BigEndian.PutUint16(b[14:], 65535)
	return append(b, payload...)
}

// ipv4 returns an IPv4 packet with optLen bytes of options (a multiple of 4)
// and the given fragment offset field (flags and offset).
func ipv4(proto byte, optLen int, frag uint16, payload []byte) []byte {
	hl := 20 + optLen
	b := make([]byte, hl)
	b[0] = 0x40 | byte(hl/4)
	binary.BigEndian.PutUint16(b[2:], uint16(hl+len(payload)))
	binary.BigEndian.PutUint16(b[6:], frag)
	b[8] = 64
	b[9] = proto
	copy(b[12:], testIP4a)
	copy(b[16:], testIP4b)
	for i := 20; i < hl; i++ {
		b[i] = 1 // NOP options
	}
	return append(b, payload...)
}

// ipv6 returns an IPv6 packet whose next header is next, with payload (which
// may start with extension headers).
func ipv6(next byte, payload []byte) []byte {
	b := make([]byte, 40)
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(len(payload)))
	b[6] = next
	b[7] = 64
	copy(b[8:], testIP6a)
	copy(b[24:], testIP6b)
	return append(b, payload...)
}

// ext6 returns an 8-byte IPv6 extension header (hop-by-hop, routing or
// destination options shape) naming next.
func ext6(next byte, payload []byte) []byte {
	b := []byte{next, 0, 1, 4, 0, 0, 0, 0} // PadN
	return append(b, payload...)
}

// frag6 returns an IPv6 fragment header naming next with the given offset (in
// 8-byte units) and more-fragments flag.
func frag6(next byte, offset uint16, more bool, payload []byte) []byte {
	b := []byte{next, 0, 0, 0, 0, 0, 0, 42}
	v := offset << 3
	if more {
		v |= 1
	}
	binary.BigEndian.PutUint16(b[2:], v)
	return append(b, payload...)
}

func udpHeader(payload []byte) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint16(b[0:], 5353)
	binary.BigEndian.PutUint16(b[2:], 53)
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	return append(b, payload...)
}

func arpPacket() []byte {
	b := []byte{0, 1, 8, 0, 6, 4, 0, 1}
	b = append(b, testMAC1...)
	b = append(b, testIP4a...)
	b = append(b, make([]byte, 6)...)
	return append(b, testIP4b...)
}
