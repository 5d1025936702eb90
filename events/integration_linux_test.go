//go:build linux

package events

// An end-to-end test against the real tcp-info binary: two network
// namespaces joined by a veth pair carrying only documentation addresses
// (192.0.2.0/24, 2001:db8::/64), tcp-info running in the server namespace,
// real kernel TCP connections between them, and the Client reading
// tcp-info's eventsocket from the root namespace through the shared file
// system.
//
// It needs root and the tcp-info binary (.bin/tcp-info, or $TCPINFO_BIN);
// without them it skips, unless HEADERCAP_REQUIRE_NETNS=1 makes it fail.

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/headercap/headercap/internal/netns"
)

var update = flag.Bool("update", false, "rewrite "+recordedEvents+" from the real tcp-info (needs root)")

const (
	serverAddr4 = "192.0.2.1"
	clientAddr4 = "192.0.2.2"
	serverAddr6 = "2001:db8::1"
	clientAddr6 = "2001:db8::2"
	// uuidPrefix is what tcp-info reads from -uuid-prefix-file.
	uuidPrefix = "headercap-test.example.org_1700000000"
)

// skipOrFail skips the test, or fails it when the environment promises
// that integration tests can run.
func skipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("HEADERCAP_REQUIRE_NETNS") == "1" {
		t.Fatalf(format+" (HEADERCAP_REQUIRE_NETNS=1)", args...)
	}
	t.Skipf(format, args...)
}

func integrationPrereqs(t *testing.T) (tcpinfo string) {
	t.Helper()
	tcpinfo = os.Getenv("TCPINFO_BIN")
	if tcpinfo == "" {
		tcpinfo = filepath.Join("..", ".bin", "tcp-info")
	}
	if _, err := os.Stat(tcpinfo); err != nil {
		skipOrFail(t, "tcp-info binary: %v (set TCPINFO_BIN or run scripts/install-tools.sh)", err)
	}
	tcpinfo, err := filepath.Abs(tcpinfo)
	if err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		skipOrFail(t, "network namespaces need root")
	}
	for _, tool := range []string{"ip", "zstd"} { // tcp-info pipes its output through zstd
		if _, err := exec.LookPath(tool); err != nil {
			skipOrFail(t, "%s not installed: %v", tool, err)
		}
	}
	return tcpinfo
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// netnsPair is two network namespaces joined by a veth pair.
type netnsPair struct {
	server, client string
}

func newNetnsPair(t *testing.T) netnsPair {
	t.Helper()
	pid := os.Getpid()
	p := netnsPair{server: fmt.Sprintf("hcev-srv-%d", pid), client: fmt.Sprintf("hcev-cli-%d", pid)}
	vs, vc := fmt.Sprintf("hcs%d", pid), fmt.Sprintf("hcc%d", pid)
	for _, ns := range []string{p.server, p.client} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("ip netns del %s: %v\n%s", ns, err, out)
			}
		})
	}
	run(t, "ip", "link", "add", vs, "netns", p.server, "type", "veth", "peer", "name", vc, "netns", p.client)
	for _, x := range []struct{ ns, dev, a4, a6 string }{
		{p.server, vs, serverAddr4, serverAddr6},
		{p.client, vc, clientAddr4, clientAddr6},
	} {
		// No link-local address: the only addresses are documentation ones.
		run(t, "ip", "-n", x.ns, "link", "set", x.dev, "addrgenmode", "none")
		run(t, "ip", "-n", x.ns, "addr", "add", x.a4+"/24", "dev", x.dev)
		run(t, "ip", "-n", x.ns, "addr", "add", x.a6+"/64", "dev", x.dev, "nodad")
		run(t, "ip", "-n", x.ns, "link", "set", x.dev, "up")
	}
	return p
}

// sinkServer accepts TCP connections and reads each until EOF.
type sinkServer struct {
	ln net.Listener
	wg sync.WaitGroup
}

