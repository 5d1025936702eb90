package events

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/m-lab/tcp-info/eventsocket"
	"github.com/m-lab/tcp-info/inetdiag"
)

// realUUID is a UUID in the format tcp-info produces on M-Lab hosts.
const realUUID = "mlab1-lga03.mlab-oti.measurement-lab.org_1574185322_0000000000051A4C"

var ts = time.Date(2019, 11, 19, 17, 42, 2, 123456789, time.UTC)

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{Open: "open", Close: "close", 2: "Kind(2)", 255: "Kind(255)"} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q, want %q", uint8(k), got, want)
		}
	}
	if Open != Kind(eventsocket.Open) || Close != Kind(eventsocket.Close) {
		t.Error("Kind values differ from tcp-info's")
	}
}

func TestParseLine(t *testing.T) {
	ap := netip.MustParseAddrPort
	const (
		ts0  = `"Timestamp":"2019-11-19T17:42:02.123456789Z"`
		uuid = `"UUID":"` + realUUID + `"`
		id4  = `"ID":{"SPort":443,"DPort":54321,"SrcIP":"192.0.2.1","DstIP":"198.51.100.7","Interface":2,"Cookie":334412}`
	)
	open4 := Event{
		Kind: Open, Timestamp: ts, UUID: realUUID, HasID: true,
		Local: ap("192.0.2.1:443"), Remote: ap("198.51.100.7:54321"), Interface: 2, Cookie: 334412,
	}
	closeNoID := Event{Kind: Close, Timestamp: ts, UUID: realUUID}
	with := func(f func(*Event)) Event { e := open4; f(&e); return e }

	tests := []struct {
		name string
		line string
		want Event
		err  error // nil: want must match
	}{
		// Valid events.
		{"open ipv4", `{"Event":0,` + ts0 + `,` + uuid + `,` + id4 + `}`, open4, nil},
		{"open with newline", `{"Event":0,` + ts0 + `,` + uuid + `,` + id4 + "}\r\n", open4, nil},
		{"field order and case", `{"id":{"sport":443,"dport":54321,"srcip":"192.0.2.1","dstip":"198.51.100.7","interface":2,"cookie":334412},` + uuid + `,` + ts0 + `,"event":0}`, open4, nil},
		{"unknown fields ignored", `{"Event":0,"New":[1,{"x":2}],` + ts0 + `,` + uuid + `,` + id4 + `}`, open4, nil},
		{"open ipv6", `{"Event":0,` + ts0 + `,` + uuid + `,"ID":{"SPort":443,"DPort":54321,"SrcIP":"2001:db8::1","DstIP":"2001:db8:ffff::7","Interface":0,"Cookie":1}}`,
			with(func(e *Event) {
				e.Local, e.Remote, e.Interface, e.Cookie = ap("[2001:db8::1]:443"), ap("[2001:db8:ffff::7]:54321"), 0, 1
			}), nil},
		{"open ipv4-mapped is unmapped", `{"Event":0,` + ts0 + `,` + uuid + `,"ID":{"SPort":443,"DPort":54321,"SrcIP":"::ffff:192.0.2.1","DstIP":"::ffff:198.51.100.7","Interface":2,"Cookie":334412}}`, open4, nil},
		{"negative cookie is uint64", `{"Event":0,` + ts0 + `,` + uuid + `,"ID":{"SPort":443,"DPort":54321,"SrcIP":"192.0.2.1","DstIP":"198.51.100.7","Interface":2,"Cookie":-1}}`,
			with(func(e *Event) { e.Cookie = math.MaxUint64 }), nil},
		{"max values", `{"Event":0,` + ts0 + `,` + uuid + `,"ID":{"SPort":65535,"DPort":65535,"SrcIP":"192.0.2.1","DstIP":"198.51.100.7","Interface":4294967295,"Cookie":9223372036854775807}}`,
			with(func(e *Event) {
				e.Local, e.Remote, e.Interface, e.Cookie = ap("192.0.2.1:65535"), ap("198.51.100.7:65535"), math.MaxUint32, math.MaxInt64
			}), nil},
		{"timestamp with offset becomes UTC", `{"Event":0,"Timestamp":"2019-11-19T19:42:02.123456789+02:00",` + uuid + `,` + id4 + `}`, open4, nil},
		{"close with null ID", `{"Event":1,` + ts0 + `,` + uuid + `,"ID":null}`, closeNoID, nil},
		{"close without ID key", `{"Event":1,` + ts0 + `,` + uuid + `}`, closeNoID, nil},
		{"close with ID", `{"Event":1,` + ts0 + `,` + uuid + `,` + id4 + `}`, with(func(e *Event) { e.Kind = Close }), nil},

		// Malformed.
		{"empty", ``, Event{}, ErrMalformed},
		{"not json", `hello`, Event{}, ErrMalformed},
		{"truncated", `{"Event":0,` + ts0, Event{}, ErrMalformed},
		{"array", `[]`, Event{}, ErrMalformed},
		{"string", `"x"`, Event{}, ErrMalformed},
		{"two objects", `{"Event":1,` + ts0 + `,` + uuid + `} {}`, Event{}, ErrMalformed},
		{"trailing garbage", `{"Event":1,` + ts0 + `,` + uuid + `}x`, Event{}, ErrMalformed},
		{"null", `null`, Event{}, ErrMalformed},
		{"empty object", `{}`, Event{}, ErrMalformed},
		{"missing timestamp", `{"Event":1,` + uuid + `}`, Event{}, ErrMalformed},
		{"null timestamp", `{"Event":1,"Timestamp":null,` + uuid + `}`, Event{}, ErrMalformed},
		{"zero timestamp", `{"Event":1,"Timestamp":"0001-01-01T00:00:00Z",` + uuid + `}`, Event{}, ErrMalformed},
		{"bad timestamp", `{"Event":1,"Timestamp":"yesterday",` + uuid + `}`, Event{}, ErrMalformed},
		{"numeric timestamp", `{"Event":1,"Timestamp":1574185322,` + uuid + `}`, Event{}, ErrMalformed},
		{"invalid utf8", "{\"Event\":1," + ts0 + ",\"UUID\":\"\xff\xfe\"}", Event{}, ErrBadUUID},
		{"NUL byte outside string", "{\"Event\":1,\x00" + ts0 + `,` + uuid + `}`, Event{}, ErrMalformed},

		// Bad kind.
		{"kind 2", `{"Event":2,` + ts0 + `,` + uuid + `}`, Event{}, ErrBadKind},
		{"kind -1", `{"Event":-1,` + ts0 + `,` + uuid + `}`, Event{}, ErrBadKind},
		{"kind huge", `{"Event":99999999999999999999999999,` + ts0 + `,` + uuid + `}`, Event{}, ErrBadKind},
		{"kind float", `{"Event":0.5,` + ts0 + `,` + uuid + `}`, Event{}, ErrBadKind},
		{"kind 1e300", `{"Event":1e300,` + ts0 + `,` + uuid + `}`, Event{}, ErrBadKind},
		{"kind string", `{"Event":"Open",` + ts0 + `,` + uuid + `}`, Event{}, ErrBadKind},
		{"kind 256 does not wrap to Open", `{"Event":256,` + ts0 + `,` + uuid + `,` + id4 + `}`, Event{}, ErrBadKind},

		// Bad UUID.
		{"uuid missing", `{"Event":1,` + ts0 + `}`, Event{}, ErrBadUUID},
		{"uuid empty", `{"Event":1,` + ts0 + `,"UUID":""}`, Event{}, ErrBadUUID},
		{"uuid dotdot slash", `{"Event":1,` + ts0 + `,"UUID":"../x"}`, Event{}, ErrBadUUID},
		{"uuid slash", `{"Event":1,` + ts0 + `,"UUID":"a/b"}`, Event{}, ErrBadUUID},
		{"uuid escaped slash", `{"Event":1,` + ts0 + `,"UUID":"a\/b"}`, Event{}, ErrBadUUID},
		{"uuid dotdot", `{"Event":1,` + ts0 + `,"UUID":".."}`, Event{}, ErrBadUUID},
		{"uuid NUL", `{"Event":1,` + ts0 + `,"UUID":"a\u0000b"}`, Event{}, ErrBadUUID},
		{"uuid newline", `{"Event":1,` + ts0 + `,"UUID":"host_1\n_0000000000000001"}`, Event{}, ErrBadUUID},
		{"uuid unicode", `{"Event":1,` + ts0 + `,"UUID":"h\u00e9te_1_1"}`, Event{}, ErrBadUUID},
		{"uuid 1000 chars", `{"Event":1,` + ts0 + `,"UUID":"` + strings.Repeat("a", 1000) + `"}`, Event{}, ErrBadUUID},
		{"uuid number", `{"Event":1,` + ts0 + `,"UUID":12}`, Event{}, ErrBadUUID},

		// Bad ID.
		{"open without ID", `{"Event":0,` + ts0 + `,` + uuid + `}`, Event{}, ErrBadID},
		{"open with null ID", `{"Event":0,` + ts0 + `,` + uuid + `,"ID":null}`, Event{}, ErrBadID},
		{"open with empty ID", `{"Event":0,` + ts0 + `,` + uuid + `,"ID":{}}`, Event{}, ErrBadID},
		{"ID not an object", `{"Event":0,` + ts0 + `,` + uuid + `,"ID":"192.0.2.1"}`, Event{}, ErrBadID},
		{"port 0", `{"Event":0,` + ts0 + `,` + uuid + `,"ID":{"SPort":0,"DPort":54321,"SrcIP":"192.0.2.1","DstIP":"198.51.100.7"}}`, Event{}, ErrBadID},
		{"remote port 0", `{"Event":0,` + ts0 + `,` + uuid + `,"ID":{"SPort":443,"DPort":0,"SrcIP":"192.0.2.1","DstIP":"198.51.100.7"}}`, Event{}, ErrBadID},
		{"port 70000", `{"Event":0,` + ts0 + `,` + uuid + `,"ID":{"SPort":70000,"DPort":54321,"SrcIP":"192.0.2.1","DstIP":"198.51.100.7"}}`, Event{}, ErrBadID},
		{"port negative", `{"Event":0,` + ts0 + `,` + uuid + `,"ID":{"SPort":-1,"DPort":54321,"SrcIP":"192.0.2.1","DstIP":"198.51.100.7"}}`, Event{}, ErrBadID},
		{"cookie above int64", `{"Event":0,` + ts0 + `,` + uuid + `,"ID":{"SPort":443,"DPort":54321,"SrcIP":"192.0.2.1","DstIP":"198.51.100.7","Cookie":18446744073709551615}}`, Event{}, ErrBadID},
		{"interface huge", `{"Event":0,` + ts0 + `,` + uuid + `,"ID":{"SPort":443,"DPort":54321,"SrcIP":"192.0.2.1","DstIP":"198.51.100.7","Interface":1e40}}`, Event{}, ErrBadID},
		{"bad source address", `{"Event":0,` + ts0 + `,` + uuid + `,"ID":{"SPort":443,"DPort":54321,"SrcIP":"300.0.2.1","DstIP":"198.51.100.7"}}`, Event{}, ErrBadID},
		{"empty destination address", `{"Event":0,` + ts0 + `,` + uuid + `,"ID":{"SPort":443,"DPort":54321,"SrcIP":"192.0.2.1","DstIP":""}}`, Event{}, ErrBadID},
		{"hostname address", `{"Event":0,` + ts0 + `,` + uuid + `,"ID":{"SPort":443,"DPort":54321,"SrcIP":"localhost","DstIP":"198.51.100.7"}}`, Event{}, ErrBadID},
		{"address with zone", `{"Event":0,` + ts0 + `,` + uuid + `,"ID":{"SPort":443,"DPort":54321,"SrcIP":"fe80::1%eth0","DstIP":"fe80::2"}}`, Event{}, ErrBadID},
		{"unspecified address", `{"Event":0,` + ts0 + `,` + uuid + `,"ID":{"SPort":443,"DPort":54321,"SrcIP":"0.0.0.0","DstIP":"198.51.100.7"}}`, Event{}, ErrBadID},
		{"unspecified ipv6", `{"Event":0,` + ts0 + `,` + uuid + `,"ID":{"SPort":443,"DPort":54321,"SrcIP":"2001:db8::1","DstIP":"::"}}`, Event{}, ErrBadID},
		{"close with bad ID", `{"Event":1,` + ts0 + `,` + uuid + `,"ID":{"SPort":443}}`, Event{}, ErrBadID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseLine([]byte(tt.line))
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("ParseLine() error = %v, want %v", err, tt.err)
				}
				if got != (Event{}) {
					t.Errorf("ParseLine() returned %+v with an error", got)
				}
				if n := len(err.Error()); n > 200 {
					t.Errorf("error message is %d bytes long; it must not repeat input: %.300s", n, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseLine() error = %v", err)
			}
			if got != tt.want {
				t.Errorf("ParseLine() =\n%+v, want\n%+v", got, tt.want)
			}
		})
	}
}

