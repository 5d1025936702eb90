package sockdiag

import (
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/m-lab/uuid"
	"github.com/m-lab/uuid/prefix"
)

// TestFromCookieMatchesMLabUUID compares FromCookie with m-lab/uuid's
// FromCookie, configured the way tcp-info is: through the
// -uuid-prefix-file flag on flag.CommandLine.
func TestFromCookieMatchesMLabUUID(t *testing.T) {
	for _, p := range []string{
		"headercap-test.example.org_1700000000",
		"with trailing newline\n", // used byte for byte, as flagx.FileBytes does
		"",
	} {
		file := filepath.Join(t.TempDir(), "prefix")
		if err := os.WriteFile(file, []byte(p), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := flag.CommandLine.Set("uuid-prefix-file", file); err != nil {
			t.Fatal(err)
		}
		got, err := DefaultPrefix(file)
		if err != nil || got != p {
			t.Fatalf("DefaultPrefix(%q) = %q, %v; want %q", file, got, err, p)
		}
		for _, c := range []uint64{0, 1, 0xabc, 0x0123456789abcdef, 1 << 63, ^uint64(0)} {
			if got, want := FromCookie(got, c), uuid.FromCookie(c); got != want {
				t.Errorf("FromCookie(%q, %#x) = %q, m-lab/uuid says %q", p, c, got, want)
			}
		}
	}
}

// TestDefaultPrefixUnsafe: without a prefix file the prefix is
// prefix.UnsafeString(), "<hostname>_<boot time>_unsafe". The boot time is
// computed at each call as now minus /proc/uptime (10 ms resolution),
// truncated to whole seconds, so two calls (or two processes, such as
// tcp-info and the daemon) can disagree by one second when the boot instant
// falls near a second boundary; clock steps can move it further. Hence
// deployments give both the same -uuid-prefix-file.
func TestDefaultPrefixUnsafe(t *testing.T) {
	got, err := DefaultPrefix("")
	if err != nil {
		t.Fatal(err)
	}
	want := prefix.UnsafeString()
	parse := func(s string) (string, int64) {
		t.Helper()
		parts := strings.Split(s, "_")
		if len(parts) < 3 || parts[len(parts)-1] != "unsafe" {
			t.Fatalf("prefix %q is not <hostname>_<boottime>_unsafe", s)
		}
		boot, err := strconv.ParseInt(parts[len(parts)-2], 10, 64)
		if err != nil {
			t.Fatalf("prefix %q: boot time: %v", s, err)
		}
		return strings.Join(parts[:len(parts)-2], "_"), boot
	}
	gh, gb := parse(got)
	wh, wb := parse(want)
	if gh != wh || gb-wb > 1 || wb-gb > 1 {
		t.Errorf("DefaultPrefix(\"\") = %q, prefix.UnsafeString() = %q", got, want)
	}
	if host, _ := os.Hostname(); gh != host {
		t.Errorf("hostname part %q, want %q", gh, host)
	}
}

func TestDefaultPrefixMissingFile(t *testing.T) {
	if _, err := DefaultPrefix(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("no error for a missing prefix file")
	}
}

func BenchmarkFromCookie(b *testing.B) {
	b.ReportAllocs()
	for i := range b.N {
		_ = FromCookie("host.example.org_1700000000", uint64(i))
	}
}
