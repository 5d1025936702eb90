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
	"syscall"
	"time"
)

// ClientConfig configures a Client. Conns or For must be set.
type ClientConfig struct {
	// Connect lists the server addresses (documentation addresses only);
	// each job picks one at random.
	Connect []netip.AddrPort
	// Conns stops the client after this many connections (0: no limit).
	Conns int
	// For stops starting new jobs after this long (0: no limit).
	For time.Duration
	// Parallel is how many jobs run at once (default 8).
	Parallel int
	// Mix weights the shapes (default DefaultMix).
	Mix Mix
	// LongDuration is the longest Long connection; they last between half
	// of it and all of it (default 3s).
	LongDuration time.Duration
	// BulkSize is the largest Bulk transfer in bytes (default 4 MiB).
	BulkSize int64
	// HoldMax is the longest time the server holds a Short or Reuse
	// connection before it replies: Short ones hold between 0 and HoldMax,
	// Reuse ones between HoldMax/4 and HoldMax. Zero keeps the defaults
	// (0–60 ms and 30–120 ms), long enough for tcp-info's 10 ms polls to
	// see most connections; a millisecond or two makes them miss most.
	HoldMax time.Duration
	// Seed makes the plan deterministic.
	Seed uint64
	// ReusePortBase and ReusePortCount give the local ports Reuse series
	// bind (default 20000 and 10000: below Linux's ephemeral range, so no
	// other connection takes them).
	ReusePortBase, ReusePortCount uint16
	// Out receives one JSON Record per connection. Nil discards them.
	Out io.Writer
	// Log receives unexpected errors. Nil discards them.
	Log *log.Logger

	// allowLoopback lets the package's own tests use 127.0.0.1 and ::1. It
	// cannot be set from outside the package.
	allowLoopback bool
}

// checkDial applies CheckDial (and the test-only loopback exception).
func (c *ClientConfig) checkDial(ap netip.AddrPort) error {
	if c.allowLoopback && ap.Addr().Unmap().IsLoopback() && ap.Port() != 0 {
		return nil
	}
	return CheckDial(ap)
}

// Validate checks the configuration.
func (c *ClientConfig) Validate() error {
	if len(c.Connect) == 0 {
		return errors.New("client needs at least one server address")
	}
	for _, ap := range c.Connect {
		if err := c.checkDial(ap); err != nil {
			return fmt.Errorf("%w", err)
		}
	}
	if c.Conns < 0 || c.For < 0 || c.Parallel < 0 || c.LongDuration < 0 || c.BulkSize < 0 || c.HoldMax < 0 {
		return errors.New("negative conns, duration, parallelism, size or hold")
	}
	if c.Conns == 0 && c.For == 0 {
		return errors.New("set a connection count or a duration")
	}
	if c.Mix != nil {
		if err := c.Mix.Validate(); err != nil {
			return fmt.Errorf("%w", err)
		}
	}
	if c.BulkSize > maxReply {
		return fmt.Errorf("bulk size above %d", maxReply)
	}
	if c.LongDuration > maxDuration {
		return fmt.Errorf("long duration above %v", maxDuration)
	}
	if int(c.ReusePortBase)+int(c.ReusePortCount) > 65536 {
		return errors.New("reuse port range beyond 65535")
	}
	return nil
}

func (c *ClientConfig) setDefaults() {
	if c.Parallel == 0 {
		c.Parallel = 8
	}
	if c.Mix == nil {
		c.Mix = DefaultMix
	}
	if c.LongDuration == 0 {
		c.LongDuration = 3 * time.Second
	}
	if c.BulkSize == 0 {
		c.BulkSize = 4 << 20
	}
	if c.BulkSize < 8 {
		c.BulkSize = 8
	}
	if c.ReusePortBase == 0 {
		c.ReusePortBase = 20000
	}
	if c.ReusePortCount == 0 {
		c.ReusePortCount = 10000
	}
}

// Record describes one connection the client made.
type Record struct {
	Job   int       `json:"job"`
	Seq   int       `json:"seq"` // position within a Reuse series, else 0
	Shape Shape     `json:"shape"`
	Close CloseMode `json:"close"`
	// Local and Remote are the connection's addresses as the client saw
	// them (Local is empty if the connection never opened).
	Local  string `json:"local"`
	Remote string `json:"remote"`
	// Cookie is the kernel's cookie of the client's socket (SO_COOKIE);
	// 0 where it cannot be read (not Linux). A capture on the server's
	// side never names a flow with it: the client's socket is not local
	// there.
	Cookie uint64    `json:"cookie,omitempty"`
	Start  time.Time `json:"start"`
	End    time.Time `json:"end"`
	// Sent and Received count application bytes, request line included.
	Sent     int64 `json:"sent"`
	Received int64 `json:"received"`
	// Error is set for unexpected failures only (a planned reset is not
	// one).
	Error string `json:"error,omitempty"`
}

