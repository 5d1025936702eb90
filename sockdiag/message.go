package sockdiag

// Encoding and decoding of the sock_diag netlink messages this package
// uses. Pure byte manipulation, portable, so that it is unit-tested and
// fuzzed on every platform. Layouts are those of linux/netlink.h,
// linux/sock_diag.h and linux/inet_diag.h; netlink headers and the
// inet_diag fields other than ports and addresses are in host byte order.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Netlink and sock_diag constants (linux/netlink.h, linux/sock_diag.h,
// linux/inet_diag.h, include/net/tcp_states.h). Defined here rather than
// taken from x/sys/unix so that this file builds everywhere.
const (
	nlmsgHdrLen = 16 // sizeof(struct nlmsghdr)
	nlmsgError  = 2  // NLMSG_ERROR
	nlmsgDone   = 3  // NLMSG_DONE
	nlmFRequest = 1  // NLM_F_REQUEST

	sockDiagByFamily = 20 // SOCK_DIAG_BY_FAMILY

	afInet     = 2  // AF_INET
	afInet6    = 10 // AF_INET6
	ipprotoTCP = 6  // IPPROTO_TCP

	// Multicast groups of NETLINK_SOCK_DIAG (enum sknetlink_groups).
	groupInetTCPDestroy  = 1 // SKNLGRP_INET_TCP_DESTROY
	groupInet6TCPDestroy = 3 // SKNLGRP_INET6_TCP_DESTROY

	diagReqLen = 56 // sizeof(struct inet_diag_req_v2)
	diagMsgLen = 72 // sizeof(struct inet_diag_msg)
	requestLen = nlmsgHdrLen + diagReqLen

	allStates = 0xffffffff // idiag_states: every TCP state
	noCookie  = 0xffffffff // INET_DIAG_NOCOOKIE, per 32-bit half

	// TCP states as inet_diag reports them.
	stateEstablished = 1
	stateSynSent     = 2
	// stateSynRecv is how inet_diag reports a request socket (the server
	// side of a handshake in progress; inet_req_diag_fill), although its
	// sk_state is TCP_NEW_SYN_RECV. A full socket is in SYN_RECV only
	// briefly, or for one round trip with TCP Fast Open.
	stateSynRecv    = 3
	stateFinWait2   = 5
	stateTimeWait   = 6
	stateClose      = 7
	stateListen     = 10
	stateNewSynRecv = 12 // TCP_NEW_SYN_RECV, a request socket's sk_state

	// idiag_timer value the kernel reports for every timewait socket
	// (inet_twsk_diag_fill), whatever its substate.
	timerTimeWait = 3
)

// sockID is an inet_diag_sockid without interface and cookie: which socket
// to look up, seen from the socket (local = the socket's own address).
type sockID struct {
	local, remote netip.AddrPort
}

// diagMsg is the part of an inet_diag_msg this package uses.
type diagMsg struct {
	family  uint8
	state   uint8
	timer   uint8
	local   netip.AddrPort // IPv4-mapped IPv6 addresses are unmapped
	remote  netip.AddrPort
	cookie  uint64
	expires uint32 // milliseconds until the socket's timer fires
}

// isTimeWait reports whether m describes a timewait socket (the minimal
// socket the kernel keeps after a full socket entered TIME_WAIT or, with a
// FIN_WAIT2 substate, after an orphaned FIN_WAIT2 socket was freed).
func (m diagMsg) isTimeWait() bool { return m.timer == timerTimeWait }

var (
	errShortMessage = errors.New("sockdiag: message too short")
	errBadFamily    = errors.New("sockdiag: address family is neither AF_INET nor AF_INET6")
	errBadHeader    = errors.New("sockdiag: malformed netlink header")
	errMixedFamily  = errors.New("sockdiag: local and remote addresses of different families")
)

