package events

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
)

func FuzzParseLine(f *testing.F) {
	for _, s := range []string{
		`{"Event":0,"Timestamp":"2019-11-19T17:42:02.123456789Z","UUID":"` + realUUID + `","ID":{"SPort":443,"DPort":54321,"SrcIP":"192.0.2.1","DstIP":"198.51.100.7","Interface":2,"Cookie":334412}}`,
		`{"Event":0,"Timestamp":"2019-11-19T17:42:02Z","UUID":"h_1_2","ID":{"SPort":1,"DPort":2,"SrcIP":"::ffff:192.0.2.1","DstIP":"2001:db8::1","Interface":0,"Cookie":-1}}`,
		`{"Event":1,"Timestamp":"2019-11-19T17:42:02.1+02:00","UUID":"` + realUUID + `","ID":null}`,
		`{"Event":1,"Timestamp":"2019-11-19T17:42:02Z","UUID":"../x"}`,
		`{"Event":2,"Timestamp":"2019-11-19T17:42:02Z","UUID":"a"}`,
		`{"Event":1e99}`, `null`, `{}`, `[]`, ``, "\x00", `{"ID":{"SrcIP":"fe80::1%eth0"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		ev, err := ParseLine(line)
		if err != nil {
			switch r := Reason(err); r {
			case "malformed", "bad_uuid", "bad_kind", "bad_id":
			default:
				t.Fatalf("error %v has reason %q", err, r)
			}
			if ev != (Event{}) {
				t.Fatalf("non-zero event %+v with error %v", ev, err)
			}
			return
		}
		if err := ValidateUUID(ev.UUID); err != nil {
			t.Fatalf("accepted UUID %q: %v", ev.UUID, err)
		}
		if ev.Kind != Open && ev.Kind != Close {
			t.Fatalf("kind %v", ev.Kind)
		}
		if ev.Timestamp.IsZero() || ev.Timestamp.Location().String() != "UTC" {
			t.Fatalf("timestamp %v", ev.Timestamp)
		}
		if ev.Kind == Open && !ev.HasID {
			t.Fatal("open without ID")
		}
		if !ev.HasID {
			if ev.Local.IsValid() || ev.Remote.IsValid() || ev.Cookie != 0 || ev.Interface != 0 {
				t.Fatalf("ID fields set without HasID: %+v", ev)
			}
			return
		}
		for _, ap := range []netip.AddrPort{ev.Local, ev.Remote} {
			a := ap.Addr()
			if !ap.IsValid() || ap.Port() == 0 || a.Is4In6() || a.IsUnspecified() || a.Zone() != "" {
				t.Fatalf("address %v not valid and normalised in %+v", ap, ev)
			}
		}
	})
}

func FuzzValidateUUID(f *testing.F) {
	for _, s := range []string{realUUID, "", ".", "..", "../x", "a/b", "a..b", ".x", "x.", "a\x00b", "h\u00e9te", strings.Repeat("a", 129)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if ValidateUUID(s) != nil {
			return
		}
		if s == "" || s == "." || s == ".." || len(s) > MaxUUIDBytes {
			t.Fatalf("accepted %q", s)
		}
		if strings.ContainsAny(s, "/\\\x00") || strings.Contains(s, "..") || s[0] == '.' {
			t.Fatalf("accepted %q", s)
		}
		for i := 0; i < len(s); i++ {
			if !uuidByte(s[i]) {
				t.Fatalf("accepted %q with byte 0x%02x", s, s[i])
			}
		}
		dir := filepath.Join("data", "2019", "11", "19")
		if p := filepath.Join(dir, s+".pcap.gz"); filepath.Dir(p) != dir {
			t.Fatalf("accepted %q, which escapes %s as %s", s, dir, p)
		}
	})
}
