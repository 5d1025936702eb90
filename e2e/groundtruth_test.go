package e2e

import (
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/m-lab/tcp-info/eventsocket"
	"github.com/m-lab/tcp-info/inetdiag"
)

var (
	srv4 = netip.MustParseAddr("192.0.2.1")
	cli4 = netip.MustParseAddr("192.0.2.2")
	srv6 = netip.MustParseAddr("2001:db8::1")
	cli6 = netip.MustParseAddr("2001:db8::2")
)

// frame builds an Ethernet frame src -> dst with TCP options (MSS, SACK
// permitted, timestamps) and payload bytes of payload.
func frame(t testing.TB, src, dst netip.AddrPort, flags uint8, seq, ack uint32, payload int, opts ...func(*frameOpts)) []byte {
	t.Helper()
	var o frameOpts
	for _, f := range opts {
		f(&o)
	}
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}}
	tcp := &layers.TCP{
		SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()),
		Seq: seq, Ack: ack, Window: 502,
		FIN: flags&flagFIN != 0, SYN: flags&flagSYN != 0, RST: flags&flagRST != 0,
		PSH: flags&flagPSH != 0, ACK: flags&flagACK != 0,
		Options: []layers.TCPOption{
			{OptionType: layers.TCPOptionKindNop},
			{OptionType: layers.TCPOptionKindNop},
			{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: []byte{0, 0, 1, 2, 0, 0, 3, 4}},
		},
	}
	if flags&flagSYN != 0 {
		tcp.Options = append(tcp.Options,
			layers.TCPOption{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{5, 0xb4}},
			layers.TCPOption{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2})
	}
	var ls []gopacket.SerializableLayer
	if src.Addr().Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
		if o.ipv4Options {
			ip.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}
		}
		tcp.SetNetworkLayerForChecksum(ip)
		ls = []gopacket.SerializableLayer{eth, ip}
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
		tcp.SetNetworkLayerForChecksum(ip)
		if o.ipv6DestOpts {
			ip.NextHeader = layers.IPProtocolIPv6Destination
			ls = []gopacket.SerializableLayer{eth, ip, rawLayer{byte(layers.IPProtocolTCP), 0, 1, 4, 0, 0, 0, 0}}
		} else {
			ls = []gopacket.SerializableLayer{eth, ip}
		}
	}
	if o.vlan {
		eth2 := *eth
		eth2.EthernetType = layers.EthernetTypeDot1Q
		ls[0] = &eth2
		ls = slices.Insert(ls, 1, gopacket.SerializableLayer(&layers.Dot1Q{VLANIdentifier: 7, Type: eth.EthernetType}))
	}
	ls = append(ls, tcp, gopacket.Payload(make([]byte, payload)))
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return slices.Clone(buf.Bytes())
}

type frameOpts struct{ vlan, ipv4Options, ipv6DestOpts bool }

func withVLAN(o *frameOpts)        { o.vlan = true }
func withIPv4Options(o *frameOpts) { o.ipv4Options = true }
func withIPv6DestOpts(o *frameOpts) {
	o.ipv6DestOpts = true
}

// rawLayer serializes as its bytes (an IPv6 extension header here).
type rawLayer []byte

func (r rawLayer) SerializeTo(b gopacket.SerializeBuffer, _ gopacket.SerializeOptions) error {
	dst, err := b.PrependBytes(len(r))
	copy(dst, r)
	return err
}
func (r rawLayer) LayerType() gopacket.LayerType { return gopacket.LayerTypePayload }

// scenario is a synthetic ground truth with its tcp-info events.
type scenario struct {
	t      *testing.T
	pkts   []Packet
	opens  []OpenEvent
	t0     time.Time
	uuids  map[string]string // name -> UUID
	tuples map[string]Tuple  // name -> tuple (client -> server)
}

func (s *scenario) pkt(at time.Duration, src, dst netip.AddrPort, flags uint8, seq, ack uint32, payload int, opts ...func(*frameOpts)) {
	data := frame(s.t, src, dst, flags, seq, ack, payload, opts...)
	s.pkts = append(s.pkts, Packet{TS: s.t0.Add(at), OrigLen: len(data), Data: data})
}

