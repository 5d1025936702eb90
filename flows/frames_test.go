package flows

import (
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/headercap/headercap/capture"
)

// frameSpec describes a synthetic Ethernet frame for tests.
type frameSpec struct {
	src, dst   netip.AddrPort
	flags      uint8
	seq        uint32
	payload    int
	tcpOptions int // bytes of TCP options (multiple of 4)
	ipOptions  int // IPv4 option bytes (multiple of 4)
	hopByHop   bool
	vlan       bool
}

func (s frameSpec) bytes() []byte {
	var b []byte
	b = append(b, 0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2)
	if s.vlan {
		b = append(b, 0x81, 0x00, 0x00, 0x2a)
	}
	tcpLen := 20 + s.tcpOptions
	if s.src.Addr().Is4() {
		b = append(b, 0x08, 0x00)
		ihl := 20 + s.ipOptions
		ip := make([]byte, ihl)
		ip[0] = 0x40 | byte(ihl/4)
		binary.BigEndian.PutUint16(ip[2:], uint16(ihl+tcpLen+s.payload))
		ip[8] = 64
		ip[9] = 6
		src, dst := s.src.Addr().As4(), s.dst.Addr().As4()
		copy(ip[12:], src[:])
		copy(ip[16:], dst[:])
		for i := 20; i < ihl; i++ {
			ip[i] = 1 // NOP options
		}
		b = append(b, ip...)
	} else {
		b = append(b, 0x86, 0xdd)
		ip := make([]byte, 40)
		ip[0] = 0x60
		ext := 0
		if s.hopByHop {
			ext = 8
		}
		binary.BigEndian.PutUint16(ip[4:], uint16(ext+tcpLen+s.payload))
		ip[6] = 6
		if s.hopByHop {
			ip[6] = 0
		}
		ip[7] = 64
		src, dst := s.src.Addr().As16(), s.dst.Addr().As16()
		copy(ip[8:], src[:])
		copy(ip[24:], dst[:])
		b = append(b, ip...)
		if s.hopByHop {
			b = append(b, 6, 0, 1, 4, 0, 0, 0, 0) // next TCP, len 0, PadN
		}
	}
	tcp := make([]byte, tcpLen)
	binary.BigEndian.PutUint16(tcp[0:], s.src.Port())
	binary.BigEndian.PutUint16(tcp[2:], s.dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], s.seq)
	tcp[12] = byte(tcpLen/4) << 4
	tcp[13] = s.flags
	for i := 20; i < tcpLen; i++ {
		tcp[i] = 1
	}
	b = append(b, tcp...)
	for i := range s.payload {
		b = append(b, 0xEE^byte(i)) // payload bytes never reach disk
	}
	return b
}

func (s frameSpec) frame(ts time.Time) *capture.Frame {
	b := s.bytes()
	return &capture.Frame{Timestamp: ts, Data: b, WireLen: len(b)}
}

var (
	cli4 = netip.MustParseAddrPort("192.0.2.2:40000")
	srv4 = netip.MustParseAddrPort("192.0.2.1:80")
	cli6 = netip.MustParseAddrPort("[2001:db8:1:2::2]:40000")
	srv6 = netip.MustParseAddrPort("[2001:db8:1:2::1]:443")
)
