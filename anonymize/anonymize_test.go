package anonymize

import (
	"net/netip"
	"testing"
)

func TestParseMethod(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Method
		wantErr bool
	}{
		{"none", None, false},
		{"", None, false},
		{"netblock", Netblock, false},
		{"Netblock", None, true},
		{"full", None, true},
	} {
		got, err := ParseMethod(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("ParseMethod(%q) = %v, %v; want %v, err=%v", tc.in, got, err, tc.want, tc.wantErr)
		}
		if err == nil && got.String() != map[string]string{"": "none"}[tc.in] && got.String() != tc.in {
			t.Errorf("String() = %q, want %q", got.String(), tc.in)
		}
	}
}

func TestAddr(t *testing.T) {
	for _, tc := range []struct {
		m        Method
		in, want string
	}{
		{None, "192.0.2.77", "192.0.2.77"},
		{Netblock, "192.0.2.77", "192.0.2.0"},
		{Netblock, "198.51.100.255", "198.51.100.0"},
		{Netblock, "127.0.0.1", "127.0.0.1"},
		{Netblock, "2001:db8:1:2:3:4:5:6", "2001:db8:1::"},
		{Netblock, "2001:db8:abcd:ffff:ffff:ffff:ffff:ffff", "2001:db8:abcd::"},
		{Netblock, "::1", "::1"},
		{Netblock, "::ffff:192.0.2.9", "::ffff:192.0.2.0"},
		{None, "2001:db8::1", "2001:db8::1"},
	} {
		got := tc.m.Addr(netip.MustParseAddr(tc.in))
		if got != netip.MustParseAddr(tc.want) {
			t.Errorf("%v.Addr(%s) = %s, want %s", tc.m, tc.in, got, tc.want)
		}
	}
}

func TestBytesOtherLengths(t *testing.T) {
	b := []byte{1, 2, 3}
	Netblock.Bytes(b)
	if b[2] != 3 {
		t.Errorf("3-byte slice modified: %v", b)
	}
}

func TestBytesAllocs(t *testing.T) {
	v4 := []byte{192, 0, 2, 1}
	v6 := netip.MustParseAddr("2001:db8::1").AsSlice()
	if n := testing.AllocsPerRun(100, func() {
		Netblock.Bytes(v4)
		Netblock.Bytes(v6)
	}); n != 0 {
		t.Errorf("Bytes allocates %v times per run", n)
	}
}

func BenchmarkBytesV6(b *testing.B) {
	v6 := netip.MustParseAddr("2001:db8::1").AsSlice()
	for b.Loop() {
		Netblock.Bytes(v6)
	}
}
