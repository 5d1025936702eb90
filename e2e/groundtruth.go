package e2e

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// Packet is one captured packet.
type Packet struct {
	// TS is the capture timestamp.
	TS time.Time
	// OrigLen is the packet's length on the wire.
	OrigLen int
	// Data holds the captured bytes.
	Data []byte
}

// Tuple is a TCP 4-tuple as seen in one packet: Src sent it to Dst.
type Tuple struct {
	Src, Dst netip.AddrPort
}

func (t Tuple) String() string { return t.Src.String() + " -> " + t.Dst.String() }

// Reverse returns the tuple of the opposite direction.
func (t Tuple) Reverse() Tuple { return Tuple{Src: t.Dst, Dst: t.Src} }

// Key returns the direction-free form of t: the smaller endpoint first.
func (t Tuple) Key() Tuple {
	c := t.Src.Addr().Compare(t.Dst.Addr())
	if c > 0 || (c == 0 && t.Src.Port() > t.Dst.Port()) {
		return t.Reverse()
	}
	return t
}

// TCP flag bits.
const (
	flagFIN = 0x01
	flagSYN = 0x02
	flagRST = 0x04
	flagPSH = 0x08
	flagACK = 0x10
)

// Header is what the checker reads from an Ethernet frame carrying TCP.
type Header struct {
	Tuple    Tuple
	Flags    uint8
	Seq, Ack uint32
	// IPOffset is where the IP header starts, IPVersion is 4 or 6.
	IPOffset, IPVersion int
	// TCPOffset is where the TCP header starts; HeaderEnd where it ends,
	// which is where the payload starts. The frame may be shorter than
	// HeaderEnd if it was cut.
	TCPOffset, HeaderEnd int
}

// ParseFrame parses Ethernet (with 802.1Q/802.1ad tags), IPv4 or IPv6 with
// extension headers, and the TCP header's fixed part. It is written
// independently of the daemon's parser on purpose.
func ParseFrame(data []byte) (Header, error) {
	var h Header
	if len(data) < 14 {
		return h, fmt.Errorf("frame of %d bytes: shorter than an Ethernet header", len(data))
	}
	off := 14
	etype := binary.BigEndian.Uint16(data[12:14])
	for etype == 0x8100 || etype == 0x88a8 {
		if len(data) < off+4 {
			return h, errors.New("frame cut inside a VLAN tag")
		}
		etype = binary.BigEndian.Uint16(data[off+2 : off+4])
		off += 4
	}
	h.IPOffset = off
	var src, dst netip.Addr
	switch etype {
	case 0x0800:
		if len(data) < off+20 {
			return h, errors.New("frame cut inside the IPv4 header")
		}
		if data[off]>>4 != 4 {
			return h, fmt.Errorf("IPv4 ethertype with IP version %d", data[off]>>4)
		}
		ihl := int(data[off]&0x0f) * 4
		if ihl < 20 || len(data) < off+ihl {
			return h, fmt.Errorf("bad or cut IPv4 header (IHL %d)", ihl)
		}
		if p := data[off+9]; p != 6 {
			return h, fmt.Errorf("IPv4 protocol %d, not TCP", p)
		}
		if binary.BigEndian.Uint16(data[off+6:off+8])&0x1fff != 0 {
			return h, errors.New("non-first IPv4 fragment")
		}
		h.IPVersion = 4
		src = netip.AddrFrom4([4]byte(data[off+12 : off+16]))
		dst = netip.AddrFrom4([4]byte(data[off+16 : off+20]))
		h.TCPOffset = off + ihl
	case 0x86dd:
		if len(data) < off+40 {
			return h, errors.New("frame cut inside the IPv6 header")
		}
		if data[off]>>4 != 6 {
			return h, fmt.Errorf("IPv6 ethertype with IP version %d", data[off]>>4)
		}
		h.IPVersion = 6
		src = netip.AddrFrom16([16]byte(data[off+8 : off+24]))
		dst = netip.AddrFrom16([16]byte(data[off+24 : off+40]))
		nh, p := data[off+6], off+40
		for range 16 {
			if nh == 6 {
				break
			}
			switch nh {
			case 0, 43, 60, 135: // hop-by-hop, routing, destination options, mobility
				if len(data) < p+2 {
					return h, errors.New("frame cut inside an IPv6 extension header")
				}
				nh, p = data[p], p+(int(data[p+1])+1)*8
			case 44: // fragment
				if len(data) < p+8 {
					return h, errors.New("frame cut inside an IPv6 fragment header")
				}
				if binary.BigEndian.Uint16(data[p+2:p+4])>>3 != 0 {
					return h, errors.New("non-first IPv6 fragment")
				}
				nh, p = data[p], p+8
			case 51: // authentication header
				if len(data) < p+2 {
					return h, errors.New("frame cut inside an IPv6 AH")
				}
				nh, p = data[p], p+(int(data[p+1])+2)*4
			default:
				return h, fmt.Errorf("IPv6 next header %d, not TCP", nh)
			}
		}
		if nh != 6 {
			return h, errors.New("too many IPv6 extension headers")
		}
		h.TCPOffset = p
	default:
		return h, fmt.Errorf("ethertype %#04x is neither IPv4 nor IPv6", etype)
	}
	t := h.TCPOffset
	if len(data) < t+14 {
		return h, errors.New("frame cut before the TCP data offset")
	}
	doff := int(data[t+12]>>4) * 4
	if doff < 20 {
		return h, fmt.Errorf("TCP data offset %d below 20", doff)
	}
	h.Tuple = Tuple{
		Src: netip.AddrPortFrom(src, binary.BigEndian.Uint16(data[t:t+2])),
		Dst: netip.AddrPortFrom(dst, binary.BigEndian.Uint16(data[t+2:t+4])),
	}
	h.Seq = binary.BigEndian.Uint32(data[t+4 : t+8])
	h.Ack = binary.BigEndian.Uint32(data[t+8 : t+12])
	h.Flags = data[t+13]
	h.HeaderEnd = t + doff
	return h, nil
}

