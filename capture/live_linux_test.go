package capture

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/headercap/headercap/internal/netns"
)

// requireNetns skips the test unless it can create network namespaces (as
// root); with HEADERCAP_REQUIRE_NETNS=1 it fails instead.
func requireNetns(t *testing.T) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "needs root to create network namespaces"
	} else if _, err := exec.LookPath("ip"); err != nil {
		why = "needs the ip command (iproute2)"
	}
	if why == "" {
		return
	}
	if os.Getenv("HEADERCAP_REQUIRE_NETNS") == "1" {
		t.Fatalf("%s (HEADERCAP_REQUIRE_NETNS=1)", why)
	}
	t.Skip(why)
}

// testNet is two network namespaces joined by a veth pair: vethA in nsA
// (192.0.2.1, 2001:db8::1), vethB in nsB (192.0.2.2, 2001:db8::2).
type testNet struct {
	nsA, nsB     string
	vethA, vethB string
}

var (
	addrA4 = netip.MustParseAddr("192.0.2.1")
	addrB4 = netip.MustParseAddr("192.0.2.2")
	addrA6 = netip.MustParseAddr("2001:db8::1")
	addrB6 = netip.MustParseAddr("2001:db8::2")
)

var netSeq atomic.Int32

func newTestNet(t *testing.T) *testNet {
	t.Helper()
	requireNetns(t)
	n, pid := netSeq.Add(1), os.Getpid()
	tn := &testNet{
		nsA:   fmt.Sprintf("hc-cap-%d-%d-a", pid, n),
		nsB:   fmt.Sprintf("hc-cap-%d-%d-b", pid, n),
		vethA: fmt.Sprintf("hc%da%d", pid, n),
		vethB: fmt.Sprintf("hc%db%d", pid, n),
	}
	t.Cleanup(func() {
		// Deleting a namespace deletes the veth end in it, and with it the
		// peer.
		for _, ns := range []string{tn.nsA, tn.nsB} {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil && !strings.Contains(string(out), "No such file") {
				t.Logf("ip netns del %s: %v: %s", ns, err, out)
			}
		}
	})
	mustRun(t, "ip", "netns", "add", tn.nsA)
	mustRun(t, "ip", "netns", "add", tn.nsB)
	mustRun(t, "ip", "link", "add", tn.vethA, "netns", tn.nsA, "type", "veth", "peer", "name", tn.vethB, "netns", tn.nsB)
	for _, s := range []struct{ ns, dev, a4, a6 string }{
		{tn.nsA, tn.vethA, "192.0.2.1/24", "2001:db8::1/64"},
		{tn.nsB, tn.vethB, "192.0.2.2/24", "2001:db8::2/64"},
	} {
		tn.exec(t, s.ns, "ip", "link", "set", "lo", "up")
		tn.exec(t, s.ns, "ip", "addr", "add", s.a4, "dev", s.dev)
		tn.exec(t, s.ns, "ip", "-6", "addr", "add", s.a6, "dev", s.dev, "nodad")
		tn.exec(t, s.ns, "ip", "link", "set", s.dev, "up")
	}
	return tn
}

func mustRun(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// exec runs a command inside namespace ns.
func (tn *testNet) exec(t *testing.T, ns string, args ...string) {
	t.Helper()
	mustRun(t, "ip", append([]string{"netns", "exec", ns}, args...)...)
}

// liveFrame is what the test keeps of a handed frame.
type liveFrame struct {
	worker  int
	data    []byte
	wireLen int
	ifindex int
	ts      time.Time
}

// liveHandlers records the frames and ticks of every worker.
type liveHandlers struct {
	mu     sync.Mutex
	frames []liveFrame
	ticks  map[int][]time.Time // wall-clock time of each Tick call
	future int                 // Tick horizons after the wall clock
}

type liveHandler struct {
	all    *liveHandlers
	worker int
}

func (h *liveHandler) HandleFrame(f *Frame) {
	h.all.mu.Lock()
	defer h.all.mu.Unlock()
	h.all.frames = append(h.all.frames, liveFrame{h.worker, bytes.Clone(f.Data), f.WireLen, f.Interface, f.Timestamp})
}

// Tick records when it is called; now, the horizon before which every
// frame was handed over, must not be in the future.
func (h *liveHandler) Tick(now time.Time) {
	wall := time.Now()
	h.all.mu.Lock()
	defer h.all.mu.Unlock()
	h.all.ticks[h.worker] = append(h.all.ticks[h.worker], wall)
	if now.After(wall) {
		h.all.future++
	}
}

func (a *liveHandlers) newHandler(worker int) Handler {
	return &liveHandler{all: a, worker: worker}
}

func (a *liveHandlers) snapshot() []liveFrame {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.frames)
}

