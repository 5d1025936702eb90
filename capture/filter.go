package capture

import (
	"encoding/binary"

	"golang.org/x/net/bpf"
)

// Ethertypes and IP protocol numbers the filter knows.
const (
	etherTypeIPv4 = 0x0800
	etherTypeIPv6 = 0x86dd
	etherTypeVLAN = 0x8100

	ethHeaderLen  = 14
	vlanTagLen    = 4
	ipv6HeaderLen = 40

	protoHopByHop = 0
	protoTCP      = 6
	protoRouting  = 43
	protoFragment = 44
	protoDestOpts = 60
)

// TCPFilter returns the classic BPF program that accepts TCP frames and
// returns snapLen for them (the kernel then copies at most snapLen bytes of
// the frame into the ring) and 0 for everything else. It reads Ethernet
// frames, as AF_PACKET SOCK_RAW sockets and link type Ethernet files present
// them.
//
// It accepts:
//   - IPv4 (version 4, any IHL) whose protocol is TCP and whose fragment
//     offset is 0. Non-first fragments are rejected: they carry no TCP header.
//   - IPv6 (version 6) whose next header is TCP.
//   - IPv6 whose first extension header is hop-by-hop, routing, fragment or
//     destination options, when the next header named by that extension header
//     is TCP, routing, fragment or destination options (longer chains are left
//     to userspace, which parses them). A first fragment header with a non-zero
//     offset is rejected. Extension headers followed by anything else, such as
//     MLD's hop-by-hop + ICMPv6, are rejected.
//   - Both of the above behind one 802.1Q tag carried in the frame (ethertype
//     0x8100 at offset 12). When the kernel has stripped the tag into the
//     packet's metadata (VLAN offload), offset 12 already holds the inner
//     ethertype, so the untagged branch matches.
//
// Everything else (ARP, UDP, ICMP, 802.1ad, frames too short to hold the
// fields the program reads) is rejected. The program uses no kernel
// extensions, so golang.org/x/net/bpf's VM runs it unchanged; acceptTCP is its
// Go twin, used for files.
func TCPFilter(snapLen uint32) []bpf.Instruction {
	// X holds the offset of the IP header (14, or 18 behind a VLAN tag).
	// Jump offsets are relative to the next instruction; the comments number
	// the instructions.
	const (
		accept = 31
		reject = 32
	)
	prog := []bpf.Instruction{
		/* 0 */ bpf.LoadAbsolute{Off: 12, Size: 2},
		/* 1 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: etherTypeVLAN, SkipTrue: 0, SkipFalse: 5 - 2},
		/* 2 */ bpf.LoadAbsolute{Off: 16, Size: 2},
		/* 3 */ bpf.LoadConstant{Dst: bpf.RegX, Val: ethHeaderLen + vlanTagLen},
		/* 4 */ bpf.Jump{Skip: 6 - 5},
		/* 5 */ bpf.LoadConstant{Dst: bpf.RegX, Val: ethHeaderLen},
		/* 6 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: etherTypeIPv4, SkipTrue: 0, SkipFalse: 14 - 7},

		// IPv4: version 4, protocol TCP, fragment offset 0.
		/* 7 */ bpf.LoadIndirect{Off: 0, Size: 1},
		/* 8 */ bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0xf0},
		/* 9 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0x40, SkipTrue: 0, SkipFalse: reject - 10},
		/* 10 */ bpf.LoadIndirect{Off: 9, Size: 1},
		/* 11 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: protoTCP, SkipTrue: 0, SkipFalse: reject - 12},
		/* 12 */ bpf.LoadIndirect{Off: 6, Size: 2},
		/* 13 */ bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0x1fff, SkipTrue: reject - 14, SkipFalse: accept - 14},

		// IPv6: version 6, next header TCP or one of four extension headers.
		/* 14 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: etherTypeIPv6, SkipTrue: 0, SkipFalse: reject - 15},
		/* 15 */ bpf.LoadIndirect{Off: 0, Size: 1},
		/* 16 */ bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0xf0},
		/* 17 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0x60, SkipTrue: 0, SkipFalse: reject - 18},
		/* 18 */ bpf.LoadIndirect{Off: 6, Size: 1},
		/* 19 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: protoTCP, SkipTrue: accept - 20, SkipFalse: 0},
		/* 20 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: protoFragment, SkipTrue: 24 - 21, SkipFalse: 0},
		/* 21 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: protoHopByHop, SkipTrue: 26 - 22, SkipFalse: 0},
		/* 22 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: protoRouting, SkipTrue: 26 - 23, SkipFalse: 0},
		/* 23 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: protoDestOpts, SkipTrue: 26 - 24, SkipFalse: reject - 24},

		// A fragment header first: only offset 0 carries the TCP header.
		/* 24 */ bpf.LoadIndirect{Off: ipv6HeaderLen + 2, Size: 2},
		/* 25 */ bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0xfff8, SkipTrue: reject - 26, SkipFalse: 0},

		// The header that follows the first extension header.
		/* 26 */ bpf.LoadIndirect{Off: ipv6HeaderLen, Size: 1},
		/* 27 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: protoTCP, SkipTrue: accept - 28, SkipFalse: 0},
		/* 28 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: protoRouting, SkipTrue: accept - 29, SkipFalse: 0},
		/* 29 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: protoFragment, SkipTrue: accept - 30, SkipFalse: 0},
		/* 30 */ bpf.JumpIf{Cond: bpf.JumpEqual, Val: protoDestOpts, SkipTrue: accept - 31, SkipFalse: reject - 31},

		/* 31 */ bpf.RetConstant{Val: snapLen},
		/* 32 */ bpf.RetConstant{Val: 0},
	}
	return prog
}

// acceptTCP reports whether TCPFilter accepts frame; it is the program's Go
// twin (a fuzz test checks they agree), used for offline input where running
// the BPF VM per frame would cost more than the check itself.
func acceptTCP(frame []byte) bool {
	if len(frame) < ethHeaderLen {
		return false
	}
	et := binary.BigEndian.Uint16(frame[12:])
	l3 := ethHeaderLen
	if et == etherTypeVLAN {
		if len(frame) < ethHeaderLen+vlanTagLen {
			return false
		}
		et = binary.BigEndian.Uint16(frame[16:])
		l3 += vlanTagLen
	}
	ip := frame[l3:]
	switch et {
	case etherTypeIPv4:
		if len(ip) < 1 || ip[0]&0xf0 != 0x40 {
			return false
		}
		if len(ip) < 10 || ip[9] != protoTCP {
			return false
		}
		return binary.BigEndian.Uint16(ip[6:])&0x1fff == 0
	case etherTypeIPv6:
		if len(ip) < 1 || ip[0]&0xf0 != 0x60 {
			return false
		}
		if len(ip) < 7 {
			return false
		}
		switch ip[6] {
		case protoTCP:
			return true
		case protoFragment:
			if len(ip) < ipv6HeaderLen+4 || binary.BigEndian.Uint16(ip[ipv6HeaderLen+2:])&0xfff8 != 0 {
				return false
			}
		case protoHopByHop, protoRouting, protoDestOpts:
		default:
			return false
		}
		if len(ip) < ipv6HeaderLen+1 {
			return false
		}
		switch ip[ipv6HeaderLen] {
		case protoTCP, protoRouting, protoFragment, protoDestOpts:
			return true
		}
		return false
	}
	return false
}
