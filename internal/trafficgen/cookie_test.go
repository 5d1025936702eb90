package trafficgen

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"testing"
	"time"
)

// TestServerRecordsAccepts checks the server's Accept lines against the
// client's records: one per connection, on the same tuple, accepted while
// the client's connection was open, each with its own socket cookie (on
// Linux), which is not the client socket's.
func TestServerRecordsAccepts(t *testing.T) {
	var accepted bytes.Buffer // written by Run, read after it returns
	srv, err := NewServer(ServerConfig{
		Listen:   []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0"), netip.MustParseAddrPort("[::1]:0")},
		Log:      log.New(testWriter{t}, "server: ", 0),
		Accepted: &accepted,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- srv.Run(sctx) }()
	<-srv.Ready()
	var addrs []netip.AddrPort
	for _, a := range srv.Addrs() {
		addrs = append(addrs, a.(*net.TCPAddr).AddrPort())
	}
	const conns = 60
	var out bytes.Buffer
	c, err := NewClient(ClientConfig{
		Connect:       addrs,
		Conns:         conns,
		Parallel:      8,
		Mix:           Mix{Short: 40, Reuse: 40, Abort: 10, Bulk: 10},
		BulkSize:      64 << 10,
		Seed:          7,
		Out:           &out,
		allowLoopback: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Run(ctx); err != nil {
		t.Fatal(err)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("server Run: %v", err)
	}

	type key struct{ local, remote string }
	byTuple := map[key][]Accept{}
	cookies := map[uint64]bool{}
	n := 0
	sc := bufio.NewScanner(&accepted)
	for sc.Scan() {
		var a Accept
		if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
			t.Fatalf("accept line %q: %v", sc.Text(), err)
		}
		n++
		if a.Closed.Before(a.Accepted) {
			t.Errorf("accept %+v: closed before accepted", a)
		}
		if runtime.GOOS == "linux" {
			if a.Error != "" || a.Cookie == 0 {
				t.Errorf("accept %+v: want a cookie and no error", a)
			}
			if cookies[a.Cookie] {
				t.Errorf("accept %+v: cookie used twice", a)
			}
			cookies[a.Cookie] = true
		}
		// The client's remote is the server's local.
		k := key{a.Remote, a.Local}
		byTuple[k] = append(byTuple[k], a)
	}
	if n != conns {
		t.Errorf("%d accept lines, want %d", n, conns)
	}
	sc = bufio.NewScanner(&out)
	for sc.Scan() {
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		matches := 0
		for _, a := range byTuple[key{r.Local, r.Remote}] {
			if !a.Accepted.Before(r.Start) && !a.Accepted.After(r.End) {
				matches++
				if runtime.GOOS == "linux" && a.Cookie == r.Cookie {
					t.Errorf("record %+v: the client's and the server's socket have one cookie", r)
				}
			}
		}
		if matches != 1 {
			t.Errorf("record %+v: %d server accepts on its tuple during its lifetime, want 1", r, matches)
		}
		if runtime.GOOS == "linux" && (r.Cookie == 0 || cookies[r.Cookie]) {
			t.Errorf("record %+v: want a client cookie of its own", r)
		}
	}
}

// TestSocketCookieIsSockDiags checks that SO_COOKIE is the number the
// kernel's sock_diag reports for the socket (what tcp-info names sockets
// by), as ss(8) prints it ("sk:<hex>").
func TestSocketCookieIsSockDiags(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("SO_COOKIE is Linux only")
	}
	ss, err := exec.LookPath("ss")
	if err != nil {
		t.Skip("needs ss (iproute2)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	for _, c := range []net.Conn{client, server} {
		cookie, err := socketCookie(c.(*net.TCPConn))
		if err != nil {
			t.Fatal(err)
		}
		local, remote := c.LocalAddr().(*net.TCPAddr), c.RemoteAddr().(*net.TCPAddr)
		filter := fmt.Sprintf("src 127.0.0.1:%d and dst 127.0.0.1:%d", local.Port, remote.Port)
		out, err := exec.Command(ss, "-H", "-t", "-n", "-e", "state", "established", filter).CombinedOutput()
		if err != nil {
			t.Fatalf("ss: %v\n%s", err, out)
		}
		m := regexp.MustCompile(`\bsk:([0-9a-f]+)`).FindSubmatch(out)
		if m == nil {
			t.Fatalf("ss printed no cookie for %v -> %v:\n%s", local, remote, out)
		}
		want, err := strconv.ParseUint(string(m[1]), 16, 64)
		if err != nil {
			t.Fatal(err)
		}
		if cookie != want {
			t.Errorf("%v -> %v: SO_COOKIE %#x, sock_diag (ss) %#x", local, remote, cookie, want)
		}
	}
}
