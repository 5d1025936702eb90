// Package anonymize hides the host part of IP addresses, with the semantics of
// m-lab/go/anonymize: the "netblock" method keeps an IPv4 /24 and an IPv6 /48
// and zeroes the remaining bits.
//
// Every function here is pure, allocation-free and safe for concurrent use. The
// package knows nothing about packets beyond the address bytes it is handed.
package anonymize

import (
	"fmt"
	"net/netip"
)

// Method selects how addresses are anonymized. The zero value is None.
type Method uint8

const (
	// None leaves addresses untouched.
	None Method = iota
	// Netblock keeps an IPv4 /24 and an IPv6 /48 and zeroes the rest.
	Netblock
)

// ParseMethod parses the value of the -anonymize.ip flag.
func ParseMethod(s string) (Method, error) {
	switch s {
	case "", "none":
		return None, nil
	case "netblock":
		return Netblock, nil
	}
	return None, fmt.Errorf("unknown anonymization method %q (want none or netblock)", s)
}

// String returns the flag spelling of m.
func (m Method) String() string {
	switch m {
	case None:
		return "none"
	case Netblock:
		return "netblock"
	}
	return fmt.Sprintf("Method(%d)", uint8(m))
}

// Set implements flag.Value.
func (m *Method) Set(s string) error {
	v, err := ParseMethod(s)
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// Decode implements envconfig.Decoder.
func (m *Method) Decode(s string) error { return m.Set(s) }

// Bytes anonymizes an address in place. b must hold a 4-byte IPv4 or a
// 16-byte IPv6 address; other lengths are left alone. Loopback addresses
// (127.0.0.0/8, ::1) and IPv4-mapped IPv6 addresses are treated like the
// address they denote.
func (m Method) Bytes(b []byte) {
	if m != Netblock {
		return
	}
	switch len(b) {
	case 4:
		if b[0] == 127 {
			return
		}
		b[3] = 0
	case 16:
		if isV4Mapped(b) {
			if b[12] != 127 {
				b[15] = 0
			}
			return
		}
		if isV6Loopback(b) {
			return
		}
		clear(b[6:])
	}
}

// Addr returns the anonymized form of a.
func (m Method) Addr(a netip.Addr) netip.Addr {
	if m != Netblock || !a.IsValid() {
		return a
	}
	if a.Is4() {
		b := a.As4()
		m.Bytes(b[:])
		return netip.AddrFrom4(b)
	}
	b := a.As16()
	m.Bytes(b[:])
	return netip.AddrFrom16(b).WithZone(a.Zone())
}

// AddrPort returns ap with its address anonymized.
func (m Method) AddrPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(m.Addr(ap.Addr()), ap.Port())
}

func isV4Mapped(b []byte) bool {
	for _, x := range b[:10] {
		if x != 0 {
			return false
		}
	}
	return b[10] == 0xff && b[11] == 0xff
}

func isV6Loopback(b []byte) bool {
	for _, x := range b[:15] {
		if x != 0 {
			return false
		}
	}
	return b[15] == 1
}
