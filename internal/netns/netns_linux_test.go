//go:build linux

package netns

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// requireNetns skips the test unless it can create namespaces; with
// HEADERCAP_REQUIRE_NETNS=1 (CI) it fails instead.
func requireNetns(t *testing.T) {
	t.Helper()
	var why string
	if os.Geteuid() != 0 {
		why = "needs root"
	} else if _, err := exec.LookPath("ip"); err != nil {
		why = "needs ip(8) from iproute2"
	}
	if why == "" {
		return
	}
	if os.Getenv("HEADERCAP_REQUIRE_NETNS") == "1" {
		t.Fatalf("HEADERCAP_REQUIRE_NETNS=1 but test %s", why)
	}
	t.Skip(why)
}

// TestHelperProcess is not a test: the tests below run the test binary
// inside a namespace with HC_NETNS_HELPER set to make it a tiny TCP peer.
func TestHelperProcess(t *testing.T) {
	mode, addr, ok := strings.Cut(os.Getenv("HC_NETNS_HELPER"), ":")
	if !ok {
		t.Skip("helper process only")
	}
	if err := helper(mode, addr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

func helper(mode, addr string) error {
	switch mode {
	case "listen":
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		fmt.Println("ready")
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = io.WriteString(c, "pong\n")
		return err
	case "dial":
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		fmt.Print(line)
		return nil
	}
	return fmt.Errorf("unknown helper mode %q", mode)
}

func helperCmd(ns Namespace, mode, addr string) *exec.Cmd {
	cmd := ns.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), "HC_NETNS_HELPER="+mode+":"+addr)
	return cmd
}

func TestPair(t *testing.T) {
	requireNetns(t)
	ctx := context.Background()
	p, err := New(ctx, Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })

	if !strings.Contains(p.Server.Name, fmt.Sprint(os.Getpid())) {
		t.Errorf("namespace name %q does not contain the pid", p.Server.Name)
	}
	// Addresses are exactly the documentation ones.
	for _, n := range []Namespace{p.Server, p.Client} {
		out, err := runIP(ctx, "ip", "-n", n.Name, "-j", "addr", "show", "dev", n.Veth)
		if err != nil {
			t.Fatal(err)
		}
		var ifs []struct {
			AddrInfo []struct {
				Local  string `json:"local"`
				Scope  string `json:"scope"`
				Prefix int    `json:"prefixlen"`
			} `json:"addr_info"`
		}
		if err := json.Unmarshal(out, &ifs); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, a := range ifs[0].AddrInfo {
			got = append(got, fmt.Sprintf("%s/%d %s", a.Local, a.Prefix, a.Scope))
		}
		// No link-local address either: nothing but documentation
		// addresses ever sends on the veth.
		want := []string{n.IPv4.String() + "/24 global", n.IPv6.String() + "/64 global"}
		if strings.Join(got, ", ") != strings.Join(want, ", ") {
			t.Errorf("%s: addresses %v, want %v", n.Name, got, want)
		}
	}

	// TCP works across the veth, over IPv4 and IPv6.
	for _, addr := range []string{"192.0.2.1:7001", "[2001:db8::1]:7001"} {
		srv := helperCmd(p.Server, "listen", addr)
		stdout, err := srv.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		srv.Stderr = os.Stderr
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "ready\n" {
			t.Fatalf("listener in %s: %q, %v", p.Server.Name, line, err)
		}
		out, err := helperCmd(p.Client, "dial", addr).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "pong") {
			t.Errorf("dial %s from %s: %v: %s", addr, p.Client.Name, err, out)
		}
		if err := srv.Wait(); err != nil {
			t.Errorf("listener: %v", err)
		}
	}

	// Close kills what still runs inside and removes both namespaces.
	sleeper := p.Server.Command("sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- sleeper.Wait() }()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Error("process in the namespace survived Close")
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	names := listNamespaces(ctx, "ip")
	if names[p.Server.Name] || names[p.Client.Name] {
		t.Errorf("namespaces still present after Close: %v", names)
	}
}

func TestSweepStale(t *testing.T) {
	requireNetns(t)
	ctx := context.Background()
	// A pid above the kernel's maximum (2^22) is never alive.
	stale := "hcsweep-4194399-1-srv"
	if _, err := runIP(ctx, "ip", "netns", "add", stale); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeAll(context.Background(), "ip", []string{stale}) })
	p, err := New(ctx, Config{Prefix: "hcsweep"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if listNamespaces(ctx, "ip")[stale] {
		t.Errorf("stale namespace %s not removed by New", stale)
	}
	if !listNamespaces(ctx, "ip")[p.Server.Name] {
		t.Errorf("own namespace %s missing", p.Server.Name)
	}
}

func TestInvalidPrefix(t *testing.T) {
	if _, err := New(context.Background(), Config{Prefix: "Bad/Name"}); err == nil {
		t.Fatal("New accepted an invalid prefix")
	}
}

// Do runs a function inside a namespace: only there can it bind the
// namespace's address; the caller's thread stays where it was.
func TestDo(t *testing.T) {
	requireNetns(t)
	p, err := New(context.Background(), Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	addr := netip.AddrPortFrom(p.Server.IPv4, 0).String()
	var ln net.Listener
	if err := Do(p.Server.Name, func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatalf("listen on %s inside %s: %v", addr, p.Server.Name, err)
	}
	ln.Close()
	if l, err := net.Listen("tcp", addr); err == nil {
		l.Close()
		t.Errorf("listen on %s outside the namespace succeeded", addr)
	}
	if err := Do("hc-no-such-namespace", func() error { return nil }); err == nil {
		t.Error("Do in a missing namespace: no error")
	}
}