// TestParseLineRoundTrip encodes events exactly as tcp-info's server does
// (json.Marshal of eventsocket.FlowEvent, with the SockID that
// inetdiag.LinuxSockID.GetSockID produces) and decodes them.
func TestParseLineRoundTrip(t *testing.T) {
	tests := []struct {
		src, dst   [16]byte
		sport, dpo uint16
		cookie     uint64
		local      string
		remote     string
	}{
		{v4(192, 0, 2, 1), v4(198, 51, 100, 9), 443, 40000, 0x51A4C, "192.0.2.1:443", "198.51.100.9:40000"},
		{v6("2001:db8::1"), v6("2001:db8::2"), 1, 65535, math.MaxUint64, "[2001:db8::1]:1", "[2001:db8::2]:65535"},
		{v6("2001:db8::1"), v6("2001:db8::2"), 1, 65535, 1 << 63, "[2001:db8::1]:1", "[2001:db8::2]:65535"},
	}
	for _, tt := range tests {
		var lid inetdiag.LinuxSockID
		lid.IDiagSrc, lid.IDiagDst = tt.src, tt.dst
		lid.IDiagSPort = inetdiag.Port{byte(tt.sport >> 8), byte(tt.sport)}
		lid.IDiagDPort = inetdiag.Port{byte(tt.dpo >> 8), byte(tt.dpo)}
		for i := range 8 {
			lid.IDiagCookie[i] = byte(tt.cookie >> (8 * i))
		}
		lid.IDiagIf = [4]byte{0, 0, 0, 3}
		id := lid.GetSockID()
		uuid := fmt.Sprintf("host.example_1574185322_%016X", tt.cookie)
		now := time.Now()
		for _, fe := range []eventsocket.FlowEvent{
			{Event: eventsocket.Open, Timestamp: now.UTC(), UUID: uuid, ID: &id},
			{Event: eventsocket.Close, Timestamp: now, UUID: uuid}, // FlowDeleted uses time.Now().
		} {
			b, err := json.Marshal(fe)
			if err != nil {
				t.Fatal(err)
			}
			got, err := ParseLine(b)
			if err != nil {
				t.Fatalf("ParseLine(%s): %v", b, err)
			}
			want := Event{Kind: Kind(fe.Event), Timestamp: now.UTC().Round(0), UUID: uuid}
			if fe.ID != nil {
				want.HasID, want.Interface, want.Cookie = true, 3, tt.cookie
				want.Local, want.Remote = netip.MustParseAddrPort(tt.local), netip.MustParseAddrPort(tt.remote)
			}
			if got != want {
				t.Errorf("ParseLine(%s) =\n%+v, want\n%+v", b, got, want)
			}
		}
	}
}