// runningLive is a Live running in a namespace.
type runningLive struct {
	live     *Live
	reg      *prometheus.Registry
	handlers *liveHandlers
	cancel   context.CancelFunc
	done     chan error
}

// startLive starts Live with cfg in namespace ns and waits until its sockets
// are open.
func startLive(t *testing.T, ns string, cfg Config) *runningLive {
	t.Helper()
	rl := &runningLive{
		reg:      prometheus.NewRegistry(),
		handlers: &liveHandlers{ticks: map[int][]time.Time{}},
		done:     make(chan error, 1),
	}
	ctx, cancel := context.WithCancel(context.Background())
	rl.cancel = cancel
	created := make(chan error, 1)
	go func() {
		rl.done <- netns.Do(ns, func() error {
			l, err := NewLive(cfg, rl.handlers.newHandler, rl.reg)
			rl.live = l
			created <- err
			if err != nil {
				return err
			}
			return l.Run(ctx)
		})
	}()
	if err := <-created; err != nil {
		cancel()
		<-rl.done
		t.Fatalf("NewLive: %v", err)
	}
	t.Cleanup(func() { rl.stop(t) })
	// Run raises the gauge once every socket is open and in its group.
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(rl.live.m.interfaces) < float64(len(cfg.Interfaces)) {
		select {
		case err := <-rl.done:
			rl.done <- err
			t.Fatalf("Run returned early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("capture did not start")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return rl
}

// stop cancels Run and returns how long it took to return, and its error.
func (rl *runningLive) stop(t *testing.T) (time.Duration, error) {
	t.Helper()
	start := time.Now()
	rl.cancel()
	select {
	case err := <-rl.done:
		rl.done <- err // for later calls
		return time.Since(start), err
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s of cancel")
		return 0, nil
	}
}

// echoServer accepts connections on listeners created in ns and echoes.
type echoServer struct {
	lns []net.Listener
	wg  sync.WaitGroup
}

func startEcho(t *testing.T, ns string, addrs ...netip.Addr) *echoServer {
	t.Helper()
	s := &echoServer{}
	err := netns.Do(ns, func() error {
		for _, a := range addrs {
			ln, err := net.Listen("tcp", netip.AddrPortFrom(a, 0).String())
			if err != nil {
				return err
			}
			s.lns = append(s.lns, ln)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", ns, err)
	}
	for _, ln := range s.lns {
		s.wg.Go(func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				s.wg.Go(func() {
					defer c.Close()
					_, _ = io.Copy(c, c)
				})
			}
		})
	}
	t.Cleanup(s.close)
	return s
}

func (s *echoServer) close() {
	for _, ln := range s.lns {
		ln.Close()
	}
	s.wg.Wait()
}

// addr returns the listening address for family of a (4 or 6).
func (s *echoServer) addr(a netip.Addr) string {
	for _, ln := range s.lns {
		ap := netip.MustParseAddrPort(ln.Addr().String())
		if ap.Addr() == a {
			return ap.String()
		}
	}
	return ""
}

// exchange dials addr from namespace ns n times, sends size bytes on each
// connection, reads them back and closes. It returns the local ports.
func exchange(ns, addr string, n, size int) ([]uint16, error) {
	var ports []uint16
	err := netns.Do(ns, func() error {
		msg := bytes.Repeat([]byte("headercap"), size/9+1)[:size]
		buf := make([]byte, size)
		for range n {
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				return err
			}
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			ports = append(ports, uint16(c.LocalAddr().(*net.TCPAddr).Port))
			if _, err := c.Write(msg); err != nil {
				c.Close()
				return err
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				c.Close()
				return err
			}
			if err := c.Close(); err != nil {
				return err
			}
		}
		return nil
	})
	return ports, err
}

// parsedFrame is a frame's TCP 4-tuple and IP length, parsed by the test.
type parsedFrame struct {
	vlan         int // -1: untagged
	src, dst     netip.Addr
	sport, dport uint16
	ipLen        int // IPv4 total length or IPv6 40 + payload length
	l2Len        int
	syn, fin     bool
}

func parseFrame(b []byte) (p parsedFrame, err error) {
	p.vlan = -1
	if len(b) < 14 {
		return p, errors.New("short ethernet")
	}
	et := binary.BigEndian.Uint16(b[12:])
	off := 14
	if et == etherTypeVLAN {
		p.vlan = int(binary.BigEndian.Uint16(b[14:]) & 0xfff)
		et = binary.BigEndian.Uint16(b[16:])
		off = 18
	}
	p.l2Len = off
	ip := b[off:]
	var tcp []byte
	switch et {
	case etherTypeIPv4:
		if len(ip) < 20 || ip[9] != protoTCP {
			return p, fmt.Errorf("not IPv4 TCP: % x", b)
		}
		ihl := int(ip[0]&0xf) * 4
		p.ipLen = int(binary.BigEndian.Uint16(ip[2:]))
		p.src, _ = netip.AddrFromSlice(ip[12:16])
		p.dst, _ = netip.AddrFromSlice(ip[16:20])
		tcp = ip[ihl:]
	case etherTypeIPv6:
		if len(ip) < 40 || ip[6] != protoTCP {
			return p, fmt.Errorf("not IPv6 TCP: % x", b)
		}
		p.ipLen = 40 + int(binary.BigEndian.Uint16(ip[4:]))
		p.src, _ = netip.AddrFromSlice(ip[8:24])
		p.dst, _ = netip.AddrFromSlice(ip[24:40])
		tcp = ip[40:]
	default:
		return p, fmt.Errorf("ethertype %#x", et)
	}
	if len(tcp) < 14 {
		return p, errors.New("short TCP header")
	}
	p.sport = binary.BigEndian.Uint16(tcp)
	p.dport = binary.BigEndian.Uint16(tcp[2:])
	p.syn, p.fin = tcp[13]&2 != 0, tcp[13]&1 != 0
	return p, nil
}

// flowKey names a connection independent of direction.
type flowKey struct {
	a, b   netip.AddrPort
	family int
}

func keyOf(p parsedFrame) flowKey {
	x, y := netip.AddrPortFrom(p.src, p.sport), netip.AddrPortFrom(p.dst, p.dport)
	if x.Compare(y) > 0 {
		x, y = y, x
	}
	fam := 4
	if p.src.Is6() {
		fam = 6
	}
	return flowKey{x, y, fam}
}

// waitFrames waits until cond holds for the frames recorded so far.
func waitFrames(t *testing.T, rl *runningLive, what string, cond func([]liveFrame) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond(rl.handlers.snapshot()) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestLiveCapture(t *testing.T) {
	tn := newTestNet(t)
	echo := startEcho(t, tn.nsB, addrB4, addrB6)
	const snap, workers, conns, size = 96, 2, 16, 3000
	tick := 20 * time.Millisecond
	start := time.Now()
	rl := startLive(t, tn.nsA, Config{
		Interfaces:   []string{tn.vethA},
		Workers:      workers,
		SnapLen:      snap,
		BlockSize:    1 << 16,
		NumBlocks:    8,
		BlockTimeout: 5 * time.Millisecond,
		TickInterval: tick,
	})
	if n := rl.live.NumWorkers(); n != workers {
		t.Fatalf("NumWorkers = %d", n)
	}

	ports := map[int][]uint16{}
	for _, a := range []netip.Addr{addrB4, addrB6} {
		p, err := exchange(tn.nsA, echo.addr(a), conns, size)
		if err != nil {
			t.Fatalf("traffic to %v: %v", a, err)
		}
		fam := 4
		if a.Is6() {
			fam = 6
		}
		ports[fam] = p
	}
	// Every connection ends with a FIN each way; wait for the last ones.
	waitFrames(t, rl, "the FINs of every connection", func(fs []liveFrame) bool {
		fins := 0
		for _, f := range fs {
			if p, err := parseFrame(f.data); err == nil && p.fin {
				fins++
			}
		}
		return fins >= 2*2*conns
	})
	time.Sleep(5 * tick) // idle: ticks must go on
	took, err := rl.stop(t)
	end := time.Now()
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if took > 500*time.Millisecond {
		t.Errorf("Run took %v to return after cancel", took)
	}
	t.Logf("Run returned %v after cancel", took)
	if g := testutil.ToFloat64(rl.live.m.interfaces); g != 0 {
		t.Errorf("interfaces gauge %v after Run returned", g)
	}

	frames := rl.handlers.snapshot()
	ifindex := interfaceIndex(t, tn.nsA, tn.vethA)
	byFlow := map[flowKey]map[int]bool{}      // workers per flow
	dirs := map[flowKey]map[netip.Addr]bool{} // sources per flow
	perFamily := map[int]int{}
	for _, f := range frames {
		p, err := parseFrame(f.data)
		if err != nil {
			t.Fatalf("frame that is not TCP handed over: %v", err)
		}
		k := keyOf(p)
		perFamily[k.family]++
		if byFlow[k] == nil {
			byFlow[k], dirs[k] = map[int]bool{}, map[netip.Addr]bool{}
		}
		byFlow[k][f.worker] = true
		dirs[k][p.src] = true
		if want := p.l2Len + p.ipLen; f.wireLen != want {
			t.Errorf("WireLen %d, want %d (IP length %d)", f.wireLen, want, p.ipLen)
		}
		if want := min(f.wireLen, snap); len(f.data) != want {
			t.Errorf("captured %d bytes of a %d byte frame with snaplen %d", len(f.data), f.wireLen, snap)
		}
		if f.ifindex != ifindex {
			t.Errorf("Interface %d, want %d", f.ifindex, ifindex)
		}
		if f.ts.Before(start.Add(-time.Second)) || f.ts.After(end.Add(time.Second)) {
			t.Errorf("timestamp %v outside the test's run [%v, %v]", f.ts, start, end)
		}
	}
	if perFamily[4] == 0 || perFamily[6] == 0 {
		t.Fatalf("frames per family: %v", perFamily)
	}
	if len(byFlow) != 2*conns {
		t.Errorf("saw %d connections, want %d", len(byFlow), 2*conns)
	}
	used := map[int]bool{}
	for k, ws := range byFlow {
		if len(ws) != 1 {
			t.Errorf("connection %v reached workers %v; want one", k, ws)
		}
		if len(dirs[k]) != 2 {
			t.Errorf("connection %v seen in %d direction(s)", k, len(dirs[k]))
		}
		for w := range ws {
			used[w] = true
		}
	}
	if len(used) != workers {
		t.Errorf("%d connections all went to workers %v; the fanout should spread them", len(byFlow), used)
	}
	for fam, ps := range ports {
		for _, port := range ps {
			found := false
			for k := range byFlow {
				if k.family == fam && (k.a.Port() == port || k.b.Port() == port) {
					found = true
				}
			}
			if !found {
				t.Errorf("no frame of the IPv%d connection from port %d", fam, port)
			}
		}
	}

	// Ticks: every worker, at most a few intervals apart (generous for
	// loaded machines), also while idle.
	rl.handlers.mu.Lock()
	defer rl.handlers.mu.Unlock()
	if rl.handlers.future > 0 {
		t.Errorf("%d Tick horizons in the future", rl.handlers.future)
	}
	for w := range workers {
		ticks := rl.handlers.ticks[w]
		if len(ticks) < 3 {
			t.Errorf("worker %d ticked %d times", w, len(ticks))
			continue
		}
		for i := 1; i < len(ticks); i++ {
			if gap := ticks[i].Sub(ticks[i-1]); gap > 10*tick {
				t.Errorf("worker %d: %v between ticks (interval %v)", w, gap, tick)
			}
		}
	}

	// Metrics.
	m := rl.live.m
	name := tn.vethA
	if got, want := testutil.ToFloat64(m.frames.WithLabelValues(name)), float64(len(frames)); got != want {
		t.Errorf("frames_total = %v, handlers got %v", got, want)
	}
	kp := testutil.ToFloat64(m.kernelPackets.WithLabelValues(name))
	kd := testutil.ToFloat64(m.kernelDrops.WithLabelValues(name))
	if kp < float64(len(frames)) {
		t.Errorf("kernel packets %v < frames handed %d", kp, len(frames))
	}
	if kd != 0 {
		t.Logf("kernel drops: %v", kd)
	}
	for _, metric := range []string{
		"pcap_capture_kernel_packets_total", "pcap_capture_kernel_drops_total",
		"pcap_capture_kernel_freezes_total", "pcap_capture_frames_total",
		"pcap_muxer_interfaces_with_captures",
	} {
		if n, err := testutil.GatherAndCount(rl.reg, metric); err != nil || n != 1 {
			t.Errorf("metric %s: %d series, err %v", metric, n, err)
		}
	}
	if problems, err := testutil.GatherAndLint(rl.reg); err != nil || len(problems) > 0 {
		t.Errorf("metric lint: %v %v", problems, err)
	}
}

// interfaceIndex returns the index of dev in namespace ns.
func interfaceIndex(t *testing.T, ns, dev string) int {
	t.Helper()
	var idx int
	err := netns.Do(ns, func() error {
		ifc, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		idx = ifc.Index
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

// TestLiveVLAN sends frames with an 802.1Q tag in the data from nsB over
// the veth. The sender's capture sees the tag in the frame (the filter's
// tagged branch); the receiver's kernel strips it into the packet's metadata
// before capture sees the frame, so capture must re-insert it. Both must hand
// over exactly the bytes sent.
func TestLiveVLAN(t *testing.T) {
	tn := newTestNet(t)
	const snap = 100
	cfg := func(dev string) Config {
		return Config{Interfaces: []string{dev}, Workers: 1, SnapLen: snap, BlockTimeout: 2 * time.Millisecond}
	}
	rx := startLive(t, tn.nsA, cfg(tn.vethA))
	tx := startLive(t, tn.nsB, cfg(tn.vethB))

	var macA net.HardwareAddr
	if err := netns.Do(tn.nsA, func() error {
		ifc, err := net.InterfaceByName(tn.vethA)
		if ifc != nil {
			macA = ifc.HardwareAddr
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	withMAC := func(f []byte) []byte {
		copy(f, macA)
		return f
	}
	tcp := tcpHeader(40000, 80, bytes.Repeat([]byte{'v'}, 200))
	sent := [][]byte{
		withMAC(ether(etherTypeIPv4, ipv4(protoTCP, 0, 0, tcp), 7)),
		withMAC(ether(etherTypeIPv6, ipv6(protoTCP, tcp), 0x2007)), // priority 1, VLAN 7
		withMAC(ether(etherTypeIPv4, ipv4(17, 0, 0, udpHeader(nil)), 7)),
		withMAC(ether(0x0806, arpPacket(), 7)),
		withMAC(ether(etherTypeIPv4, ipv4(protoTCP, 4, 0, tcp))),
	}
	want := [][]byte{sent[0], sent[1], sent[4]}
	err := netns.Do(tn.nsB, func() error {
		ifc, err := net.InterfaceByName(tn.vethB)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		to := &unix.SockaddrLinklayer{Ifindex: ifc.Index, Halen: 6}
		copy(to.Addr[:], macA)
		for _, f := range sent {
			if err := unix.Sendto(fd, f, 0, to); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	for _, side := range []struct {
		name string
		rl   *runningLive
	}{{"receiver (tag stripped by the kernel)", rx}, {"sender (tag in the frame)", tx}} {
		waitFrames(t, side.rl, side.name+" frames", func(fs []liveFrame) bool { return len(fs) >= len(want) })
		if _, err := side.rl.stop(t); err != nil {
			t.Fatal(err)
		}
		got := side.rl.handlers.snapshot()
		if len(got) != len(want) {
			t.Fatalf("%s: %d frames, want %d", side.name, len(got), len(want))
		}
		for i, f := range got {
			w := want[i][:min(len(want[i]), snap)]
			if !bytes.Equal(f.data, w) {
				t.Errorf("%s: frame %d\n got % x\nwant % x", side.name, i, f.data, w)
			}
			if f.wireLen != len(want[i]) {
				t.Errorf("%s: frame %d WireLen %d, want %d", side.name, i, f.wireLen, len(want[i]))
			}
		}
	}
}

// TestLiveLoopback checks that each frame on loopback is handed over once.
func TestLiveLoopback(t *testing.T) {
	tn := newTestNet(t)
	// A server and a client in the same namespace talk over lo.
	echo := startEcho(t, tn.nsA, addrA4, addrA6)
	rl := startLive(t, tn.nsA, Config{Interfaces: []string{"lo"}, Workers: 2})
	for _, a := range []netip.Addr{addrA4, addrA6} {
		if _, err := exchange(tn.nsA, echo.addr(a), 3, 100); err != nil {
			t.Fatal(err)
		}
	}
	waitFrames(t, rl, "12 FINs", func(fs []liveFrame) bool {
		n := 0
		for _, f := range fs {
			if p, err := parseFrame(f.data); err == nil && p.fin {
				n++
			}
		}
		return n >= 12
	})
	time.Sleep(50 * time.Millisecond)
	if _, err := rl.stop(t); err != nil {
		t.Fatal(err)
	}
	syns := map[flowKey]int{}
	for _, f := range rl.handlers.snapshot() {
		p, err := parseFrame(f.data)
		if err != nil {
			t.Fatal(err)
		}
		if p.syn {
			syns[keyOf(p)]++
		}
	}
	if len(syns) != 6 {
		t.Errorf("SYNs of %d connections, want 6", len(syns))
	}
	for k, n := range syns {
		if n != 2 { // SYN and SYN-ACK, once each
			t.Errorf("connection %v: %d SYN frames, want 2 (no outgoing duplicates)", k, n)
		}
	}
}

// TestLiveInterfaceDownUpAndGone: capture survives the interface going down
// and up, and Run fails when the interface is deleted.
func TestLiveInterfaceDownUpAndGone(t *testing.T) {
	tn := newTestNet(t)
	echo := startEcho(t, tn.nsB, addrB4)
	rl := startLive(t, tn.nsA, Config{Interfaces: []string{tn.vethA}, Workers: 2})

	tn.exec(t, tn.nsA, "ip", "link", "set", tn.vethA, "down")
	time.Sleep(100 * time.Millisecond)
	tn.exec(t, tn.nsA, "ip", "link", "set", tn.vethA, "up")
	var err error
	for range 50 { // wait for carrier
		if _, err = exchange(tn.nsA, echo.addr(addrB4), 1, 100); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("traffic after down/up: %v", err)
	}
	waitFrames(t, rl, "frames after down/up", func(fs []liveFrame) bool {
		srcs := map[netip.Addr]bool{}
		for _, f := range fs {
			if p, err := parseFrame(f.data); err == nil {
				srcs[p.src] = true
			}
		}
		return srcs[addrA4] && srcs[addrB4]
	})
	select {
	case err := <-rl.done:
		t.Fatalf("Run returned after down/up: %v", err)
	default:
	}

	tn.exec(t, tn.nsA, "ip", "link", "del", tn.vethA)
	select {
	case err := <-rl.done:
		rl.done <- err
		if err == nil || !strings.Contains(err.Error(), tn.vethA) {
			t.Fatalf("Run returned %v, want an error naming %s", err, tn.vethA)
		}
		t.Logf("Run: %v", err)
	case <-time.After(3 * monitorInterval):
		t.Fatal("Run did not fail after the interface was deleted")
	}
}

func TestLiveConfigErrors(t *testing.T) {
	h := func(int) Handler { return &nopHandler{} }
	_, err := NewLive(Config{Interfaces: []string{"hc-missing0"}, Workers: 1}, h, nil)
	if !errors.Is(err, ErrNoSuchInterface) || err.Error() != "interface hc-missing0: no such interface" {
		t.Errorf("missing interface: %v", err)
	}
	if _, err := NewLive(Config{Interfaces: []string{"lo"}, Workers: 1}, nil, nil); err == nil {
		t.Error("nil newHandler accepted")
	}
	if _, err := NewLive(Config{Interfaces: []string{"lo"}, Workers: 2}, func(w int) Handler {
		if w == 1 {
			return nil
		}
		return &nopHandler{}
	}, nil); err == nil {
		t.Error("nil Handler accepted")
	}
	// Two Live on one registry share the metrics instead of failing.
	reg := prometheus.NewRegistry()
	for range 2 {
		if _, err := NewLive(Config{Interfaces: []string{"lo"}, Workers: 1}, h, reg); err != nil {
			t.Fatalf("NewLive on a shared registry: %v", err)
		}
	}
}

// TestLiveManyWorkers: Run with many sockets stops promptly (the kernel takes
// tens of milliseconds to release each packet socket), and a second Run fails.
func TestLiveManyWorkers(t *testing.T) {
	tn := newTestNet(t)
	rl := startLive(t, tn.nsA, Config{Interfaces: []string{tn.vethA, "lo"}, Workers: 32, BlockSize: 1 << 16, NumBlocks: 4})
	if err := rl.live.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("second Run: %v", err)
	}
	took, err := rl.stop(t)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Run with %d sockets returned %v after cancel", rl.live.NumWorkers(), took)
	if took > 500*time.Millisecond {
		t.Errorf("Run took %v to return after cancel", took)
	}
}

func TestDefaultInterfacesInNamespace(t *testing.T) {
	tn := newTestNet(t)
	var got []string
	err := netns.Do(tn.nsA, func() (err error) {
		got, err = DefaultInterfaces()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{tn.vethA}) {
		t.Errorf("DefaultInterfaces = %v, want [%s]", got, tn.vethA)
	}
	tn.exec(t, tn.nsA, "ip", "link", "set", tn.vethA, "down")
	err = netns.Do(tn.nsA, func() error {
		_, err := DefaultInterfaces()
		return err
	})
	if err == nil {
		t.Error("no error with only loopback up")
	}
}

// TestLiveTwoCaptures runs two captures of one interface in one namespace
// (and one process, so the same process-derived group id): with the kernel
// picking the fanout group ids, each sees every frame instead of sharing one
// group and splitting the frames between them.
func TestLiveTwoCaptures(t *testing.T) {
	tn := newTestNet(t)
	echo := startEcho(t, tn.nsB, addrB4)
	cfg := Config{Interfaces: []string{tn.vethA}, Workers: 2}
	first := startLive(t, tn.nsA, cfg)
	second := startLive(t, tn.nsA, cfg)
	const conns = 4
	if _, err := exchange(tn.nsA, echo.addr(addrB4), conns, 100); err != nil {
		t.Fatal(err)
	}
	for i, rl := range []*runningLive{first, second} {
		waitFrames(t, rl, fmt.Sprintf("capture %d: the FINs of %d connections", i, conns), func(fs []liveFrame) bool {
			n := 0
			for _, f := range fs {
				if p, err := parseFrame(f.data); err == nil && p.fin {
					n++
				}
			}
			return n >= 2*conns
		})
	}
	if a, b := len(first.handlers.snapshot()), len(second.handlers.snapshot()); a != b {
		t.Errorf("captures saw %d and %d frames", a, b)
	}
}
