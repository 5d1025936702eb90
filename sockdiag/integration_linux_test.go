//go:build linux

package sockdiag

// End to end: the Source runs in the server namespace of a veth pair,
// real kernel TCP connections (IPv4 and IPv6, short and long) arrive from
// the client namespace, and every accepted connection's cookie is read
// independently with getsockopt(SO_COOKIE). The real tcp-info runs in the
// same namespace with the same prefix file; every UUID it reports must be
// ours for that tuple.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/headercap/headercap/internal/netns"
)

// integrationPrefix is the content of the prefix file given to both
// tcp-info and the Source.
const integrationPrefix = "sockdiag-test.example.org_1700000000"

// Connection kinds, named for when the capture's Lookup comes.
const (
	kindShort  = "short"  // connect, write, close at once; Lookup right after connect
	kindBefore = "before" // Lookup before connect, as if the capture saw the SYN first
	kindAfter  = "after"  // Lookup only after the server closed and the kernel destroyed the socket
	kindHeld   = "held"   // kept open until the end
)

var kinds = []string{kindShort, kindBefore, kindAfter, kindHeld}

// tcpInfoBin returns the tcp-info binary, or skips/fails.
func tcpInfoBin(t testing.TB) string {
	t.Helper()
	bin := os.Getenv("TCPINFO_BIN")
	if bin == "" {
		bin = filepath.Join("..", ".bin", "tcp-info")
	}
	bin, err := filepath.Abs(bin)
	if err == nil {
		_, err = os.Stat(bin)
	}
	if err == nil {
		_, err = exec.LookPath("zstd") // tcp-info compresses its output with it
	}
	if err != nil {
		if os.Getenv("HEADERCAP_REQUIRE_NETNS") == "1" {
			t.Fatalf("tcp-info: %v (HEADERCAP_REQUIRE_NETNS=1)", err)
		}
		t.Skipf("tcp-info: %v (set TCPINFO_BIN or run scripts/install-tools.sh)", err)
	}
	return bin
}

// tiEvent is one line of tcp-info's eventsocket.
type tiEvent struct {
	Event     int
	Timestamp time.Time
	UUID      string
	ID        *struct {
		SPort, DPort uint16
		SrcIP, DstIP string
		Interface    uint32
		Cookie       int64
	}
}

// tcpInfo runs the real tcp-info in a namespace and records its events.
type tcpInfo struct {
	cmd     *exec.Cmd
	mu      sync.Mutex
	events  []tiEvent
	logs    strings.Builder
	pidStat string // /proc/<pid>/stat of the tcp-info process
}