func v4(a, b, c, d byte) [16]byte {
	// inetdiag stores IPv4 addresses in the first four bytes.
	return [16]byte{a, b, c, d}
}

func v6(s string) [16]byte {
	return netip.MustParseAddr(s).As16()
}

func TestValidateUUID(t *testing.T) {
	good := []string{
		realUUID,
		"mlab4-lga0t.mlab-staging.measurement-lab.org_1700000000_FFFFFFFFFFFFFFFF",
		"vm_1795635532_unsafe_00000000000ABCDE", // tcp-info's default prefix
		"a", "x.", "a.b", "-x", "_", "A-Z_a-z.0-9",
		strings.Repeat("a", MaxUUIDBytes),
	}
	for _, s := range good {
		if err := ValidateUUID(s); err != nil {
			t.Errorf("ValidateUUID(%q) = %v, want nil", s, err)
		}
	}
	bad := []string{
		"", ".", "..", "../x", "x/..", "a/b", "/", "/abs", "a\\b", ".hidden", "a..b", "x..",
		"a\x00b", "\x00", "a\nb", "a\rb", "a\tb", "a b", "a\x7fb", "h\u00e9te", "\u2215", "\xff",
		"a:b", "a%2Fb", "a*", "~", strings.Repeat("a", MaxUUIDBytes+1), strings.Repeat("a", 1000),
		realUUID + "\n", // a -uuid-prefix-file with a trailing newline puts one mid-UUID
	}
	for _, s := range bad {
		err := ValidateUUID(s)
		if !errors.Is(err, ErrBadUUID) {
			t.Errorf("ValidateUUID(%q) = %v, want ErrBadUUID", s, err)
			continue
		}
		if n := len(err.Error()); n > 100 {
			t.Errorf("ValidateUUID error is %d bytes; it must not repeat input", n)
		}
	}
}

