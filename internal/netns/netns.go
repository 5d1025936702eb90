// Package netns builds a throw-away test network: two Linux network
// namespaces ("server" and "client") joined by a veth pair, addressed only
// from the documentation ranges 192.0.2.0/24 and 2001:db8::/64, and runs
// programs inside them through `ip netns exec`.
//
// It exists so that tests and local demos can produce real kernel TCP traffic
// that crosses a real interface (tcp-info ignores loopback) without touching
// the host's own network. It must never configure an address outside the
// documentation ranges, never add routes to the outside world and never touch
// interfaces it did not create.
//
// Concurrency contract: New may be called concurrently (names are unique per
// process); a Pair's methods are safe for concurrent use. Close is idempotent.
//
// Everything here needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and the `ip`
// program from iproute2; on other systems New returns ErrNotSupported.
package netns

import (
	"errors"
	"net/netip"
)

// ErrNotSupported is returned by New on systems without network namespaces.
var ErrNotSupported = errors.New("netns: network namespaces are only supported on Linux")

// The fixed address plan. Only documentation addresses are ever used.
var (
	ServerIPv4 = netip.MustParseAddr("192.0.2.1")
	ClientIPv4 = netip.MustParseAddr("192.0.2.2")
	ServerIPv6 = netip.MustParseAddr("2001:db8::1")
	ClientIPv6 = netip.MustParseAddr("2001:db8::2")
)

const (
	// DefaultPrefix starts every namespace name created with a zero Config.
	DefaultPrefix = "hc"
	// ServerVeth and ClientVeth are the veth names inside the namespaces.
	// Each lives in its own namespace, so the names never collide.
	ServerVeth = "hc-srv0"
	ClientVeth = "hc-cli0"
)

// Config configures New. The zero value is valid.
type Config struct {
	// Prefix starts the namespace names (default DefaultPrefix). Names are
	// Prefix-<pid>-<n>-srv and Prefix-<pid>-<n>-cli. It may contain only
	// lowercase letters, digits and '-', at most 16 characters.
	Prefix string
	// IPPath is the ip(8) binary (default "ip", looked up in PATH).
	IPPath string
}

// Namespace is one side of a Pair.
type Namespace struct {
	// Name is the namespace name as `ip netns` knows it.
	Name string
	// Veth is the name of this side's veth interface inside the namespace.
	Veth string
	// IPv4 and IPv6 are this side's addresses on Veth.
	IPv4, IPv6 netip.Addr
}

// Addrs returns the namespace's IPv4 and IPv6 addresses.
func (n Namespace) Addrs() []netip.Addr { return []netip.Addr{n.IPv4, n.IPv6} }