// conn adds a connection client -> server starting at start: handshake,
// `exchanges` request/response pairs every `every`, then FIN/ACKs. If name
// is not empty, tcp-info reports it 5ms after the SYN.
func (s *scenario) conn(name string, start time.Duration, client, server netip.AddrPort, isn uint32, exchanges int, every time.Duration, opts ...func(*frameOpts)) {
	c, v := isn, uint32(7_000_000)+isn/3
	at := start
	s.pkt(at, client, server, flagSYN, c, 0, 0, opts...)
	s.pkt(at+100*time.Microsecond, server, client, flagSYN|flagACK, v, c+1, 0, opts...)
	s.pkt(at+200*time.Microsecond, client, server, flagACK, c+1, v+1, 0, opts...)
	c, v = c+1, v+1
	for i := range exchanges {
		at = start + time.Millisecond + time.Duration(i)*every
		s.pkt(at, client, server, flagPSH|flagACK, c, v, 100, opts...)
		c += 100
		s.pkt(at+50*time.Microsecond, server, client, flagPSH|flagACK, v, c, 1000, opts...)
		v += 1000
		s.pkt(at+90*time.Microsecond, client, server, flagACK, c, v, 0, opts...)
	}
	at += time.Millisecond
	s.pkt(at, server, client, flagFIN|flagACK, v, c, 0, opts...)
	s.pkt(at+50*time.Microsecond, client, server, flagFIN|flagACK, c, v+1, 0, opts...)
	s.pkt(at+90*time.Microsecond, server, client, flagACK, v+1, c+1, 0, opts...)
	s.tuples[name] = Tuple{Src: client, Dst: server}
	if name != "" {
		u := "host_1700000000_unsafe_" + strings.ToUpper(name)
		s.uuids[name] = u
		s.opens = append(s.opens, OpenEvent{UUID: u, Time: s.t0.Add(start + 5*time.Millisecond), Src: server, Dst: client})
	}
}

// newScenario builds: a short IPv4 flow, a long IPv6 flow that outlives the
// capture duration, two consecutive flows on the same tuple, a VLAN-tagged
// flow with IP options, an IPv6 flow with an extension header, and a flow
// tcp-info did not report. It starts just before midnight UTC, so date
// folders follow the Open event, not the packets.
func newScenario(t *testing.T) *scenario {
	s := &scenario{t: t, t0: time.Date(2026, 3, 4, 23, 59, 59, 900_000_000, time.UTC), uuids: map[string]string{}, tuples: map[string]Tuple{}}
	sv4, sv6 := netip.AddrPortFrom(srv4, 8080), netip.AddrPortFrom(srv6, 8080)
	s.conn("short", 0, netip.AddrPortFrom(cli4, 40001), sv4, 1000, 2, 10*time.Millisecond)
	s.conn("long", 20*time.Millisecond, netip.AddrPortFrom(cli6, 40002), sv6, 2000, 12, 500*time.Millisecond)
	reuse := netip.AddrPortFrom(cli4, 20000)
	s.conn("reuse1", 40*time.Millisecond, reuse, sv4, 3000, 2, 5*time.Millisecond)
	s.conn("reuse2", 80*time.Millisecond, reuse, sv4, 9000, 3, 5*time.Millisecond)
	s.conn("vlan", 100*time.Millisecond, netip.AddrPortFrom(cli4, 40003), sv4, 4000, 2, 5*time.Millisecond, withVLAN, withIPv4Options)
	s.conn("ext", 120*time.Millisecond, netip.AddrPortFrom(cli6, 40004), sv6, 5000, 2, 5*time.Millisecond, withIPv6DestOpts)
	s.conn("", 140*time.Millisecond, netip.AddrPortFrom(cli4, 40005), sv4, 6000, 1, 5*time.Millisecond)
	return s
}

var testCheckConfig = CheckConfig{CaptureDuration: 4 * time.Second}

