package flows

import (
	"bytes"
	"compress/gzip"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/headercap/headercap/anonymize"
	"github.com/headercap/headercap/capture"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 123456789, time.UTC)

// harness runs one Flows with one worker on a temp data dir.
type harness struct {
	t    *testing.T
	f    *Flows
	w    *Worker
	dir  string
	done chan struct{}
	mu   sync.Mutex
	pub  []string
}

func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	h := &harness{t: t, dir: t.TempDir(), done: make(chan struct{})}
	cfg.DataDir = h.dir
	cfg.OnPublish = func(p string) { h.mu.Lock(); h.pub = append(h.pub, p); h.mu.Unlock() }
	cfg.Logf = t.Logf
	f, err := New(cfg, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	h.f = f
	h.w = f.NewWorker()
	go func() { f.Run(); close(h.done) }()
	t.Cleanup(h.close)
	return h
}

func (h *harness) close() {
	h.f.Close()
	<-h.done
}

func (h *harness) open(ts time.Time, uuid string, a, b netip.AddrPort) {
	h.f.Registry().Open(ts, uuid, a, b)
}

func (h *harness) send(ts time.Time, s frameSpec) {
	h.w.HandleFrame(s.frame(ts))
}

// files returns every file under the data dir by path relative to it.
func (h *harness) files() []string {
	var out []string
	filepath.WalkDir(h.dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(h.dir, p)
			out = append(out, rel)
		}
		return nil
	})
	sort.Strings(out)
	return out
}

type record struct {
	ts      time.Time
	data    []byte
	wireLen int
}

func readPcapGz(t *testing.T, path string) []record {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	r, err := pcapgo.NewReader(zr)
	if err != nil {
		t.Fatal(err)
	}
	if r.LinkType() != layers.LinkTypeEthernet {
		t.Fatalf("link type %v, want Ethernet", r.LinkType())
	}
	if b2, _ := gzip.NewReader(bytes.NewReader(b)); b2 != nil {
		var hdr [4]byte
		b2.Read(hdr[:])
		if hdr != [4]byte{0x4d, 0x3c, 0xb2, 0xa1} {
			t.Fatalf("magic % x, want nanosecond pcap", hdr)
		}
	}
	var out []record
	for {
		data, ci, err := r.ReadPacketData()
		if err != nil {
			break
		}
		out = append(out, record{ci.Timestamp, data, ci.Length})
	}
	return out
}

const uuidA = "host.example_1574185322_0000000000051A4C"

func TestFlowLifecycle(t *testing.T) {
	h := newHarness(t, Config{CaptureDuration: 10 * time.Second, FlowTimeout: 5 * time.Second, UUIDWait: 2 * time.Second})
	// Packets arrive before the UUID, as with tcp-info's polling.
	h.send(t0, frameSpec{src: cli4, dst: srv4, flags: flagSYN, seq: 100, tcpOptions: 20})
	h.send(t0.Add(time.Millisecond), frameSpec{src: srv4, dst: cli4, flags: flagSYN | flagACK, seq: 900, tcpOptions: 20})
	h.w.Tick(t0.Add(5 * time.Millisecond))
	h.open(t0.Add(10*time.Millisecond), uuidA, srv4, cli4)
	h.send(t0.Add(20*time.Millisecond), frameSpec{src: cli4, dst: srv4, flags: flagACK | 0x08, seq: 101, payload: 500, tcpOptions: 12})
	h.send(t0.Add(30*time.Millisecond), frameSpec{src: srv4, dst: cli4, flags: flagACK | flagFIN, seq: 901})
	h.w.Tick(t0.Add(time.Second))
	if got := h.files(); len(got) != 0 {
		t.Fatalf("files before the flow ended: %v", got)
	}
	h.w.Tick(t0.Add(6 * time.Second)) // flow timeout
	h.close()
	want := "2026/11/25/" + uuidA + ".pcap.gz"
	if got := h.files(); len(got) != 1 || got[0] != want {
		t.Fatalf("files = %v, want [%s]", got, want)
	}
	recs := readPcapGz(t, filepath.Join(h.dir, want))
	if len(recs) != 4 {
		t.Fatalf("%d packets, want 4", len(recs))
	}
	wantLens := []int{14 + 20 + 40, 14 + 20 + 40, 14 + 20 + 32, 14 + 20 + 20}
	for i, r := range recs {
		if len(r.data) != wantLens[i] {
			t.Errorf("packet %d: %d bytes saved, want %d (cut at the TCP header)", i, len(r.data), wantLens[i])
		}
		if !r.ts.Equal([]time.Time{t0, t0.Add(time.Millisecond), t0.Add(20 * time.Millisecond), t0.Add(30 * time.Millisecond)}[i]) {
			t.Errorf("packet %d: ts %v", i, r.ts)
		}
	}
	if recs[2].wireLen != 14+20+32+500 {
		t.Errorf("wire length %d, want %d", recs[2].wireLen, 14+20+32+500)
	}
	m := h.f.m
	if v := testutil.ToFloat64(m.starts); v != 1 {
		t.Errorf("starts = %v", v)
	}
	if v := testutil.ToFloat64(m.ended.WithLabelValues(endTimeout)); v != 1 {
		t.Errorf("ended{timeout} = %v", v)
	}
	if v := testutil.ToFloat64(m.active); v != 0 {
		t.Errorf("active = %v", v)
	}
	if n := h.f.pendingBytes.Load(); n != 0 {
		t.Errorf("pending bytes = %d after every flow ended", n)
	}
	if len(h.pub) != 1 {
		t.Errorf("OnPublish called %d times", len(h.pub))
	}
}