func newSinkServer(t *testing.T, ns, addr string) *sinkServer {
	t.Helper()
	s := &sinkServer{}
	err := netns.Do(ns, func() (err error) {
		s.ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	s.wg.Go(func() {
		for {
			c, err := s.ln.Accept()
			if err != nil {
				return
			}
			s.wg.Go(func() {
				defer c.Close()
				io.Copy(io.Discard, c)
			})
		}
	})
	t.Cleanup(func() {
		s.ln.Close()
		s.wg.Wait()
	})
	return s
}

// flow is one client connection to a sinkServer.
type flow struct {
	conn   net.Conn
	dialed time.Time // just before the SYN
	local  netip.AddrPort
	remote netip.AddrPort // as tcp-info in the server namespace sees them
}

func dialFlow(t *testing.T, ns string, srv *sinkServer) *flow {
	t.Helper()
	f := &flow{}
	err := netns.Do(ns, func() (err error) {
		f.dialed = time.Now()
		f.conn, err = net.DialTimeout("tcp", srv.ln.Addr().String(), 5*time.Second)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.conn.Close() })
	f.local = unmapped(srv.ln.Addr())
	f.remote = unmapped(f.conn.LocalAddr())
	return f
}

func unmapped(a net.Addr) netip.AddrPort {
	ap := a.(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func (f *flow) isOpen(ev Event) bool {
	return ev.Kind == Open && ev.Local == f.local && ev.Remote == f.remote
}

func (f *flow) String() string { return f.local.String() + "<-" + f.remote.String() }

// tcpInfo is a tcp-info process in a network namespace.
type tcpInfo struct {
	cmd  *exec.Cmd
	logs *bytes.Buffer
	done chan struct{}
}

func startTCPInfo(t *testing.T, bin, ns, sock, outDir, prefixFile string) *tcpInfo {
	t.Helper()
	ti := &tcpInfo{logs: new(bytes.Buffer), done: make(chan struct{})}
	ti.cmd = exec.Command("ip", "netns", "exec", ns, bin,
		"-tcpinfo.eventsocket", sock, "-output", outDir, "-uuid-prefix-file", prefixFile,
		"-prometheusx.listen-address", ":0")
	ti.cmd.Stdout, ti.cmd.Stderr = ti.logs, ti.logs
	if err := ti.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		ti.cmd.Wait()
		close(ti.done)
	}()
	t.Cleanup(func() {
		ti.stop(t)
		if t.Failed() {
			t.Logf("tcp-info output:\n%s", ti.logs)
		}
	})
	return ti
}

// stop terminates tcp-info and waits for it; idempotent.
func (ti *tcpInfo) stop(t *testing.T) {
	t.Helper()
	ti.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-ti.done:
		return
	case <-time.After(5 * time.Second):
	}
	ti.cmd.Process.Kill()
	<-ti.done
}

// eventLog records every event a client delivers, with its arrival time.
type eventLog struct {
	mu      sync.Mutex
	evs     []timedEvent
	changed chan struct{} // closed and replaced on every add
}

type timedEvent struct {
	Event
	received time.Time
}

func newEventLog() *eventLog { return &eventLog{changed: make(chan struct{})} }

func (l *eventLog) add(ev Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evs = append(l.evs, timedEvent{ev, time.Now()})
	close(l.changed)
	l.changed = make(chan struct{})
}

func (l *eventLog) all(pred func(Event) bool) []timedEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []timedEvent
	for _, e := range l.evs {
		if pred(e.Event) {
			out = append(out, e)
		}
	}
	return out
}

// waitUntil returns the first recorded event matching pred, waiting at most d.
func (l *eventLog) waitUntil(d time.Duration, pred func(Event) bool) (timedEvent, bool) {
	deadline := time.After(d)
	for {
		l.mu.Lock()
		for _, e := range l.evs {
			if pred(e.Event) {
				l.mu.Unlock()
				return e, true
			}
		}
		changed := l.changed
		l.mu.Unlock()
		select {
		case <-changed:
		case <-deadline:
			return timedEvent{}, false
		}
	}
}

// waitFor returns the first recorded event matching pred, waiting for it.
func (l *eventLog) waitFor(t *testing.T, what string, pred func(Event) bool) timedEvent {
	t.Helper()
	deadline := time.After(waitTimeout)
	for {
		l.mu.Lock()
		for _, e := range l.evs {
			if pred(e.Event) {
				l.mu.Unlock()
				return e
			}
		}
		changed := l.changed
		l.mu.Unlock()
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("no %s within %v; events: %+v", what, waitTimeout, l.all(func(Event) bool { return true }))
		}
	}
}

// rawRecorder records the bytes tcp-info sends to a plain client, as
// `socat UNIX-CONNECT:sock -` would.
type rawRecorder struct {
	conn net.Conn
	buf  bytes.Buffer
	done chan struct{}
}

