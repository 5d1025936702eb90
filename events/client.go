package events

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Defaults for the zero fields of ClientConfig.
const (
	DefaultMinBackoff = 100 * time.Millisecond
	DefaultMaxBackoff = 5 * time.Second
)

// ClientConfig configures a Client. Every field but Path has a default,
// selected by its zero value.
type ClientConfig struct {
	// Path is the unix socket tcp-info serves its events on (tcp-info's
	// -tcpinfo.eventsocket flag). Required.
	Path string
	// MinBackoff and MaxBackoff bound the wait between connection attempts.
	// The wait starts at MinBackoff, doubles after every failed attempt or
	// lost connection up to MaxBackoff, and each wait is drawn at random from
	// [w/2, w] so that restarted clients do not reconnect in lockstep. It
	// returns to MinBackoff once a connection has stayed up for MaxBackoff.
	// Defaults: 100ms and 5s.
	MinBackoff, MaxBackoff time.Duration
	// MaxLineBytes is the longest line accepted, not counting its newline.
	// A longer line is counted as "too_long" and skipped; it is never held in
	// memory whole. Default 64 KiB, at most 16 MiB.
	MaxLineBytes int
	// Logger receives one warning when the socket becomes unavailable (not
	// one per attempt) and one info line per established connection.
	// Default slog.Default().
	Logger *slog.Logger
}

// Validate reports whether the configuration is usable.
func (cfg ClientConfig) Validate() error {
	if cfg.Path == "" {
		return errors.New("events: ClientConfig.Path is empty")
	}
	if cfg.MinBackoff < 0 || cfg.MaxBackoff < 0 {
		return fmt.Errorf("events: negative backoff (min %v, max %v)", cfg.MinBackoff, cfg.MaxBackoff)
	}
	if d := cfg.withDefaults(); d.MinBackoff > d.MaxBackoff {
		return fmt.Errorf("events: MinBackoff %v exceeds MaxBackoff %v", d.MinBackoff, d.MaxBackoff)
	}
	if cfg.MaxLineBytes < 0 || cfg.MaxLineBytes > maxMaxLineBytes {
		return fmt.Errorf("events: MaxLineBytes %d outside [0, %d]", cfg.MaxLineBytes, maxMaxLineBytes)
	}
	return nil
}

func (cfg ClientConfig) withDefaults() ClientConfig {
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.MaxLineBytes == 0 {
		cfg.MaxLineBytes = DefaultMaxLineBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return cfg
}

// Client is a long-running client of tcp-info's eventsocket. Run connects,
// delivers every valid event to the handler and reconnects whenever the
// socket is missing, refuses connections or closes (tcp-info restarted),
// until its context is done.
//
// tcp-info does not replay flows that were open before a client connected:
// events sent while the client is disconnected are lost, and a Close may
// arrive for a UUID that was never announced by an Open.
//
// Run and Connected are safe for concurrent use; Run runs at most once at a
// time.
type Client struct {
	cfg    ClientConfig // defaults applied
	handle func(Event)

	// dial and jitter are replaced by tests.
	dial   func(ctx context.Context) (net.Conn, error)
	jitter func(time.Duration) time.Duration

	running   atomic.Bool
	connected atomic.Bool

	badEvents  map[string]prometheus.Counter // by Reason
	opens      prometheus.Counter
	closes     prometheus.Counter
	connGauge  prometheus.Gauge
	reconnects prometheus.Counter
}

// NewClient returns a client for the socket cfg.Path that calls handle for
// every valid event, and registers its metrics on reg (which must not hold
// them already; nil registers nothing):
//
//	pcap_tcpinfohandler_events_total{kind}       valid events, by kind
//	pcap_tcpinfohandler_bad_events_total{reason} skipped lines, by Reason
//	pcap_tcpinfohandler_connected                1 while connected
//	pcap_tcpinfohandler_reconnects_total         connections after the first
//
// handle is called synchronously from the goroutine running Run, one event
// at a time and in arrival order, so it may own unsynchronised state. It
// must return quickly, typically by handing the event to its owner: while it
// runs nothing is read from the socket, and tcp-info writes to all its
// clients synchronously under one lock, so a stalled client eventually
// stalls tcp-info's event delivery to everyone.
func NewClient(cfg ClientConfig, handle func(Event), reg prometheus.Registerer) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if handle == nil {
		return nil, errors.New("events: nil handler")
	}
	cfg = cfg.withDefaults()
	c := &Client{
		cfg:    cfg,
		handle: handle,
		jitter: equalJitter,
	}
	c.dial = func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", cfg.Path)
	}

	f := promauto.With(reg)
	bad := f.NewCounterVec(prometheus.CounterOpts{
		Name: "pcap_tcpinfohandler_bad_events_total",
		Help: "Lines from tcp-info's eventsocket that were skipped because they were unusable, by reason.",
	}, []string{"reason"})
	c.badEvents = make(map[string]prometheus.Counter, len(reasons))
	for _, r := range reasons {
		c.badEvents[r] = bad.WithLabelValues(r)
	}
	events := f.NewCounterVec(prometheus.CounterOpts{
		Name: "pcap_tcpinfohandler_events_total",
		Help: "Valid flow events received from tcp-info's eventsocket, by kind.",
	}, []string{"kind"})
	c.opens = events.WithLabelValues(Open.String())
	c.closes = events.WithLabelValues(Close.String())
	c.connGauge = f.NewGauge(prometheus.GaugeOpts{
		Name: "pcap_tcpinfohandler_connected",
		Help: "1 while connected to tcp-info's eventsocket, 0 otherwise.",
	})
	c.reconnects = f.NewCounter(prometheus.CounterOpts{
		Name: "pcap_tcpinfohandler_reconnects_total",
		Help: "Connections to tcp-info's eventsocket established after the first one (after a restart of tcp-info, for example).",
	})
	return c, nil
}

