package sockdiag

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
)

// Byte slices are built by hand: fields in host byte order through these
// helpers, ports and addresses as literal network-order bytes.
func h16(v uint16) []byte { return binary.NativeEndian.AppendUint16(nil, v) }
func h32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func zeros(n int) []byte { return make([]byte, n) }

// rawDiagMsg builds a struct inet_diag_msg.
func rawDiagMsg(family, state, timer byte, sport, dport, src, dst []byte, cookieLo, cookieHi, expires uint32) []byte {
	return cat(
		[]byte{family, state, timer, 0 /* retrans */},
		sport, dport, src, dst,
		h32(7), // idiag_if
		h32(cookieLo), h32(cookieHi),
		h32(expires),
		h32(0), h32(0), // rqueue, wqueue
		h32(1000),  // uid
		h32(12345), // inode
	)
}

func nlmsg(typ, flags uint16, seq uint32, payload []byte) []byte {
	b := cat(h32(uint32(nlmsgHdrLen+len(payload))), h16(typ), h16(flags), h32(seq), h32(4242), payload)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

var (
	v4Src     = []byte{192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	v4Dst     = []byte{192, 0, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	v6Src     = []byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}
	v6Dst     = []byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2}
	mappedSrc = []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1}
	mappedDst = []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 2}
	port80    = []byte{0, 80}
	port40000 = []byte{0x9c, 0x40}
)

func TestDecodeDiagMsg(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		name    string
		in      []byte
		want    diagMsg
		wantErr error
	}{
		{
			name: "ipv4 established",
			in:   rawDiagMsg(afInet, 1, 0, port80, port40000, v4Src, v4Dst, 0x89abcdef, 0x01234567, 0),
			want: diagMsg{family: afInet, state: 1, local: ap("192.0.2.1:80"), remote: ap("192.0.2.2:40000"), cookie: 0x0123456789abcdef},
		},
		{
			name: "ipv6 time-wait with attributes after it",
			in:   cat(rawDiagMsg(afInet6, 6, 3, port40000, port80, v6Src, v6Dst, 1, 0, 59000), []byte{8, 0, 8, 0, 1, 2, 3, 4}),
			want: diagMsg{family: afInet6, state: 6, timer: 3, local: ap("[2001:db8::1]:40000"), remote: ap("[2001:db8::2]:80"), cookie: 1, expires: 59000},
		},
		{
			name: "v4-mapped addresses are unmapped",
			in:   rawDiagMsg(afInet6, 1, 0, port80, port40000, mappedSrc, mappedDst, 2, 0, 0),
			want: diagMsg{family: afInet6, state: 1, local: ap("192.0.2.1:80"), remote: ap("192.0.2.2:40000"), cookie: 2},
		},
		{
			name: "listener",
			in:   rawDiagMsg(afInet, 10, 0, port80, []byte{0, 0}, v4Src, zeros(16), 3, 0, 0),
			want: diagMsg{family: afInet, state: 10, local: ap("192.0.2.1:80"), remote: ap("0.0.0.0:0"), cookie: 3},
		},
		{
			name:    "short",
			in:      rawDiagMsg(afInet, 1, 0, port80, port40000, v4Src, v4Dst, 1, 0, 0)[:diagMsgLen-1],
			wantErr: errShortMessage,
		},
		{
			name:    "unknown family",
			in:      rawDiagMsg(17, 1, 0, port80, port40000, v4Src, v4Dst, 1, 0, 0),
			wantErr: errBadFamily,
		},
		{name: "empty", in: nil, wantErr: errShortMessage},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeDiagMsg(tt.in)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err == nil && got != tt.want {
				t.Errorf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestAppendRequest(t *testing.T) {
	ap := netip.MustParseAddrPort
	header := func(seq uint32) []byte {
		return cat(h32(72), h16(sockDiagByFamily), h16(nlmFRequest), h32(seq), h32(0))
	}
	body := func(family byte, sport, dport, src, dst []byte) []byte {
		return cat(
			[]byte{family, 6 /* TCP */, 0, 0},
			h32(0xffffffff), // all states
			sport, dport, src, dst,
			h32(0),                           // any interface
			h32(0xffffffff), h32(0xffffffff), // INET_DIAG_NOCOOKIE
		)
	}
	tests := []struct {
		name    string
		id      sockID
		want    []byte
		wantErr error
	}{
		{
			name: "ipv4",
			id:   sockID{ap("192.0.2.1:80"), ap("192.0.2.2:40000")},
			want: cat(header(9), body(afInet, port80, port40000, v4Src, v4Dst)),
		},
		{
			name: "v4-mapped is sent as ipv4",
			id:   sockID{ap("[::ffff:192.0.2.1]:80"), ap("192.0.2.2:40000")},
			want: cat(header(9), body(afInet, port80, port40000, v4Src, v4Dst)),
		},
		{
			name: "ipv6",
			id:   sockID{ap("[2001:db8::1]:40000"), ap("[2001:db8::2]:80")},
			want: cat(header(9), body(afInet6, port40000, port80, v6Src, v6Dst)),
		},
		{name: "mixed families", id: sockID{ap("192.0.2.1:80"), ap("[2001:db8::2]:80")}, wantErr: errMixedFamily},
		{name: "zero", id: sockID{}, wantErr: errMixedFamily},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := []byte("keep")
			got, err := appendRequest(prefix, 9, tt.id)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				if string(got) != "keep" {
					t.Errorf("buffer changed on error: %q", got)
				}
				return
			}
			if !bytes.Equal(got[:4], prefix) {
				t.Fatalf("prefix overwritten")
			}
			if got := got[4:]; !bytes.Equal(got, tt.want) {
				t.Errorf("got  %x\nwant %x", got, tt.want)
			}
			if len(got)-4 != requestLen {
				t.Errorf("request is %d bytes, want %d", len(got)-4, requestLen)
			}
		})
	}
}