// appendRequest appends one SOCK_DIAG_BY_FAMILY request for the exact TCP
// socket id (any state, no cookie) with sequence number seq.
func appendRequest(b []byte, seq uint32, id sockID) ([]byte, error) {
	l, r := id.local.Addr().Unmap(), id.remote.Addr().Unmap()
	var family uint8
	switch {
	case l.Is4() && r.Is4():
		family = afInet
	case l.Is6() && r.Is6():
		family = afInet6
	default:
		return b, errMixedFamily
	}
	ne := binary.NativeEndian
	b = ne.AppendUint32(b, requestLen)
	b = ne.AppendUint16(b, sockDiagByFamily)
	b = ne.AppendUint16(b, nlmFRequest)
	b = ne.AppendUint32(b, seq)
	b = ne.AppendUint32(b, 0) // nlmsg_pid: the kernel
	// struct inet_diag_req_v2
	b = append(b, family, ipprotoTCP, 0 /* idiag_ext */, 0 /* pad */)
	b = ne.AppendUint32(b, allStates)
	// struct inet_diag_sockid: ports and addresses in network byte order.
	b = binary.BigEndian.AppendUint16(b, id.local.Port())
	b = binary.BigEndian.AppendUint16(b, id.remote.Port())
	b = appendAddr(b, l)
	b = appendAddr(b, r)
	b = ne.AppendUint32(b, 0) // idiag_if: any interface
	b = ne.AppendUint32(b, noCookie)
	b = ne.AppendUint32(b, noCookie)
	return b, nil
}

// appendAddr appends a 16-byte idiag_src/idiag_dst field: an IPv4 address
// in its first four bytes, an IPv6 address whole.
func appendAddr(b []byte, a netip.Addr) []byte {
	if a.Is4() {
		v4 := a.As4()
		b = append(b, v4[:]...)
		return append(b, make([]byte, 12)...)
	}
	v6 := a.As16()
	return append(b, v6[:]...)
}

// nlHeader is a decoded struct nlmsghdr.
type nlHeader struct {
	length uint32
	typ    uint16
	flags  uint16
	seq    uint32
	pid    uint32
}

// walkMessages calls fn for each netlink message in b, a buffer returned by
// one recv on a netlink socket. payload excludes the header and padding.
// It stops at the first malformed header or at fn's first error.
func walkMessages(b []byte, fn func(h nlHeader, payload []byte) error) error {
	ne := binary.NativeEndian
	for len(b) > 0 {
		if len(b) < nlmsgHdrLen {
			return errBadHeader
		}
		h := nlHeader{
			length: ne.Uint32(b[0:4]),
			typ:    ne.Uint16(b[4:6]),
			flags:  ne.Uint16(b[6:8]),
			seq:    ne.Uint32(b[8:12]),
			pid:    ne.Uint32(b[12:16]),
		}
		if h.length < nlmsgHdrLen || uint64(h.length) > uint64(len(b)) {
			return fmt.Errorf("%w: length %d of %d bytes", errBadHeader, h.length, len(b))
		}
		if err := fn(h, b[nlmsgHdrLen:h.length]); err != nil {
			return err
		}
		next := (uint64(h.length) + 3) &^ 3 // NLMSG_ALIGN
		if next >= uint64(len(b)) {
			return nil
		}
		b = b[next:]
	}
	return nil
}

// decodeError decodes the payload of an NLMSG_ERROR message: the errno
// (positive; 0 is an acknowledgement).
func decodeError(payload []byte) (int32, error) {
	if len(payload) < 4 {
		return 0, errShortMessage
	}
	return -int32(binary.NativeEndian.Uint32(payload[:4])), nil
}

// decodeDiagMsg decodes the struct inet_diag_msg at the start of payload
// (attributes after it are ignored).
func decodeDiagMsg(payload []byte) (diagMsg, error) {
	if len(payload) < diagMsgLen {
		return diagMsg{}, errShortMessage
	}
	ne := binary.NativeEndian
	m := diagMsg{
		family: payload[0],
		state:  payload[1],
		timer:  payload[2],
		// The kernel stores the cookie as two host-order u32, low half
		// first (sock_diag_save_cookie). On little-endian hosts this equals
		// tcp-info's binary.LittleEndian.Uint64 of the same 8 bytes.
		cookie:  uint64(ne.Uint32(payload[44:48])) | uint64(ne.Uint32(payload[48:52]))<<32,
		expires: ne.Uint32(payload[52:56]),
	}
	sport := binary.BigEndian.Uint16(payload[4:6])
	dport := binary.BigEndian.Uint16(payload[6:8])
	var src, dst netip.Addr
	switch m.family {
	case afInet:
		src = netip.AddrFrom4([4]byte(payload[8:12]))
		dst = netip.AddrFrom4([4]byte(payload[24:28]))
	case afInet6:
		src = netip.AddrFrom16([16]byte(payload[8:24])).Unmap()
		dst = netip.AddrFrom16([16]byte(payload[24:40])).Unmap()
	default:
		return diagMsg{}, fmt.Errorf("%w: %d", errBadFamily, m.family)
	}
	m.local = netip.AddrPortFrom(src, sport)
	m.remote = netip.AddrPortFrom(dst, dport)
	return m, nil
}
