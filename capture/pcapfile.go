package capture

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"time"
)

// The readers below are written for this package rather than taken from
// gopacket's pcapgo: pcapgo sizes its buffers from lengths in the file (a
// corrupt header makes it allocate gigabytes), panics on malformed pcapng
// options and allocates per packet. These keep memory bounded by the snap
// length, allocate nothing per record and return an error for any damage.

// maxRecordLen bounds the captured length of one record. Real captures stay
// far below (tcpdump's maximum snap length is 256 KiB); a larger value means
// the file is corrupt.
const maxRecordLen = 1 << 20

// maxOptionsBlockLen bounds the pcapng blocks the reader buffers to parse
// (section and interface descriptions).
const maxOptionsBlockLen = 1 << 20

// errCorrupt marks damage in the file (as opposed to I/O errors).
var errCorrupt = errors.New("corrupt capture file")

// record is one packet record. data holds at most the reader's keep bytes of
// the captured data and is valid until the next call to next.
type record struct {
	ts       time.Time
	data     []byte
	capLen   int // captured length in the file (len(data) may be shorter)
	wireLen  int // original length on the wire
	linkType uint32
	// noFrame marks a record that cannot be handed over (a pcapng simple
	// packet block has no timestamp).
	noFrame bool
}

// recordReader reads packet records. next returns io.EOF at a clean end of
// the input and a descriptive error for any damage.
type recordReader interface {
	next(rec *record) error
}

// Magic numbers of the supported formats, as read little-endian.
const (
	magicPcapMicro      = 0xa1b2c3d4
	magicPcapNano       = 0xa1b23c4d
	magicPcapMicroSwap  = 0xd4c3b2a1
	magicPcapNanoSwap   = 0x4d3cb2a1
	ngBlockSHB          = 0x0a0d0d0a
	ngByteOrderMagic    = 0x1a2b3c4d
	ngBlockIDB          = 1
	ngBlockPB           = 2
	ngBlockSPB          = 3
	ngBlockEPB          = 6
	ngOptEnd            = 0
	ngOptIfTsResol      = 9
	ngOptIfTsOffset     = 14
	ngDefaultTsResol    = 6 // microseconds
	pcapFileHeaderLen   = 24
	pcapRecordHeaderLen = 16
)

// newRecordReader detects the format of br (pcap or pcapng; br must not be
// gzip-compressed any more) and reads its file header. Records keep at most
// keep bytes of data.
func newRecordReader(br *bufio.Reader, keep int) (recordReader, error) {
	magic, err := br.Peek(4)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: too short for a capture file", errCorrupt)
		}
		return nil, err
	}
	switch m := binary.LittleEndian.Uint32(magic); m {
	case magicPcapMicro, magicPcapNano, magicPcapMicroSwap, magicPcapNanoSwap:
		return newPcapReader(br, keep)
	case ngBlockSHB:
		return &ngReader{br: br, buf: make([]byte, keep), order: binary.LittleEndian}, nil
	default:
		return nil, fmt.Errorf("not a pcap or pcapng file (magic %08x)", m)
	}
}

// pcapReader reads the classic pcap format, both byte orders, micro- and
// nanosecond timestamps.
type pcapReader struct {
	br       *bufio.Reader
	order    binary.ByteOrder
	nanos    bool
	linkType uint32
	n        int64 // records read, for error messages
	hdr      [pcapRecordHeaderLen]byte
	buf      []byte
}

func newPcapReader(br *bufio.Reader, keep int) (*pcapReader, error) {
	var h [pcapFileHeaderLen]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return nil, fmt.Errorf("pcap file header: %w", truncated(err))
	}
	r := &pcapReader{br: br, buf: make([]byte, keep)}
	switch binary.LittleEndian.Uint32(h[:]) {
	case magicPcapMicro:
		r.order = binary.LittleEndian
	case magicPcapNano:
		r.order, r.nanos = binary.LittleEndian, true
	case magicPcapMicroSwap:
		r.order = binary.BigEndian
	case magicPcapNanoSwap:
		r.order, r.nanos = binary.BigEndian, true
	}
	if v := r.order.Uint16(h[4:]); v != 2 {
		return nil, fmt.Errorf("%w: pcap version %d.%d not supported", errCorrupt, v, r.order.Uint16(h[6:]))
	}
	// The upper bits of the link type field carry FCS information.
	r.linkType = r.order.Uint32(h[20:]) & 0xffff
	if !supportedLinkType(r.linkType) {
		return nil, fmt.Errorf("pcap link type %d not supported", r.linkType)
	}
	return r, nil
}

