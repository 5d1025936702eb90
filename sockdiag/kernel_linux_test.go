//go:build linux

package sockdiag

// Experiments that pin down the kernel behaviours the source relies on
// (see "Kernel behaviour" in doc.go). Each runs real TCP connections
// between two network namespaces and asks the kernel directly.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/headercap/headercap/internal/netns"
)

// openQuerierIn opens a query socket in namespace ns.
func openQuerierIn(t testing.TB, ns string) *nlQuerier {
	t.Helper()
	var q *nlQuerier
	if err := netns.Do(ns, func() (err error) { q, err = openQuerier(); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.close() })
	return q
}

// openDestroyIn opens a destroy socket in namespace ns.
func openDestroyIn(t testing.TB, ns string) *nlDestroyReader {
	t.Helper()
	var d *nlDestroyReader
	if err := netns.Do(ns, func() (err error) { d, err = openDestroyReader(); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.close() })
	return d
}

func queryOne(t testing.TB, q *nlQuerier, local, remote netip.AddrPort) queryResult {
	t.Helper()
	res := make([]queryResult, 1)
	if _, err := q.query([]sockID{{local, remote}}, res); err != nil {
		t.Fatal(err)
	}
	return res[0]
}

// acceptOne accepts one connection and returns it with its cookie.
func acceptOne(t testing.TB, ln *net.TCPListener) (*net.TCPConn, uint64) {
	t.Helper()
	ln.SetDeadline(time.Now().Add(5 * time.Second))
	c, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	cookie, err := cookieOf(c)
	if err != nil {
		t.Fatal(err)
	}
	return c, cookie
}

// destroyWatcher collects destroy notifications in the background.
type destroyWatcher struct {
	d  *nlDestroyReader
	ch chan destroyBatch
}

func watchDestroys(t testing.TB, ns string) *destroyWatcher {
	t.Helper()
	w := &destroyWatcher{d: openDestroyIn(t, ns), ch: make(chan destroyBatch, 1024)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			b, err := w.d.read()
			switch {
			case err == nil:
				w.ch <- b
			case errors.Is(err, errOverrun):
				t.Errorf("destroy notifications overrun")
			default:
				if !errors.Is(err, errClosed) {
					t.Errorf("read destroy notifications: %v", err)
				}
				return
			}
		}
	}()
	t.Cleanup(func() { w.d.close(); <-done })
	return w
}

// waitFor returns when the notification for cookie arrives, or fails the
// test after timeout.
func (w *destroyWatcher) waitFor(t testing.TB, cookie uint64, timeout time.Duration) (diagMsg, time.Time) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case b := <-w.ch:
			for _, m := range b.msgs {
				if m.cookie == cookie {
					return m, b.at
				}
			}
		case <-deadline:
			t.Fatalf("no destroy notification for cookie %#x within %v", cookie, timeout)
		}
	}
}

// none fails if a notification for cookie arrives within d.
func (w *destroyWatcher) none(t testing.TB, cookie uint64, d time.Duration) {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case b := <-w.ch:
			for _, m := range b.msgs {
				if m.cookie == cookie {
					t.Fatalf("unexpected destroy notification for cookie %#x: %+v", cookie, m)
				}
			}
		case <-deadline:
			return
		}
	}
}

// TestKernelRequestSocket: during the server side of a handshake the exact
// lookup returns the request socket (sk_state TCP_NEW_SYN_RECV, reported
// as idiag_state TCP_SYN_RECV, 3). Querying it generates its cookie, and
// the full socket created when the handshake completes inherits that
// cookie (inet_csk_clone_lock copies ir_cookie when it is already set);
// a full socket whose request socket was never asked for generates its own
// later. A listener with TCP_DEFER_ACCEPT keeps the request socket until
// data arrives, which makes the sequence deterministic here.
func TestKernelRequestSocket(t *testing.T) {
	n := newTestNet(t)
	var ln net.Listener
	err := netns.Do(n.server, func() (err error) {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, 5)
			})
			return errors.Join(err, serr)
		}}
		ln, err = lc.Listen(context.Background(), "tcp4", "192.0.2.1:0")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	q := openQuerierIn(t, n.server)
	server := addrPort(ln.Addr())
	c, err := newDialer(t, n.client).dial(context.Background(), netip.AddrPort{}, server)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	client := addrPort(c.LocalAddr())

	r := queryOne(t, q, server, client)
	// inet_diag reports a request socket as TCP_SYN_RECV, not as its
	// sk_state TCP_NEW_SYN_RECV.
	if r.kind != resultFound || r.msg.state != stateSynRecv {
		t.Fatalf("during the deferred handshake: got %+v, want a request socket (state %d)", r, stateSynRecv)
	}
	reqCookie := r.msg.cookie
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	sc, fullCookie := acceptOne(t, ln.(*net.TCPListener))
	_ = sc
	r = queryOne(t, q, server, client)
	if r.kind != resultFound || r.msg.state != stateEstablished {
		t.Fatalf("after accept: got %+v, want ESTABLISHED", r)
	}
	if r.msg.cookie != fullCookie {
		t.Errorf("full socket cookie %#x, SO_COOKIE %#x", r.msg.cookie, fullCookie)
	}
	if reqCookie != fullCookie {
		t.Errorf("the full socket did not inherit the request socket's cookie: %#x, %#x", reqCookie, fullCookie)
	}
	t.Logf("request socket cookie %#x, full socket cookie %#x (inherited)", reqCookie, fullCookie)
}