// Capture is the content of a pcap file.
type Capture struct {
	LinkType   layers.LinkType
	Nanosecond bool
	Packets    []Packet
}

// pcap magic numbers as the first four bytes, either byte order.
var (
	magicMicroLE = []byte{0xd4, 0xc3, 0xb2, 0xa1}
	magicMicroBE = []byte{0xa1, 0xb2, 0xc3, 0xd4}
	magicNanoLE  = []byte{0x4d, 0x3c, 0xb2, 0xa1}
	magicNanoBE  = []byte{0xa1, 0xb2, 0x3c, 0x4d}
)

// ReadPcap reads a pcap stream. If keep > 0, only the first keep bytes of
// each packet are kept (the ground truth needs headers only).
func ReadPcap(r io.Reader, keep int) (*Capture, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	magic, err := br.Peek(4)
	if err != nil {
		return nil, fmt.Errorf("read pcap magic: %w", err)
	}
	c := &Capture{}
	switch {
	case bytes.Equal(magic, magicNanoLE), bytes.Equal(magic, magicNanoBE):
		c.Nanosecond = true
	case bytes.Equal(magic, magicMicroLE), bytes.Equal(magic, magicMicroBE):
	default:
		return nil, fmt.Errorf("not a pcap file (magic % x)", magic)
	}
	pr, err := pcapgo.NewReader(br)
	if err != nil {
		return nil, fmt.Errorf("read pcap header: %w", err)
	}
	c.LinkType = pr.LinkType()
	for {
		data, ci, err := pr.ReadPacketData()
		if errors.Is(err, io.EOF) {
			return c, nil
		}
		if err != nil {
			return c, fmt.Errorf("read packet %d: %w", len(c.Packets)+1, err)
		}
		if keep > 0 && len(data) > keep {
			data = slices.Clone(data[:keep])
		}
		c.Packets = append(c.Packets, Packet{TS: ci.Timestamp, OrigLen: ci.Length, Data: data})
	}
}

