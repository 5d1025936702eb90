package flows

import (
	"errors"
	"net/netip"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name    string
		spec    frameSpec
		wantEnd int
	}{
		{"ipv4", frameSpec{src: cli4, dst: srv4, flags: flagSYN, payload: 10}, 14 + 20 + 20},
		{"ipv4 options", frameSpec{src: cli4, dst: srv4, ipOptions: 8, tcpOptions: 12, payload: 3}, 14 + 28 + 32},
		{"ipv6", frameSpec{src: cli6, dst: srv6, tcpOptions: 20, payload: 100}, 14 + 40 + 40},
		{"ipv6 hop-by-hop", frameSpec{src: cli6, dst: srv6, hopByHop: true}, 14 + 48 + 20},
		{"vlan ipv4", frameSpec{src: cli4, dst: srv4, vlan: true, payload: 1}, 18 + 20 + 20},
		{"vlan ipv6", frameSpec{src: cli6, dst: srv6, vlan: true}, 18 + 40 + 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var p Packet
			if err := Parse(tc.spec.bytes(), &p); err != nil {
				t.Fatal(err)
			}
			if p.HeaderEnd != tc.wantEnd {
				t.Errorf("HeaderEnd = %d, want %d", p.HeaderEnd, tc.wantEnd)
			}
			if p.SrcPort != tc.spec.src.Port() || p.DstPort != tc.spec.dst.Port() || p.Flags != tc.spec.flags {
				t.Errorf("ports/flags = %d %d %x", p.SrcPort, p.DstPort, p.Flags)
			}
			k := KeyOf(&p)
			k2, ok := KeyFromAddrPorts(tc.spec.dst, tc.spec.src)
			if !ok || k != k2 {
				t.Errorf("KeyOf = %+v, KeyFromAddrPorts = %+v", k, k2)
			}
			a, b := k.AddrPorts()
			if k3, _ := KeyFromAddrPorts(b, a); k3 != k || (a != tc.spec.src && a != tc.spec.dst) {
				t.Errorf("AddrPorts = %v %v", a, b)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	v4 := frameSpec{src: cli4, dst: srv4}.bytes()
	udp := append([]byte(nil), v4...)
	udp[14+9] = 17
	frag := append([]byte(nil), v4...)
	frag[14+6], frag[14+7] = 0x00, 0x10
	badDoff := append([]byte(nil), v4...)
	badDoff[14+20+12] = 0x40
	arp := append([]byte(nil), v4...)
	arp[12], arp[13] = 0x08, 0x06
	for _, tc := range []struct {
		name  string
		frame []byte
		want  error
	}{
		{"empty", nil, errShort},
		{"ethernet only", v4[:14], errShort},
		{"cut tcp", v4[:14+20+10], errShort},
		{"udp", udp, errNotTCP},
		{"fragment", frag, errFragment},
		{"bad data offset", badDoff, errBadHeader},
		{"arp", arp, errNotIP},
	} {
		var p Packet
		if err := Parse(tc.frame, &p); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestKeyFromAddrPortsMixed(t *testing.T) {
	if _, ok := KeyFromAddrPorts(cli4, srv6); ok {
		t.Error("mixed families accepted")
	}
	mapped := netip.AddrPortFrom(netip.AddrFrom16(cli4.Addr().As16()), cli4.Port())
	k1, _ := KeyFromAddrPorts(mapped, srv4)
	k2, _ := KeyFromAddrPorts(cli4, srv4)
	if k1 != k2 {
		t.Error("IPv4-mapped address gives another key")
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []frameSpec{
		{src: cli4, dst: srv4, payload: 5},
		{src: cli6, dst: srv6, hopByHop: true, tcpOptions: 8},
		{src: cli4, dst: srv4, vlan: true, ipOptions: 4},
	} {
		f.Add(s.bytes())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var p Packet
		if err := Parse(b, &p); err != nil {
			return
		}
		if p.HeaderEnd < 14+20+20 || p.AddrOff < 14 || p.AddrOff >= p.HeaderEnd {
			t.Fatalf("implausible offsets: %+v", p)
		}
		if len(b) < p.HeaderEnd-40 {
			t.Fatalf("HeaderEnd %d far beyond frame of %d bytes", p.HeaderEnd, len(b))
		}
	})
}