func (r *pcapReader) next(rec *record) error {
	if _, err := io.ReadFull(r.br, r.hdr[:]); err != nil {
		if err == io.EOF {
			return io.EOF
		}
		return fmt.Errorf("record %d: header: %w", r.n+1, truncated(err))
	}
	r.n++
	sec := r.order.Uint32(r.hdr[0:])
	frac := int64(r.order.Uint32(r.hdr[4:]))
	capLen := r.order.Uint32(r.hdr[8:])
	wireLen := r.order.Uint32(r.hdr[12:])
	if capLen > maxRecordLen {
		return fmt.Errorf("record %d: %w: captured length %d exceeds %d", r.n, errCorrupt, capLen, maxRecordLen)
	}
	if !r.nanos {
		frac *= 1000
	}
	n := min(int(capLen), len(r.buf))
	if _, err := io.ReadFull(r.br, r.buf[:n]); err != nil {
		return fmt.Errorf("record %d: data: %w", r.n, truncated(err))
	}
	if err := discard(r.br, int(capLen)-n); err != nil {
		return fmt.Errorf("record %d: data: %w", r.n, err)
	}
	*rec = record{
		ts:       time.Unix(int64(sec), frac),
		data:     r.buf[:n],
		capLen:   int(capLen),
		wireLen:  int(wireLen),
		linkType: r.linkType,
	}
	return nil
}

// ngInterface is what the reader keeps of a pcapng interface description.
type ngInterface struct {
	linkType uint32
	// Timestamps count units of 10^-exp seconds (pow10) or 2^-exp seconds.
	pow10  bool
	exp    uint8
	offset int64 // seconds added to every timestamp
}

// time converts a pcapng timestamp.
func (ifc *ngInterface) time(ts uint64) time.Time {
	var sec, ns uint64
	switch {
	case ifc.pow10:
		units := pow10[ifc.exp]
		sec = ts / units
		frac := ts % units
		if ifc.exp <= 9 {
			ns = frac * pow10[9-ifc.exp]
		} else {
			ns = frac / pow10[ifc.exp-9]
		}
	case ifc.exp == 0:
		sec = ts
	default:
		sec = ts >> ifc.exp
		frac := ts & (1<<ifc.exp - 1)
		hi, lo := bits.Mul64(frac, 1e9)
		ns = lo>>ifc.exp | hi<<(64-ifc.exp)
	}
	return time.Unix(int64(sec)+ifc.offset, int64(ns))
}

var pow10 = [20]uint64{1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9,
	1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19}

// ngReader reads pcapng: sections in either byte order, interface
// descriptions with their link type and timestamp resolution and offset,
// enhanced packet blocks and the obsolete packet blocks. Simple packet blocks
// (which have no timestamp) come back as records marked noFrame; every other
// block type is skipped.
type ngReader struct {
	br     *bufio.Reader
	order  binary.ByteOrder
	ifaces []ngInterface
	n      int64  // blocks read, for error messages
	total  uint32 // total length of the current block
	hdr    [28]byte
	buf    []byte // packet data, keep bytes
	opts   []byte // body of the block being parsed, grows to the largest
}

