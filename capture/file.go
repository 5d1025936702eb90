package capture

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/klauspost/compress/gzip"
)

// FileConfig configures ReadFile. The zero value of every field except Path
// selects its default.
type FileConfig struct {
	// Path names a pcap or pcapng file, optionally gzip-compressed.
	Path string
	// SnapLen is the number of bytes kept per frame, counted from the start
	// of the (possibly synthesized) Ethernet header. 0 means DefaultSnapLen
	// (256); from MinSnapLen to MaxSnapLen.
	SnapLen int
	// TickEvery is the file time between two Tick calls. 0 means
	// DefaultTickInterval (50ms).
	TickEvery time.Duration
	// Progress, when not nil, receives at most one status line per second
	// and a final summary line. If it is a terminal, status lines overwrite
	// each other ("\r"); otherwise each ends with a newline.
	Progress io.Writer

	// now is the clock for progress lines; nil means time.Now.
	now func() time.Time
}

// FileStats counts what ReadFile did. Frames = Handed + Skipped.
type FileStats struct {
	// Frames is the number of packet records read.
	Frames int64
	// Handed is the number of frames handed to the Handler: TCP, by the same
	// rules as TCPFilter.
	Handed int64
	// Bytes is the sum of the captured lengths of the records read.
	Bytes int64
	// Skipped is the number of records not handed over: not TCP, of an
	// unsupported link type (pcapng interfaces), or without a timestamp
	// (pcapng simple packet blocks).
	Skipped int64
}

// Link types (LINKTYPE_* of the pcap and pcapng formats) ReadFile accepts.
const (
	linkNull     = 0   // BSD loopback, 4-byte host-order address family
	linkEthernet = 1   // Ethernet
	linkRawBSD12 = 12  // DLT_RAW on most BSDs
	linkRawBSD14 = 14  // DLT_RAW on OpenBSD
	linkRaw      = 101 // raw IPv4 or IPv6
	linkLoop     = 108 // OpenBSD loopback, 4-byte network-order address family
	linkSLL      = 113 // Linux cooked capture v1, 16-byte header
	linkIPv4     = 228 // raw IPv4
	linkIPv6     = 229 // raw IPv6
	linkSLL2     = 276 // Linux cooked capture v2, 20-byte header

	// maxLinkHeaderLen is the longest link header stripped (SLL2).
	maxLinkHeaderLen = 20
)

func supportedLinkType(lt uint32) bool {
	switch lt {
	case linkNull, linkEthernet, linkRawBSD12, linkRawBSD14, linkRaw, linkLoop,
		linkSLL, linkIPv4, linkIPv6, linkSLL2:
		return true
	}
	return false
}

// ReadFile reads the pcap or pcapng file cfg.Path (both pcap byte orders,
// micro- and nanosecond timestamps; gzip-compressed files are recognized by
// their magic) and hands its TCP frames to h, presented as Ethernet frames
// like live capture presents them: frames of other link types (Linux cooked
// capture v1 and v2, raw IP, IPv4, IPv6, BSD loopback) get a synthesized
// 14-byte Ethernet header with zero MAC addresses, Data is cut at SnapLen,
// WireLen is the record's original length (adjusted by the header difference
// for synthesized headers) and Interface is 0. Timestamps are handed over as
// they are in the file, also when they go backwards.
//
// h.Tick is called with a record's timestamp before the record is handed over
// whenever the file time advanced by TickEvery since the last Tick, and once
// at the end with the latest timestamp read (also when reading fails), if any
// record was read.
//
// A truncated or corrupt file makes ReadFile return an error after handing
// over every frame before the damage. Cancelling ctx stops reading and
// returns ctx.Err(). The Handler is called from the calling goroutine only.
func ReadFile(ctx context.Context, cfg FileConfig, h Handler) (FileStats, error) {
	if cfg.Path == "" {
		return FileStats{}, errors.New("read capture file: no path")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return FileStats{}, fmt.Errorf("read %s: %w", cfg.Path, err)
	}
	f, err := os.Open(cfg.Path)
	if err != nil {
		return FileStats{}, err
	}
	defer f.Close()
	size := int64(-1)
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
		size = fi.Size()
	}
	st, err := readFrom(ctx, f, size, cfg, h)
	if err != nil && ctx.Err() == nil {
		err = fmt.Errorf("read %s: %w", cfg.Path, err)
	}
	return st, err
}