// ReadPcapFile reads a plain pcap file (see ReadPcap).
func ReadPcapFile(path string, keep int) (*Capture, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	c, err := ReadPcap(f, keep)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// ReadFlowFile reads a daemon output file: a gzip of a pcap. The whole gzip
// stream is read, so a torn or corrupt file fails its CRC check here.
func ReadFlowFile(path string) (*Capture, error) {
	raw, err := readGzip(path)
	if err != nil {
		return nil, err
	}
	c, err := ReadPcap(bytes.NewReader(raw), 0)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

func readGzip(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("%s: not gzip: %w", path, err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		return nil, fmt.Errorf("%s: bad gzip stream: %w", path, err)
	}
	if err := zr.Close(); err != nil {
		return nil, fmt.Errorf("%s: bad gzip stream: %w", path, err)
	}
	return raw, nil
}

// Conn is one TCP connection found in a capture.
type Conn struct {
	// Key is the connection's direction-free tuple.
	Key Tuple
	// Client sent the first SYN; invalid if the capture began mid-way.
	Client netip.AddrPort
	// ISN is the client's initial sequence number (if Client is valid).
	ISN uint32
	// Start is the timestamp of the connection's first packet.
	Start time.Time
	// Packets are in timestamp order.
	Packets []Packet
}

// SplitConns groups TCP packets by 4-tuple and, within a tuple, by
// connection: a SYN without ACK that is not a retransmission of the current
// connection's SYN (other sender or other ISN) starts a new connection, so
// consecutive connections that reuse a tuple come apart. Packets are taken
// in timestamp order. It returns the connections by Key, each list in start
// order, and how many packets were not parseable TCP.
func SplitConns(pkts []Packet) (map[Tuple][]*Conn, int) {
	sorted := slices.Clone(pkts)
	slices.SortStableFunc(sorted, func(a, b Packet) int { return a.TS.Compare(b.TS) })
	conns := map[Tuple][]*Conn{}
	skipped := 0
	for _, p := range sorted {
		h, err := ParseFrame(p.Data)
		if err != nil {
			skipped++
			continue
		}
		key := h.Tuple.Key()
		list := conns[key]
		var cur *Conn
		if len(list) > 0 {
			cur = list[len(list)-1]
		}
		if h.Flags&flagSYN != 0 && h.Flags&flagACK == 0 {
			if cur == nil || !cur.Client.IsValid() || cur.Client != h.Tuple.Src || cur.ISN != h.Seq {
				cur = &Conn{Key: key, Client: h.Tuple.Src, ISN: h.Seq, Start: p.TS}
				conns[key] = append(list, cur)
			}
		} else if cur == nil {
			cur = &Conn{Key: key, Start: p.TS}
			conns[key] = append(list, cur)
		}
		cur.Packets = append(cur.Packets, p)
	}
	return conns, skipped
}

// OpenEvent is one tcp-info Open event: a connection tcp-info reported.
type OpenEvent struct {
	UUID string
	// Time is the event's timestamp; the file's date folder derives from it.
	Time time.Time
	// Src is the socket's local end (the capturing host's side), Dst the
	// remote end.
	Src, Dst netip.AddrPort
}

// CheckConfig tells Check what the daemon was asked to do.
type CheckConfig struct {
	// CaptureDuration is the daemon's -captureduration.
	CaptureDuration time.Duration
	// Boundary is the tolerance around the capture cut-off: packets within
	// ±Boundary of first-packet+CaptureDuration may or may not be saved
	// (the saved ones must still be a prefix). Default 50ms.
	Boundary time.Duration
	// MaxHeaderSize is the daemon's -maxheadersize (default 256).
	MaxHeaderSize int
	// Netblock is -anonymize.ip=netblock: the ground truth's addresses are
	// anonymized before comparison.
	Netblock bool
	// KeepAddrs are addresses the daemon may leave unanonymized (the seed
	// keeps the host's own). Loopback is always kept.
	KeepAddrs []netip.Addr
	// SentSlack bounds the timestamp difference for packets the capturing
	// host sent. Every packet socket sees the same kernel timestamp for
	// those, so the default is 0: exact.
	SentSlack time.Duration
	// RecvSlack bounds it for packets the host received. The kernel stamps
	// a received TCP segment separately for each packet socket (its skb
	// carries the sender's monotonic departure time, which AF_PACKET does
	// not use), when it delivers it to that socket, one socket after the
	// other: two captures differ by microseconds, by milliseconds when the
	// receive softirq runs in a preempted ksoftirqd on a loaded host (6.6 ms
	// seen on 2 busy cores). Default 20ms.
	RecvSlack time.Duration
}

func (c CheckConfig) withDefaults() CheckConfig {
	if c.Boundary == 0 {
		c.Boundary = 50 * time.Millisecond
	}
	if c.MaxHeaderSize == 0 {
		c.MaxHeaderSize = 256
	}
	if c.RecvSlack == 0 {
		c.RecvSlack = 20 * time.Millisecond
	}
	return c
}

// Failure is one failed check.
type Failure struct {
	// Check names the check: see the Check* constants.
	Check string
	// UUID and Tuple identify the flow, when there is one. Tuple is the
	// connection as tcp-info reported it: the capturing host's end first.
	UUID  string
	Tuple string
	// Detail says what is wrong.
	Detail string
}

func (f Failure) String() string {
	var b strings.Builder
	b.WriteString(f.Check)
	if f.UUID != "" {
		fmt.Fprintf(&b, " uuid=%s", f.UUID)
	}
	if f.Tuple != "" {
		fmt.Fprintf(&b, " (%s)", f.Tuple)
	}
	b.WriteString(": ")
	b.WriteString(f.Detail)
	return b.String()
}

// The checks.
const (
	CheckMissingFile    = "missing-file"    // tcp-info reported a UUID, no file
	CheckDuplicateFile  = "duplicate-file"  // several files for one UUID
	CheckUnexpectedFile = "unexpected-file" // file for an unreported UUID, or a stray name
	CheckTempFile       = "temp-file"       // a temporary (dot) file left behind
	CheckWrongDate      = "wrong-date"      // date folder is not the Open event's UTC date
	CheckBadFile        = "bad-file"        // not gzip, not nanosecond pcap, not Ethernet
	CheckNoGroundTruth  = "no-ground-truth" // no captured connection for the reported UUID
	CheckPackets        = "packets"         // packets differ from the ground truth
	CheckPayload        = "payload"         // a saved packet goes beyond its TCP header
	CheckAnonymization  = "anonymization"   // a full address survived anonymization
)

// Report is the result of Check.
type Report struct {
	// Reported counts the UUIDs tcp-info reported; Files the flow files
	// found; GroundConns the connections in the ground truth; Matched the
	// files whose packets all matched.
	Reported, Files, GroundConns, Matched int
	// Packets counts saved packets compared.
	Packets int
	// MaxSentSkew and MaxRecvSkew are the largest timestamp differences
	// seen between saved and ground-truth packets.
	MaxSentSkew, MaxRecvSkew time.Duration
	// Failures lists every failed check.
	Failures []Failure
}

func (r *Report) fail(check, uuid string, t Tuple, format string, args ...any) {
	f := Failure{Check: check, UUID: uuid, Detail: fmt.Sprintf(format, args...)}
	if t.Src.IsValid() {
		f.Tuple = t.String()
	}
	r.Failures = append(r.Failures, f)
}

// Count returns how many failures check had.
func (r *Report) Count(check string) int {
	n := 0
	for _, f := range r.Failures {
		if f.Check == check {
			n++
		}
	}
	return n
}

// Summary formats the report: the counts, then up to maxPerCheck failures
// of each check in full.
func (r *Report) Summary(maxPerCheck int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d UUIDs reported by tcp-info, %d files, %d ground-truth connections, %d files matched, %d packets compared, max timestamp skew sent=%v received=%v\n",
		r.Reported, r.Files, r.GroundConns, r.Matched, r.Packets, r.MaxSentSkew, r.MaxRecvSkew)
	if len(r.Failures) == 0 {
		b.WriteString("no failures\n")
		return b.String()
	}
	byCheck := map[string][]Failure{}
	var checks []string
	for _, f := range r.Failures {
		if byCheck[f.Check] == nil {
			checks = append(checks, f.Check)
		}
		byCheck[f.Check] = append(byCheck[f.Check], f)
	}
	sort.Strings(checks)
	fmt.Fprintf(&b, "%d failures:", len(r.Failures))
	for _, c := range checks {
		fmt.Fprintf(&b, " %s=%d", c, len(byCheck[c]))
	}
	b.WriteString("\n")
	for _, c := range checks {
		for i, f := range byCheck[c] {
			if i == maxPerCheck {
				fmt.Fprintf(&b, "  ... and %d more %s failures\n", len(byCheck[c])-maxPerCheck, c)
				break
			}
			fmt.Fprintf(&b, "  %s\n", f)
		}
	}
	return b.String()
}

var flowFileRE = regexp.MustCompile(`^(\d{4})/(\d{2})/(\d{2})/([^/]+)\.pcap\.gz$`)

// DataDir is what ScanDataDir found.
type DataDir struct {
	// Files maps each UUID to the files named after it (relative paths).
	Files map[string][]string
	// Temp lists temporary files (a path component starts with '.').
	Temp []string
	// Stray lists other files that are not YYYY/MM/DD/UUID.pcap.gz.
	Stray []string
}

// ScanDataDir lists the daemon's output directory.
func ScanDataDir(dir string) (*DataDir, error) {
	d := &DataDir{Files: map[string][]string{}}
	err := filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() {
			return nil
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		for _, part := range strings.Split(rel, "/") {
			if strings.HasPrefix(part, ".") {
				d.Temp = append(d.Temp, rel)
				return nil
			}
		}
		m := flowFileRE.FindStringSubmatch(rel)
		if m == nil || !e.Type().IsRegular() {
			d.Stray = append(d.Stray, rel)
			return nil
		}
		d.Files[m[4]] = append(d.Files[m[4]], rel)
		return nil
	})
	return d, err
}