// TestKernelListener: an exact lookup whose local side is a listening port
// returns the listener (state LISTEN, remote port 0) when no connection
// matches; and a connection accepted by a dual-stack listener is found by
// an AF_INET query although it is an AF_INET6 socket (v4-mapped).
func TestKernelListener(t *testing.T) {
	n := newTestNet(t)
	ln := listen(t, n.server, "tcp", ":0") // dual-stack
	q := openQuerierIn(t, n.server)
	port := addrPort(ln.Addr()).Port()

	r := queryOne(t, q, netip.AddrPortFrom(serverV4, port), netip.AddrPortFrom(nowhereV4, 5555))
	if r.kind != resultFound || r.msg.state != stateListen || r.msg.remote.Port() != 0 {
		t.Fatalf("lookup of a tuple that is not a connection on a listening port: got %+v, want the listener", r)
	}
	t.Logf("listener returned for a non-connection: %+v", r.msg)

	c, err := newDialer(t, n.client).dial(context.Background(), netip.AddrPort{}, netip.AddrPortFrom(serverV4, port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, cookie := acceptOne(t, ln)
	r = queryOne(t, q, netip.AddrPortFrom(serverV4, port), addrPort(c.LocalAddr()))
	if r.kind != resultFound || r.msg.cookie != cookie || r.msg.family != afInet6 || r.msg.local.Addr() != serverV4 {
		t.Fatalf("AF_INET query for a v4-mapped AF_INET6 socket: got %+v, want family %d, local %v, cookie %#x", r, afInet6, serverV4, cookie)
	}
	// The wrong orientation finds nothing (no listener on the client port).
	r = queryOne(t, q, addrPort(c.LocalAddr()), netip.AddrPortFrom(serverV4, port))
	if r.kind != resultNotFound {
		t.Fatalf("reversed orientation: got %+v, want not found", r)
	}
}

// TestKernelTimeWait: a socket that closed first is found in TIME_WAIT
// with the cookie of the full socket (idiag_timer 3, idiag_expires counting
// down from TCP_TIMEWAIT_LEN); while its peer keeps the connection
// half-open it is a timewait socket with substate FIN_WAIT2.
func TestKernelTimeWait(t *testing.T) {
	n := newTestNet(t)
	ln := listen(t, n.server, "tcp6", "[2001:db8::1]:0")
	q := openQuerierIn(t, n.server)
	d := newDialer(t, n.client)
	server := addrPort(ln.Addr())

	c, err := d.dial(context.Background(), netip.AddrPort{}, server)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, cookie := acceptOne(t, ln)
	client := addrPort(c.LocalAddr())
	sc.Close() // server closes first; the client keeps its end open
	time.Sleep(50 * time.Millisecond)
	r := queryOne(t, q, server, client)
	if r.kind != resultFound || r.msg.cookie != cookie || !r.msg.isTimeWait() || r.msg.state != 5 /* FIN_WAIT2 */ {
		t.Fatalf("half-closed by the server: got %+v, want a timewait socket in FIN_WAIT2 with cookie %#x", r, cookie)
	}
	t.Logf("half-closed: state %d timer %d expires %dms", r.msg.state, r.msg.timer, r.msg.expires)

	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatal(err)
	}
	c.Close()
	time.Sleep(50 * time.Millisecond)
	r = queryOne(t, q, server, client)
	if r.kind != resultFound || r.msg.cookie != cookie || r.msg.state != stateTimeWait || !r.msg.isTimeWait() {
		t.Fatalf("after both closed: got %+v, want TIME_WAIT with cookie %#x", r, cookie)
	}
	if r.msg.expires > 60000 || r.msg.expires < 55000 {
		t.Errorf("TIME_WAIT expires in %dms, want about 60s", r.msg.expires)
	}
	if timeWaitIsOlder(r.msg.expires, time.Now().Add(-time.Second), time.Now()) {
		t.Errorf("the flow that entered TIME_WAIT would be rejected as older")
	}
	if !timeWaitIsOlder(r.msg.expires, time.Now(), time.Now()) {
		t.Errorf("a flow that started after TIME_WAIT began would be given its cookie")
	}
	t.Logf("TIME_WAIT: state %d timer %d expires %dms cookie %#x", r.msg.state, r.msg.timer, r.msg.expires, r.msg.cookie)
}

// TestKernelDestroyTiming: when destroy notifications arrive, relative to
// the application's close and the connection's last packet.
func TestKernelDestroyTiming(t *testing.T) {
	n := newTestNet(t)
	ln := listen(t, n.server, "tcp4", "192.0.2.1:0")
	w := watchDestroys(t, n.server)
	d := newDialer(t, n.client)
	server := addrPort(ln.Addr())
	connect := func() (*net.TCPConn, *net.TCPConn, uint64) {
		c, err := d.dial(context.Background(), netip.AddrPort{}, server)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		sc, cookie := acceptOne(t, ln)
		return c, sc, cookie
	}

	t.Run("passive close", func(t *testing.T) {
		c, sc, cookie := connect()
		c.Close()
		if _, err := io.Copy(io.Discard, sc); err != nil {
			t.Fatal(err)
		}
		// Until the server closes its end (CLOSE_WAIT), nothing.
		w.none(t, cookie, 100*time.Millisecond)
		closed := time.Now()
		sc.Close()
		m, at := w.waitFor(t, cookie, 2*time.Second)
		t.Logf("passive close: notification %v after close(), state %d", at.Sub(closed), m.state)
		if m.local != server || m.remote != addrPort(c.LocalAddr()) {
			t.Errorf("notification tuple %v-%v, want %v-%v", m.local, m.remote, server, addrPort(c.LocalAddr()))
		}
	})
	t.Run("active close", func(t *testing.T) {
		c, sc, cookie := connect()
		closed := time.Now()
		sc.Close()
		// Destroyed as soon as the peer acknowledges the FIN (the socket
		// becomes a FIN_WAIT2 timewait socket), though the peer may still
		// send: the Close precedes the flow's last packets.
		m, at := w.waitFor(t, cookie, 2*time.Second)
		t.Logf("active close: notification %v after close(), peer still open, state %d", at.Sub(closed), m.state)
		c.Close()
	})
	t.Run("reset", func(t *testing.T) {
		c, sc, cookie := connect()
		c.SetLinger(0)
		c.Close() // RST
		// The kernel closes the connection but the socket lives on until
		// the application closes its descriptor.
		w.none(t, cookie, 100*time.Millisecond)
		closed := time.Now()
		sc.Close()
		_, at := w.waitFor(t, cookie, 2*time.Second)
		t.Logf("reset: notification %v after close()", at.Sub(closed))
	})
	t.Run("reset in accept queue", func(t *testing.T) {
		// A connection reset while it waits in the accept queue is a full
		// socket too; it is destroyed only when the application accepts
		// and closes it (or closes the listener).
		c, err := d.dial(context.Background(), netip.AddrPort{}, server)
		if err != nil {
			t.Fatal(err)
		}
		c.SetLinger(0)
		c.Close()
		time.Sleep(100 * time.Millisecond)
		sc, cookie := acceptOne(t, ln)
		w.none(t, cookie, 100*time.Millisecond)
		closed := time.Now()
		sc.Close()
		_, at := w.waitFor(t, cookie, 2*time.Second)
		t.Logf("reset in accept queue: notification %v after accept and close()", at.Sub(closed))
	})
}

// TestKernelLingerZeroDestroy: a socket closed with SO_LINGER 0 (a reset
// from our side) is disconnected before it is destroyed: its notification
// carries its cookie but a zeroed peer (and a zeroed local address unless
// the socket was bound to one), so only a cookie seen earlier, for example
// by a query, ties it to its tuple.
func TestKernelLingerZeroDestroy(t *testing.T) {
	n := newTestNet(t)
	for _, tc := range []struct{ name, network, addr string }{
		{"bound listener", "tcp4", "192.0.2.1:0"},
		{"wildcard listener", "tcp", ":0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln := listen(t, n.server, tc.network, tc.addr)
			w := watchDestroys(t, n.server)
			q := openQuerierIn(t, n.server)
			port := addrPort(ln.Addr()).Port()
			c, err := newDialer(t, n.client).dial(context.Background(), netip.AddrPort{}, netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), port))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			sc, cookie := acceptOne(t, ln)
			local, remote := addrPort(sc.LocalAddr()), addrPort(sc.RemoteAddr())
			local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
			remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
			if r := queryOne(t, q, local, remote); r.kind != resultFound || r.msg.cookie != cookie {
				t.Fatalf("query before the reset: %+v, want cookie %#x", r, cookie)
			}
			sc.SetLinger(0)
			sc.Close()
			m, _ := w.waitFor(t, cookie, 2*time.Second)
			t.Logf("SO_LINGER 0 close of %v-%v: notification local %v remote %v state %d", local, remote, m.local, m.remote, m.state)
			if m.remote.Port() != 0 {
				t.Errorf("notification peer %v, want port 0 (the kernel zeroes it on disconnect)", m.remote)
			}
		})
	}
}