func (c FileConfig) withDefaults() (FileConfig, error) {
	if c.SnapLen == 0 {
		c.SnapLen = DefaultSnapLen
	}
	if c.SnapLen < MinSnapLen || c.SnapLen > MaxSnapLen {
		return c, fmt.Errorf("snaplen %d out of range [%d, %d]", c.SnapLen, MinSnapLen, MaxSnapLen)
	}
	if c.TickEvery == 0 {
		c.TickEvery = DefaultTickInterval
	}
	if c.TickEvery < 0 {
		return c, fmt.Errorf("tick interval %v is negative", c.TickEvery)
	}
	if c.now == nil {
		c.now = time.Now
	}
	return c, nil
}

// readFrom reads a capture from r, whose size is size bytes (-1: unknown).
// cfg has its defaults applied.
func readFrom(ctx context.Context, r io.Reader, size int64, cfg FileConfig, h Handler) (FileStats, error) {
	cr := &countingReader{r: r}
	fr := newFileReader(cfg, h)
	var prog *progress
	if cfg.Progress != nil {
		prog = newProgress(cfg.Progress, filepath.Base(cfg.Path), size, cr, cfg.now)
		fr.prog = prog
	}
	err := fr.read(ctx, cr)
	if fr.any {
		h.Tick(fr.latest)
	}
	if prog != nil {
		prog.finish(fr.stats, err)
	}
	return fr.stats, err
}

// fileReader turns records into Frames for one Handler.
type fileReader struct {
	h         Handler
	snapLen   int
	tickEvery time.Duration
	stats     FileStats
	prog      *progress
	frame     Frame
	// scratch holds a frame with a synthesized Ethernet header.
	scratch []byte
	// any is true once a record was read; latest is the latest timestamp
	// read and lastTick the timestamp of the last Tick.
	any      bool
	latest   time.Time
	lastTick time.Time
}

// keepLen is how much of a record the readers keep: enough for SnapLen bytes
// after replacing the longest link header with an Ethernet header.
func keepLen(snapLen int) int { return snapLen + maxLinkHeaderLen }

func newFileReader(cfg FileConfig, h Handler) *fileReader {
	return &fileReader{
		h:         h,
		snapLen:   cfg.SnapLen,
		tickEvery: cfg.TickEvery,
		scratch:   make([]byte, ethHeaderLen+keepLen(cfg.SnapLen)),
	}
}

// read detects the compression and format of r and hands over its records.
func (fr *fileReader) read(ctx context.Context, r io.Reader) error {
	br := bufio.NewReaderSize(r, 1<<16)
	if m, err := br.Peek(2); err == nil && m[0] == 0x1f && m[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("gzip: %w", truncated(err))
		}
		defer zr.Close()
		br = bufio.NewReaderSize(zr, 1<<16)
	}
	rr, err := newRecordReader(br, keepLen(fr.snapLen))
	if err != nil {
		return err
	}
	var rec record
	done := ctx.Done() // a non-blocking receive is cheaper than ctx.Err per frame
	for {
		select {
		case <-done:
			return ctx.Err()
		default:
		}
		if err := rr.next(&rec); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		fr.handle(&rec)
		if fr.prog != nil && fr.stats.Frames%1024 == 0 {
			fr.prog.update(fr.stats)
		}
	}
}

// handle counts one record, ticks if file time advanced, and hands the record
// over if it is a TCP frame.
func (fr *fileReader) handle(rec *record) {
	fr.stats.Frames++
	fr.stats.Bytes += int64(rec.capLen)
	if rec.noFrame {
		fr.stats.Skipped++
		return
	}
	switch {
	case !fr.any:
		fr.any = true
		fr.latest, fr.lastTick = rec.ts, rec.ts
	case rec.ts.After(fr.latest):
		fr.latest = rec.ts
		if rec.ts.Sub(fr.lastTick) >= fr.tickEvery {
			fr.h.Tick(rec.ts)
			fr.lastTick = rec.ts
		}
	}
	data, wire, ok := fr.toEthernet(rec)
	if !ok || !acceptTCP(data) {
		fr.stats.Skipped++
		return
	}
	if len(data) > fr.snapLen {
		data = data[:fr.snapLen]
	}
	fr.frame = Frame{Timestamp: rec.ts, Data: data, WireLen: max(wire, len(data))}
	fr.h.HandleFrame(&fr.frame)
	fr.stats.Handed++
}

