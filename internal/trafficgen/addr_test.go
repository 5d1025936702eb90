package trafficgen

import (
	"net/netip"
	"testing"
)

func TestCheckDial(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"192.0.2.1:80", true},
		{"192.0.2.255:1", true},
		{"198.51.100.7:443", true},
		{"[2001:db8::1]:8080", true},
		{"[2001:db8:ffff::1]:8080", true},
		{"[::ffff:192.0.2.1]:80", true},
		{"192.0.2.1:0", false},
		{"192.0.3.1:80", false},
		{"203.0.113.1:80", false}, // TEST-NET-3 is not in the list
		{"8.8.8.8:53", false},
		{"127.0.0.1:80", false},
		{"[::1]:80", false},
		{"[::ffff:8.8.8.8]:53", false},
		{"[2001:db9::1]:80", false},
		{"[2001:db8::1%eth0]:80", false},
	} {
		ap, err := netip.ParseAddrPort(tc.in)
		if err != nil {
			t.Fatal(err)
		}
		if err := CheckDial(ap); (err == nil) != tc.ok {
			t.Errorf("CheckDial(%s) = %v, want ok=%v", tc.in, err, tc.ok)
		}
	}
}

func TestCheckLocal(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"127.0.0.1", true},
		{"::1", true},
		{"192.0.2.1", true},
		{"2001:db8::1", true},
		{"0.0.0.0", false},
		{"::", false},
		{"10.0.0.1", false},
	} {
		if err := CheckLocal(netip.MustParseAddr(tc.in)); (err == nil) != tc.ok {
			t.Errorf("CheckLocal(%s) = %v, want ok=%v", tc.in, err, tc.ok)
		}
	}
}

func TestParseAddrPorts(t *testing.T) {
	got, err := ParseAddrPorts("192.0.2.1:8080, [2001:db8::1]:8080")
	if err != nil || len(got) != 2 || got[1].String() != "[2001:db8::1]:8080" {
		t.Errorf("ParseAddrPorts = %v, %v", got, err)
	}
	for _, bad := range []string{"", "localhost:80", "192.0.2.1", "example.com:80", ","} {
		if _, err := ParseAddrPorts(bad); err == nil {
			t.Errorf("ParseAddrPorts(%q) accepted", bad)
		}
	}
}

func TestClientRefusesOutsideAddresses(t *testing.T) {
	for _, a := range []string{"127.0.0.1:80", "10.1.2.3:80", "[fe80::1]:80"} {
		_, err := NewClient(ClientConfig{Connect: []netip.AddrPort{netip.MustParseAddrPort(a)}, Conns: 1})
		if err == nil {
			t.Errorf("NewClient accepted %s", a)
		}
	}
	if _, err := NewServer(ServerConfig{Listen: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:80")}}); err == nil {
		t.Error("NewServer accepted the wildcard address")
	}
}