func recordRaw(t *testing.T, sock string) *rawRecorder {
	t.Helper()
	r := &rawRecorder{done: make(chan struct{})}
	deadline := time.Now().Add(waitTimeout)
	for {
		var err error
		if r.conn, err = net.Dial("unix", sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("recorder: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	go func() {
		defer close(r.done)
		io.Copy(&r.buf, r.conn)
	}()
	t.Cleanup(func() { r.stop() })
	return r
}

// stop closes the connection and returns what was recorded; idempotent.
func (r *rawRecorder) stop() []byte {
	r.conn.Close()
	<-r.done
	return r.buf.Bytes()
}

// runClient runs a Client with its own registry until the test ends.
func runClient(t *testing.T, sock string) (*Client, *eventLog, *prometheus.Registry) {
	t.Helper()
	log := newEventLog()
	reg := prometheus.NewRegistry()
	c, err := NewClient(ClientConfig{
		Path: sock, MinBackoff: 5 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		Logger: slog.New(newLogCounter(t)),
	}, log.add, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run() = %v", err)
		}
	})
	return c, log, reg
}

// waitConnected polls c.Connected (the connection is made by another
// process's accept, so there is nothing to synchronise on).
func waitConnected(t *testing.T, c *Client, want bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for c.Connected() != want {
		if time.Now().After(deadline) {
			t.Fatalf("Connected() still %v after %v", !want, waitTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkOpen checks an Open event's ID and UUID against tcp-info's format.
func checkOpen(t *testing.T, ev Event) {
	t.Helper()
	if !ev.HasID || ev.Cookie == 0 {
		t.Errorf("Open without ID or cookie: %+v", ev)
	}
	if err := ValidateUUID(ev.UUID); err != nil {
		t.Errorf("tcp-info UUID %q fails validation: %v", ev.UUID, err)
	}
	if want := fmt.Sprintf("%s_%016X", uuidPrefix, ev.Cookie); ev.UUID != want {
		t.Errorf("UUID %q, want %q (prefix_cookie in hex)", ev.UUID, want)
	}
}

func TestTCPInfoIntegration(t *testing.T) {
	bin := integrationPrereqs(t)
	ns := newNetnsPair(t)

	dir := t.TempDir()
	sock := filepath.Join(dir, "tcpinfo.sock")
	prefixFile := filepath.Join(dir, "prefix")
	// No trailing newline: tcp-info uses the file's bytes verbatim.
	if err := os.WriteFile(prefixFile, []byte(uuidPrefix), 0o644); err != nil {
		t.Fatal(err)
	}
	// tcp-info's zstd children may still be writing here after it is
	// killed, which would fail t.TempDir's cleanup.
	outDir, err := os.MkdirTemp("", "hcev-tcpinfo-out-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for range 50 {
			if os.RemoveAll(outDir) == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("could not remove %s", outDir)
	})

	// The client starts before tcp-info: it must wait for the socket.
	c1, log1, reg1 := runClient(t, sock)
	ti := startTCPInfo(t, bin, ns.server, sock, outDir, prefixFile)
	waitConnected(t, c1, true)

	rec := recordRaw(t, sock)

	srv4 := newSinkServer(t, ns.server, net.JoinHostPort(serverAddr4, "0"))
	srv6 := newSinkServer(t, ns.server, net.JoinHostPort(serverAddr6, "0"))

	// openAndClose makes one connection, waits for its Open, closes it and
	// waits for its Close.
	openAndClose := func(srv *sinkServer, l *eventLog) (open, cl timedEvent) {
		t.Helper()
		f := dialFlow(t, ns.client, srv)
		open = l.waitFor(t, "Open for "+f.String(), f.isOpen)
		checkOpen(t, open.Event)
		t.Logf("flow %s: Open delivered %v after dial; event timestamp %v after dial; interface %d",
			f, open.received.Sub(f.dialed), open.Timestamp.Sub(f.dialed), open.Interface)
		f.conn.Close()
		closed := time.Now()
		cl = l.waitFor(t, "Close for "+open.UUID, func(ev Event) bool { return ev.Kind == Close && ev.UUID == open.UUID })
		t.Logf("flow %s: Close delivered %v after client close; HasID %v", f, cl.received.Sub(closed), cl.HasID)
		if cl.HasID {
			t.Errorf("tcp-info v1.9.0 sent a Close with an ID: %+v", cl.Event)
		}
		if cl.Timestamp.Before(open.Timestamp) {
			t.Errorf("Close timestamp %v before Open timestamp %v", cl.Timestamp, open.Timestamp)
		}
		return open, cl
	}

	t.Run("sequential", func(t *testing.T) {
		seen := map[string]bool{}
		for _, srv := range []*sinkServer{srv4, srv6, srv4, srv6} {
			open, _ := openAndClose(srv, log1)
			if seen[open.UUID] {
				t.Errorf("UUID %s reused", open.UUID)
			}
			seen[open.UUID] = true
		}
	})

	t.Run("concurrent", func(t *testing.T) {
		var flows []*flow
		for i := range 8 {
			flows = append(flows, dialFlow(t, ns.client, []*sinkServer{srv4, srv6}[i%2]))
		}
		var uuids []string
		for _, f := range flows {
			open := log1.waitFor(t, "Open for "+f.String(), f.isOpen)
			checkOpen(t, open.Event)
			uuids = append(uuids, open.UUID)
		}
		for _, f := range flows {
			f.conn.Close()
		}
		for _, u := range uuids {
			log1.waitFor(t, "Close for "+u, func(ev Event) bool { return ev.Kind == Close && ev.UUID == u })
			if n := len(log1.all(func(ev Event) bool { return ev.UUID == u })); n != 2 {
				t.Errorf("%d events for %s, want one Open and one Close", n, u)
			}
		}
	})

	raw := rec.stop()
	if *update {
		if err := os.WriteFile(recordedEvents, raw, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %d bytes to %s", len(raw), recordedEvents)
	}

	t.Run("no replay to a new client", func(t *testing.T) {
		held := dialFlow(t, ns.client, srv4)
		heldOpen := log1.waitFor(t, "Open for held flow", held.isOpen)

		c2, log2, _ := runClient(t, sock)
		waitConnected(t, c2, true)
		// Once a new flow reaches c2, tcp-info has registered it.
		openAndClose(srv6, log2)
		held.conn.Close()
		log2.waitFor(t, "Close for held flow", func(ev Event) bool { return ev.Kind == Close && ev.UUID == heldOpen.UUID })
		if opens := log2.all(func(ev Event) bool { return ev.Kind == Open && ev.UUID == heldOpen.UUID }); len(opens) != 0 {
			t.Errorf("tcp-info replayed an existing flow to a new client: %+v", opens)
		} else {
			t.Logf("a new client gets no Open for existing flows, but does get their Close")
		}
	})

	t.Run("tcp-info restart", func(t *testing.T) {
		held := dialFlow(t, ns.client, srv4)
		heldOpen := log1.waitFor(t, "Open for held flow", held.isOpen)

		ti.stop(t)
		waitConnected(t, c1, false)
		restarted := time.Now()
		startTCPInfo(t, bin, ns.server, sock, outDir, prefixFile)
		waitConnected(t, c1, true)
		t.Logf("client reconnected %v after tcp-info was started again", time.Since(restarted))
		if v := metricValue(t, reg1, "pcap_tcpinfohandler_reconnects_total"); v != 1 {
			t.Errorf("reconnects_total = %v, want 1", v)
		}
		// Events flow again. A restarted tcp-info has been seen to start
		// sending events to a client that connected early only after a
		// while, so new flows are made until one is announced.
		deadline := time.Now().Add(3 * waitTimeout)
		for attempt := 1; ; attempt++ {
			f := dialFlow(t, ns.client, srv4)
			_, ok := log1.waitUntil(2*time.Second, f.isOpen)
			f.conn.Close()
			if ok {
				t.Logf("events flow again after the restart (flow %d)", attempt)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no Open for any new flow within %v of the reconnect", 3*waitTimeout)
			}
		}
		openAndClose(srv6, log1)

		// tcp-info announces every existing socket on its first poll after
		// a start; whether this client was connected by then is a race.
		held.conn.Close()
		cl := log1.waitFor(t, "Close for held flow", func(ev Event) bool {
			return ev.Kind == Close && ev.UUID == heldOpen.UUID
		})
		opens := log1.all(func(ev Event) bool { return ev.Kind == Open && ev.UUID == heldOpen.UUID })
		t.Logf("flow held across the restart: %d Open(s) (a second one means the client caught tcp-info's first poll), then a Close %v after the restart",
			len(opens), cl.received.Sub(restarted))
	})

	for r := range map[string]bool{"malformed": true, "bad_uuid": true, "bad_kind": true, "bad_id": true, "too_long": true} {
		if v := metricValue(t, reg1, "pcap_tcpinfohandler_bad_events_total", "reason", r); v != 0 {
			t.Errorf("tcp-info sent %v lines rejected as %s", v, r)
		}
	}
}
