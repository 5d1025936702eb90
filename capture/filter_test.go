package capture

import (
	"testing"

	"golang.org/x/net/bpf"
)

type filterCase struct {
	name   string
	frame  []byte
	accept bool
}

func filterCases() []filterCase {
	tcp := tcpHeader(40000, 80, []byte("hello"))
	return []filterCase{
		{"ipv4 tcp", ether(etherTypeIPv4, ipv4(protoTCP, 0, 0, tcp)), true},
		{"ipv4 tcp with options", ether(etherTypeIPv4, ipv4(protoTCP, 12, 0, tcp)), true},
		{"ipv4 tcp max ihl", ether(etherTypeIPv4, ipv4(protoTCP, 40, 0, tcp)), true},
		{"ipv4 tcp DF", ether(etherTypeIPv4, ipv4(protoTCP, 0, 0x4000, tcp)), true},
		{"ipv4 tcp first fragment", ether(etherTypeIPv4, ipv4(protoTCP, 0, 0x2000, tcp)), true},
		{"ipv4 tcp non-first fragment", ether(etherTypeIPv4, ipv4(protoTCP, 0, 0x2000|185, tcp)), false},
		{"ipv4 tcp last fragment", ether(etherTypeIPv4, ipv4(protoTCP, 0, 185, tcp)), false},
		{"ipv4 udp", ether(etherTypeIPv4, ipv4(17, 0, 0, udpHeader(nil))), false},
		{"ipv4 icmp", ether(etherTypeIPv4, ipv4(1, 0, 0, []byte{8, 0, 0, 0, 0, 0, 0, 0})), false},
		{"ipv4 bad version", ether(etherTypeIPv4, ipv6(protoTCP, tcp)), false},
		{"ipv4 header cut", ether(etherTypeIPv4, ipv4(protoTCP, 0, 0, nil)[:9]), false},
		{"ipv6 tcp", ether(etherTypeIPv6, ipv6(protoTCP, tcp)), true},
		{"ipv6 hop-by-hop tcp", ether(etherTypeIPv6, ipv6(protoHopByHop, ext6(protoTCP, tcp))), true},
		{"ipv6 routing tcp", ether(etherTypeIPv6, ipv6(protoRouting, ext6(protoTCP, tcp))), true},
		{"ipv6 dest opts tcp", ether(etherTypeIPv6, ipv6(protoDestOpts, ext6(protoTCP, tcp))), true},
		{"ipv6 hop-by-hop dest opts tcp", ether(etherTypeIPv6, ipv6(protoHopByHop, ext6(protoDestOpts, ext6(protoTCP, tcp)))), true},
		{"ipv6 first fragment tcp", ether(etherTypeIPv6, ipv6(protoFragment, frag6(protoTCP, 0, true, tcp))), true},
		{"ipv6 non-first fragment tcp", ether(etherTypeIPv6, ipv6(protoFragment, frag6(protoTCP, 100, true, tcp))), false},
		{"ipv6 hop-by-hop icmpv6 (MLD)", ether(etherTypeIPv6, ipv6(protoHopByHop, ext6(58, []byte{143, 0, 0, 0}))), false},
		{"ipv6 udp", ether(etherTypeIPv6, ipv6(17, udpHeader(nil))), false},
		{"ipv6 icmpv6", ether(etherTypeIPv6, ipv6(58, []byte{128, 0, 0, 0})), false},
		{"ipv6 no next header", ether(etherTypeIPv6, ipv6(59, nil)), false},
		{"ipv6 bad version", ether(etherTypeIPv6, ipv4(protoTCP, 0, 0, tcp)), false},
		{"ipv6 hop-by-hop cut", ether(etherTypeIPv6, ipv6(protoHopByHop, nil)), false},
		{"vlan ipv4 tcp", ether(etherTypeIPv4, ipv4(protoTCP, 0, 0, tcp), 100), true},
		{"vlan ipv4 tcp with options", ether(etherTypeIPv4, ipv4(protoTCP, 8, 0, tcp), 100), true},
		{"vlan ipv6 tcp", ether(etherTypeIPv6, ipv6(protoTCP, tcp), 4094), true},
		{"vlan ipv6 hop-by-hop tcp", ether(etherTypeIPv6, ipv6(protoHopByHop, ext6(protoTCP, tcp)), 7), true},
		{"vlan ipv4 udp", ether(etherTypeIPv4, ipv4(17, 0, 0, udpHeader(nil)), 100), false},
		{"vlan arp", ether(0x0806, arpPacket(), 100), false},
		{"double vlan ipv4 tcp", ether(etherTypeIPv4, ipv4(protoTCP, 0, 0, tcp), 100, 200), false},
		{"arp", ether(0x0806, arpPacket()), false},
		{"802.1ad", append(ether(0x88a8, nil)[:12], 0x88, 0xa8, 0, 100, 0x08, 0x00), false},
		{"empty", nil, false},
		{"ethernet header only", ether(etherTypeIPv4, nil), false},
		{"short", []byte{1, 2, 3}, false},
	}
}

func TestTCPFilter(t *testing.T) {
	const snap = 200
	vm, err := bpf.NewVM(TCPFilter(snap))
	if err != nil {
		t.Fatalf("NewVM: %v", err)
	}
	for _, tc := range filterCases() {
		t.Run(tc.name, func(t *testing.T) {
			got, err := vm.Run(tc.frame)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			want := 0
			if tc.accept {
				want = snap
			}
			if got != want {
				t.Errorf("BPF returned %d, want %d", got, want)
			}
			if a := acceptTCP(tc.frame); a != tc.accept {
				t.Errorf("acceptTCP = %v, want %v", a, tc.accept)
			}
		})
	}
}

func TestTCPFilterAssembles(t *testing.T) {
	raw, err := bpf.Assemble(TCPFilter(DefaultSnapLen))
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) > 4096 {
		t.Fatalf("program has %d instructions", len(raw))
	}
}

// FuzzFilterMatchesBPF checks that acceptTCP, used for files, agrees with
// the BPF program the kernel runs.
func FuzzFilterMatchesBPF(f *testing.F) {
	for _, tc := range filterCases() {
		f.Add(tc.frame)
	}
	vm, err := bpf.NewVM(TCPFilter(MaxSnapLen))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		n, err := vm.Run(frame)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := acceptTCP(frame), n > 0; got != want {
			t.Fatalf("acceptTCP = %v, BPF accepts = %v for % x", got, want, frame)
		}
		if n != 0 && n != MaxSnapLen {
			t.Fatalf("BPF returned %d", n)
		}
	})
}