func (r *ngReader) next(rec *record) error {
	for {
		typ, bodyLen, err := r.blockHeader()
		if err != nil {
			return err
		}
		switch typ {
		case ngBlockSHB:
			err = r.sectionHeader(bodyLen)
		case ngBlockIDB:
			err = r.interfaceDescription(bodyLen)
		case ngBlockEPB, ngBlockPB:
			err = r.packet(typ, bodyLen, rec)
			if err == nil {
				return r.trailer()
			}
		case ngBlockSPB:
			err = r.simplePacket(bodyLen, rec)
			if err == nil {
				return r.trailer()
			}
		default:
			err = discard(r.br, bodyLen)
		}
		if err != nil {
			return fmt.Errorf("block %d (type %#x): %w", r.n, typ, err)
		}
		if err := r.trailer(); err != nil {
			return err
		}
	}
}

// blockHeader reads a block's type and total length and returns the length of
// its body (between the length field and the trailing length). For a section
// header it also reads the byte order magic, which it counts as header.
func (r *ngReader) blockHeader() (typ uint32, bodyLen int, err error) {
	h := r.hdr[:8]
	if _, err := io.ReadFull(r.br, h); err != nil {
		if err == io.EOF {
			return 0, 0, io.EOF
		}
		return 0, 0, fmt.Errorf("block %d: header: %w", r.n+1, truncated(err))
	}
	r.n++
	typ = r.order.Uint32(h)
	hdrLen := 8
	if typ == ngBlockSHB {
		bom := r.hdr[8:12]
		if _, err := io.ReadFull(r.br, bom); err != nil {
			return 0, 0, fmt.Errorf("block %d: section header: %w", r.n, truncated(err))
		}
		switch {
		case binary.LittleEndian.Uint32(bom) == ngByteOrderMagic:
			r.order = binary.LittleEndian
		case binary.BigEndian.Uint32(bom) == ngByteOrderMagic:
			r.order = binary.BigEndian
		default:
			return 0, 0, fmt.Errorf("block %d: %w: bad byte order magic in section header", r.n, errCorrupt)
		}
		hdrLen = 12
	}
	total := r.order.Uint32(h[4:])
	if total%4 != 0 || int64(total) < int64(hdrLen)+4 {
		return 0, 0, fmt.Errorf("block %d: %w: block length %d", r.n, errCorrupt, total)
	}
	r.total = total
	return typ, int(int64(total) - int64(hdrLen) - 4), nil
}

// trailer reads the block's trailing length and checks it against the
// length in the header: a mismatch means the reader lost its way in the file.
func (r *ngReader) trailer() error {
	t := r.hdr[:4]
	if _, err := io.ReadFull(r.br, t); err != nil {
		return fmt.Errorf("block %d: trailer: %w", r.n, truncated(err))
	}
	if got := r.order.Uint32(t); got != r.total {
		return fmt.Errorf("block %d: %w: trailing length %d, header said %d", r.n, errCorrupt, got, r.total)
	}
	return nil
}

func (r *ngReader) sectionHeader(bodyLen int) error {
	// Body after the byte order magic: major, minor, section length,
	// options.
	if bodyLen < 12 {
		return fmt.Errorf("%w: section header too short", errCorrupt)
	}
	v := r.hdr[12:16]
	if _, err := io.ReadFull(r.br, v); err != nil {
		return truncated(err)
	}
	if major := r.order.Uint16(v); major != 1 {
		return fmt.Errorf("%w: pcapng version %d.%d not supported", errCorrupt, major, r.order.Uint16(v[2:]))
	}
	r.ifaces = r.ifaces[:0]
	return discard(r.br, bodyLen-4)
}

