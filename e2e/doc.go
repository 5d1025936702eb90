// Package e2e holds the end-to-end test of the packet-headers daemon against
// real parts, and the checker it uses.
//
// The test (e2e_linux_test.go, Linux, root) builds ./cmd/packet-headers and
// ./cmd/trafficgen, creates two network namespaces joined by a veth
// (internal/netns), and runs in the server namespace: the real tcp-info, a
// tcpdump of the server's veth as ground truth, an independent recorder of
// tcp-info's eventsocket, the daemon and the trafficgen server; the
// trafficgen client makes hundreds of connections from the client namespace.
// After a SIGTERM to the daemon it compares, flow by flow, every file the
// daemon wrote with the ground truth. When the daemon names flows itself
// (-uuid.source netlink or both), the expected names come from the
// trafficgen server's record of every socket it accepted (SO_COOKIE), and
// every connection, not only those tcp-info saw, must have its file. See
// README.md in this directory.
//
// The checker (groundtruth.go, events.go) is plain Go that works on pcap
// files and recorded events on any system; its unit tests prove that it
// fails on each kind of defect it claims to catch. It never runs anything;
// only the Linux test does.
//
// Requirements: root, tcpdump, ip (iproute2), zstd and tcp-info (built by
// scripts/install-tools.sh into .bin/, or named by TCPINFO_BIN). Without
// them the test skips, unless HEADERCAP_REQUIRE_NETNS=1 (CI), which turns a
// skip into a failure.
//
// The package never sends a packet outside the namespaces it creates and
// uses only documentation addresses.
package e2e
