// Package events reads tcp-info's flow events: the Open and Close
// notifications, each carrying the flow's UUID, that tcp-info serves as JSON
// lines on its eventsocket (a unix stream socket), or that were recorded from
// it into a file.
//
// It owns three things: the decoding and validation of one event line
// (ParseLine, ValidateUUID), the long-running socket client that survives
// tcp-info restarts (Client), and the reader of recorded event files
// (ReadFile). The wire format is tcp-info's own eventsocket.FlowEvent, decoded
// with tcp-info's types so that it cannot drift.
//
// Every line is untrusted input. A UUID becomes a file name downstream, so an
// Event is only ever produced with a UUID that passed ValidateUUID; a line that
// fails validation is counted by reason and skipped, never fatal.
//
// Concurrency contract: ParseLine, ValidateUUID and Reason are pure and safe
// for concurrent use. A Client delivers events by calling its handler
// synchronously from the goroutine that runs Client.Run, one event at a time,
// in the order tcp-info sent them; the handler owns whatever it does with
// them. ReadFile likewise calls its handler from the caller's goroutine.
//
// This package never writes files and never touches the flow table: it only
// reads the socket (or a file) and hands validated events to its caller.
//
// Importing it imports tcp-info's eventsocket package, whose init functions
// register the flags -tcpinfo.eventsocket and -anonymize.ip on
// flag.CommandLine and tcp-info's own tcpinfo_* metrics on
// prometheus.DefaultRegisterer (and log a line). Binaries should therefore
// parse their flags with their own flag.FlagSet (or reuse those two flags)
// and serve metrics from their own registry.
package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/m-lab/tcp-info/eventsocket"
)

// Kind is the kind of a flow event.
type Kind uint8

// The kinds of flow event, numbered as on tcp-info's wire (eventsocket.Open
// and eventsocket.Close).
const (
	// Open is sent when tcp-info first sees a socket, one poll (~10 ms) or
	// more after its first packets.
	Open Kind = Kind(eventsocket.Open)
	// Close is sent when a socket has disappeared from the kernel's table.
	Close Kind = Kind(eventsocket.Close)
)

// String returns "open" or "close" (also used as the metric label), or
// "Kind(N)" for a value outside the enum.
func (k Kind) String() string {
	switch k {
	case Open:
		return "open"
	case Close:
		return "close"
	default:
		return "Kind(" + strconv.Itoa(int(k)) + ")"
	}
}

// Event is one validated flow event.
type Event struct {
	Kind Kind
	// Timestamp is when tcp-info observed the event, in UTC. For Open it is
	// the time of the poll that first saw the socket, for Close the time
	// tcp-info noticed the socket was gone. Never zero.
	Timestamp time.Time
	// UUID names the flow; it passed ValidateUUID.
	UUID string
	// HasID reports whether the event carried a socket ID. Open events always
	// do; tcp-info sends Close events without one (only the UUID).
	HasID bool
	// Local is the socket's own address and port (tcp-info's SrcIP/SPort),
	// Remote the peer's (DstIP/DPort). IPv4 addresses are 4-byte addresses,
	// also when tcp-info wrote them IPv4-mapped. Both are invalid (the zero
	// AddrPort) when HasID is false.
	Local, Remote netip.AddrPort
	// Interface is the kernel's interface index from the socket ID, 0 when
	// unbound or when HasID is false.
	Interface uint32
	// Cookie is the kernel's socket cookie, the same number that ends
	// tcp-info's UUIDs (in hex). 0 when HasID is false.
	Cookie uint64
}

// Sentinel errors. Every error returned by ParseLine and ValidateUUID, and
// every bad line counted by Client and ReadFile, wraps exactly one of them;
// Reason maps them to metric labels.
var (
	// ErrMalformed: the line is not a JSON FlowEvent, or lacks a timestamp.
	ErrMalformed = errors.New("malformed event")
	// ErrBadUUID: the UUID failed ValidateUUID.
	ErrBadUUID = errors.New("bad uuid")
	// ErrBadKind: the event kind is neither Open nor Close.
	ErrBadKind = errors.New("bad event kind")
	// ErrBadID: the socket ID is missing on an Open, or present but invalid.
	ErrBadID = errors.New("bad socket id")
	// ErrTooLong: the line exceeded the reader's line limit and was skipped.
	ErrTooLong = errors.New("line too long")
)

// Reason returns a short, bounded metric label for an error from this
// package: "malformed", "bad_uuid", "bad_kind", "bad_id" or "too_long";
// "other" for any other error and "" for nil.
func Reason(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrTooLong):
		return "too_long"
	case errors.Is(err, ErrBadUUID):
		return "bad_uuid"
	case errors.Is(err, ErrBadKind):
		return "bad_kind"
	case errors.Is(err, ErrBadID):
		return "bad_id"
	case errors.Is(err, ErrMalformed):
		return "malformed"
	default:
		return "other"
	}
}

// reasons lists every label Reason returns for a bad line, so that counters
// can be initialised to zero.
var reasons = []string{"malformed", "bad_uuid", "bad_kind", "bad_id", "too_long"}

// MaxUUIDBytes is the longest UUID ValidateUUID accepts. tcp-info's UUIDs are
// a host name (at most 64 bytes on Linux), '_', a boot time, '_' and 16 hex
// digits.
const MaxUUIDBytes = 128