// Connected reports whether the client currently holds a connection to the
// eventsocket.
func (c *Client) Connected() bool {
	return c.connected.Load()
}

// Run connects to the eventsocket and delivers events until ctx is done,
// then returns nil once the connection is closed. Failures to connect or
// read are not errors: Run logs the first one of each outage and retries
// with backoff. It returns an error only if called while already running.
func (c *Client) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("events: Client.Run is already running")
	}
	defer c.running.Store(false)

	logger := c.cfg.Logger.With("path", c.cfg.Path)
	backoff := c.cfg.MinBackoff
	connections := 0
	var outageStart time.Time // zero while not in an outage
	attempts := 0             // failed attempts in the current outage
	for {
		conn, err := c.dial(ctx)
		if err == nil {
			connections++
			if connections > 1 {
				c.reconnects.Inc()
			}
			if outageStart.IsZero() {
				logger.Info("connected to tcp-info eventsocket")
			} else {
				logger.Info("reconnected to tcp-info eventsocket",
					"down_for", time.Since(outageStart), "failed_attempts", attempts)
			}
			outageStart, attempts = time.Time{}, 0
			start := time.Now()
			err = c.serve(ctx, conn)
			if time.Since(start) >= c.cfg.MaxBackoff {
				backoff = c.cfg.MinBackoff
			}
		} else {
			attempts++
		}
		if ctx.Err() != nil {
			return nil
		}
		if outageStart.IsZero() {
			outageStart = time.Now()
			logger.Warn("tcp-info eventsocket unavailable; retrying with backoff until it is back", "err", err)
		}
		t := time.NewTimer(c.jitter(backoff))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, c.cfg.MaxBackoff)
	}
}

// serve reads events from conn until it fails or ctx is done, and closes it.
func (c *Client) serve(ctx context.Context, conn net.Conn) error {
	// Closing the connection is what interrupts a blocked read when ctx is
	// done; serve waits for that close so that it leaves no goroutine behind.
	closed := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		conn.Close()
		close(closed)
	})
	defer func() {
		if !stop() {
			<-closed
		}
		conn.Close() // Read-only connection: nothing to lose on Close.
	}()

	c.connected.Store(true)
	c.connGauge.Set(1)
	defer func() {
		c.connected.Store(false)
		c.connGauge.Set(0)
	}()

	lr := newLineReader(conn, c.cfg.MaxLineBytes)
	for {
		line, err := lr.next()
		if ctx.Err() != nil {
			// Lines still buffered when ctx is done are dropped.
			return ctx.Err()
		}
		switch {
		case err == nil:
			c.handleLine(line)
		case errors.Is(err, ErrTooLong):
			c.countBad(err)
		case errors.Is(err, io.EOF):
			return errors.New("tcp-info closed the connection")
		default:
			return fmt.Errorf("read: %w", err)
		}
	}
}

func (c *Client) handleLine(line []byte) {
	if blank(line) {
		return
	}
	ev, err := ParseLine(line)
	if err != nil {
		c.countBad(err)
		c.cfg.Logger.Debug("skipped eventsocket line", "path", c.cfg.Path, "err", err)
		return
	}
	if ev.Kind == Open {
		c.opens.Inc()
	} else {
		c.closes.Inc()
	}
	c.handle(ev)
}

func (c *Client) countBad(err error) {
	ctr, ok := c.badEvents[Reason(err)]
	if !ok { // Not reached: every ParseLine error has a reason.
		ctr = c.badEvents["malformed"]
	}
	ctr.Inc()
}

// equalJitter returns a random duration in [d/2, d].
func equalJitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d-d/2+1)
}
