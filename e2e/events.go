package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Event mirrors one line of tcp-info's eventsocket
// (github.com/m-lab/tcp-info/eventsocket.FlowEvent). It is declared here so
// the recorder shares no code with the daemon's own client; a test checks
// that it decodes what tcp-info's type encodes.
type Event struct {
	// Event is 0 for Open, 1 for Close.
	Event     int
	Timestamp time.Time
	UUID      string
	ID        *SockID
	// Received is when the recorder read the line (not part of tcp-info's
	// format): Received - Timestamp is how late tcp-info delivered it.
	Received time.Time `json:",omitzero"`
}

// SockID mirrors github.com/m-lab/tcp-info/inetdiag.SockID.
type SockID struct {
	SPort, DPort uint16
	SrcIP, DstIP string
	Interface    uint32
	Cookie       int64
}

// Event kinds.
const (
	EventOpen  = 0
	EventClose = 1
)

// Recorder records every event of a tcp-info eventsocket, independently of
// the daemon under test. Its methods are safe for concurrent use.
type Recorder struct {
	conn net.Conn
	done chan struct{}

	// mu guards the fields below.
	mu     sync.Mutex
	events []Event
	bad    []string
	err    error
}

// RecordEvents connects to the eventsocket at path, retrying until it
// accepts or ctx is done, and records in the background until the socket
// closes or Close is called.
func RecordEvents(ctx context.Context, path string) (*Recorder, error) {
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			r := &Recorder{conn: c, done: make(chan struct{})}
			go r.loop()
			return r, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect to eventsocket %s: %w (last error: %v)", path, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (r *Recorder) loop() {
	defer close(r.done)
	sc := bufio.NewScanner(r.conn)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var ev Event
		err := json.Unmarshal(sc.Bytes(), &ev)
		ev.Received = time.Now()
		r.mu.Lock()
		if err != nil || ev.UUID == "" {
			r.bad = append(r.bad, sc.Text())
		} else {
			r.events = append(r.events, ev)
		}
		r.mu.Unlock()
	}
	r.mu.Lock()
	if err := sc.Err(); err != nil && !errors.Is(err, net.ErrClosed) {
		r.err = err
	}
	r.mu.Unlock()
}

// Wait waits until the eventsocket closes (tcp-info exited) or timeout
// passes; then it closes the connection and returns any read error.
func (r *Recorder) Wait(timeout time.Duration) error {
	select {
	case <-r.done:
	case <-time.After(timeout):
	}
	return r.Close()
}

// Close stops recording and waits for the reader to exit.
func (r *Recorder) Close() error {
	r.conn.Close()
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// Events returns a copy of the events so far.
func (r *Recorder) Events() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.events...)
}

// Bad returns the lines that did not parse as events.
func (r *Recorder) Bad() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.bad...)
}

// Opens converts the Open events to OpenEvents. Events whose addresses do
// not parse are returned as errors.
func Opens(events []Event) ([]OpenEvent, []error) {
	var out []OpenEvent
	var errs []error
	for _, ev := range events {
		if ev.Event != EventOpen {
			continue
		}
		if ev.ID == nil {
			errs = append(errs, fmt.Errorf("open event %s without an ID", ev.UUID))
			continue
		}
		src, err1 := netip.ParseAddr(ev.ID.SrcIP)
		dst, err2 := netip.ParseAddr(ev.ID.DstIP)
		if err := errors.Join(err1, err2); err != nil {
			errs = append(errs, fmt.Errorf("open event %s: %w", ev.UUID, err))
			continue
		}
		out = append(out, OpenEvent{
			UUID: ev.UUID,
			Time: ev.Timestamp,
			Src:  netip.AddrPortFrom(src.Unmap(), ev.ID.SPort),
			Dst:  netip.AddrPortFrom(dst.Unmap(), ev.ID.DPort),
		})
	}
	return out, errs
}