func TestCaptureDurationCap(t *testing.T) {
	h := newHarness(t, Config{CaptureDuration: time.Second, FlowTimeout: 5 * time.Second, UUIDWait: 500 * time.Millisecond})
	h.open(t0, uuidA, cli6, srv6)
	for i := range 30 {
		h.send(t0.Add(time.Duration(i)*100*time.Millisecond), frameSpec{src: cli6, dst: srv6, flags: flagACK, seq: uint32(i), payload: 1000})
	}
	// The file is finished as soon as the duration is over, while the flow lives on.
	h.w.Tick(t0.Add(3 * time.Second))
	deadline := time.Now().Add(5 * time.Second)
	final := filepath.Join(h.dir, "2026/11/25/"+uuidA+".pcap.gz")
	for _, err := os.Stat(final); err != nil && time.Now().Before(deadline); _, err = os.Stat(final) {
		time.Sleep(10 * time.Millisecond)
	}
	if h.w.Len() != 1 {
		t.Fatalf("flow ended with its capture duration")
	}
	recs := readPcapGz(t, filepath.Join(h.dir, "2026/11/25/"+uuidA+".pcap.gz"))
	if len(recs) != 11 { // 0 .. 1000ms inclusive
		t.Errorf("%d packets saved, want 11", len(recs))
	}
	if v := testutil.ToFloat64(h.f.m.packetsAfterCapture); v != 19 {
		t.Errorf("packets after capture = %v, want 19", v)
	}
}

func TestNoUUIDDropped(t *testing.T) {
	h := newHarness(t, Config{UUIDWait: time.Second})
	h.send(t0, frameSpec{src: cli4, dst: srv4, flags: flagSYN})
	h.send(t0.Add(10*time.Millisecond), frameSpec{src: cli4, dst: srv4, flags: flagACK})
	h.w.Tick(t0.Add(2 * time.Second))
	if h.w.Len() != 0 {
		t.Fatal("flow without UUID still in the table")
	}
	// A late Open must not resurrect it.
	h.open(t0.Add(3*time.Second), uuidA, cli4, srv4)
	h.close()
	if got := h.files(); len(got) != 0 {
		t.Errorf("files = %v", got)
	}
	if v := testutil.ToFloat64(h.f.m.missedUUIDs.WithLabelValues("pending")); v != 1 {
		t.Errorf("missed uuids = %v", v)
	}
	if v := testutil.ToFloat64(h.f.m.missedPackets.WithLabelValues("pending")); v != 2 {
		t.Errorf("missed packets = %v", v)
	}
	if n := h.f.pendingBytes.Load(); n != 0 {
		t.Errorf("pending bytes = %d after the flow was dropped", n)
	}
}

