package trafficgen

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ServerConfig configures a Server.
type ServerConfig struct {
	// Listen lists the addresses to listen on: documentation or loopback
	// addresses only. Port 0 picks a free port (see Server.Addrs).
	Listen []netip.AddrPort
	// Log receives start/stop lines and one line per unexpected connection
	// error. Nil discards them.
	Log *log.Logger
	// Slack is added to what a request asks for (hold, duration) to bound
	// each connection's lifetime. Default 30s.
	Slack time.Duration
	// Accepted, if set, receives one JSON Accept line per accepted
	// connection, written when the server is done with it (so the lines
	// are in close order, not accept order). Writes are serialized.
	Accepted io.Writer
}

// Accept describes one connection the server accepted: what a test needs
// to know the name tcp-info, or any sock_diag reader, gives the server's
// socket, independently of them.
type Accept struct {
	// Local is the server's end, Remote the client's, as the accepted
	// socket reports them.
	Local  string `json:"local"`
	Remote string `json:"remote"`
	// Accepted is when accept returned: after the handshake, before the
	// client can finish its exchange, so before any later connection on
	// the same 4-tuple began. Closed is when the server closed the socket.
	Accepted time.Time `json:"accepted"`
	Closed   time.Time `json:"closed"`
	// Cookie is the kernel's cookie of the accepted socket (getsockopt
	// SO_COOKIE, read right after accept; Linux only). tcp-info names
	// the socket "<prefix>_<Cookie as %016X>".
	Cookie uint64 `json:"cookie"`
	// Error is set when the cookie could not be read or the connection
	// ended with an unexpected error.
	Error string `json:"error,omitempty"`
}

// Validate checks the configuration.
func (c *ServerConfig) Validate() error {
	if len(c.Listen) == 0 {
		return errors.New("server needs at least one listen address")
	}
	for _, ap := range c.Listen {
		if err := CheckLocal(ap.Addr()); err != nil {
			return fmt.Errorf("listen %v: %w", ap, err)
		}
	}
	if c.Slack < 0 {
		return errors.New("negative slack")
	}
	return nil
}

// ServerStats counts what a server did.
type ServerStats struct {
	Accepted int64
	// Errors counts connections that ended with an unexpected error (a
	// reset the request announced is expected).
	Errors int64
}

// Server answers trafficgen clients. Create it with NewServer; Run serves
// until its context is done.
type Server struct {
	cfg   ServerConfig
	log   *log.Logger
	ready chan struct{}

	accepted, errs atomic.Int64

	// mu guards addrs.
	mu    sync.Mutex
	addrs []net.Addr

	// outMu guards out and outErr.
	outMu  sync.Mutex
	out    *json.Encoder // nil without cfg.Accepted
	outErr error         // the first failed write of an Accept line
}

// NewServer validates cfg and returns a server that is not yet listening.
func NewServer(cfg ServerConfig) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Slack == 0 {
		cfg.Slack = 30 * time.Second
	}
	l := cfg.Log
	if l == nil {
		l = log.New(io.Discard, "", 0)
	}
	s := &Server{cfg: cfg, log: l, ready: make(chan struct{})}
	if cfg.Accepted != nil {
		s.out = json.NewEncoder(cfg.Accepted)
	}
	return s, nil
}

// Ready is closed once every listener is open.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addrs returns the listening addresses; valid after Ready is closed.
func (s *Server) Addrs() []net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]net.Addr(nil), s.addrs...)
}

// Stats returns the counters so far.
func (s *Server) Stats() ServerStats {
	return ServerStats{Accepted: s.accepted.Load(), Errors: s.errs.Load()}
}

// Run listens on every configured address and serves until ctx is done.
// Then it closes the listeners and all open connections and returns after
// every connection goroutine has exited. It returns nil after a clean stop,
// an error if a listener failed or an Accept line could not be written.
func (s *Server) Run(ctx context.Context) error {
	lc := net.ListenConfig{Control: func(network, address string, _ syscall.RawConn) error {
		// Re-check the address the kernel is asked to bind.
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("listen %s: %w", address, err)
		}
		return CheckLocal(ap.Addr())
	}}
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for _, ap := range s.cfg.Listen {
		ln, err := lc.Listen(ctx, "tcp", ap.String())
		if err != nil {
			return fmt.Errorf("%w", err)
		}
		lns = append(lns, ln)
		s.mu.Lock()
		s.addrs = append(s.addrs, ln.Addr())
		s.mu.Unlock()
	}
	close(s.ready)
	s.log.Printf("serving on %v", s.Addrs())

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, len(lns))
	for _, ln := range lns {
		wg.Go(func() { errc <- s.acceptLoop(ctx, ln, &wg) })
	}
	<-ctx.Done()
	for _, ln := range lns {
		ln.Close()
	}
	// Connection goroutines close their connections when ctx is done.
	wg.Wait()
	close(errc)
	var errs []error
	for err := range errc {
		errs = append(errs, err)
	}
	st := s.Stats()
	s.log.Printf("stopped: %d connections accepted, %d unexpected errors", st.Accepted, st.Errors)
	s.outMu.Lock()
	if s.outErr != nil {
		errs = append(errs, fmt.Errorf("write accept record: %w", s.outErr))
	}
	s.outMu.Unlock()
	return errors.Join(errs...)
}