// Check compares the daemon's output in datadir with the ground truth
// capture and the connections tcp-info reported:
//
//   - every reported UUID has exactly one file, in the date folder of its
//     Open event, and there is no other file and no temporary file;
//   - every file is a gzip of a nanosecond pcap with link type Ethernet;
//   - every saved packet ends exactly at the end of its TCP header (or at
//     MaxHeaderSize);
//   - the saved packets are the ground truth packets of the connection the
//     UUID names (see MatchConns), limited to the first CaptureDuration
//     (±Boundary, as a prefix), compared per direction:
//     same count, same timestamps, same wire length, same bytes up to the
//     end of the TCP header (anonymized first with Netblock).
func Check(cfg CheckConfig, ground []Packet, opens []OpenEvent, datadir string) *Report {
	cfg = cfg.withDefaults()
	r := &Report{}
	dd, err := ScanDataDir(datadir)
	if err != nil {
		r.fail(CheckBadFile, "", Tuple{}, "scan data dir: %v", err)
		return r
	}
	for _, p := range dd.Temp {
		r.fail(CheckTempFile, "", Tuple{}, "temporary file left behind: %s", p)
	}
	for _, p := range dd.Stray {
		r.fail(CheckUnexpectedFile, "", Tuple{}, "file that is not YYYY/MM/DD/UUID.pcap.gz: %s", p)
	}
	for _, paths := range dd.Files {
		r.Files += len(paths)
	}

	conns, _ := SplitConns(ground)
	for _, l := range conns {
		r.GroundConns += len(l)
	}

	byUUID := map[string]OpenEvent{}
	var events []OpenEvent
	for _, ev := range opens {
		if _, dup := byUUID[ev.UUID]; dup {
			continue
		}
		byUUID[ev.UUID] = ev
		events = append(events, ev)
	}
	r.Reported = len(events)
	sort.SliceStable(events, func(i, j int) bool { return events[i].Time.Before(events[j].Time) })

	var uuids []string
	for u := range dd.Files {
		uuids = append(uuids, u)
	}
	sort.Strings(uuids)
	for _, u := range uuids {
		if _, ok := byUUID[u]; !ok {
			r.fail(CheckUnexpectedFile, u, Tuple{}, "file for a UUID tcp-info did not report: %s", strings.Join(dd.Files[u], ", "))
		}
	}

	matched := MatchConns(conns, events)
	for _, ev := range events {
		tuple := Tuple{Src: ev.Src, Dst: ev.Dst}
		paths := dd.Files[ev.UUID]
		if len(paths) == 0 {
			r.fail(CheckMissingFile, ev.UUID, tuple, "no file for a UUID tcp-info reported at %s", ev.Time.UTC().Format(time.RFC3339Nano))
			continue
		}
		if len(paths) > 1 {
			r.fail(CheckDuplicateFile, ev.UUID, tuple, "%d files: %s", len(paths), strings.Join(paths, ", "))
		}
		path := paths[0]
		if want := ev.Time.UTC().Format("2006/01/02") + "/"; !strings.HasPrefix(path, want) {
			r.fail(CheckWrongDate, ev.UUID, tuple, "file %s is not under %s (Open event at %s)", path, want, ev.Time.UTC().Format(time.RFC3339Nano))
		}
		got, err := ReadFlowFile(filepath.Join(datadir, filepath.FromSlash(path)))
		if err != nil {
			r.fail(CheckBadFile, ev.UUID, tuple, "%v", err)
			continue
		}
		if !got.Nanosecond {
			r.fail(CheckBadFile, ev.UUID, tuple, "%s: microsecond pcap, want nanosecond resolution", path)
		}
		if got.LinkType != layers.LinkTypeEthernet {
			r.fail(CheckBadFile, ev.UUID, tuple, "%s: link type %v, want Ethernet", path, got.LinkType)
		}
		payloadOK := checkPayload(r, cfg, ev, tuple, got.Packets)

		conn := matched[ev.UUID]
		if conn == nil {
			r.fail(CheckNoGroundTruth, ev.UUID, tuple, "the ground truth has no connection on this tuple that started before the Open event at %s (and before those of later UUIDs on the tuple)", ev.Time.UTC().Format(time.RFC3339Nano))
			continue
		}
		r.Packets += len(got.Packets)
		if comparePackets(r, cfg, ev, tuple, conn, conns[tuple.Key()], got.Packets) && payloadOK {
			r.Matched++
		}
	}
	return r
}