func startTCPInfo(t testing.TB, ns, prefixFile string) *tcpInfo {
	t.Helper()
	bin := tcpInfoBin(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "ti.sock")
	ti := &tcpInfo{}
	// ip netns exec execs tcp-info in place: cmd.Process is tcp-info.
	ti.cmd = exec.Command("ip", "netns", "exec", ns, bin,
		"-tcpinfo.eventsocket", sock, "-output", filepath.Join(dir, "out"),
		"-uuid-prefix-file", prefixFile, "-prometheusx.listen-address", "127.0.0.1:0")
	ti.cmd.Stdout, ti.cmd.Stderr = &lockedStringWriter{b: &ti.logs, mu: &ti.mu}, &lockedStringWriter{b: &ti.logs, mu: &ti.mu}
	if err := os.Mkdir(filepath.Join(dir, "out"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := ti.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ti.pidStat = fmt.Sprintf("/proc/%d/stat", ti.cmd.Process.Pid)
	waited := make(chan struct{})
	go func() { ti.cmd.Wait(); close(waited) }()
	var conn net.Conn
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		if conn, err = net.Dial("unix", sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			ti.cmd.Process.Kill()
			<-waited
			t.Fatalf("tcp-info eventsocket: %v\n%s", err, ti.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(conn)
		for sc.Scan() {
			var ev tiEvent
			if err := json.Unmarshal(sc.Bytes(), &ev); err == nil {
				ti.mu.Lock()
				ti.events = append(ti.events, ev)
				ti.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		ti.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-waited:
		case <-time.After(5 * time.Second):
			ti.cmd.Process.Kill()
			<-waited
		}
		conn.Close()
		<-read
	})
	return ti
}

func (ti *tcpInfo) opens() []tiEvent {
	ti.mu.Lock()
	defer ti.mu.Unlock()
	var out []tiEvent
	for _, ev := range ti.events {
		if ev.Event == 0 && ev.ID != nil {
			out = append(out, ev)
		}
	}
	return out
}

type lockedStringWriter struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (w *lockedStringWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// flowSink records what the source says, by flow. Safe for concurrent use.
type flowSink struct {
	mu     sync.Mutex
	opens  map[tupleKey][]sinkOpen
	byUUID map[string][]tupleKey // flows with an Open of that UUID
	seq    int
}

type sinkOpen struct {
	uuid          string
	local, remote netip.AddrPort
	seq           int // order of calls
	closedSeq     int // seq of the first Close after it; 0: none yet
}

func newFlowSink() *flowSink {
	return &flowSink{opens: map[tupleKey][]sinkOpen{}, byUUID: map[string][]tupleKey{}}
}

func (s *flowSink) Open(ts time.Time, uuid string, local, remote netip.AddrPort) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	k := keyOf(local, remote)
	s.opens[k] = append(s.opens[k], sinkOpen{uuid: uuid, local: local, remote: remote, seq: s.seq})
	s.byUUID[uuid] = append(s.byUUID[uuid], k)
}

func (s *flowSink) Close(ts time.Time, uuid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	for _, k := range s.byUUID[uuid] {
		for i := range s.opens[k] {
			if o := &s.opens[k][i]; o.uuid == uuid && o.closedSeq == 0 {
				o.closedSeq = s.seq
			}
		}
	}
}

func (s *flowSink) get(k tupleKey) []sinkOpen {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.opens[k])
}

// flowRec is one test connection.
type flowRec struct {
	kind           string
	client, server netip.AddrPort
	first          time.Time
	accepted       chan struct{} // closed when cookie is set
	closed         chan struct{} // closed when the server closed its end
	cookie         uint64
	conn           *net.TCPConn // held connections
}

// flowTable maps flows to records; the accept side and the dial side meet
// there in either order. (A client port may serve connections to several
// server ports at once: the key is the whole tuple.)
type flowTable struct {
	mu sync.Mutex
	m  map[tupleKey]*flowRec
}

func newFlowTable() *flowTable { return &flowTable{m: map[tupleKey]*flowRec{}} }

func (ft *flowTable) get(client, server netip.AddrPort) *flowRec {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	k := keyOf(client, server)
	r := ft.m[k]
	if r == nil {
		r = &flowRec{client: client, server: server, accepted: make(chan struct{}), closed: make(chan struct{})}
		ft.m[k] = r
	}
	return r
}

// serve accepts on ln: records each connection's cookie, reads it to EOF
// and closes it.
func serve(t testing.TB, ln *net.TCPListener, ft *flowTable, wg *sync.WaitGroup) {
	wg.Go(func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			wg.Go(func() {
				r := ft.get(addrPort(c.RemoteAddr()), addrPort(c.LocalAddr()))
				cookie, err := cookieOf(c)
				if err != nil {
					t.Errorf("SO_COOKIE: %v", err)
				}
				r.cookie = cookie
				close(r.accepted)
				io.Copy(io.Discard, c)
				c.Close()
				close(r.closed)
			})
		}
	})
}

type scenario struct {
	perKind int // connections of each kind
	workers int
	maxWait time.Duration
}

// result summarises one scenario run.
type result struct {
	total, named, wrong int
	byKind              map[string][2]int // named, total
	tcpinfoSaw          int
	tcpinfoDisagree     int
	unclosed            int
	closeWait           time.Duration // for the last Close after the held connections ended
	overruns            float64
	misses              float64
	uuidsQuery          float64
	uuidsDestroy        float64
}

func (r result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d/%d named (%.2f%%), %d wrong;", r.named, r.total, 100*float64(r.named)/float64(r.total), r.wrong)
	for _, k := range kinds {
		fmt.Fprintf(&b, " %s %d/%d;", k, r.byKind[k][0], r.byKind[k][1])
	}
	fmt.Fprintf(&b, " how: query %v, destroy %v; misses %v; tcp-info saw %d/%d (%d disagree); opened but not closed %d (waited %v); overruns %v",
		r.uuidsQuery, r.uuidsDestroy, r.misses, r.tcpinfoSaw, r.total, r.tcpinfoDisagree, r.unclosed, r.closeWait.Round(time.Millisecond), r.overruns)
	return b.String()
}