// Summary counts what a client did.
type Summary struct {
	Conns    int
	ByShape  map[Shape]int
	Errors   int
	Sent     int64
	Received int64
}

// Client makes connections according to its plan.
type Client struct {
	cfg ClientConfig
	log *log.Logger

	// mu guards out and sum.
	mu  sync.Mutex
	out *json.Encoder
	sum Summary
}

// NewClient validates cfg and returns a client.
func NewClient(cfg ClientConfig) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	l := cfg.Log
	if l == nil {
		l = log.New(io.Discard, "", 0)
	}
	out := cfg.Out
	if out == nil {
		out = io.Discard
	}
	return &Client{cfg: cfg, log: l, out: json.NewEncoder(out), sum: Summary{ByShape: map[Shape]int{}}}, nil
}

// Plan returns the first n jobs the client would run (for tests and dry
// runs); it does not touch the network.
func (c *Client) Plan(n int) []Job {
	p := newPlanner(&c.cfg)
	var jobs []Job
	for len(jobs) < n {
		j, ok := p.Next()
		if !ok {
			break
		}
		jobs = append(jobs, j)
	}
	return jobs
}

// Summary returns the counters so far.
func (c *Client) Summary() Summary {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.sum
	s.ByShape = map[Shape]int{}
	for k, v := range c.sum.ByShape {
		s.ByShape[k] = v
	}
	return s
}