// MatchConns names ground-truth connections with tcp-info's UUIDs. A UUID
// names a connection on its tuple that started before its Open event: the
// socket existed when tcp-info saw it, and tcp-info stamps the event after
// that. Consecutive connections on a reused tuple never overlap and
// tcp-info sees their sockets in order, so on each tuple the UUIDs, in
// Open-time order, name connections in start order, each a different one.
// The Open timestamp may lag the observation by a lot under load (more than
// the gap between two connections on a tuple), so the nearest connection is
// not always the right one: MatchConns walks each tuple's UUIDs from the
// latest back, giving each the latest connection that started before its
// Open event and before the connection given to the next UUID. UUIDs left
// without a connection are absent from the result.
func MatchConns(conns map[Tuple][]*Conn, opens []OpenEvent) map[string]*Conn {
	byKey := map[Tuple][]OpenEvent{}
	seen := map[string]bool{}
	for _, ev := range opens {
		if seen[ev.UUID] {
			continue
		}
		seen[ev.UUID] = true
		key := Tuple{Src: ev.Src, Dst: ev.Dst}.Key()
		byKey[key] = append(byKey[key], ev)
	}
	out := map[string]*Conn{}
	for key, evs := range byKey {
		sort.SliceStable(evs, func(i, j int) bool { return evs[i].Time.Before(evs[j].Time) })
		list := conns[key] // in start order
		limit := len(list) // connections at or after limit are taken
		for i := len(evs) - 1; i >= 0; i-- {
			j := limit - 1
			for j >= 0 && list[j].Start.After(evs[i].Time) {
				j--
			}
			if j < 0 {
				continue
			}
			out[evs[i].UUID] = list[j]
			limit = j
		}
	}
	return out
}