func (r *ngReader) interfaceDescription(bodyLen int) error {
	if bodyLen < 8 {
		return fmt.Errorf("%w: interface description too short", errCorrupt)
	}
	if bodyLen > maxOptionsBlockLen {
		return fmt.Errorf("%w: interface description of %d bytes", errCorrupt, bodyLen)
	}
	if cap(r.opts) < bodyLen {
		r.opts = make([]byte, bodyLen)
	}
	b := r.opts[:bodyLen]
	if _, err := io.ReadFull(r.br, b); err != nil {
		return truncated(err)
	}
	ifc := ngInterface{linkType: uint32(r.order.Uint16(b)), pow10: true, exp: ngDefaultTsResol}
	for o := b[8:]; len(o) >= 4; {
		code, l := r.order.Uint16(o), int(r.order.Uint16(o[2:]))
		o = o[4:]
		if code == ngOptEnd {
			break
		}
		if l > len(o) {
			return fmt.Errorf("%w: interface option %d overruns the block", errCorrupt, code)
		}
		v := o[:l]
		switch {
		case code == ngOptIfTsResol && l == 1:
			ifc.pow10 = v[0]&0x80 == 0
			ifc.exp = v[0] & 0x7f
			if (ifc.pow10 && int(ifc.exp) >= len(pow10)) || (!ifc.pow10 && ifc.exp >= 64) {
				return fmt.Errorf("%w: timestamp resolution %#x not supported", errCorrupt, v[0])
			}
		case code == ngOptIfTsOffset && l == 8:
			ifc.offset = int64(r.order.Uint64(v))
		}
		o = o[min((l+3)&^3, len(o)):]
	}
	r.ifaces = append(r.ifaces, ifc)
	return nil
}

// packet reads an enhanced (EPB) or obsolete (PB) packet block's body.
func (r *ngReader) packet(typ uint32, bodyLen int, rec *record) error {
	const fixed = 20
	if bodyLen < fixed {
		return fmt.Errorf("%w: packet block too short", errCorrupt)
	}
	f := r.hdr[8:28]
	if _, err := io.ReadFull(r.br, f); err != nil {
		return truncated(err)
	}
	var id int
	if typ == ngBlockPB {
		id = int(r.order.Uint16(f))
	} else {
		id = int(r.order.Uint32(f))
	}
	if id < 0 || id >= len(r.ifaces) {
		return fmt.Errorf("%w: packet of undeclared interface %d", errCorrupt, id)
	}
	ifc := &r.ifaces[id]
	ts := uint64(r.order.Uint32(f[4:]))<<32 | uint64(r.order.Uint32(f[8:]))
	capLen := r.order.Uint32(f[12:])
	wireLen := r.order.Uint32(f[16:])
	if int64(capLen) > int64(bodyLen-fixed) {
		return fmt.Errorf("%w: captured length %d overruns the block", errCorrupt, capLen)
	}
	if capLen > maxRecordLen {
		return fmt.Errorf("%w: captured length %d exceeds %d", errCorrupt, capLen, maxRecordLen)
	}
	n := min(int(capLen), len(r.buf))
	if _, err := io.ReadFull(r.br, r.buf[:n]); err != nil {
		return truncated(err)
	}
	if err := discard(r.br, bodyLen-fixed-n); err != nil {
		return err
	}
	*rec = record{
		ts:       ifc.time(ts),
		data:     r.buf[:n],
		capLen:   int(capLen),
		wireLen:  int(wireLen),
		linkType: ifc.linkType,
	}
	return nil
}

// simplePacket reads a simple packet block: no timestamp, so the record is
// counted but not handed over.
func (r *ngReader) simplePacket(bodyLen int, rec *record) error {
	if bodyLen < 4 {
		return fmt.Errorf("%w: simple packet block too short", errCorrupt)
	}
	if len(r.ifaces) == 0 {
		return fmt.Errorf("%w: packet before any interface description", errCorrupt)
	}
	f := r.hdr[8:12]
	if _, err := io.ReadFull(r.br, f); err != nil {
		return truncated(err)
	}
	wireLen := r.order.Uint32(f)
	capLen := min(int64(wireLen), int64(bodyLen-4))
	if err := discard(r.br, bodyLen-4); err != nil {
		return err
	}
	*rec = record{capLen: int(capLen), wireLen: int(wireLen), linkType: r.ifaces[0].linkType, noFrame: true}
	return nil
}

// truncated turns the errors of a short read into a clear one.
func truncated(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("file truncated: %w", io.ErrUnexpectedEOF)
	}
	return err
}

// discard skips n bytes of br.
func discard(br *bufio.Reader, n int) error {
	if n <= 0 {
		return nil
	}
	if _, err := br.Discard(n); err != nil {
		return truncated(err)
	}
	return nil
}