// runScenario runs connections against a Source in n.server and checks
// what it names. withDestroy selects whether the source subscribes to
// destroy notifications.
func runScenario(t *testing.T, n *testNet, sc scenario, withDestroy bool) result {
	prefixFile := filepath.Join(t.TempDir(), "uuid-prefix")
	if err := os.WriteFile(prefixFile, []byte(integrationPrefix), 0o444); err != nil {
		t.Fatal(err)
	}
	ti := startTCPInfo(t, n.server, prefixFile)

	sink := newFlowSink()
	reg := prometheus.NewRegistry()
	var src *Source
	err := netns.Do(n.server, func() error {
		cfg := Config{PrefixFile: prefixFile, MaxWait: sc.maxWait}
		if withDestroy {
			var err error
			src, err = New(cfg, sink, reg)
			return err
		}
		q, err := openQuerier()
		if err != nil {
			return err
		}
		src = newSource(cfg.withDefaults(), sink, reg, q, nil)
		src.SetPrefix(integrationPrefix)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if withDestroy && src.d == nil {
		t.Fatal("no destroy notifications")
	}
	if src.Prefix() != integrationPrefix {
		t.Fatalf("prefix %q, want %q", src.Prefix(), integrationPrefix)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- src.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-runDone; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	ft := newFlowTable()
	var srvWG sync.WaitGroup
	ln4 := listen(t, n.server, "tcp4", "192.0.2.1:0")
	lnDual := listen(t, n.server, "tcp", ":0") // IPv6 and v4-mapped IPv4
	serve(t, ln4, ft, &srvWG)
	serve(t, lnDual, ft, &srvWG)
	defer func() {
		ln4.Close()
		lnDual.Close()
		srvWG.Wait()
	}()
	targets := []netip.AddrPort{
		netip.AddrPortFrom(serverV4, addrPort(ln4.Addr()).Port()),
		netip.AddrPortFrom(serverV4, addrPort(lnDual.Addr()).Port()),
		netip.AddrPortFrom(serverV6, addrPort(lnDual.Addr()).Port()),
	}

	// Plan: every kind against every target, interleaved.
	type job struct {
		kind   string
		target netip.AddrPort
		port   uint16 // fixed client port for kindBefore
	}
	var jobs []job
	var nextPort atomic.Uint32
	nextPort.Store(20000)
	for i := range sc.perKind * len(kinds) {
		j := job{kind: kinds[i%len(kinds)], target: targets[(i/len(kinds))%len(targets)]}
		if j.kind == kindBefore {
			j.port = uint16(nextPort.Add(1))
		}
		jobs = append(jobs, j)
	}
	var recsMu sync.Mutex
	var recs []*flowRec
	lookup := func(r *flowRec) {
		if rand.IntN(2) == 0 {
			src.Lookup(r.client, r.server, r.first)
		} else {
			src.Lookup(r.server, r.client, r.first)
		}
	}
	var dialWG sync.WaitGroup
	payload := make([]byte, 64)
	for w := range sc.workers {
		d := newDialer(t, n.client)
		dialWG.Go(func() {
			for i := w; i < len(jobs); i += sc.workers {
				j := jobs[i]
				clientAddr := clientV4
				if j.target.Addr().Is6() {
					clientAddr = clientV6
				}
				var local netip.AddrPort
				first := time.Now()
				if j.kind == kindBefore {
					local = netip.AddrPortFrom(clientAddr, j.port)
					src.Lookup(j.target, local, first)
					time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
				}
				c, err := d.dial(context.Background(), local, j.target)
				if err != nil {
					t.Errorf("dial %v: %v", j.target, err)
					continue
				}
				r := ft.get(addrPort(c.LocalAddr()), j.target)
				r.kind, r.first = j.kind, first
				recsMu.Lock()
				recs = append(recs, r)
				recsMu.Unlock()
				if j.kind == kindShort || j.kind == kindHeld {
					lookup(r)
				}
				if _, err := c.Write(payload); err != nil {
					t.Errorf("write: %v", err)
				}
				if j.kind == kindHeld {
					r.conn = c
					continue
				}
				c.Close()
				if j.kind == kindAfter {
					select {
					case <-r.closed:
					case <-time.After(5 * time.Second):
						t.Errorf("server did not close %v", r.client)
					}
					time.Sleep(5 * time.Millisecond) // the kernel frees the socket after the last ACK
					lookup(r)
				}
			}
		})
	}
	dialWG.Wait()

	// Lookups for tuples that are no local socket: one on a listening port
	// (the kernel answers with the listener) and one with no local address.
	notLocal := [][2]netip.AddrPort{
		{targets[0], netip.AddrPortFrom(nowhereV4, 5555)},
		{netip.MustParseAddrPort("198.51.100.1:80"), netip.MustParseAddrPort("198.51.100.2:1234")},
	}
	for _, nl := range notLocal {
		src.Lookup(nl[0], nl[1], time.Now())
	}

	// Wait for the answers, at most MaxWait and a margin.
	for _, r := range recs {
		select {
		case <-r.accepted:
		case <-time.After(5 * time.Second):
			t.Fatalf("connection from %v never accepted", r.client)
		}
	}
	deadline := time.Now().Add(sc.maxWait + time.Second)
	for time.Now().Before(deadline) {
		done := 0
		for _, r := range recs {
			if len(sink.get(keyOf(r.client, r.server))) > 0 {
				done++
			}
		}
		if done == len(recs) && testutil.ToFloat64(src.m.misses) >= float64(len(notLocal)) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	// End the held connections; their closes follow.
	for _, r := range recs {
		if r.conn != nil {
			r.conn.Close()
			<-r.closed
		}
	}
	// Wait for the Closes (with notifications: every named flow's).
	closesFrom := time.Now()
	for time.Since(closesFrom) < 3*time.Second {
		unclosed := 0
		for _, r := range recs {
			for _, o := range sink.get(keyOf(r.client, r.server)) {
				if o.closedSeq == 0 {
					unclosed++
				}
			}
		}
		if unclosed == 0 || !withDestroy {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	closeWait := time.Since(closesFrom)

	res := result{total: len(recs), byKind: map[string][2]int{}, closeWait: closeWait}
	for _, r := range recs {
		want := FromCookie(integrationPrefix, r.cookie)
		opens := sink.get(keyOf(r.client, r.server))
		bk := res.byKind[r.kind]
		bk[1]++
		ok := false
		for _, o := range opens {
			if o.uuid != want {
				res.wrong++
				t.Errorf("%s flow %v-%v named %s, its cookie gives %s", r.kind, r.server, r.client, o.uuid, want)
				continue
			}
			if o.local != r.server || o.remote != r.client {
				t.Errorf("%s flow: Open local %v remote %v, want %v %v", r.kind, o.local, o.remote, r.server, r.client)
			}
			if o.closedSeq == 0 {
				res.unclosed++
			}
			ok = true
		}
		if len(opens) > 1 {
			t.Errorf("%s flow %v-%v opened %d times", r.kind, r.server, r.client, len(opens))
		}
		if ok {
			res.named++
			bk[0]++
		}
		res.byKind[r.kind] = bk
	}
	for _, nl := range notLocal {
		if got := sink.get(keyOf(nl[0], nl[1])); len(got) != 0 {
			t.Errorf("tuple %v-%v is no local socket but was named %+v", nl[0], nl[1], got)
		}
	}
	res.misses = testutil.ToFloat64(src.m.misses)
	res.overruns = testutil.ToFloat64(src.m.overruns)
	res.uuidsQuery = testutil.ToFloat64(src.m.uuidsQuery)
	res.uuidsDestroy = testutil.ToFloat64(src.m.uuidsDestroy)
	if want := float64(len(notLocal) + res.total - res.named); res.misses != want {
		t.Errorf("misses = %v, want %v (the tuples that are no local socket and the unnamed flows)", res.misses, want)
	}

	// tcp-info: every UUID it reports for our flows is ours.
	byKey := map[tupleKey]*flowRec{}
	for _, r := range recs {
		byKey[keyOf(r.client, r.server)] = r
	}
	seen := map[tupleKey]bool{}
	for _, ev := range ti.opens() {
		src, err1 := netip.ParseAddr(ev.ID.SrcIP)
		dst, err2 := netip.ParseAddr(ev.ID.DstIP)
		if err1 != nil || err2 != nil {
			t.Errorf("tcp-info event with bad addresses: %+v", ev.ID)
			continue
		}
		k := keyOf(netip.AddrPortFrom(src.Unmap(), ev.ID.SPort), netip.AddrPortFrom(dst.Unmap(), ev.ID.DPort))
		r := byKey[k]
		if r == nil {
			continue // a listener
		}
		seen[k] = true
		want := FromCookie(integrationPrefix, r.cookie)
		if ev.UUID != want || uint64(ev.ID.Cookie) != r.cookie {
			res.tcpinfoDisagree++
			t.Errorf("tcp-info named %v-%v %s (cookie %#x); SO_COOKIE gives %s", r.server, r.client, ev.UUID, uint64(ev.ID.Cookie), want)
		}
		for _, o := range sink.get(k) {
			if o.uuid != ev.UUID {
				res.tcpinfoDisagree++
				t.Errorf("tcp-info named %v-%v %s, the source %s", r.server, r.client, ev.UUID, o.uuid)
			}
		}
	}
	res.tcpinfoSaw = len(seen)
	return res
}

// TestIntegration runs hundreds of real connections of every kind against
// the Source, with and without destroy notifications.
func TestIntegration(t *testing.T) {
	requireNetns(t)
	tcpInfoBin(t)
	sc := scenario{perKind: 100, workers: 4, maxWait: 2 * time.Second}
	t.Run("destroy notifications", func(t *testing.T) {
		res := runScenario(t, newTestNet(t), sc, true)
		t.Logf("with destroy notifications: %v", res)
		if res.named*100 < res.total*99 {
			t.Errorf("named %d of %d flows, want at least 99%%", res.named, res.total)
		}
		if res.unclosed > 0 {
			t.Errorf("%d named flows got no Close", res.unclosed)
		}
		if res.tcpinfoSaw == 0 {
			t.Errorf("tcp-info reported none of our flows; the comparison proved nothing")
		}
	})
	t.Run("queries only", func(t *testing.T) {
		res := runScenario(t, newTestNet(t), sc, false)
		t.Logf("queries only: %v", res)
		if held := res.byKind[kindHeld]; held[0] != held[1] {
			t.Errorf("named %d of %d held connections with queries alone", held[0], held[1])
		}
	})
}

// TestIntegrationTupleReuse: a new connection on a tuple whose previous
// connection still lingers in TIME_WAIT on the server gets its own cookie,
// never the old one, although the capture's Lookup comes before the new
// connection exists (when the kernel's only socket on that tuple is the old
// TIME_WAIT one), with and without destroy notifications.
func TestIntegrationTupleReuse(t *testing.T) {
	for _, withDestroy := range []bool{true, false} {
		t.Run(fmt.Sprintf("destroy=%v", withDestroy), func(t *testing.T) {
			n := newTestNet(t)
			sink := newFlowSink()
			var src *Source
			err := netns.Do(n.server, func() error {
				cfg := Config{Prefix: integrationPrefix, MaxWait: 2 * time.Second}
				if withDestroy {
					var err error
					src, err = New(cfg, sink, prometheus.NewRegistry())
					return err
				}
				q, err := openQuerier()
				if err != nil {
					return err
				}
				src = newSource(cfg.withDefaults(), sink, prometheus.NewRegistry(), q, nil)
				src.SetPrefix(integrationPrefix)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- src.Run(ctx) }()
			defer func() { cancel(); <-done }()

			ln := listen(t, n.server, "tcp4", "192.0.2.1:0")
			q := openQuerierIn(t, n.server)
			d := newDialer(t, n.client)
			server := addrPort(ln.Addr())
			client := netip.AddrPortFrom(clientV4, 31000)

			// The old connection: the server closes first and keeps the
			// tuple in TIME_WAIT.
			first := time.Now()
			c, err := d.dial(context.Background(), client, server)
			if err != nil {
				t.Fatal(err)
			}
			src.Lookup(client, server, first)
			sc, oldCookie := acceptOne(t, ln)
			waitOpen(t, sink, keyOf(client, server), 1)
			sc.Close()
			io.Copy(io.Discard, c)
			c.Close()
			time.Sleep(50 * time.Millisecond)
			if r := queryOne(t, q, server, client); r.kind != resultFound || r.msg.state != stateTimeWait || r.msg.cookie != oldCookie {
				t.Fatalf("old connection: %+v, want TIME_WAIT with cookie %#x", r, oldCookie)
			}

			// The new connection's first packet, seen before it exists.
			src.Lookup(server, client, time.Now())
			time.Sleep(30 * time.Millisecond) // several queries see only the TIME_WAIT socket
			c2, err := d.dial(context.Background(), client, server)
			if err != nil {
				t.Fatalf("reuse the tuple: %v", err)
			}
			defer c2.Close()
			_, newCookie := acceptOne(t, ln)
			if newCookie == oldCookie {
				t.Fatal("the kernel reused the cookie")
			}
			opens := waitOpen(t, sink, keyOf(client, server), 2)
			if opens[0].uuid != FromCookie(integrationPrefix, oldCookie) || opens[1].uuid != FromCookie(integrationPrefix, newCookie) {
				t.Fatalf("opens %+v; want the old cookie %#x, then the new %#x", opens, oldCookie, newCookie)
			}
		})
	}
}

// waitOpen waits until flow k has n Opens and returns them.
func waitOpen(t *testing.T, sink *flowSink, k tupleKey, n int) []sinkOpen {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		opens := sink.get(k)
		if len(opens) >= n || time.Now().After(deadline) {
			if len(opens) != n {
				t.Fatalf("%d opens, want %d: %+v", len(opens), n, opens)
			}
			return opens
		}
		time.Sleep(5 * time.Millisecond)
	}
}