// checkPayload checks that every saved packet ends at its TCP header's end
// (or at MaxHeaderSize) and that its wire length is not smaller.
func checkPayload(r *Report, cfg CheckConfig, ev OpenEvent, tuple Tuple, pkts []Packet) bool {
	for i, p := range pkts {
		h, err := ParseFrame(p.Data)
		if err != nil {
			r.fail(CheckPayload, ev.UUID, tuple, "packet %d (%s): cannot parse the saved bytes: %v", i+1, p.TS.UTC().Format(time.RFC3339Nano), err)
			return false
		}
		want := min(h.HeaderEnd, cfg.MaxHeaderSize)
		if len(p.Data) != want {
			what := "payload bytes saved"
			if len(p.Data) < want {
				what = "header cut short"
			}
			r.fail(CheckPayload, ev.UUID, tuple, "packet %d (%s): %s: %d bytes saved, TCP header ends at %d (max header size %d)",
				i+1, describe(p), what, len(p.Data), h.HeaderEnd, cfg.MaxHeaderSize)
			return false
		}
		if p.OrigLen < len(p.Data) {
			r.fail(CheckPayload, ev.UUID, tuple, "packet %d (%s): wire length %d below saved length %d", i+1, describe(p), p.OrigLen, len(p.Data))
			return false
		}
	}
	return true
}

// expected is one ground-truth packet as the daemon should save it.
type expected struct {
	Packet
	sent bool
}

// comparePackets compares the saved packets of one flow with the ground
// truth connection, per direction (the two directions are stamped on
// different CPUs, so their interleaving may differ between two captures).
// maxRecvReorder is how far apart two received packets may be found in the
// daemon's file and in the ground truth.
const maxRecvReorder = 4

func comparePackets(r *Report, cfg CheckConfig, ev OpenEvent, tuple Tuple, conn *Conn, siblings []*Conn, got []Packet) bool {
	local := anonAddrPort(cfg, ev.Src)
	cut := conn.Start.Add(cfg.CaptureDuration)
	mustBefore, mayUntil := cut.Add(-cfg.Boundary), cut.Add(cfg.Boundary)
	want := expectedOf(cfg, ev, conn)
	var have [2][]Packet
	for _, p := range got {
		h, err := ParseFrame(p.Data)
		if err != nil {
			continue // reported by checkPayload
		}
		dir := 0
		if h.Tuple.Src == local {
			dir = 1
		}
		have[dir] = append(have[dir], p)
	}

	ok := true
	for dir, name := range []string{"received", "sent"} {
		w, g := want[dir], have[dir]
		minN, maxN := 0, 0
		for _, e := range w {
			if e.TS.Before(mustBefore) {
				minN++
			}
			if !e.TS.After(mayUntil) {
				maxN++
			}
		}
		n := min(len(w), len(g))
		for i := range n {
			msg := diffPacket(r, cfg, w[i], g[i])
			if msg != "" && dir == 0 {
				// Received packets are stamped separately for each
				// capture socket, so two close ones may come in the
				// other order in the ground truth: accept a nearby saved
				// packet that matches exactly (bytes, length, timestamp
				// within RecvSlack).
				for j := i + 1; j < len(g) && j <= i+maxRecvReorder; j++ {
					if diffPacket(r, cfg, w[i], g[j]) == "" {
						g[i], g[j] = g[j], g[i]
						msg = ""
						break
					}
				}
			}
			if msg == "" {
				continue
			}
			ok = false
			// Name the likely cause: packets missing or extra here.
			if k := indexOfExpected(cfg, w[i+1:], g[i]); k >= 0 {
				r.fail(CheckPackets, ev.UUID, tuple, "%s packets: %d missing before saved packet %d of %d; first missing: %s (at +%v)%s",
					name, k+1, i+1, len(g), describe(w[i].Packet), w[i].TS.Sub(conn.Start), savedElsewhere(siblings))
			} else if k := indexOfSaved(cfg, w[i], g[i+1:]); k >= 0 {
				r.fail(CheckPackets, ev.UUID, tuple, "%s packets: %d saved before packet %d of %d do not belong to this connection; first: %s (at +%v)%s",
					name, k+1, i+1+k+1, len(g), describe(g[i]), g[i].TS.Sub(conn.Start), siblingHint(cfg, ev, conn, siblings, g[i]))
			} else {
				r.fail(CheckPackets, ev.UUID, tuple, "%s packet %d of %d: %s%s", name, i+1, len(g), msg, siblingHint(cfg, ev, conn, siblings, g[i]))
			}
			break
		}
		if !ok {
			continue
		}
		switch {
		case len(g) < minN:
			r.fail(CheckPackets, ev.UUID, tuple, "%s packets: %d saved, want %d..%d (cut-off %v after the first packet at %s); first missing: %s (at +%v)",
				name, len(g), minN, maxN, cfg.CaptureDuration, conn.Start.UTC().Format(time.RFC3339Nano), describe(w[len(g)].Packet), w[len(g)].TS.Sub(conn.Start))
			ok = false
		case len(g) > maxN:
			r.fail(CheckPackets, ev.UUID, tuple, "%s packets: %d saved, want %d..%d (cut-off %v after the first packet at %s); first extra: %s (at +%v)%s",
				name, len(g), minN, maxN, cfg.CaptureDuration, conn.Start.UTC().Format(time.RFC3339Nano), describe(g[maxN]), g[maxN].TS.Sub(conn.Start),
				siblingHint(cfg, ev, conn, siblings, g[maxN]))
			ok = false
		}
	}
	return ok
}