func TestReusedTupleSplits(t *testing.T) {
	h := newHarness(t, Config{CaptureDuration: 10 * time.Second, FlowTimeout: 5 * time.Second, UUIDWait: 2 * time.Second, CloseGrace: time.Second})
	const uuidB = "host.example_1574185322_0000000000051A4D"
	// First connection: SYN, FIN; Close arrives; then the same tuple again.
	h.send(t0, frameSpec{src: cli4, dst: srv4, flags: flagSYN, seq: 1})
	h.open(t0.Add(5*time.Millisecond), uuidA, srv4, cli4)
	h.send(t0.Add(10*time.Millisecond), frameSpec{src: cli4, dst: srv4, flags: flagACK | flagFIN, seq: 2})
	h.send(t0.Add(20*time.Millisecond), frameSpec{src: cli4, dst: srv4, flags: flagSYN, seq: 5000})
	h.f.Registry().Close(t0.Add(25*time.Millisecond), uuidA)
	h.open(t0.Add(30*time.Millisecond), uuidB, srv4, cli4)
	h.send(t0.Add(40*time.Millisecond), frameSpec{src: srv4, dst: cli4, flags: flagSYN | flagACK, seq: 7000})
	h.w.Tick(t0.Add(50 * time.Millisecond))
	h.close()
	a := readPcapGz(t, filepath.Join(h.dir, "2026/11/25/"+uuidA+".pcap.gz"))
	b := readPcapGz(t, filepath.Join(h.dir, "2026/11/25/"+uuidB+".pcap.gz"))
	if len(a) != 2 || len(b) != 2 {
		t.Fatalf("packets: first %d (want 2), second %d (want 2)", len(a), len(b))
	}
	if !b[0].ts.Equal(t0.Add(20 * time.Millisecond)) {
		t.Errorf("second flow starts at %v", b[0].ts)
	}
}

func TestCloseEndsFlowAfterGrace(t *testing.T) {
	h := newHarness(t, Config{FlowTimeout: 30 * time.Second, CloseGrace: time.Second})
	h.open(t0, uuidA, cli4, srv4)
	h.send(t0, frameSpec{src: cli4, dst: srv4, flags: flagSYN})
	h.f.Registry().Close(t0.Add(100*time.Millisecond), uuidA)
	h.send(t0.Add(500*time.Millisecond), frameSpec{src: cli4, dst: srv4, flags: flagACK})
	h.w.Tick(t0.Add(600 * time.Millisecond))
	if h.w.Len() != 1 {
		t.Fatal("flow ended before the grace")
	}
	h.w.Tick(t0.Add(1200 * time.Millisecond))
	if h.w.Len() != 0 {
		t.Fatal("flow alive after close + grace")
	}
	if v := testutil.ToFloat64(h.f.m.ended.WithLabelValues(endClosed)); v != 1 {
		t.Errorf("ended{closed} = %v", v)
	}
}

func TestAnonymizeNetblock(t *testing.T) {
	h := newHarness(t, Config{Anonymize: anonymize.Netblock})
	h.open(t0, uuidA, cli6, srv6)
	h.send(t0, frameSpec{src: cli6, dst: srv6, flags: flagSYN, hopByHop: true})
	h2 := frameSpec{src: cli4, dst: srv4, flags: flagSYN, ipOptions: 4}
	h.open(t0, "v4flow", cli4, srv4)
	h.send(t0, h2)
	h.close()
	for _, f := range h.files() {
		b, _ := os.ReadFile(filepath.Join(h.dir, f))
		zr, _ := gzip.NewReader(bytes.NewReader(b))
		var raw bytes.Buffer
		raw.ReadFrom(zr)
		for _, a := range []netip.AddrPort{cli4, srv4, cli6, srv6} {
			if bytes.Contains(raw.Bytes(), a.Addr().AsSlice()) {
				t.Errorf("%s contains %s", f, a.Addr())
			}
		}
		if strings.Contains(f, "v4flow") && !bytes.Contains(raw.Bytes(), []byte{192, 0, 2, 0}) {
			t.Errorf("%s lost the /24", f)
		}
	}
	if len(h.files()) != 2 {
		t.Errorf("files = %v", h.files())
	}
}