// TestKernelDestroyCapabilities: on this kernel subscribing to the destroy
// groups needs no capability (NETLINK_SOCK_DIAG is created with
// NL_CFG_F_NONROOT_RECV), and neither do exact queries; CAP_NET_ADMIN only
// lifts the receive buffer above net.core.rmem_max (SO_RCVBUFFORCE).
func TestKernelDestroyCapabilities(t *testing.T) {
	n := newTestNet(t)
	ln := listen(t, n.server, "tcp4", "192.0.2.1:0")
	c, err := newDialer(t, n.client).dial(context.Background(), netip.AddrPort{}, addrPort(ln.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, cookie := acceptOne(t, ln)

	var q *nlQuerier
	var d *nlDestroyReader
	var subErr error
	var rcvbuf int
	err = netns.Do(n.server, func() error {
		return withoutNetAdmin(func() error {
			d, subErr = openDestroyReader()
			if d != nil {
				rcvbuf, _ = getRcvBuf(d)
			}
			var err error
			q, err = openQuerier()
			return err
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	defer q.close()
	if subErr != nil {
		t.Fatalf("subscribing without CAP_NET_ADMIN: %v (this kernel needs a capability)", subErr)
	}
	defer d.close()
	r := queryOne(t, q, addrPort(ln.Addr()), addrPort(c.LocalAddr()))
	if r.kind != resultFound || r.msg.cookie != cookie {
		t.Errorf("query without CAP_NET_ADMIN: got %+v, want cookie %#x", r, cookie)
	}
	c.Close()
	sc.Close()
	got := make(chan error, 1)
	go func() {
		for {
			b, err := d.read()
			if err != nil {
				got <- err
				return
			}
			for _, m := range b.msgs {
				if m.cookie == cookie {
					got <- nil
					return
				}
			}
		}
	}()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		d.close()
		<-got
		t.Fatal("no destroy notification on a socket subscribed without CAP_NET_ADMIN")
	}
	rmemMax, err := os.ReadFile("/proc/sys/net/core/rmem_max")
	if err != nil {
		t.Fatal(err)
	}
	var max int
	fmt.Sscan(string(rmemMax), &max)
	if rcvbuf > 2*max {
		t.Errorf("receive buffer %d above 2*rmem_max %d without CAP_NET_ADMIN", rcvbuf, 2*max)
	}
	t.Logf("without CAP_NET_ADMIN: subscribed, notified; receive buffer %d bytes (rmem_max %d)", rcvbuf, max)
}

// getRcvBuf returns the destroy socket's receive buffer size.
func getRcvBuf(d *nlDestroyReader) (int, error) {
	var n int
	var serr error
	err := d.rc.Control(func(fd uintptr) { n, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF) })
	return n, errors.Join(err, serr)
}

// TestKernelBatch: one sendto with many requests gets one reply per
// request, all queued by the time sendto returns.
func TestKernelBatch(t *testing.T) {
	n := newTestNet(t)
	ln := listen(t, n.server, "tcp4", "192.0.2.1:0")
	q := openQuerierIn(t, n.server)
	d := newDialer(t, n.client)
	server := addrPort(ln.Addr())
	want := map[netip.AddrPort]uint64{}
	for range 32 {
		c, err := d.dial(context.Background(), netip.AddrPort{}, server)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_, cookie := acceptOne(t, ln)
		want[addrPort(c.LocalAddr())] = cookie
	}
	var ids []sockID
	for client := range want {
		ids = append(ids, sockID{server, client}, sockID{client, server})
	}
	for len(ids) < q.batchLimit() {
		ids = append(ids, sockID{server, netip.AddrPortFrom(nowhereV4, uint16(1000+len(ids)))})
	}
	res := make([]queryResult, len(ids))
	if _, err := q.query(ids, res); err != nil {
		t.Fatal(err)
	}
	for i, id := range ids {
		switch {
		case res[i].kind == resultLost:
			t.Errorf("request %d (%v-%v) got no reply", i, id.local, id.remote)
		case id.local == server && want[id.remote] != 0:
			if res[i].kind != resultFound || res[i].msg.cookie != want[id.remote] {
				t.Errorf("request %d: got %+v, want cookie %#x", i, res[i], want[id.remote])
			}
		case id.local == server: // the listener
			if res[i].kind != resultFound || res[i].msg.state != stateListen {
				t.Errorf("request %d: got %+v, want the listener", i, res[i])
			}
		default:
			if res[i].kind != resultNotFound {
				t.Errorf("request %d: got %+v, want not found", i, res[i])
			}
		}
	}
	t.Logf("batch of %d requests answered in one round trip", len(ids))
}
