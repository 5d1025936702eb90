// Package capture reads Ethernet frames from the kernel (AF_PACKET TPACKET_V3
// rings in a fanout group) or from a pcap/pcapng file and hands each frame,
// with its timestamp, to one Handler per worker.
//
// Concurrency contract: every worker runs in its own goroutine and calls only
// its own Handler, never concurrently. A Handler therefore owns its state
// without locks. Frame.Data is only valid for the duration of HandleFrame;
// the handler must copy what it keeps.
//
// Capture knows nothing about flows, UUIDs or files: it never writes to disk
// and never interprets more of a frame than its BPF filter does.
//
// # Live capture (Linux)
//
// Live opens Config.Workers AF_PACKET sockets per interface, each with its
// own TPACKET_V3 ring, all sockets of an interface joined in one
// PACKET_FANOUT_HASH group. The kernel's fanout hash is symmetric (it hashes
// the flow's addresses and ports in a direction-independent order), so both
// directions of a TCP flow reach the same worker (live_linux_test.go checks
// this on real connections). The PACKET_FANOUT argument is passed as a 4-byte
// int, the size every kernel accepts (kernels before 5.11 reject the 8 bytes
// gopacket's afpacket passes). Unless Config.FanoutGroup is set, the kernel
// picks an unused group id (PACKET_FANOUT_FLAG_UNIQUEID), so two captures in
// one network namespace (say two containers whose daemons are both pid 1)
// cannot silently split each other's frames. Known limit: the kernel may hash
// the first fragment of a fragmented TCP segment (rare: TCP sets DF) without
// its ports, so it may reach another worker than the rest of its flow;
// non-first fragments are filtered out.
//
// The ring is this package's own (x/sys/unix: socket, mmap, poll), not
// gopacket's afpacket, which cannot provide what is needed here: its frames
// carry neither the packet type (needed to drop the outgoing copy of every
// frame on loopback) nor the VLAN TPID; it re-inserts a stripped VLAN tag
// only when the TCI is non-zero and allocates a new buffer for it; it takes a
// mutex and appends to a slice per packet; and it binds the socket before a
// filter can be attached, so unfiltered frames reach the ring. Here a socket
// is opened with protocol 0 (it receives nothing), gets its filter, version
// and ring, and only then is bound and joined to the fanout group. Until all
// sockets of an interface have joined, the ones already bound see every
// frame, so the first frames of flows in progress at start-up may reach a
// different worker than their later frames.
//
// The per-frame path reads the ring in place: no allocation and no system
// call per frame; only the block status words, poll and one time.Now per
// block. Frames are presented as tcpdump writes them: an 802.1Q tag the
// kernel stripped (TP_STATUS_VLAN_VALID) is re-inserted after the MAC
// addresses, with the TPID the kernel reports (0x8100 by default), into a
// per-worker buffer, and WireLen grows by 4; Data is then cut at SnapLen. On
// loopback interfaces outgoing frames are dropped (PACKET_IGNORE_OUTGOING
// where the kernel has it, and by the packet type in the ring otherwise).
//
// The filter (TCPFilter) is classic BPF assembled with golang.org/x/net/bpf.
// It accepts IPv4 and IPv6 TCP, also behind one 802.1Q tag in the frame and
// when the kernel stripped the tag; IPv4 non-first fragments are rejected; see
// TCPFilter for the IPv6 extension headers. Its return value is SnapLen, so
// the kernel copies at most SnapLen bytes of a frame into the ring.
//
// Each worker calls Tick at least every TickInterval (the poll timeout), also
// without traffic. Cancelling Run's context stops the workers at once (it
// writes an eventfd every worker polls next to its socket); Run then closes
// the sockets concurrently, because the kernel waits for an RCU grace period
// while releasing each one, and returns tens of milliseconds after the
// cancel (25-150 ms with 2 to 64 sockets on the development machine).
//
// Metrics (registered on the registry given to NewLive): the kernel's
// PACKET_STATISTICS of every socket, read once a second and at the end, as
// pcap_capture_kernel_{packets,drops,freezes}_total{interface}; frames
// handed to handlers as pcap_capture_frames_total{interface}; the seed's
// gauge pcap_muxer_interfaces_with_captures.
//
// # Files
//
// ReadFile reads pcap and pcapng files, gzip-compressed or not, with readers
// of this package that keep memory bounded by the snap length and never
// panic on damaged input (pcapgo's readers do not guarantee either), applies
// the same TCP rule as the filter (acceptTCP, checked against the BPF
// program by a fuzz test) and presents every frame as Ethernet.
package capture

import "time"

// Frame is one captured frame, presented as tcpdump would write it: an
// Ethernet frame (an 802.1Q tag stripped by the kernel is re-inserted), with
// Data cut at the capture's snap length.
type Frame struct {
	// Timestamp is when the kernel (or the file) saw the frame.
	Timestamp time.Time
	// Data holds the captured bytes. It is only valid during HandleFrame.
	Data []byte
	// WireLen is the frame's length on the wire (>= len(Data)).
	WireLen int
	// Interface is the index of the interface the frame was captured on
	// (0 for files).
	Interface int
}

// Handler consumes the frames of one worker. Both methods are called from the
// worker's goroutine only.
type Handler interface {
	// HandleFrame is called for every frame that passed the filter.
	HandleFrame(f *Frame)
	// Tick is called at least every Config.TickInterval, also when no frame
	// arrives, so the handler can expire state. now is a time before which
	// every frame has been handed over. For live capture that is the wall
	// clock minus the block timeout when the ring is drained, and the latest
	// frame's timestamp while the worker catches up with a backlog; for
	// files it is the timestamp of the latest frame read, and Tick comes
	// every FileConfig.TickEvery of file time and once at the end.
	Tick(now time.Time)
}