// setup writes the reference output and returns the data dir.
func (s *scenario) setup(cfg CheckConfig) string {
	dir := s.t.TempDir()
	writeReference(s.t, dir, cfg, s.pkts, s.opens)
	return dir
}

// path returns where the flow file of the named connection belongs: under
// the UTC date of its Open event ("short" opens on 03/04, the rest on 03/05).
func (s *scenario) path(dir, name string) string {
	for _, ev := range s.opens {
		if ev.UUID == s.uuids[name] {
			return filepath.Join(dir, ev.Time.UTC().Format("2006/01/02"), ev.UUID+".pcap.gz")
		}
	}
	s.t.Fatalf("no connection %q", name)
	return ""
}

// expectFailure runs Check and requires a failure of check naming uuid
// (if not empty) and no failure of any other check except also.
func expectFailure(t *testing.T, r *Report, check, uuid string, also ...string) {
	t.Helper()
	found := false
	for _, f := range r.Failures {
		if f.Check == check && (uuid == "" || f.UUID == uuid) {
			found = true
		} else if f.Check != check && !slices.Contains(also, f.Check) {
			t.Errorf("unexpected failure: %s", f)
		}
	}
	if !found {
		t.Errorf("no %s failure for %q; report:\n%s", check, uuid, r.Summary(5))
	}
}

func TestCheckPassesOnCorrectOutput(t *testing.T) {
	for _, nb := range []bool{false, true} {
		s := newScenario(t)
		cfg := testCheckConfig
		cfg.Netblock = nb
		dir := s.setup(cfg)
		r := Check(cfg, s.pkts, s.opens, dir)
		if len(r.Failures) != 0 || r.Matched != 6 || r.Files != 6 || r.Reported != 6 || r.GroundConns != 7 {
			t.Errorf("netblock=%v: %s", nb, r.Summary(10))
		}
		// The long flow really was cut: fewer packets saved than sent.
		c, err := ReadFlowFile(s.path(dir, "long"))
		if err != nil {
			t.Fatal(err)
		}
		if n := len(c.Packets); n >= 3+12*3+3 || n < 3+8*3 {
			t.Errorf("long flow saved %d packets; the 4s cut should keep 27..30", n)
		}
	}
}

func TestCheckAllowsReorderedDirections(t *testing.T) {
	s := newScenario(t)
	dir := s.setup(testCheckConfig)
	// Swap two adjacent packets of different directions, as two capture
	// sockets may order them.
	rewriteFlowFile(t, s.path(dir, "short"), func(p []Packet) []Packet {
		p[3], p[4] = p[4], p[3]
		return p
	})
	if r := Check(testCheckConfig, s.pkts, s.opens, dir); len(r.Failures) != 0 {
		t.Error(r.Summary(5))
	}
}

func TestCheckFailsOnMissingPacket(t *testing.T) {
	s := newScenario(t)
	dir := s.setup(testCheckConfig)
	rewriteFlowFile(t, s.path(dir, "short"), func(p []Packet) []Packet { return slices.Delete(p, 4, 5) })
	expectFailure(t, Check(testCheckConfig, s.pkts, s.opens, dir), CheckPackets, s.uuids["short"])
}

func TestCheckFailsOnMissingLastPacket(t *testing.T) {
	s := newScenario(t)
	dir := s.setup(testCheckConfig)
	rewriteFlowFile(t, s.path(dir, "reuse2"), func(p []Packet) []Packet { return p[:len(p)-1] })
	expectFailure(t, Check(testCheckConfig, s.pkts, s.opens, dir), CheckPackets, s.uuids["reuse2"])
}

func TestCheckFailsOnExtraPacket(t *testing.T) {
	s := newScenario(t)
	dir := s.setup(testCheckConfig)
	rewriteFlowFile(t, s.path(dir, "short"), func(p []Packet) []Packet {
		extra := p[len(p)-1]
		extra.TS = extra.TS.Add(time.Millisecond)
		return append(p, extra)
	})
	expectFailure(t, Check(testCheckConfig, s.pkts, s.opens, dir), CheckPackets, s.uuids["short"])
}