// ValidateUUID reports whether s is safe to use as a file name component: it
// must be 1 to MaxUUIDBytes bytes from [A-Za-z0-9._-], must not start with
// '.', and must not contain "..". So it never contains '/', NUL or any other
// control character, and is never "." or "..". The error wraps ErrBadUUID and
// does not quote s (which may be hostile).
func ValidateUUID(s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty", ErrBadUUID)
	}
	if len(s) > MaxUUIDBytes {
		return fmt.Errorf("%w: %d bytes, longer than %d", ErrBadUUID, len(s), MaxUUIDBytes)
	}
	for i := 0; i < len(s); i++ {
		if !uuidByte(s[i]) {
			return fmt.Errorf("%w: byte 0x%02x at offset %d is not in [A-Za-z0-9._-]", ErrBadUUID, s[i], i)
		}
	}
	if s[0] == '.' {
		return fmt.Errorf("%w: starts with '.'", ErrBadUUID)
	}
	if strings.Contains(s, "..") {
		return fmt.Errorf("%w: contains \"..\"", ErrBadUUID)
	}
	return nil
}

func uuidByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '.' || c == '_' || c == '-'
}

// ParseLine decodes one eventsocket line (with or without its trailing
// newline) as tcp-info's eventsocket.FlowEvent and validates it: the kind is
// Open or Close, the timestamp is set, the UUID passes ValidateUUID, and the
// socket ID, required on Open and optional on Close, has two parseable
// unzoned, specified addresses and non-zero ports. Unknown JSON fields are
// ignored, so newer tcp-info versions may add some.
//
// The error wraps one of the package's sentinel errors; it never quotes the
// line.
func ParseLine(line []byte) (Event, error) {
	var fe eventsocket.FlowEvent
	if err := json.Unmarshal(line, &fe); err != nil {
		return Event{}, classifyJSONError(err)
	}
	// A JSON null (or an empty object) decodes without error into the zero
	// FlowEvent, which the checks below reject.
	if fe.Event != eventsocket.Open && fe.Event != eventsocket.Close {
		return Event{}, fmt.Errorf("%w: %d", ErrBadKind, fe.Event)
	}
	if fe.Timestamp.IsZero() {
		return Event{}, fmt.Errorf("%w: missing timestamp", ErrMalformed)
	}
	if err := ValidateUUID(fe.UUID); err != nil {
		return Event{}, err
	}
	ev := Event{
		Kind:      Kind(fe.Event),
		Timestamp: fe.Timestamp.UTC(),
		UUID:      fe.UUID,
	}
	if fe.ID == nil {
		if ev.Kind == Open {
			return Event{}, fmt.Errorf("%w: open event without socket id", ErrBadID)
		}
		return ev, nil
	}
	local, err := addrPort(fe.ID.SrcIP, fe.ID.SPort)
	if err != nil {
		return Event{}, fmt.Errorf("%w: source: %v", ErrBadID, err)
	}
	remote, err := addrPort(fe.ID.DstIP, fe.ID.DPort)
	if err != nil {
		return Event{}, fmt.Errorf("%w: destination: %v", ErrBadID, err)
	}
	ev.HasID = true
	ev.Local, ev.Remote = local, remote
	ev.Interface = fe.ID.Interface
	ev.Cookie = uint64(fe.ID.Cookie) // tcp-info stores the uint64 cookie as int64.
	return ev, nil
}

func addrPort(ip string, port uint16) (netip.AddrPort, error) {
	a, err := netip.ParseAddr(ip)
	switch {
	case err != nil:
		return netip.AddrPort{}, errors.New("unparseable address")
	case a.Zone() != "":
		return netip.AddrPort{}, errors.New("address has a zone")
	case a.IsUnspecified():
		return netip.AddrPort{}, errors.New("unspecified address")
	case port == 0:
		return netip.AddrPort{}, errors.New("port 0")
	}
	return netip.AddrPortFrom(a.Unmap(), port), nil
}

// classifyJSONError maps a decoding error to a sentinel: a value of the wrong
// type or range in a known field is attributed to that field (a kind of
// 1e30, a port of 70000), anything else is malformed. The messages name
// fields and offsets but never repeat input (time.Time's and json's own
// messages quote the offending value, which may be long and hostile).
func classifyJSONError(err error) error {
	var (
		te *json.UnmarshalTypeError
		se *json.SyntaxError
	)
	switch {
	case errors.As(err, &te):
		msg := fmt.Sprintf("field %s: JSON value does not fit %v", te.Field, te.Type)
		switch {
		case te.Field == "Event":
			return fmt.Errorf("%w: %s", ErrBadKind, msg)
		case te.Field == "UUID":
			return fmt.Errorf("%w: %s", ErrBadUUID, msg)
		case te.Field == "ID" || strings.HasPrefix(te.Field, "ID."):
			return fmt.Errorf("%w: %s", ErrBadID, msg)
		}
		return fmt.Errorf("%w: %s", ErrMalformed, msg)
	case errors.As(err, &se):
		return fmt.Errorf("%w: invalid JSON at offset %d", ErrMalformed, se.Offset)
	default:
		return fmt.Errorf("%w: cannot decode (%T)", ErrMalformed, err)
	}
}

// blank reports whether a line holds only white space; such lines are
// skipped without being counted.
func blank(line []byte) bool {
	return len(bytes.TrimSpace(line)) == 0
}