func TestMaxHeaderSizeAndSnap(t *testing.T) {
	h := newHarness(t, Config{MaxHeaderSize: 60})
	h.open(t0, uuidA, cli6, srv6)
	h.send(t0, frameSpec{src: cli6, dst: srv6, flags: flagSYN, tcpOptions: 40, payload: 10})
	h.close()
	recs := readPcapGz(t, filepath.Join(h.dir, "2026/11/25/"+uuidA+".pcap.gz"))
	if len(recs) != 1 || len(recs[0].data) != 60 || recs[0].wireLen != 14+40+60+10 {
		t.Fatalf("records = %+v", recs)
	}
}

func TestPendingBytesBound(t *testing.T) {
	h := newHarness(t, Config{MaxPendingBytes: 1000})
	for i := range 20 {
		h.send(t0.Add(time.Duration(i)*time.Millisecond), frameSpec{src: cli4, dst: srv4, flags: flagACK, seq: uint32(i)})
	}
	// 70 bytes per record: the 15th would cross 1000.
	if v := testutil.ToFloat64(h.f.m.missedPackets.WithLabelValues("pending")); v != 5 {
		t.Errorf("missed packets = %v, want 5", v)
	}
	h.open(t0, uuidA, cli4, srv4)
	h.w.Tick(t0.Add(time.Second))
	if n := h.f.pendingBytes.Load(); n != 0 {
		t.Errorf("pending bytes = %d after the flow was named", n)
	}
}

func TestMaxFlowsSheds(t *testing.T) {
	h := newHarness(t, Config{MaxFlows: 2})
	for i := range 5 {
		c := netip.AddrPortFrom(cli4.Addr(), uint16(1000+i))
		h.send(t0, frameSpec{src: c, dst: srv4, flags: flagSYN})
	}
	if h.w.Len() != 2 {
		t.Errorf("%d flows, want 2", h.w.Len())
	}
	if v := testutil.ToFloat64(h.f.m.skipped.WithLabelValues("maxflows")); v != 3 {
		t.Errorf("skipped = %v", v)
	}
}

func TestSyntheticUUIDs(t *testing.T) {
	h := newHarness(t, Config{SyntheticUUIDs: true, SyntheticPrefix: "trace1"})
	h.send(t0, frameSpec{src: cli4, dst: srv4, flags: flagSYN})
	h.send(t0, frameSpec{src: srv4, dst: cli4, flags: flagSYN | flagACK})
	h.close()
	got := h.files()
	if len(got) != 1 || !strings.HasPrefix(filepath.Base(got[0]), "trace1_") {
		t.Fatalf("files = %v", got)
	}
}