// Run executes the plan with cfg.Parallel workers until the connection
// budget or the duration is used up, then waits for running jobs. When ctx
// is done, open connections are closed and Run returns ctx's error. Failed
// connections do not stop the run: they are counted and recorded. Run
// returns an error only for a failure to write a record.
func (c *Client) Run(ctx context.Context) error {
	jobs := make(chan Job)
	var deadline time.Time
	if c.cfg.For > 0 {
		deadline = time.Now().Add(c.cfg.For)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		// The only sender; closes jobs.
		defer close(jobs)
		p := newPlanner(&c.cfg)
		for {
			if !deadline.IsZero() && time.Now().After(deadline) {
				return
			}
			j, ok := p.Next()
			if !ok {
				return
			}
			select {
			case jobs <- j:
			case <-ctx.Done():
				return
			}
		}
	})
	errc := make(chan error, c.cfg.Parallel)
	for range c.cfg.Parallel {
		wg.Go(func() {
			for j := range jobs {
				if err := c.runJob(ctx, j); err != nil {
					errc <- err
					// Keep draining so the planner never blocks.
					for range jobs {
					}
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	var errs []error
	for err := range errc {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return ctx.Err()
}

// runJob runs every connection of j and records each.
func (c *Client) runJob(ctx context.Context, j Job) error {
	for i, req := range j.Conns {
		if ctx.Err() != nil {
			return nil
		}
		rec := c.runConn(ctx, j, req)
		rec.Seq = i
		if err := c.record(rec); err != nil {
			return err
		}
	}
	return nil
}

func (c *Client) record(r Record) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sum.Conns++
	c.sum.ByShape[r.Shape]++
	c.sum.Sent += r.Sent
	c.sum.Received += r.Received
	if r.Error != "" {
		c.sum.Errors++
		c.log.Printf("job %d %s/%s %s -> %s: %s", r.Job, r.Shape, r.Close, r.Local, r.Remote, r.Error)
	}
	if err := c.out.Encode(r); err != nil {
		return fmt.Errorf("write record: %w", err)
	}
	return nil
}

// dial connects to server, from localPort if it is not 0 (with
// SO_REUSEADDR, retrying while the previous connection on the same tuple is
// still finishing).
func (c *Client) dial(ctx context.Context, server netip.AddrPort, localPort uint16) (*net.TCPConn, error) {
	if err := c.cfg.checkDial(server); err != nil {
		return nil, err
	}
	d := net.Dialer{
		Timeout: 10 * time.Second,
		Control: func(network, address string, rc syscall.RawConn) error {
			// Re-check the address the kernel is asked to connect to.
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("dial %s: %w", address, err)
			}
			if err := c.cfg.checkDial(ap); err != nil {
				return err
			}
			if localPort == 0 {
				return nil
			}
			return setReuseAddr(rc)
		},
	}
	if localPort != 0 {
		d.LocalAddr = &net.TCPAddr{Port: int(localPort)}
	}
	retryUntil := time.Now().Add(3 * time.Second)
	for {
		conn, err := d.DialContext(ctx, "tcp", server.String())
		if err == nil {
			return conn.(*net.TCPConn), nil
		}
		// The previous connection of a Reuse series may still hold the
		// tuple for a moment (LAST_ACK until the server's final ACK).
		retry := localPort != 0 && (errors.Is(err, syscall.EADDRINUSE) || errors.Is(err, syscall.EADDRNOTAVAIL))
		if !retry || time.Now().After(retryUntil) {
			return nil, err
		}
		if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// runConn makes one connection and returns its record.
func (c *Client) runConn(ctx context.Context, j Job, req Request) Record {
	rec := Record{Job: j.Index, Shape: req.Shape, Close: req.Close, Remote: j.Server.String(), Start: time.Now()}
	tc, err := c.dial(ctx, j.Server, j.LocalPort)
	if err != nil {
		rec.End = time.Now()
		rec.Error = err.Error()
		return rec
	}
	rec.Local = tc.LocalAddr().String()
	rec.Remote = tc.RemoteAddr().String()
	rec.Cookie, _ = socketCookie(tc) // 0 where unsupported
	conn := &countingConn{TCPConn: tc}
	stop := closeConnOnDone(ctx, tc)
	err = tc.SetDeadline(time.Now().Add(req.Hold + req.Duration + 60*time.Second))
	if err == nil {
		err = c.exchange(ctx, conn, j, &req)
	}
	if cerr := tc.Close(); err == nil && cerr != nil && !errors.Is(cerr, net.ErrClosed) {
		err = cerr
	}
	stop()
	rec.End = time.Now()
	rec.Sent = conn.written.Load()
	rec.Received = conn.read.Load()
	if err != nil && ctx.Err() == nil {
		rec.Error = err.Error()
	}
	return rec
}

// exchange runs the client side of one connection. It returns only
// unexpected errors.
func (c *Client) exchange(ctx context.Context, conn *countingConn, j Job, req *Request) error {
	if _, err := writeRequest(conn, req); err != nil {
		return err
	}
	br := bufio.NewReader(conn)
	switch req.Shape {
	case Short, Reuse:
		if _, err := io.CopyN(io.Discard, br, req.Reply); err != nil {
			return fmt.Errorf("read reply: %w", err)
		}
		switch req.Close {
		case CloseServer:
			return drain(br) // the server's FIN, then our close
		case CloseClient:
			return nil // our close sends the first FIN
		case CloseClientRST:
			return resetClose(conn.TCPConn)
		case CloseServerRST:
			if _, err := conn.Write([]byte{'k'}); err != nil {
				return err
			}
			if err := drain(br); err != nil && !isReset(err) {
				return err
			}
			return nil
		}
	case Bulk:
		if req.Dir == Up {
			if _, err := writeN(conn, j.Upload); err != nil {
				return err
			}
			if err := conn.CloseWrite(); err != nil {
				return err
			}
		}
		return drain(br)
	case Abort:
		if _, err := io.CopyN(io.Discard, br, j.AbortAfter); err != nil {
			return fmt.Errorf("read before abort: %w", err)
		}
		return resetClose(conn.TCPConn)
	case Long:
		return c.long(ctx, conn, br, req)
	}
	return fmt.Errorf("unknown shape %q", req.Shape)
}

// long runs the client side of a Long connection.
func (c *Client) long(ctx context.Context, conn *countingConn, br *bufio.Reader, req *Request) error {
	readDone := make(chan error, 1)
	go func() { readDone <- drain(br) }()
	stop := make(chan struct{})
	writeDone := make(chan error, 1)
	go func() { writeDone <- tick(ctx, conn, req.Interval, req.Chunk, stop) }()

	var timer <-chan time.Time
	if req.Close == CloseClient || req.Close == CloseClientRST {
		t := time.NewTimer(req.Duration)
		defer t.Stop()
		timer = t.C
	}
	rstExpected := req.Close == CloseServerRST
	select {
	case <-ctx.Done():
		close(stop)
		conn.Close()
		<-writeDone
		<-readDone
		return nil
	case rerr := <-readDone:
		// The server closed or reset: stop writing.
		close(stop)
		werr := <-writeDone
		if rstExpected && isReset(rerr) {
			rerr = nil
		}
		if rstExpected && isReset(werr) {
			werr = nil
		}
		return errors.Join(rerr, werr)
	case <-timer:
		close(stop)
		werr := <-writeDone
		if req.Close == CloseClientRST {
			err := resetClose(conn.TCPConn)
			<-readDone
			return errors.Join(werr, err)
		}
		if err := conn.CloseWrite(); err != nil {
			werr = errors.Join(werr, err)
		}
		return errors.Join(werr, <-readDone)
	case werr := <-writeDone:
		close(stop)
		conn.Close()
		rerr := <-readDone
		if errors.Is(rerr, net.ErrClosed) {
			rerr = nil
		}
		if rstExpected && isReset(werr) {
			werr = nil
		}
		return errors.Join(werr, rerr)
	}
}
