//go:build linux

package sockdiag

// Test network: two network namespaces joined by a veth pair that carries
// only documentation addresses (192.0.2.0/24, 2001:db8::/64, no link-local
// addresses). Everything here needs root; without it the tests skip,
// unless HEADERCAP_REQUIRE_NETNS=1 makes them fail.

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/headercap/headercap/internal/netns"
)

var (
	serverV4 = netip.MustParseAddr("192.0.2.1")
	clientV4 = netip.MustParseAddr("192.0.2.2")
	serverV6 = netip.MustParseAddr("2001:db8::1")
	clientV6 = netip.MustParseAddr("2001:db8::2")
	// nowhereV4 is a documentation address no namespace holds.
	nowhereV4 = netip.MustParseAddr("192.0.2.99")
)

var netSeq atomic.Uint64

// requireNetns skips (or fails, with HEADERCAP_REQUIRE_NETNS=1) a test
// that needs root and ip(8).
func requireNetns(t testing.TB) {
	t.Helper()
	skip := ""
	if os.Geteuid() != 0 {
		skip = "network namespaces need root"
	} else if _, err := exec.LookPath("ip"); err != nil {
		skip = "ip(8) not installed: " + err.Error()
	}
	if skip == "" {
		return
	}
	if os.Getenv("HEADERCAP_REQUIRE_NETNS") == "1" {
		t.Fatalf("%s (HEADERCAP_REQUIRE_NETNS=1)", skip)
	}
	t.Skip(skip)
}

func runCmd(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// testNet is a pair of namespaces: server holds 192.0.2.1 and 2001:db8::1,
// client 192.0.2.2 and 2001:db8::2.
type testNet struct {
	server, client string
}

func newTestNet(t testing.TB) *testNet {
	t.Helper()
	requireNetns(t)
	sweepStaleNetns()
	base := fmt.Sprintf("sockdiag-%d-%d", os.Getpid(), netSeq.Add(1))
	n := &testNet{server: base + "-srv", client: base + "-cli"}
	for _, ns := range []string{n.server, n.client} {
		runCmd(t, "ip", "netns", "add", ns)
		t.Cleanup(func() {
			// Kill whatever still runs in it (tcp-info), then delete it.
			if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
				for _, f := range strings.Fields(string(out)) {
					var pid int
					if _, err := fmt.Sscan(f, &pid); err == nil && pid != os.Getpid() {
						_ = unix.Kill(pid, unix.SIGKILL)
					}
				}
			}
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("ip netns del %s: %v\n%s", ns, err, out)
			}
		})
	}
	runCmd(t, "ip", "link", "add", "sd-srv", "netns", n.server, "type", "veth", "peer", "name", "sd-cli", "netns", n.client)
	for _, x := range []struct {
		ns, dev string
		v4, v6  netip.Addr
	}{
		{n.server, "sd-srv", serverV4, serverV6},
		{n.client, "sd-cli", clientV4, clientV6},
	} {
		runCmd(t, "ip", "-n", x.ns, "link", "set", "lo", "up")
		// No link-local address: only documentation addresses exist.
		runCmd(t, "ip", "-n", x.ns, "link", "set", x.dev, "addrgenmode", "none")
		runCmd(t, "ip", "-n", x.ns, "addr", "add", x.v4.String()+"/24", "dev", x.dev)
		runCmd(t, "ip", "-n", x.ns, "addr", "add", x.v6.String()+"/64", "dev", x.dev, "nodad")
		runCmd(t, "ip", "-n", x.ns, "link", "set", x.dev, "up")
	}
	// Wait until the veth carries traffic both ways.
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, _ := exec.Command("ip", "-n", n.server, "-o", "link", "show", "sd-srv").Output()
		if strings.Contains(string(out), "state UP") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("veth not up: %s", out)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return n
}

// sweepStaleNetns deletes namespaces left by test processes that died
// before their cleanup (names sockdiag-<pid>-…, pid no longer running).
func sweepStaleNetns() {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	for _, e := range entries {
		var pid, n int
		if _, err := fmt.Sscanf(e.Name(), "sockdiag-%d-%d-", &pid, &n); err != nil || pid == os.Getpid() {
			continue
		}
		if err := unix.Kill(pid, 0); err == unix.ESRCH {
			_ = exec.Command("ip", "netns", "del", e.Name()).Run()
		}
	}
}

// withoutNetAdmin runs fn with CAP_NET_ADMIN dropped from the calling
// thread's effective set (capabilities are per thread); the caller has
// locked its OS thread. The permitted set keeps it, so it is restored.
func withoutNetAdmin(fn func() error) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var orig [2]unix.CapUserData
	if err := unix.Capget(&hdr, &orig[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	dropped := orig
	dropped[unix.CAP_NET_ADMIN/32].Effective &^= 1 << (unix.CAP_NET_ADMIN % 32)
	if err := unix.Capset(&hdr, &dropped[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	ferr := fn()
	if err := unix.Capset(&hdr, &orig[0]); err != nil {
		// The caller's thread stays locked and dies with its goroutine.
		return fmt.Errorf("restore capabilities: %w", err)
	}
	return ferr
}

// listen opens a TCP listener in namespace ns.
func listen(t testing.TB, ns, network, addr string) *net.TCPListener {
	t.Helper()
	var ln net.Listener
	err := netns.Do(ns, func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// dialer dials from namespace ns. Each dialer owns one OS thread locked in
// ns until close; dial may be called from one goroutine at a time.
type dialer struct {
	reqs      chan func() // closed by close
	done      chan struct{}
	closeOnce sync.Once
}

func newDialer(t testing.TB, ns string) *dialer {
	t.Helper()
	d := &dialer{reqs: make(chan func()), done: make(chan struct{})}
	ready := make(chan error, 1)
	go func() {
		defer close(d.done)
		err := netns.Do(ns, func() error {
			ready <- nil
			for f := range d.reqs {
				f()
			}
			return nil
		})
		if err != nil {
			select {
			case ready <- err:
			default:
			}
		}
	}()
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.close)
	return d
}

func (d *dialer) close() {
	d.closeOnce.Do(func() { close(d.reqs) })
	<-d.done
}

// dial connects from the dialer's namespace, from local (port 0: any) to
// remote.
func (d *dialer) dial(ctx context.Context, local, remote netip.AddrPort) (*net.TCPConn, error) {
	var conn net.Conn
	var err error
	done := make(chan struct{})
	d.reqs <- func() {
		defer close(done)
		nd := net.Dialer{Timeout: 5 * time.Second}
		if local.IsValid() {
			nd.LocalAddr = net.TCPAddrFromAddrPort(local)
		}
		conn, err = nd.DialContext(ctx, "tcp", remote.String())
	}
	<-done
	if err != nil {
		return nil, err
	}
	return conn.(*net.TCPConn), nil
}

// cookieOf reads the socket cookie of c with getsockopt(SO_COOKIE).
func cookieOf(c syscallConner) (uint64, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cookie uint64
	var serr error
	if err := rc.Control(func(fd uintptr) {
		cookie, serr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE)
	}); err != nil {
		return 0, err
	}
	return cookie, serr
}

type syscallConner interface {
	SyscallConn() (syscall.RawConn, error)
}

func addrPort(a net.Addr) netip.AddrPort {
	ap := a.(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