// TestValidateUUIDBytes checks every byte value in the middle of a UUID:
// exactly [A-Za-z0-9._-] passes, so '/', NUL and control bytes never do.
func TestValidateUUIDBytes(t *testing.T) {
	for b := range 256 {
		c := byte(b)
		want := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-'
		if got := ValidateUUID("a"+string([]byte{c})+"a") == nil; got != want {
			t.Errorf("ValidateUUID with byte 0x%02x: accepted %v, want %v", c, got, want)
		}
	}
	for _, c := range []byte{'/', 0, '\n', '\\', 0x7f, 0x80} {
		if ValidateUUID(string([]byte{'a', c})) == nil {
			t.Errorf("byte 0x%02x accepted", c)
		}
	}
}

func TestUUIDIsSafeFileName(t *testing.T) {
	// What the flows package will do with a UUID.
	dir := filepath.Join("data", "2019", "11", "19")
	for _, s := range []string{realUUID, "a.b", "x."} {
		p := filepath.Join(dir, s+".pcap.gz")
		if filepath.Dir(p) != dir || filepath.Base(p) != s+".pcap.gz" {
			t.Errorf("%q escapes %s: %s", s, dir, p)
		}
	}
}

func TestReason(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{nil, ""},
		{ErrMalformed, "malformed"},
		{fmt.Errorf("x: %w", ErrBadUUID), "bad_uuid"},
		{fmt.Errorf("x: %w", ErrBadKind), "bad_kind"},
		{fmt.Errorf("x: %w", ErrBadID), "bad_id"},
		{ErrTooLong, "too_long"},
		{errors.New("other"), "other"},
	}
	for _, tt := range tests {
		if got := Reason(tt.err); got != tt.want {
			t.Errorf("Reason(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
	// Every reason a bad line can have is pre-registered.
	for _, r := range []string{"malformed", "bad_uuid", "bad_kind", "bad_id", "too_long"} {
		found := false
		for _, x := range reasons {
			found = found || x == r
		}
		if !found {
			t.Errorf("reason %q missing from reasons", r)
		}
	}
}

func BenchmarkParseLine(b *testing.B) {
	line := []byte(`{"Event":0,"Timestamp":"2019-11-19T17:42:02.123456789Z","UUID":"` + realUUID +
		`","ID":{"SPort":443,"DPort":54321,"SrcIP":"2001:db8::1","DstIP":"2001:db8::2","Interface":2,"Cookie":334412}}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseLine(line); err != nil {
			b.Fatal(err)
		}
	}
}