// expectedOf returns the packets of conn as the daemon should save them,
// split by direction: [0] received by the capturing host, [1] sent by it.
func expectedOf(cfg CheckConfig, ev OpenEvent, conn *Conn) [2][]expected {
	var want [2][]expected
	for _, p := range conn.Packets {
		h, err := ParseFrame(p.Data)
		if err != nil {
			continue
		}
		e := expected{Packet: p, sent: h.Tuple.Src == ev.Src}
		data := anonymizeFrame(cfg, p.Data, h)
		e.Data = data[:min(h.HeaderEnd, cfg.MaxHeaderSize, len(data))]
		dir := 0
		if e.sent {
			dir = 1
		}
		want[dir] = append(want[dir], e)
	}
	return want
}

// siblingHint says which other connection on the same tuple a saved packet
// belongs to, if any: the sign of a flow split wrongly on 4-tuple reuse.
func siblingHint(cfg CheckConfig, ev OpenEvent, conn *Conn, siblings []*Conn, g Packet) string {
	for _, c := range siblings {
		if c == conn {
			continue
		}
		for _, w := range expectedOf(cfg, ev, c) {
			if indexOfExpected(cfg, w, g) >= 0 {
				rel := "earlier"
				if c.Start.After(conn.Start) {
					rel = "later"
				}
				return fmt.Sprintf(" (it belongs to the %s connection on this tuple, started %s, client ISN %d; this UUID's connection started %s, client ISN %d)",
					rel, c.Start.UTC().Format(time.RFC3339Nano), c.ISN, conn.Start.UTC().Format(time.RFC3339Nano), conn.ISN)
			}
		}
	}
	return ""
}

// savedElsewhere notes that other connections share the tuple (where the
// missing packets may have gone).
func savedElsewhere(siblings []*Conn) string {
	if len(siblings) < 2 {
		return ""
	}
	return fmt.Sprintf(" (%d connections used this tuple)", len(siblings))
}

// indexOfExpected returns the index of the first packet in ws that g
// equals, or -1.
func indexOfExpected(cfg CheckConfig, ws []expected, g Packet) int {
	var scratch Report
	for i, w := range ws {
		if diffPacket(&scratch, cfg, w, g) == "" {
			return i
		}
	}
	return -1
}

// indexOfSaved returns the index of the first packet in gs that equals w,
// or -1.
func indexOfSaved(cfg CheckConfig, w expected, gs []Packet) int {
	var scratch Report
	for i, g := range gs {
		if diffPacket(&scratch, cfg, w, g) == "" {
			return i
		}
	}
	return -1
}

// diffPacket returns how a saved packet differs from the expected one, or
// "" if it does not.
func diffPacket(r *Report, cfg CheckConfig, w expected, g Packet) string {
	if !bytes.Equal(w.Data, g.Data) {
		i := 0
		for i < len(w.Data) && i < len(g.Data) && w.Data[i] == g.Data[i] {
			i++
		}
		return fmt.Sprintf("bytes differ at offset %d (saved %d bytes, want %d): saved %s, want %s",
			i, len(g.Data), len(w.Data), describe(g), describe(w.Packet))
	}
	if g.OrigLen != w.OrigLen {
		return fmt.Sprintf("wire length %d, want %d (%s)", g.OrigLen, w.OrigLen, describe(g))
	}
	skew := g.TS.Sub(w.TS).Abs()
	slack := cfg.RecvSlack
	if w.sent {
		slack = cfg.SentSlack
		r.MaxSentSkew = max(r.MaxSentSkew, skew)
	} else {
		r.MaxRecvSkew = max(r.MaxRecvSkew, skew)
	}
	if skew > slack {
		return fmt.Sprintf("timestamp %s, want %s (off by %v, allowed %v) (%s)",
			g.TS.UTC().Format(time.RFC3339Nano), w.TS.UTC().Format(time.RFC3339Nano), skew, slack, describe(g))
	}
	return ""
}

