package core

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestValidateName(t *testing.T) {
	for _, name := range []string{
		"a",
		"a/b/c",
		"pcap/ndt/pcap/2026/11/25/20261125T120000.000000Z-pcap-mlab1-lga03-ndt.tgz",
		".hidden",
		"a/..b/c..",
		"a/.upload-tmp", // only the full prefix is reserved
		"ünïcode/名前",
		"with space/and+plus",
		strings.Repeat("x", MaxNameLen),
	} {
		if err := ValidateName(name); err != nil {
			t.Errorf("ValidateName(%q) = %v, want nil", name, err)
		}
	}
	for _, name := range []string{
		"",
		"/abs",
		"trailing/",
		"a//b",
		".",
		"..",
		"../x",
		"a/../b",
		"a/./b",
		"a/..",
		".upload-tmp-1",
		"a/.upload-tmp-x/b",
		"nul\x00",
		"new\nline",
		"del\x7f",
		"bad\xffutf8",
		strings.Repeat("x", MaxNameLen+1),
	} {
		err := ValidateName(name)
		if !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateName(%q) = %v, want ErrInvalidName", name, err)
		}
		if err := CheckName(name); !IsPermanent(err) {
			t.Errorf("CheckName(%q) = %v, want permanent", name, err)
		}
	}
}

func TestValidatePrefix(t *testing.T) {
	for _, p := range []string{"", "a", "a/", "pcap/2026/1", "pcap/ndt/"} {
		if err := ValidatePrefix(p); err != nil {
			t.Errorf("ValidatePrefix(%q) = %v", p, err)
		}
	}
	for _, p := range []string{"/", "/a", "a//", "../", "a/../", "a//b/"} {
		if err := ValidatePrefix(p); !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidatePrefix(%q) = %v, want ErrInvalidName", p, err)
		}
	}
}

// FuzzValidateName: an accepted name never escapes its root when joined to a
// path, and has no empty or dot segments.
func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"a/b", "../x", "a//b", ".", "pcap/2026/x.tgz", "a/\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if ValidateName(name) != nil {
			return
		}
		for seg := range strings.SplitSeq(name, "/") {
			if seg == "" || seg == "." || seg == ".." || strings.HasPrefix(seg, TempPrefix) {
				t.Fatalf("accepted %q with segment %q", name, seg)
			}
		}
		if strings.ContainsFunc(name, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			t.Fatalf("accepted %q with a control character", name)
		}
	})
}

func TestCRC32CEncoding(t *testing.T) {
	// "hello world" as S3 reports it.
	c := CRC32C([]byte("hello world"))
	if got := EncodeCRC32C(c); got != "yZRlqg==" {
		t.Errorf("EncodeCRC32C = %q, want yZRlqg==", got)
	}
	back, err := DecodeCRC32C("yZRlqg==")
	if err != nil || back != c {
		t.Errorf("DecodeCRC32C = %08x, %v; want %08x", back, err, c)
	}
	for _, bad := range []string{"", "!!", "AAAAAAA=", "yZRlqg==-2"} {
		if _, err := DecodeCRC32C(bad); err == nil {
			t.Errorf("DecodeCRC32C(%q) succeeded", bad)
		}
	}
}

func TestSizedReader(t *testing.T) {
	data := []byte("0123456789abcdef")
	r := NewSizedReader(bytes.NewReader(data), 10)
	if err := iotest.TestReader(r, data[:10]); err != nil {
		t.Error(err)
	}
	if n, err := r.Seek(0, io.SeekEnd); n != 10 || err != nil {
		t.Errorf("Seek(end) = %d, %v", n, err)
	}
	if _, err := r.Seek(11, io.SeekStart); err == nil {
		t.Error("Seek past the size succeeded")
	}
	short := NewSizedReader(bytes.NewReader(data[:4]), 10)
	if _, err := io.ReadAll(short); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("short body: %v, want ErrUnexpectedEOF", err)
	}
}

func TestCleanPrefix(t *testing.T) {
	for in, want := range map[string]string{"": "", "/": "", "/a/b/": "a/b", "a": "a"} {
		if got, err := CleanPrefix(in); err != nil || got != want {
			t.Errorf("CleanPrefix(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"//", "/a//b", "/../x", "//a"} {
		if _, err := CleanPrefix(in); err == nil {
			t.Errorf("CleanPrefix(%q) succeeded", in)
		}
	}
	if Join("", "x") != "x" || Join("p", "x") != "p/x" || Join("p", "") != "p/" {
		t.Error("Join")
	}
}
