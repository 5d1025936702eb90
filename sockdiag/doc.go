// Package sockdiag names local TCP sockets with the UUIDs tcp-info gives
// them, straight from the kernel's sock_diag netlink interface, so that the
// capture can name every flow and not only the ones tcp-info's 10 ms polls
// happen to see.
//
// A tcp-info UUID is "<prefix>_<socket cookie as %016X>" (m-lab/uuid's
// FromCookie); the prefix is the -uuid-prefix-file contents, else
// m-lab/uuid/prefix.UnsafeString(). The kernel knows every socket's cookie.
// A Source learns it three ways:
//
//   - Queries. For each Lookup (a new flow the capture saw) it asks the
//     kernel for the exact 4-tuple (SOCK_DIAG_BY_FAMILY, inet_diag_req_v2,
//     any state, no cookie), in both orientations while it does not know
//     which side is local, up to 64 flows per round trip, retrying after
//     1 ms, 2 ms, … up to 50 ms until found, or MaxWait. One lookup waits
//     per flow, also when connections follow each other on one tuple; on
//     such a tuple a lookup keeps asking until a query sent staleWindow
//     (2 ms) after its flow began found a socket (the one found earlier
//     may be the previous connection's, not told of its end yet).
//   - Destroy notifications. A second socket subscribes to the sock_diag
//     multicast groups SKNLGRP_INET_TCP_DESTROY and
//     SKNLGRP_INET6_TCP_DESTROY: every destroyed socket comes with its
//     tuple and cookie. A socket destroyed while a lookup waits on its
//     tuple for a flow that began before is named (connections that end
//     before any query finds them), and destroyed sockets are remembered
//     for 5 s so that a Lookup arriving after the destroy (the capture
//     lags) is answered too. A socket destroyed before a flow's first
//     packet is never that flow's: its tuple was reused.
//   - Resets. A socket its application closes with SO_LINGER 0 is
//     disconnected first: its notification keeps the cookie, the local
//     port and the peer's address but not the peer's port. If a query saw
//     the cookie, that gives the tuple; otherwise the RST the socket sent,
//     which the capture reports (Reset) for flows still waiting for a name,
//     does, when the match is unique both ways: one RST (same port and
//     addresses, at most ResetWindow before the notification) for the
//     socket, no other such socket waiting for that RST.
//
// The Source does not decide which connection of a reused tuple a socket
// belongs to: the flow table gives each name to the latest connection
// begun before the name's time, newest first. So every Open's time comes
// after its connection began, and the Opens of one tuple keep the order of
// its sockets: a socket found with its connection open is stamped when the
// kernel answered; one found closing when the query was sent; one in
// TIME_WAIT when it entered it; one named from a destroy notification at
// the notification, or just before any socket of the tuple that a query
// found earlier and that is not destroyed yet (that one is newer: the
// notification came late).
//
// It owns two netlink sockets, opened by New in the calling thread's
// network namespace (where they stay), and the lookup state. It names a
// socket (Sink.Open) at most once while the socket lives and for 5 s after
// it is destroyed, always with one UUID, and passes the same UUID to its
// Sink.Close. It reports sockets of its own network namespace only: a flow
// that is not a local socket (forwarded traffic, another namespace) is
// counted as a miss after MaxWait.
//
// Concurrency: Lookup, Reset, SetPrefix and Prefix are safe for concurrent
// use; Lookup and Reset never block (the capture's workers call them) and
// drop, counting, when the queue is full. Run owns two goroutines (the
// loop, which holds all state, queries the kernel and calls the Sink, and
// the reader of destroy notifications) and returns only after both exit.
//
// It must not block the capture, must not import the flow table (it speaks
// net/netip and a Sink), and must not name a socket twice or with a cookie
// that is not the socket's own. It sends nothing on the network: it only
// talks to the kernel over netlink.
//
// # Kernel behaviour
//
// Verified on Linux 6.18 by the TestKernel* tests, which run real TCP
// connections between two network namespaces:
//
//   - An exact lookup during the server side of a handshake returns the
//     request socket (sk_state TCP_NEW_SYN_RECV), which inet_diag reports as
//     idiag_state TCP_SYN_RECV (3), not 12. Asking for it generates its
//     cookie, and the full socket the completed handshake creates inherits
//     it (inet_csk_clone_lock copies ir_cookie when set); a query racing
//     with the child's creation could still see a cookie the child does not
//     get, and tcp-info never reports SYN_RECV sockets, so a request socket
//     means "not yet": retry.
//   - An exact lookup whose local side is a listening port matches the
//     listener when no connection does (state LISTEN, remote port 0):
//     rejected. An AF_INET query finds a connection accepted by a
//     dual-stack listener (an AF_INET6 socket with v4-mapped addresses);
//     addresses are unmapped.
//   - A socket that closed first is found in TIME_WAIT (idiag_timer 3,
//     idiag_expires counting down from 60 s) with the full socket's cookie:
//     accepted, unless the expiry shows it entered TIME_WAIT before the
//     flow began (an earlier connection on the same tuple). A socket closed
//     while its peer keeps the connection half-open becomes a timewait
//     socket in FIN_WAIT2 at once.
//   - Destroy notifications come when the kernel frees the full socket, a
//     few hundred microseconds to a few milliseconds after: the last ACK of
//     a passive close; the ACK of our FIN on an active close (the socket
//     turns into a timewait socket, so the notification can precede the
//     flow's last packets); the application's close() after a reset, or
//     after accepting a connection reset in the accept queue. A socket in
//     CLOSE_WAIT is not destroyed until the application closes it.
//   - Subscribing to the destroy groups needs no capability on this kernel
//     (NETLINK_SOCK_DIAG allows non-root multicast receivers) and neither do
//     queries; CAP_NET_ADMIN only lets SO_RCVBUFFORCE size the buffer beyond
//     net.core.rmem_max. If the subscription fails anyway (a kernel without
//     the groups), the Source logs it once, counts it and works with queries
//     alone.
//   - A socket closed with SO_LINGER 0 (TestKernelLingerZeroDestroy) is
//     disconnected before it is freed: its notification carries its
//     cookie, its local port and the peer's address, but port 0 for the
//     peer and, unless it was bound to one, no local address.
//   - Under load notifications arrive milliseconds late (tens seen on two
//     busy cores), and an application may hold a socket whose connection
//     ended, so a tuple's next connection can be found before the previous
//     socket's notification comes.
//   - The kernel answers sock_diag requests synchronously inside sendmsg:
//     when it returns, every reply of a batch is queued (128 requests in one
//     write, one reply each), so replies are read without waiting.
//
// See README.md in this directory for coverage and cost measurements.
package sockdiag