func TestRecoverSalvagesSpill(t *testing.T) {
	dir := t.TempDir()
	day := filepath.Join(dir, "2026/11/25")
	os.MkdirAll(day, 0o755)
	// Records of a crashed flow: two whole, one torn.
	cfg := Config{DataDir: dir, SpillBytes: 1}
	f, err := New(cfg, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	w := f.NewWorker()
	_ = w
	var buf []byte
	for i := range 2 {
		fr := frameSpec{src: cli4, dst: srv4, flags: flagACK, seq: uint32(i)}.frame(t0)
		var p Packet
		Parse(fr.Data, &p)
		hdr := make([]byte, 16)
		hdr[8] = byte(p.HeaderEnd)
		hdr[12] = byte(p.HeaderEnd)
		buf = append(buf, hdr...)
		buf = append(buf, fr.Data[:p.HeaderEnd]...)
	}
	buf = append(buf, 1, 2, 3)
	os.WriteFile(filepath.Join(day, "."+uuidA+spillSuffix), buf, 0o644)
	os.WriteFile(filepath.Join(day, ".other"+tmpSuffix), []byte("x"), 0o644)
	st, err := f.Recover()
	if err != nil || st.Salvaged != 1 || st.Removed != 1 {
		t.Fatalf("Recover = %+v, %v", st, err)
	}
	recs := readPcapGz(t, filepath.Join(day, uuidA+".pcap.gz"))
	if len(recs) != 2 {
		t.Errorf("%d records salvaged, want 2", len(recs))
	}
	entries, _ := os.ReadDir(day)
	if len(entries) != 1 {
		t.Errorf("left in the folder: %v", entries)
	}
	done := make(chan struct{})
	go func() { f.Run(); close(done) }()
	f.Close()
	<-done
}

func TestSpillLongFlow(t *testing.T) {
	h := newHarness(t, Config{SpillBytes: 1000, CaptureDuration: time.Hour, FlowTimeout: time.Hour, UUIDWait: time.Minute})
	h.open(t0, uuidA, cli4, srv4)
	for i := range 200 {
		h.send(t0.Add(time.Duration(i)*time.Millisecond), frameSpec{src: cli4, dst: srv4, flags: flagACK, seq: uint32(i), payload: 100})
	}
	spill := filepath.Join(h.dir, "2026/11/25/."+uuidA+spillSuffix)
	k, _ := KeyFromAddrPorts(cli4, srv4)
	if fl := h.w.table[k]; fl == nil || len(fl.buf) > 1000+200 || fl.spill != spill {
		t.Fatalf("flow holds %d bytes in RAM, spill %q; want at most one spill threshold", len(fl.buf), fl.spill)
	}
	h.close()
	recs := readPcapGz(t, filepath.Join(h.dir, "2026/11/25/"+uuidA+".pcap.gz"))
	if len(recs) != 200 {
		t.Fatalf("%d packets, want 200", len(recs))
	}
	for i, r := range recs {
		if !r.ts.Equal(t0.Add(time.Duration(i) * time.Millisecond)) {
			t.Fatalf("packet %d out of order", i)
		}
	}
	if _, err := os.Stat(spill); err == nil {
		t.Error("spill file left behind")
	}
}

func TestHandleFrameAllocs(t *testing.T) {
	h := newHarness(t, Config{CaptureDuration: time.Hour, FlowTimeout: time.Hour, Anonymize: anonymize.Netblock, SpillBytes: 1 << 30})
	h.open(t0, uuidA, cli4, srv4)
	fr := frameSpec{src: cli4, dst: srv4, flags: flagACK, payload: 1400, tcpOptions: 12}.frame(t0)
	h.w.HandleFrame(fr)
	// Grow the buffer first so the measurement sees the steady state.
	for range 20000 {
		h.w.HandleFrame(fr)
	}
	n := testing.AllocsPerRun(1000, func() { h.w.HandleFrame(fr) })
	if n != 0 {
		t.Errorf("HandleFrame allocates %v times per packet", n)
	}
}

func BenchmarkHandleFrame(b *testing.B) {
	for _, anon := range []anonymize.Method{anonymize.None, anonymize.Netblock} {
		b.Run(anon.String(), func(b *testing.B) {
			dir := b.TempDir()
			f, err := New(Config{DataDir: dir, CaptureDuration: time.Hour, FlowTimeout: time.Hour, Anonymize: anon, Logf: b.Logf}, prometheus.NewRegistry())
			if err != nil {
				b.Fatal(err)
			}
			done := make(chan struct{})
			go func() { f.Run(); close(done) }()
			w := f.NewWorker()
			// 1000 concurrent flows, packets round-robin.
			var frames []*capture.Frame
			for i := range 1000 {
				c := netip.AddrPortFrom(cli4.Addr(), uint16(10000+i))
				f.Registry().Open(t0, "bench_"+strings.Repeat("0", 3)+string(rune('a'+i%26))+itoa(i), srv4, c)
				frames = append(frames, frameSpec{src: c, dst: srv4, flags: flagACK, payload: 1400, tcpOptions: 12}.frame(t0))
			}
			b.SetBytes(int64(len(frames[0].Data)))
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				fr := frames[i%len(frames)]
				fr.Timestamp = t0.Add(time.Duration(i) * time.Microsecond)
				w.HandleFrame(fr)
				i++
			}
			b.StopTimer()
			f.Close()
			<-done
		})
	}
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}