// acceptLoop accepts until ln is closed; connection goroutines join wg.
func (s *Server) acceptLoop(ctx context.Context, ln net.Listener, wg *sync.WaitGroup) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return fmt.Errorf("accept on %v: %w", ln.Addr(), err)
		}
		acc := Accept{Local: c.LocalAddr().String(), Remote: c.RemoteAddr().String(), Accepted: time.Now()}
		tc := c.(*net.TCPConn)
		if s.out != nil {
			// Read now: the socket is certainly alive.
			var err error
			if acc.Cookie, err = socketCookie(tc); err != nil {
				acc.Error = fmt.Sprintf("read socket cookie: %v", err)
			}
		}
		s.accepted.Add(1)
		wg.Go(func() {
			err := s.handle(ctx, tc)
			if err != nil && ctx.Err() == nil {
				s.errs.Add(1)
				s.log.Printf("connection %v -> %v: %v", c.RemoteAddr(), c.LocalAddr(), err)
				if acc.Error == "" {
					acc.Error = err.Error()
				}
			}
			if s.out != nil {
				acc.Closed = time.Now()
				s.record(acc)
			}
		})
	}
}

// record writes one Accept line; the first failure is kept for Run.
func (s *Server) record(a Accept) {
	s.outMu.Lock()
	defer s.outMu.Unlock()
	if s.outErr != nil {
		return
	}
	s.outErr = s.out.Encode(a)
}

// handle serves one connection. It returns only unexpected errors.
func (s *Server) handle(ctx context.Context, tc *net.TCPConn) (err error) {
	c := &countingConn{TCPConn: tc}
	defer closeConnOnDone(ctx, tc)()
	defer func() {
		if cerr := tc.Close(); cerr != nil && err == nil && !errors.Is(cerr, net.ErrClosed) {
			err = cerr
		}
	}()
	if err := tc.SetDeadline(time.Now().Add(s.cfg.Slack)); err != nil {
		return err
	}
	br := bufio.NewReader(c)
	req, _, err := readRequest(br)
	if err != nil {
		return err
	}
	if err := tc.SetDeadline(time.Now().Add(req.Hold + req.Duration + s.cfg.Slack)); err != nil {
		return err
	}
	rstExpected := req.Close == CloseClientRST
	err = s.serve(ctx, c, br, req)
	if err != nil && rstExpected && isReset(err) {
		return nil
	}
	return err
}

func (s *Server) serve(ctx context.Context, c *countingConn, br *bufio.Reader, req *Request) error {
	switch req.Shape {
	case Short, Reuse:
		if err := sleepCtx(ctx, req.Hold); err != nil {
			return err
		}
		if _, err := writeN(c, req.Reply); err != nil {
			return err
		}
		return s.finish(c, br, req.Close)
	case Bulk:
		if req.Dir == Up {
			// The client uploads and closes its side first; answer "ok".
			if err := drain(br); err != nil {
				return err
			}
			if _, err := io.WriteString(c, "ok\n"); err != nil {
				return err
			}
			return nil
		}
		if _, err := writeN(c, req.Reply); err != nil {
			return err
		}
		return s.finish(c, br, req.Close)
	case Abort:
		// The client resets the connection in the middle of this.
		if _, err := writeN(c, req.Reply); err != nil {
			return err
		}
		return drain(br)
	case Long:
		return s.long(ctx, c, br, req)
	}
	return fmt.Errorf("unknown shape %q", req.Shape)
}

// finish ends a connection after the server's part of the exchange.
func (s *Server) finish(c *countingConn, br *bufio.Reader, mode CloseMode) error {
	switch mode {
	case CloseServer:
		// FIN first, then wait for the client's FIN: never close with
		// unread data (that would send a RST).
		if err := c.CloseWrite(); err != nil {
			return err
		}
		return drain(br)
	case CloseServerRST:
		// Wait for the client's one-byte acknowledgement of the reply, so
		// the reset does not destroy data in flight, then reset.
		if _, err := br.ReadByte(); err != nil {
			return err
		}
		return resetClose(c.TCPConn)
	default: // the client closes (FIN or RST)
		return drain(br)
	}
}

// long runs the server side of a Long connection.
func (s *Server) long(ctx context.Context, c *countingConn, br *bufio.Reader, req *Request) error {
	readDone := make(chan error, 1)
	go func() { readDone <- drain(br) }()
	stop := make(chan struct{})
	writeDone := make(chan error, 1)
	go func() { writeDone <- tick(ctx, c, req.Interval, req.Chunk, stop) }()

	var timer <-chan time.Time
	if req.Close == CloseServer || req.Close == CloseServerRST {
		t := time.NewTimer(req.Duration)
		defer t.Stop()
		timer = t.C
	}
	var rerr, werr error
	select {
	case <-ctx.Done():
		close(stop)
		c.Close()
		<-writeDone
		<-readDone
		return ctx.Err()
	case rerr = <-readDone:
		// The client closed (or reset): stop writing.
		close(stop)
		werr = <-writeDone
	case <-timer:
		close(stop)
		werr = <-writeDone
		if req.Close == CloseServerRST {
			err := resetClose(c.TCPConn)
			<-readDone
			return errors.Join(werr, err)
		}
		if err := c.CloseWrite(); err != nil {
			werr = errors.Join(werr, err)
		}
		rerr = <-readDone
	case werr = <-writeDone:
		// A write failed: the client is gone. Unblock the reader.
		close(stop)
		c.Close()
		rerr = <-readDone
		if errors.Is(rerr, net.ErrClosed) {
			rerr = nil
		}
	}
	return errors.Join(rerr, werr)
}
