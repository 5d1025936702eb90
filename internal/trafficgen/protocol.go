package trafficgen

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// Shape names one kind of connection.
type Shape string

// The connection shapes.
const (
	// Short: small request, small reply after a short hold, then a close
	// (by either side, gracefully or with a RST).
	Short Shape = "short"
	// Long: open for seconds with periodic small writes both ways.
	Long Shape = "long"
	// Bulk: megabytes one way (many packets), then a graceful close.
	Bulk Shape = "bulk"
	// Reuse: a series of short connections from one fixed local port to the
	// same server address, so consecutive connections share the 4-tuple.
	Reuse Shape = "reuse"
	// Abort: a download the client resets in the middle (data in flight).
	Abort Shape = "abort"
)

// Shapes lists every shape, in the order Mix.String prints them.
var Shapes = []Shape{Short, Long, Bulk, Reuse, Abort}

// CloseMode says who ends a connection and how.
type CloseMode string

// The close modes.
const (
	// CloseClient: the client sends the first FIN.
	CloseClient CloseMode = "client"
	// CloseServer: the server sends the first FIN (the client ends without
	// TIME_WAIT, which is what lets Reuse reconnect at once).
	CloseServer CloseMode = "server"
	// CloseClientRST: the client aborts with a RST (SO_LINGER 0).
	CloseClientRST CloseMode = "client-rst"
	// CloseServerRST: the server aborts with a RST (SO_LINGER 0).
	CloseServerRST CloseMode = "server-rst"
)

// Direction of a bulk transfer.
const (
	Down = "down" // server to client
	Up   = "up"   // client to server
)

// Request is the first line the client sends on every connection; it tells
// the server how to behave. Sizes are bytes.
type Request struct {
	Shape Shape     `json:"shape"`
	Close CloseMode `json:"close"`
	// Hold is how long the server waits before replying (Short, Reuse).
	Hold time.Duration `json:"hold,omitempty"`
	// Reply is how many bytes the server sends back (Short, Reuse, and the
	// download of Bulk and Abort).
	Reply int64 `json:"reply,omitempty"`
	// Dir is the direction of a Bulk transfer (Down or Up).
	Dir string `json:"dir,omitempty"`
	// Duration, Interval and Chunk drive Long: each side writes Chunk bytes
	// every Interval until the closing side's Duration is over.
	Duration time.Duration `json:"duration,omitempty"`
	Interval time.Duration `json:"interval,omitempty"`
	Chunk    int           `json:"chunk,omitempty"`
}

// Limits the server enforces on requests (it trusts nobody).
const (
	maxRequestLine = 4096
	maxReply       = 256 << 20
	maxDuration    = 10 * time.Minute
	minInterval    = time.Millisecond
	maxChunk       = 64 << 10
)

// Validate checks a request against the server's limits.
func (r *Request) Validate() error {
	switch r.Shape {
	case Short, Reuse, Long, Bulk, Abort:
	default:
		return fmt.Errorf("unknown shape %q", r.Shape)
	}
	switch r.Close {
	case CloseClient, CloseServer, CloseClientRST, CloseServerRST:
	default:
		return fmt.Errorf("unknown close mode %q", r.Close)
	}
	if r.Reply < 0 || r.Reply > maxReply {
		return fmt.Errorf("reply size %d out of range [0, %d]", r.Reply, maxReply)
	}
	if r.Hold < 0 || r.Hold > maxDuration {
		return fmt.Errorf("hold %v out of range", r.Hold)
	}
	if r.Shape == Long {
		if r.Duration <= 0 || r.Duration > maxDuration {
			return fmt.Errorf("duration %v out of range (0, %v]", r.Duration, maxDuration)
		}
		if r.Interval < minInterval || r.Interval > maxDuration {
			return fmt.Errorf("interval %v out of range [%v, %v]", r.Interval, minInterval, maxDuration)
		}
		if r.Chunk <= 0 || r.Chunk > maxChunk {
			return fmt.Errorf("chunk %d out of range (0, %d]", r.Chunk, maxChunk)
		}
	}
	if r.Shape == Bulk && r.Dir != Down && r.Dir != Up {
		return fmt.Errorf("bulk direction %q, want %q or %q", r.Dir, Down, Up)
	}
	return nil
}

// writeRequest sends r as one JSON line and returns the bytes written.
func writeRequest(w io.Writer, r *Request) (int64, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return 0, err
	}
	b = append(b, '\n')
	n, err := w.Write(b)
	return int64(n), err
}

var errRequestTooLong = errors.New("request line too long")

// readRequest reads one request line from br (at most maxRequestLine bytes)
// and validates it. It returns the number of bytes consumed.
func readRequest(br *bufio.Reader) (*Request, int64, error) {
	var line []byte
	for {
		frag, err := br.ReadSlice('\n')
		line = append(line, frag...)
		if len(line) > maxRequestLine {
			return nil, int64(len(line)), errRequestTooLong
		}
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, int64(len(line)), fmt.Errorf("read request: %w", err)
		}
	}
	var r Request
	if err := json.Unmarshal(line, &r); err != nil {
		return nil, int64(len(line)), fmt.Errorf("parse request: %w", err)
	}
	if err := r.Validate(); err != nil {
		return nil, int64(len(line)), fmt.Errorf("invalid request: %w", err)
	}
	return &r, int64(len(line)), nil
}

// filler is what both sides send as payload.
var filler = func() []byte {
	b := make([]byte, 64<<10)
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	return b
}()

// writeN writes n filler bytes and returns how many were written.
func writeN(w io.Writer, n int64) (int64, error) {
	var done int64
	for done < n {
		chunk := filler
		if rest := n - done; rest < int64(len(chunk)) {
			chunk = chunk[:rest]
		}
		m, err := w.Write(chunk)
		done += int64(m)
		if err != nil {
			return done, err
		}
	}
	return done, nil
}