// tcp-info stamps an Open with its poll time but may deliver it hundreds of
// milliseconds later, after a new connection on the same tuple began.
func TestLateOpenNamesEarlierConnection(t *testing.T) {
	const uuidB = "host.example_1574185322_0000000000051A4D"
	for _, both := range []bool{true, false} {
		h := newHarness(t, Config{CaptureDuration: 10 * time.Second, FlowTimeout: 5 * time.Second, UUIDWait: 2 * time.Second})
		h.send(t0, frameSpec{src: cli4, dst: srv4, flags: flagSYN, seq: 1})
		h.send(t0.Add(time.Millisecond), frameSpec{src: srv4, dst: cli4, flags: flagSYN | flagACK, seq: 9})
		h.send(t0.Add(70*time.Millisecond), frameSpec{src: cli4, dst: srv4, flags: flagACK | flagFIN, seq: 2})
		h.send(t0.Add(80*time.Millisecond), frameSpec{src: cli4, dst: srv4, flags: flagSYN, seq: 5000})
		h.send(t0.Add(81*time.Millisecond), frameSpec{src: srv4, dst: cli4, flags: flagSYN | flagACK, seq: 7000})
		h.w.Tick(t0.Add(200 * time.Millisecond))
		// Both Opens arrive now, stamped with their poll times.
		h.open(t0.Add(10*time.Millisecond), uuidA, srv4, cli4)
		if both {
			h.open(t0.Add(90*time.Millisecond), uuidB, srv4, cli4)
		}
		h.send(t0.Add(300*time.Millisecond), frameSpec{src: cli4, dst: srv4, flags: flagACK, seq: 5001})
		h.w.Tick(t0.Add(400 * time.Millisecond))
		if got := h.files(); len(got) != 0 {
			t.Errorf("both=%v: named before the claims settled: %v", both, got)
		}
		h.w.Tick(t0.Add(1200 * time.Millisecond))
		if got := h.files(); len(got) != 0 {
			t.Errorf("both=%v: named before the first connection's UUID wait ran out: %v", both, got)
		}
		h.w.Tick(t0.Add(1900 * time.Millisecond)) // 2s wait - margin
		if both && h.w.Len() != 1 {
			t.Errorf("both=%v: %d flows left, want the second connection only", both, h.w.Len())
		}
		h.close()
		a := readPcapGz(t, filepath.Join(h.dir, "2026/11/25/"+uuidA+".pcap.gz"))
		if len(a) != 3 || !a[2].ts.Equal(t0.Add(70*time.Millisecond)) {
			t.Errorf("both=%v: first connection has %d packets, want its 3", both, len(a))
		}
		if both {
			b := readPcapGz(t, filepath.Join(h.dir, "2026/11/25/"+uuidB+".pcap.gz"))
			if len(b) != 3 || !b[0].ts.Equal(t0.Add(80*time.Millisecond)) {
				t.Errorf("second connection has %d packets, want 3", len(b))
			}
		} else if got := h.files(); len(got) != 1 {
			t.Errorf("files = %v, want only the first connection", got)
		}
	}
}

// A UUID source hears of every new flow, and of the RSTs of flows that
// still wait for their UUID (with who sent them), but of nothing else.
func TestUUIDSourceHooks(t *testing.T) {
	type call struct {
		kind     string
		src, dst netip.AddrPort
		ts       time.Time
	}
	var calls []call
	h := newHarness(t, Config{
		UUIDWait:  time.Second,
		OnNewFlow: func(a, b netip.AddrPort, first time.Time) { calls = append(calls, call{"new", a, b, first}) },
		OnReset:   func(src, dst netip.AddrPort, ts time.Time) { calls = append(calls, call{"reset", src, dst, ts}) },
	})
	h.send(t0, frameSpec{src: cli6, dst: srv6, flags: flagSYN, seq: 1})
	h.send(t0.Add(time.Millisecond), frameSpec{src: srv6, dst: cli6, flags: flagRST | flagACK})
	// Named: its RSTs no longer matter.
	h.send(t0.Add(2*time.Millisecond), frameSpec{src: cli4, dst: srv4, flags: flagSYN, seq: 1})
	h.open(t0.Add(3*time.Millisecond), uuidA, srv4, cli4)
	h.w.Tick(t0.Add(200 * time.Millisecond))
	h.send(t0.Add(201*time.Millisecond), frameSpec{src: srv4, dst: cli4, flags: flagRST})
	h.close()
	if len(calls) != 3 {
		t.Fatalf("calls %+v, want new, reset, new", calls)
	}
	if c := calls[1]; c.kind != "reset" || c.src != srv6 || c.dst != cli6 || !c.ts.Equal(t0.Add(time.Millisecond)) {
		t.Errorf("reset call %+v, want from %v to %v at +1ms", c, srv6, cli6)
	}
	if c := calls[2]; c.kind != "new" || !c.ts.Equal(t0.Add(2*time.Millisecond)) {
		t.Errorf("third call %+v, want the second flow", c)
	}
}