// describe formats a packet like a one-line tcpdump.
func describe(p Packet) string {
	h, err := ParseFrame(p.Data)
	if err != nil {
		return fmt.Sprintf("%s unparseable (%v)", p.TS.UTC().Format("15:04:05.000000000"), err)
	}
	var fl []byte
	for _, f := range []struct {
		bit uint8
		c   byte
	}{{flagSYN, 'S'}, {flagFIN, 'F'}, {flagRST, 'R'}, {flagPSH, 'P'}, {flagACK, '.'}} {
		if h.Flags&f.bit != 0 {
			fl = append(fl, f.c)
		}
	}
	return fmt.Sprintf("%s %s [%s] seq %d ack %d len %d/%d",
		p.TS.UTC().Format("15:04:05.000000000"), h.Tuple, fl, h.Seq, h.Ack, len(p.Data), p.OrigLen)
}

// anonAddr applies netblock anonymization to a (if cfg.Netblock): keep an
// IPv4 /24 or an IPv6 /48. Loopback and cfg.KeepAddrs are kept.
func anonAddr(cfg CheckConfig, a netip.Addr) netip.Addr {
	if !cfg.Netblock || a.IsLoopback() || slices.Contains(cfg.KeepAddrs, a) {
		return a
	}
	bits := 48
	if a.Is4() {
		bits = 24
	}
	p, err := a.Prefix(bits)
	if err != nil {
		return a
	}
	return p.Addr()
}

func anonAddrPort(cfg CheckConfig, ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(anonAddr(cfg, ap.Addr()), ap.Port())
}

// anonymizeFrame returns data with the IP addresses anonymized as
// anonAddr says; checksums are left alone, as the daemon leaves them.
func anonymizeFrame(cfg CheckConfig, data []byte, h Header) []byte {
	if !cfg.Netblock {
		return data
	}
	out := slices.Clone(data)
	src, dst := anonAddr(cfg, h.Tuple.Src.Addr()), anonAddr(cfg, h.Tuple.Dst.Addr())
	o := h.IPOffset
	if h.IPVersion == 4 {
		s, d := src.As4(), dst.As4()
		copy(out[o+12:o+16], s[:])
		copy(out[o+16:o+20], d[:])
	} else {
		s, d := src.As16(), dst.As16()
		copy(out[o+8:o+24], s[:])
		copy(out[o+24:o+40], d[:])
	}
	return out
}

// textForms returns the ways a may be written in text.
func textForms(a netip.Addr) []string {
	forms := []string{a.String()}
	if a.Is4() {
		forms = append(forms, "::ffff:"+a.String())
	} else {
		forms = append(forms, a.StringExpanded())
		// Without leading zeros: 2001:db8:0:0:0:0:0:1.
		parts := strings.Split(a.StringExpanded(), ":")
		for i, p := range parts {
			parts[i] = strings.TrimLeft(p, "0")
			if parts[i] == "" {
				parts[i] = "0"
			}
		}
		forms = append(forms, strings.Join(parts, ":"))
	}
	return forms
}

// FindTextAddrs returns each place where one of addrs appears in text,
// with some context. Matches are delimited (192.0.2.1 does not match inside
// 192.0.2.10) but tcpdump's address.port notation does match.
func FindTextAddrs(text []byte, addrs []netip.Addr) []string {
	var hits []string
	for _, a := range addrs {
		pre, post := `(^|[^0-9])`, `($|[^0-9])`
		if a.Is6() {
			pre, post = `(^|[^0-9A-Fa-f:])`, `($|[^0-9A-Fa-f:])`
		}
		for _, form := range textForms(a) {
			re := regexp.MustCompile(pre + regexp.QuoteMeta(form) + post)
			for _, loc := range re.FindAllIndex(text, 5) {
				from, to := max(0, loc[0]-40), min(len(text), loc[1]+40)
				hits = append(hits, fmt.Sprintf("%s in %q", form, text[from:to]))
			}
		}
	}
	return hits
}

// FindBinaryAddrs returns a description of each packet whose link and IP
// headers (everything before the TCP header) contain one of addrs in binary
// form. The TCP header itself is not searched: sequence numbers and
// timestamps hold arbitrary bytes.
func FindBinaryAddrs(pkts []Packet, addrs []netip.Addr) []string {
	var hits []string
	for i, p := range pkts {
		h, err := ParseFrame(p.Data)
		region := p.Data
		if err == nil {
			region = p.Data[:h.TCPOffset]
		}
		for _, a := range addrs {
			b := a.AsSlice()
			if bytes.Contains(region, b) {
				hits = append(hits, fmt.Sprintf("packet %d (%s) contains %s", i+1, describe(p), a))
			}
		}
	}
	return hits
}
