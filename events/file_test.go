package events

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestLineReader(t *testing.T) {
	type result struct {
		line string
		err  error
	}
	tests := []struct {
		name  string
		max   int
		input string
		want  []result
	}{
		{"empty", 8, "", nil},
		{"lines", 8, "a\nbb\n\nccc\n", []result{{"a", nil}, {"bb", nil}, {"", nil}, {"ccc", nil}}},
		{"no final newline", 8, "a\nbb", []result{{"a", nil}, {"bb", nil}}},
		{"crlf", 8, "a\r\nb\r\n", []result{{"a", nil}, {"b", nil}}},
		{"exactly max", 4, "abcd\nx\n", []result{{"abcd", nil}, {"x", nil}}},
		{"max plus one", 4, "abcde\nx\n", []result{{"", ErrTooLong}, {"x", nil}}},
		{"long lines in a row", 4, "abcde\nabcdefghijklmnopqrstuvwxyz\nx", []result{{"", ErrTooLong}, {"", ErrTooLong}, {"x", nil}}},
		{"long last line", 4, "x\nabcdefghijk", []result{{"x", nil}, {"", ErrTooLong}}},
		{"max+1 last line", 4, "abcde", []result{{"", ErrTooLong}}},
		{"large limit", 64, strings.Repeat("z", 64) + "\n" + strings.Repeat("z", 65) + "\n",
			[]result{{strings.Repeat("z", 64), nil}, {"", ErrTooLong}}},
		{"tiny limit below bufio minimum", 1, "a\nbc\n", []result{{"a", nil}, {"", ErrTooLong}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// One byte per Read, to exercise partial reads.
			lr := newLineReader(&oneByteReader{r: strings.NewReader(tt.input)}, tt.max)
			var got []result
			for {
				line, err := lr.next()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil && !errors.Is(err, ErrTooLong) {
					t.Fatal(err)
				}
				got = append(got, result{string(line), err})
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("got %v, want %v", got, tt.want)
				}
			}
			if _, err := lr.next(); !errors.Is(err, io.EOF) {
				t.Errorf("after EOF: %v", err)
			}
		})
	}
}

type oneByteReader struct{ r io.Reader }

func (o *oneByteReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return o.r.Read(p)
}

// TestLineReaderBoundedMemory streams a 64 MiB line and checks that it is
// skipped without being held in memory.
func TestLineReaderBoundedMemory(t *testing.T) {
	const huge = 64 << 20
	r := io.MultiReader(&repeatReader{block: bytes.Repeat([]byte("x"), 32<<10), n: huge}, strings.NewReader("\nafter\n"))
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	lr := newLineReader(r, 1024)
	if _, err := lr.next(); !errors.Is(err, ErrTooLong) {
		t.Fatalf("huge line: %v, want ErrTooLong", err)
	}
	line, err := lr.next()
	if err != nil || string(line) != "after" {
		t.Fatalf("next line = %q, %v", line, err)
	}
	runtime.ReadMemStats(&after)
	if d := after.TotalAlloc - before.TotalAlloc; d > 1<<20 {
		t.Errorf("allocated %d bytes to skip a %d-byte line", d, huge)
	}
}

// repeatReader yields n bytes by repeating block.
type repeatReader struct {
	block []byte
	n     int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, io.EOF
	}
	k := copy(p[:min(len(p), r.n)], r.block)
	r.n -= k
	return k, nil
}

// fileContent is an event recording with every kind of line.
var fileContent = strings.Join([]string{
	openLine("host_1_0000000000000001", local, remote),
	"\n",
	"garbage\n",
	closeLine("a/b"),
	`{"Event":9,"Timestamp":"2019-11-19T17:42:03Z","UUID":"host_1_2"}` + "\n",
	`{"Event":0,"Timestamp":"2019-11-19T17:42:03Z","UUID":"host_1_2"}` + "\n",
	strings.Repeat("L", DefaultMaxLineBytes+1) + "\n",
	"   \r\n",
	strings.TrimSuffix(closeLine("host_1_0000000000000001"), "\n"), // no final newline
}, "")

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func gzipBytes(t *testing.T, s string) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if _, err := io.WriteString(zw, s); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestReadFile(t *testing.T) {
	half := len(fileContent) / 2
	files := map[string][]byte{
		"plain":            []byte(fileContent),
		"gzip":             gzipBytes(t, fileContent),
		"concatenated gz":  append(gzipBytes(t, fileContent[:half]), gzipBytes(t, fileContent[half:])...),
		"gzip named .json": gzipBytes(t, fileContent), // detection is by content
	}
	for name, data := range files {
		t.Run(name, func(t *testing.T) {
			var got []Event
			st, err := ReadFile(context.Background(), writeFile(t, "events.jsonl", data), func(ev Event) { got = append(got, ev) })
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 2 || got[0].Kind != Open || got[0].Local != local || got[1].Kind != Close ||
				got[0].UUID != "host_1_0000000000000001" || got[1].UUID != got[0].UUID {
				t.Errorf("events = %+v", got)
			}
			want := Stats{Lines: 7, Opens: 1, Closes: 1,
				Bad: map[string]int{"malformed": 1, "bad_uuid": 1, "bad_kind": 1, "bad_id": 1, "too_long": 1}}
			if !statsEqual(st, want) {
				t.Errorf("stats = %+v, want %+v", st, want)
			}
			if st.Skipped() != 5 {
				t.Errorf("Skipped() = %d, want 5", st.Skipped())
			}
		})
	}
}