// toEthernet returns the record as an Ethernet frame and its wire length,
// synthesizing the Ethernet header in fr.scratch for other link types. ok is
// false for records it cannot present (unsupported link type, not IP).
func (fr *fileReader) toEthernet(rec *record) (data []byte, wire int, ok bool) {
	d := rec.data
	var hdrLen int
	var etherType uint16
	switch rec.linkType {
	case linkEthernet:
		return d, rec.wireLen, true
	case linkSLL:
		hdrLen = 16
		if len(d) < hdrLen {
			return nil, 0, false
		}
		etherType = binary.BigEndian.Uint16(d[14:])
	case linkSLL2:
		hdrLen = 20
		if len(d) < hdrLen {
			return nil, 0, false
		}
		etherType = binary.BigEndian.Uint16(d)
	case linkNull, linkLoop:
		hdrLen = 4
	case linkRaw, linkRawBSD12, linkRawBSD14, linkIPv4, linkIPv6:
		hdrLen = 0
	default:
		return nil, 0, false
	}
	if len(d) < hdrLen {
		return nil, 0, false
	}
	payload := d[hdrLen:]
	if etherType == 0 {
		// The link header names no protocol: take the IP version.
		if len(payload) == 0 {
			return nil, 0, false
		}
		switch payload[0] >> 4 {
		case 4:
			etherType = etherTypeIPv4
		case 6:
			etherType = etherTypeIPv6
		default:
			return nil, 0, false
		}
	}
	s := fr.scratch
	clear(s[:12])
	binary.BigEndian.PutUint16(s[12:], etherType)
	n := copy(s[ethHeaderLen:], payload)
	return s[:ethHeaderLen+n], rec.wireLen - hdrLen + ethHeaderLen, true
}

// countingReader counts the bytes read through it, for progress. It is only
// used by the reading goroutine.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// progress writes status lines about a file being read.
type progress struct {
	w     io.Writer
	tty   bool
	name  string
	size  int64 // -1: unknown
	cr    *countingReader
	now   func() time.Time
	start time.Time
	last  time.Time
	// width is the length of the last status line on a terminal, to blank
	// it out when the next one is shorter.
	width int
}

func newProgress(w io.Writer, name string, size int64, cr *countingReader, now func() time.Time) *progress {
	p := &progress{w: w, name: name, size: size, cr: cr, now: now}
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	p.start = now()
	p.last = p.start
	return p
}

// update writes a status line if a second passed since the last one.
func (p *progress) update(st FileStats) {
	now := p.now()
	if now.Sub(p.last) < time.Second {
		return
	}
	p.last = now
	line := fmt.Sprintf("%s: %d packets, %d bytes", p.name, st.Frames, st.Bytes)
	if p.size > 0 {
		line += fmt.Sprintf(", %.0f%% of file read", 100*float64(p.cr.n)/float64(p.size))
	}
	if p.tty {
		pad := max(p.width-len(line), 0)
		p.width = len(line)
		fmt.Fprintf(p.w, "\r%s%*s", line, pad, "")
		return
	}
	fmt.Fprintln(p.w, line)
}

// finish writes the summary line.
func (p *progress) finish(st FileStats, err error) {
	line := fmt.Sprintf("%s: %d packets read, %d handed over, %d skipped, %d bytes in %v",
		p.name, st.Frames, st.Handed, st.Skipped, st.Bytes, p.now().Sub(p.start).Round(time.Millisecond))
	if err != nil {
		line += fmt.Sprintf("; stopped: %v", err)
	}
	if p.tty {
		pad := max(p.width-len(line), 0)
		fmt.Fprintf(p.w, "\r%s%*s\n", line, pad, "")
		return
	}
	fmt.Fprintln(p.w, line)
}
