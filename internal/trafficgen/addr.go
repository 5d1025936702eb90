package trafficgen

import (
	"fmt"
	"net/netip"
	"strings"
)

// DocumentationPrefixes are the only networks traffic may be sent to
// (RFC 5737 TEST-NET-1 and TEST-NET-2, RFC 3849).
var DocumentationPrefixes = []netip.Prefix{
	netip.MustParsePrefix("192.0.2.0/24"),
	netip.MustParsePrefix("198.51.100.0/24"),
	netip.MustParsePrefix("2001:db8::/32"),
}

// IsDocumentation reports whether a is inside DocumentationPrefixes.
func IsDocumentation(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range DocumentationPrefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// CheckDial returns an error unless ap is a documentation address with a
// non-zero port.
func CheckDial(ap netip.AddrPort) error {
	if !ap.IsValid() || ap.Port() == 0 {
		return fmt.Errorf("refusing to connect to %v: need address:port", ap)
	}
	if !IsDocumentation(ap.Addr()) {
		return fmt.Errorf("refusing to connect to %v: only %v are allowed", ap, DocumentationPrefixes)
	}
	return nil
}

// CheckLocal returns an error unless a is a documentation or loopback
// address: the addresses a server may listen on and a metrics fetch may
// reach.
func CheckLocal(a netip.Addr) error {
	a = a.Unmap()
	if a.IsLoopback() || IsDocumentation(a) {
		return nil
	}
	return fmt.Errorf("refusing address %v: only loopback and %v are allowed", a, DocumentationPrefixes)
}

// ParseAddrPorts parses a comma-separated list of IP:port (IPv6 in
// brackets). Host names are rejected: nothing is ever resolved.
func ParseAddrPorts(s string) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		ap, err := netip.ParseAddrPort(f)
		if err != nil {
			return nil, fmt.Errorf("parse %q: want IP:port or [IPv6]:port: %w", f, err)
		}
		out = append(out, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no address in %q", s)
	}
	return out, nil
}