func statsEqual(a, b Stats) bool {
	if a.Lines != b.Lines || a.Opens != b.Opens || a.Closes != b.Closes || len(a.Bad) != len(b.Bad) {
		return false
	}
	for k, v := range a.Bad {
		if b.Bad[k] != v {
			return false
		}
	}
	return true
}

func TestReadFileEdgeCases(t *testing.T) {
	ctx := context.Background()
	nop := func(Event) {}

	if _, err := ReadFile(ctx, filepath.Join(t.TempDir(), "missing"), nop); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want ErrNotExist", err)
	}
	if _, err := ReadFile(ctx, t.TempDir(), nop); err == nil {
		t.Error("directory: no error")
	}
	for name, tc := range map[string]struct {
		data string
		want Stats
	}{
		"empty":          {"", Stats{}},
		"one byte":       {"x", Stats{Lines: 1, Bad: map[string]int{"malformed": 1}}},
		"gzip magic":     {"\x1f", Stats{Lines: 1, Bad: map[string]int{"malformed": 1}}},
		"only newlines":  {"\n\n\n", Stats{}},
		"binary garbage": {"\x00\x01\x02\n\xff\xfe\n", Stats{Lines: 2, Bad: map[string]int{"malformed": 2}}},
	} {
		st, err := ReadFile(ctx, writeFile(t, "f", []byte(tc.data)), nop)
		if err != nil || !statsEqual(st, tc.want) {
			t.Errorf("%s: ReadFile = %+v, %v; want %+v", name, st, err, tc.want)
		}
	}

	// A truncated gzip stream is an error, with the lines read so far.
	gz := gzipBytes(t, strings.Repeat(closeLine("host_1_1"), 1000))
	st, err := ReadFile(ctx, writeFile(t, "trunc.gz", gz[:len(gz)-100]), nop)
	if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated gzip: %v, want ErrUnexpectedEOF", err)
	}
	if st.Closes == 0 || st.Closes == 1000 {
		t.Errorf("truncated gzip: %d events delivered", st.Closes)
	}
	// So is a corrupt one (bad CRC).
	bad := bytes.Clone(gz)
	bad[len(bad)-6] ^= 0xff
	if _, err := ReadFile(ctx, writeFile(t, "crc.gz", bad), nop); !errors.Is(err, gzip.ErrChecksum) {
		t.Errorf("bad CRC: %v, want ErrChecksum", err)
	}
	// And a gzip header that is not one.
	if _, err := ReadFile(ctx, writeFile(t, "hdr.gz", []byte("\x1f\x8bxx")), nop); err == nil {
		t.Error("bad gzip header: no error")
	}
}

func TestReadFileCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	p := writeFile(t, "f", []byte(strings.Repeat(closeLine("host_1_1"), 100)))
	n := 0
	st, err := ReadFile(ctx, p, func(Event) {
		if n++; n == 10 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) || st.Closes != 10 {
		t.Errorf("ReadFile = %+v, %v; want 10 events and context.Canceled", st, err)
	}
}

// recordedEvents holds events recorded from the real tcp-info v1.9.0 by
// TestTCPInfoIntegration -update: flows between 192.0.2.1/2001:db8::1
// (tcp-info's side) and 192.0.2.2/2001:db8::2.
const recordedEvents = "testdata/tcpinfo-v1.9.0-events.jsonl"

func TestReadFileRecordedFromTCPInfo(t *testing.T) {
	var evs []Event
	st, err := ReadFile(context.Background(), recordedEvents, func(ev Event) { evs = append(evs, ev) })
	if err != nil {
		t.Fatal(err)
	}
	if st.Bad != nil || st.Opens == 0 || st.Opens != st.Closes || st.Lines != st.Opens+st.Closes {
		t.Fatalf("stats %+v: want only valid events, one Close per Open", st)
	}
	server := map[netip.Addr]bool{netip.MustParseAddr("192.0.2.1"): true, netip.MustParseAddr("2001:db8::1"): true}
	client := map[netip.Addr]bool{netip.MustParseAddr("192.0.2.2"): true, netip.MustParseAddr("2001:db8::2"): true}
	opened := map[string]bool{}
	for _, ev := range evs {
		switch ev.Kind {
		case Open:
			if !server[ev.Local.Addr()] || !client[ev.Remote.Addr()] || ev.Cookie == 0 {
				t.Errorf("Open %+v: want tcp-info's side local", ev)
			}
			if want := fmt.Sprintf("_%016X", ev.Cookie); !strings.HasSuffix(ev.UUID, want) {
				t.Errorf("UUID %s does not end in its cookie %s", ev.UUID, want)
			}
			if opened[ev.UUID] {
				t.Errorf("second Open for %s", ev.UUID)
			}
			opened[ev.UUID] = true
		case Close:
			if !opened[ev.UUID] || ev.HasID {
				t.Errorf("Close %+v: want after its Open, without ID", ev)
			}
			delete(opened, ev.UUID)
		}
	}
}