func TestCheckCaptureDurationBoundary(t *testing.T) {
	// Long flow: packets every 500ms from 21ms on; the 4s cut falls between
	// exchanges. A window that moves the cut onto an exchange tolerates the
	// daemon keeping a prefix of the packets in the boundary.
	s := newScenario(t)
	cfg := testCheckConfig
	cfg.CaptureDuration = 3*time.Second + time.Millisecond + 10*time.Microsecond // cut inside exchange 6
	dir := s.setup(CheckConfig{CaptureDuration: cfg.CaptureDuration})
	if r := Check(cfg, s.pkts, s.opens, dir); len(r.Failures) != 0 {
		t.Fatalf("reference: %s", r.Summary(5))
	}
	// Dropping or adding the packets within ±50ms of the cut is fine.
	path := s.path(dir, "long")
	orig, err := ReadFlowFile(path)
	if err != nil {
		t.Fatal(err)
	}
	rewriteFlowFile(t, path, func(p []Packet) []Packet { return p[:len(p)-1] })
	if r := Check(cfg, s.pkts, s.opens, dir); len(r.Failures) != 0 {
		t.Errorf("one packet fewer at the boundary: %s", r.Summary(5))
	}
	// Dropping a packet 500ms before the cut is not.
	writeFlowFile(t, path, orig.Packets[:len(orig.Packets)-4], true)
	expectFailure(t, Check(cfg, s.pkts, s.opens, dir), CheckPackets, s.uuids["long"])
	// Nor is saving everything (packets seconds after the cut).
	dir2 := s.setup(CheckConfig{CaptureDuration: time.Hour})
	expectFailure(t, Check(cfg, s.pkts, s.opens, dir2), CheckPackets, s.uuids["long"])
}

func TestCheckFailsOnPayload(t *testing.T) {
	s := newScenario(t)
	dir := s.setup(testCheckConfig)
	// Packet 4 of the short flow carries 100 payload bytes: keep one.
	var full Packet
	for _, p := range s.pkts {
		h, _ := ParseFrame(p.Data)
		if h.Tuple == s.tuples["short"] && len(p.Data) > h.HeaderEnd {
			full = p
			break
		}
	}
	rewriteFlowFile(t, s.path(dir, "short"), func(p []Packet) []Packet {
		for i := range p {
			if p[i].TS.Equal(full.TS) {
				p[i].Data = full.Data[:len(p[i].Data)+1]
			}
		}
		return p
	})
	r := Check(testCheckConfig, s.pkts, s.opens, dir)
	expectFailure(t, r, CheckPayload, s.uuids["short"], CheckPackets)
}

func TestCheckFailsOnSwappedReuseUUIDs(t *testing.T) {
	s := newScenario(t)
	dir := s.setup(testCheckConfig)
	a, b := s.path(dir, "reuse1"), s.path(dir, "reuse2")
	tmp := a + ".swap"
	for _, mv := range [][2]string{{a, tmp}, {b, a}, {tmp, b}} {
		if err := os.Rename(mv[0], mv[1]); err != nil {
			t.Fatal(err)
		}
	}
	r := Check(testCheckConfig, s.pkts, s.opens, dir)
	expectFailure(t, r, CheckPackets, s.uuids["reuse1"])
	expectFailure(t, r, CheckPackets, s.uuids["reuse2"])
	// The message says which connection the packets belong to.
	for _, f := range r.Failures {
		if f.UUID == s.uuids["reuse1"] && !strings.Contains(f.Detail, "belongs to the later connection on this tuple") {
			t.Errorf("failure does not name the other connection: %s", f)
		}
	}
}

func TestCheckFailsOnMergedReuseFlows(t *testing.T) {
	// A daemon that does not split a reused tuple puts both connections in
	// the first UUID's file.
	s := newScenario(t)
	dir := s.setup(testCheckConfig)
	r2, err := ReadFlowFile(s.path(dir, "reuse2"))
	if err != nil {
		t.Fatal(err)
	}
	rewriteFlowFile(t, s.path(dir, "reuse1"), func(p []Packet) []Packet { return append(p, r2.Packets...) })
	expectFailure(t, Check(testCheckConfig, s.pkts, s.opens, dir), CheckPackets, s.uuids["reuse1"])
}