func TestWalkMessages(t *testing.T) {
	diag := rawDiagMsg(afInet, 1, 0, port80, port40000, v4Src, v4Dst, 1, 0, 0)
	errPayload := cat(h32(uint32(0x100000000-2)), zeros(16)) // -ENOENT and the request header
	type msg struct {
		typ uint16
		seq uint32
		n   int
	}
	tests := []struct {
		name    string
		in      []byte
		want    []msg
		wantErr bool
	}{
		{name: "empty", in: nil},
		{
			name: "two messages, padded",
			in:   cat(nlmsg(sockDiagByFamily, 0, 1, diag), nlmsg(nlmsgError, 0, 2, errPayload), nlmsg(nlmsgDone, 0, 3, []byte{1})),
			want: []msg{{sockDiagByFamily, 1, diagMsgLen}, {nlmsgError, 2, 20}, {nlmsgDone, 3, 1}},
		},
		{name: "truncated header", in: nlmsg(nlmsgDone, 0, 1, nil)[:10], wantErr: true},
		{
			name:    "length beyond buffer",
			in:      cat(h32(100), h16(nlmsgDone), h16(0), h32(1), h32(0)),
			wantErr: true,
		},
		{
			name:    "length below header",
			in:      cat(h32(8), h16(nlmsgDone), h16(0), h32(1), h32(0)),
			wantErr: true,
		},
		{
			name: "last message without padding",
			in:   cat(h32(17), h16(nlmsgDone), h16(0), h32(5), h32(0), []byte{9}),
			want: []msg{{nlmsgDone, 5, 1}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []msg
			err := walkMessages(tt.in, func(h nlHeader, payload []byte) error {
				got = append(got, msg{h.typ, h.seq, len(payload)})
				return nil
			})
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("message %d: got %+v, want %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestDecodeError(t *testing.T) {
	tests := []struct {
		in      []byte
		want    int32
		wantErr bool
	}{
		{in: cat(h32(uint32(0x100000000-2)), zeros(16)), want: 2}, // ENOENT
		{in: h32(0), want: 0}, // an acknowledgement
		{in: []byte{1, 2}, wantErr: true},
	}
	for _, tt := range tests {
		got, err := decodeError(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("decodeError(%x) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

// FuzzDecode feeds hostile bytes to the netlink walker and the
// inet_diag_msg decoder: they must never panic, and what decodes must be
// consistent.
func FuzzDecode(f *testing.F) {
	f.Add(nlmsg(sockDiagByFamily, 0, 1, rawDiagMsg(afInet, 1, 0, port80, port40000, v4Src, v4Dst, 1, 0, 0)))
	f.Add(nlmsg(sockDiagByFamily, 0, 1, rawDiagMsg(afInet6, 6, 3, port80, port40000, mappedSrc, v6Dst, 1, 2, 3)))
	f.Add(nlmsg(nlmsgError, 0, 2, cat(h32(uint32(0x100000000-2)), zeros(16))))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = walkMessages(b, func(h nlHeader, payload []byte) error {
			if int(h.length) != nlmsgHdrLen+len(payload) {
				t.Fatalf("payload %d bytes for length %d", len(payload), h.length)
			}
			_, _ = decodeError(payload)
			if m, err := decodeDiagMsg(payload); err == nil {
				if !m.local.Addr().IsValid() || !m.remote.Addr().IsValid() {
					t.Fatalf("decoded invalid addresses: %+v", m)
				}
				if m.local.Addr().Is4() != m.remote.Addr().Is4() && m.family == afInet {
					t.Fatalf("AF_INET message with mixed families: %+v", m)
				}
			}
			return nil
		})
		if m, err := decodeDiagMsg(b); err == nil && m.family != afInet && m.family != afInet6 {
			t.Fatalf("decoded family %d", m.family)
		}
	})
}