func TestCheckFailsOnUnanonymizedAddress(t *testing.T) {
	s := newScenario(t)
	cfg := testCheckConfig
	cfg.Netblock = true
	dir := s.setup(cfg)
	// Replace one file by its non-anonymized version.
	plain := s.setup(testCheckConfig)
	for _, name := range []string{"short", "ext"} {
		raw, err := os.ReadFile(s.path(plain, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(s.path(dir, name), raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r := Check(cfg, s.pkts, s.opens, dir)
	expectFailure(t, r, CheckPackets, s.uuids["short"])
	expectFailure(t, r, CheckPackets, s.uuids["ext"])

	addrs := []netip.Addr{srv4, cli4, srv6, cli6}
	c, err := ReadFlowFile(s.path(dir, "short"))
	if err != nil {
		t.Fatal(err)
	}
	if hits := FindBinaryAddrs(c.Packets, addrs); len(hits) == 0 {
		t.Error("FindBinaryAddrs found no address in an unanonymized file")
	}
	c, err = ReadFlowFile(s.path(dir, "long"))
	if err != nil {
		t.Fatal(err)
	}
	if hits := FindBinaryAddrs(c.Packets, addrs); len(hits) != 0 {
		t.Errorf("FindBinaryAddrs in an anonymized file: %v", hits)
	}
	// Host addresses may be kept if the config says so (the seed's rule).
	cfg.KeepAddrs = []netip.Addr{srv4, srv6}
	r = Check(cfg, s.pkts, s.opens, dir)
	expectFailure(t, r, CheckPackets, s.uuids["short"])
}

func TestCheckTimestamps(t *testing.T) {
	s := newScenario(t)
	dir := s.setup(testCheckConfig)
	path := s.path(dir, "short")
	orig, err := ReadFlowFile(path)
	if err != nil {
		t.Fatal(err)
	}
	shift := func(i int, d time.Duration) {
		p := slices.Clone(orig.Packets)
		p[i].TS = p[i].TS.Add(d)
		writeFlowFile(t, path, p, true)
	}
	// Packet 1 is the SYN the server received: a few µs off is normal.
	shift(0, 300*time.Microsecond)
	if r := Check(testCheckConfig, s.pkts, s.opens, dir); len(r.Failures) != 0 || r.MaxRecvSkew != 300*time.Microsecond {
		t.Errorf("received packet 300µs off: %s", r.Summary(5))
	}
	shift(0, 25*time.Millisecond)
	expectFailure(t, Check(testCheckConfig, s.pkts, s.opens, dir), CheckPackets, s.uuids["short"])
	// Packet 2 is the SYN-ACK the server sent: exact to the nanosecond.
	shift(1, time.Nanosecond)
	expectFailure(t, Check(testCheckConfig, s.pkts, s.opens, dir), CheckPackets, s.uuids["short"])
}

func TestCheckFiles(t *testing.T) {
	for _, tc := range []struct {
		name, check string
		edit        func(s *scenario, dir string)
	}{
		{"missing", CheckMissingFile, func(s *scenario, dir string) { os.Remove(s.path(dir, "vlan")) }},
		{"unreported", CheckUnexpectedFile, func(s *scenario, dir string) {
			copyFile(t, s.path(dir, "vlan"), filepath.Join(dir, "2026/03/05/host_1700000000_unsafe_OTHER.pcap.gz"))
		}},
		{"stray", CheckUnexpectedFile, func(s *scenario, dir string) {
			os.WriteFile(filepath.Join(dir, "2026/03/05/notes.txt"), nil, 0o644)
		}},
		{"temporary", CheckTempFile, func(s *scenario, dir string) {
			os.WriteFile(filepath.Join(dir, "2026/03/05/.host_1_2.pcap.gz.tmp"), nil, 0o644)
		}},
		{"duplicate", CheckDuplicateFile, func(s *scenario, dir string) {
			copyFile(t, s.path(dir, "vlan"), filepath.Join(dir, "2026/03/04", s.uuids["vlan"]+".pcap.gz"))
		}},
		{"wrong date", CheckWrongDate, func(s *scenario, dir string) {
			// The packets run past midnight but the Open event is on 03/05;
			// a daemon using another clock would pick another folder.
			os.MkdirAll(filepath.Join(dir, "2026/03/06"), 0o755)
			os.Rename(s.path(dir, "vlan"), filepath.Join(dir, "2026/03/06", s.uuids["vlan"]+".pcap.gz"))
		}},
		{"microseconds", CheckBadFile, func(s *scenario, dir string) {
			c, _ := ReadFlowFile(s.path(dir, "vlan"))
			for i := range c.Packets {
				c.Packets[i].TS = c.Packets[i].TS.Truncate(time.Microsecond)
			}
			writeFlowFile(t, s.path(dir, "vlan"), c.Packets, false)
		}},
		{"torn gzip", CheckBadFile, func(s *scenario, dir string) {
			raw, _ := os.ReadFile(s.path(dir, "vlan"))
			os.WriteFile(s.path(dir, "vlan"), raw[:len(raw)-6], 0o644)
		}},
		{"not gzip", CheckBadFile, func(s *scenario, dir string) {
			os.WriteFile(s.path(dir, "vlan"), []byte("hello"), 0o644)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newScenario(t)
			dir := s.setup(testCheckConfig)
			tc.edit(s, dir)
			// Truncated timestamps also shift packets (a packets failure).
			expectFailure(t, Check(testCheckConfig, s.pkts, s.opens, dir), tc.check, "", CheckPackets, CheckMissingFile, CheckWrongDate)
		})
	}
}

func TestCheckNoGroundTruth(t *testing.T) {
	s := newScenario(t)
	dir := s.setup(testCheckConfig)
	// An event for a tuple the capture never saw.
	ev := OpenEvent{UUID: "host_1_GHOST", Time: s.t0, Src: netip.AddrPortFrom(srv4, 8080), Dst: netip.AddrPortFrom(cli4, 1)}
	copyFile(t, s.path(dir, "short"), filepath.Join(dir, "2026/03/04/host_1_GHOST.pcap.gz"))
	expectFailure(t, Check(testCheckConfig, s.pkts, append(s.opens, ev), dir), CheckNoGroundTruth, "host_1_GHOST")
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	raw, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, raw, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestParseFrame(t *testing.T) {
	c, s := netip.AddrPortFrom(cli4, 1234), netip.AddrPortFrom(srv4, 80)
	c6, s6 := netip.AddrPortFrom(cli6, 1234), netip.AddrPortFrom(srv6, 80)
	for _, tc := range []struct {
		name     string
		data     []byte
		tcpOff   int
		tuple    Tuple
		hdrBytes int // TCP header length
	}{
		{"ipv4", frame(t, c, s, flagACK, 1, 2, 10), 14 + 20, Tuple{c, s}, 32},
		{"ipv4 syn", frame(t, c, s, flagSYN, 1, 0, 0), 14 + 20, Tuple{c, s}, 40},
		{"ipv4 options vlan", frame(t, c, s, flagACK, 1, 2, 10, withVLAN, withIPv4Options), 18 + 24, Tuple{c, s}, 32},
		{"ipv6", frame(t, c6, s6, flagACK, 1, 2, 10), 14 + 40, Tuple{c6, s6}, 32},
		{"ipv6 ext", frame(t, c6, s6, flagACK, 1, 2, 10, withIPv6DestOpts), 14 + 48, Tuple{c6, s6}, 32},
	} {
		h, err := ParseFrame(tc.data)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if h.TCPOffset != tc.tcpOff || h.HeaderEnd != tc.tcpOff+tc.hdrBytes || h.Tuple != tc.tuple || h.Seq != 1 {
			t.Errorf("%s: got %+v", tc.name, h)
		}
		// Cut anywhere before the data offset byte: an error, not a panic.
		for n := range h.TCPOffset + 13 {
			if _, err := ParseFrame(tc.data[:n]); err == nil {
				t.Errorf("%s cut at %d: no error", tc.name, n)
			}
		}
	}
}

func TestSplitConns(t *testing.T) {
	s := newScenario(t)
	// A retransmitted SYN stays in its connection.
	syn := s.pkts[0]
	syn.TS = syn.TS.Add(time.Microsecond)
	conns, skipped := SplitConns(append(slices.Clone(s.pkts), syn))
	if skipped != 0 {
		t.Errorf("%d packets skipped", skipped)
	}
	if l := conns[s.tuples["short"].Key()]; len(l) != 1 {
		t.Errorf("short flow split into %d connections", len(l))
	}
	l := conns[s.tuples["reuse1"].Key()]
	if len(l) != 2 || l[0].ISN != 3000 || l[1].ISN != 9000 || len(l[0].Packets) != 3+2*3+3 || len(l[1].Packets) != 3+3*3+3 {
		t.Errorf("reused tuple: got %d connections", len(l))
	}
}

func TestFindTextAddrs(t *testing.T) {
	addrs := []netip.Addr{srv4, srv6}
	for _, tc := range []struct {
		text string
		hit  bool
	}{
		{"flow 192.0.2.1:8080 done", true},
		{"IP 192.0.2.1.8080 > x", true},
		{"addr=192.0.2.1", true},
		{`{"ip":"192.0.2.1"}`, true},
		{"192.0.2.10 and 192.0.2.0 and 10.192.0.2.100", false},
		{"[2001:db8::1]:8080", true},
		{"2001:0db8:0000:0000:0000:0000:0000:0001", true},
		{"2001:db8:0:0:0:0:0:1 x", true},
		{"2001:db8::10 and 2001:db8:: and 2001:db8::1:5", false},
	} {
		if got := FindTextAddrs([]byte(tc.text), addrs); (len(got) > 0) != tc.hit {
			t.Errorf("FindTextAddrs(%q) = %v, want hit=%v", tc.text, got, tc.hit)
		}
	}
}

// TestEventMatchesTCPInfo checks that the recorder's Event decodes what
// tcp-info's own type encodes.
func TestEventMatchesTCPInfo(t *testing.T) {
	ts := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	in := eventsocket.FlowEvent{Event: eventsocket.Open, Timestamp: ts, UUID: "h_1_2", ID: &inetdiag.SockID{
		SPort: 8080, DPort: 40000, SrcIP: "2001:db8::1", DstIP: "2001:db8::2", Interface: 2, Cookie: -5,
	}}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var ev Event
	if err := json.Unmarshal(b, &ev); err != nil {
		t.Fatal(err)
	}
	opens, errs := Opens([]Event{ev, {Event: EventClose, UUID: "h_1_2", Timestamp: ts}})
	want := OpenEvent{UUID: "h_1_2", Time: ts, Src: netip.MustParseAddrPort("[2001:db8::1]:8080"), Dst: netip.MustParseAddrPort("[2001:db8::2]:40000")}
	if len(errs) != 0 || len(opens) != 1 || opens[0] != want || ev.ID.Cookie != -5 {
		t.Errorf("decoded %s as %+v, %v", b, opens, errs)
	}
}

func TestReadPcapFile(t *testing.T) {
	s := newScenario(t)
	path := filepath.Join(t.TempDir(), "ground.pcap")
	writePcap(t, path, s.pkts)
	c, err := ReadPcapFile(path, 60)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Nanosecond || c.LinkType != layers.LinkTypeEthernet || len(c.Packets) != len(s.pkts) {
		t.Fatalf("read %d packets, nano=%v, link type %v", len(c.Packets), c.Nanosecond, c.LinkType)
	}
	for i, p := range c.Packets {
		w := s.pkts[i]
		if !p.TS.Equal(w.TS) || p.OrigLen != w.OrigLen || string(p.Data) != string(w.Data[:min(60, len(w.Data))]) {
			t.Fatalf("packet %d: got %v/%d/%d bytes, want %v/%d", i, p.TS, p.OrigLen, len(p.Data), w.TS, w.OrigLen)
		}
	}
	if _, err := ReadPcap(strings.NewReader("not a pcap at all"), 0); err == nil {
		t.Error("ReadPcap accepted garbage")
	}
}

func FuzzParseFrame(f *testing.F) {
	c, s := netip.AddrPortFrom(cli4, 1234), netip.AddrPortFrom(srv4, 80)
	c6, s6 := netip.AddrPortFrom(cli6, 1234), netip.AddrPortFrom(srv6, 80)
	for _, b := range [][]byte{
		frame(f, c, s, flagSYN, 1, 0, 0),
		frame(f, c, s, flagACK, 1, 2, 10, withVLAN, withIPv4Options),
		frame(f, c6, s6, flagACK, 1, 2, 10, withIPv6DestOpts),
	} {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ParseFrame(data)
		if err != nil {
			return
		}
		if h.TCPOffset+14 > len(data) || h.HeaderEnd < h.TCPOffset+20 || h.IPOffset < 14 {
			t.Fatalf("inconsistent header %+v for %d bytes", h, len(data))
		}
		_ = describe(Packet{Data: data})
	})
}

func TestMatchConns(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	srv, cli := netip.AddrPortFrom(srv4, 8080), netip.AddrPortFrom(cli4, 20000)
	key := Tuple{Src: cli, Dst: srv}.Key()
	c := []*Conn{{Key: key, Start: at(0)}, {Key: key, Start: at(50)}, {Key: key, Start: at(100)}}
	conns := map[Tuple][]*Conn{key: c}
	ev := func(u string, ms int) OpenEvent { return OpenEvent{UUID: u, Time: at(ms), Src: srv, Dst: cli} }
	for _, tc := range []struct {
		name  string
		opens []OpenEvent
		want  map[string]*Conn
	}{
		{"in time", []OpenEvent{ev("a", 10), ev("b", 60), ev("c", 110)}, map[string]*Conn{"a": c[0], "b": c[1], "c": c[2]}},
		// tcp-info stamped a's Open after b had started.
		{"late stamp", []OpenEvent{ev("a", 55), ev("b", 60), ev("c", 110)}, map[string]*Conn{"a": c[0], "b": c[1], "c": c[2]}},
		// tcp-info never saw the middle connection.
		{"missed one", []OpenEvent{ev("a", 10), ev("c", 110)}, map[string]*Conn{"a": c[0], "c": c[2]}},
		{"before any", []OpenEvent{ev("z", -5), ev("a", 10)}, map[string]*Conn{"a": c[0]}},
		{"duplicate event", []OpenEvent{ev("a", 10), ev("a", 60)}, map[string]*Conn{"a": c[0]}},
	} {
		got := MatchConns(conns, tc.opens)
		if len(got) != len(tc.want) {
			t.Errorf("%s: matched %d UUIDs, want %d", tc.name, len(got), len(tc.want))
		}
		for u, w := range tc.want {
			if got[u] != w {
				t.Errorf("%s: %s matched the connection started at %v, want %v", tc.name, u, got[u], w.Start)
			}
		}
	}
}

func TestCheckAllowsReorderedReceivedPackets(t *testing.T) {
	s := newScenario(t)
	dir := s.setup(testCheckConfig)
	// Two packets the host received, in the other order in the file (each
	// keeps its own timestamp), as per-socket receive timestamps may order
	// close segments.
	var swapped bool
	rewriteFlowFile(t, s.path(dir, "short"), func(p []Packet) []Packet {
		first, err := ParseFrame(p[0].Data)
		if err != nil {
			t.Fatal(err)
		}
		prev := -1
		for i := range p {
			h, err := ParseFrame(p[i].Data)
			if err != nil || h.Tuple.Src != first.Tuple.Src {
				continue
			}
			if prev >= 0 {
				p[prev], p[i] = p[i], p[prev]
				swapped = true
				break
			}
			prev = i
		}
		return p
	})
	if !swapped {
		t.Fatal("no two received packets to swap")
	}
	if r := Check(testCheckConfig, s.pkts, s.opens, dir); len(r.Failures) != 0 {
		t.Error(r.Summary(5))
	}
}
