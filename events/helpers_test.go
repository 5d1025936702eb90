package events

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// waitTimeout bounds every wait for something that should happen promptly.
const waitTimeout = 10 * time.Second

// openLine and closeLine format events as tcp-info does.
func openLine(uuid string, local, remote netip.AddrPort) string {
	return fmt.Sprintf(`{"Event":0,"Timestamp":"2019-11-19T17:42:02.123456789Z","UUID":%q,"ID":{"SPort":%d,"DPort":%d,"SrcIP":%q,"DstIP":%q,"Interface":0,"Cookie":7}}`+"\n",
		uuid, local.Port(), remote.Port(), local.Addr(), remote.Addr())
}

func closeLine(uuid string) string {
	return fmt.Sprintf(`{"Event":1,"Timestamp":"2019-11-19T17:42:03Z","UUID":%q,"ID":null}`+"\n", uuid)
}

// metricValue reads one counter or gauge from a registry (testutil would
// pull in a module the project does not require yet).
func metricValue(t *testing.T, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					found = found || lp.GetName() == labels[i] && lp.GetValue() == labels[i+1]
				}
				if !found {
					continue metrics
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("metric %s%v not found", name, labels)
	return 0
}

// logCounter is a slog.Handler that counts records by level and forwards
// them to the test log. Safe for concurrent use.
type logCounter struct {
	t     testing.TB
	attrs []slog.Attr
	c     *levelCounts // shared with handlers derived by WithAttrs
}

type levelCounts struct {
	mu sync.Mutex
	n  map[slog.Level]int
}

func newLogCounter(t testing.TB) *logCounter {
	return &logCounter{t: t, c: &levelCounts{n: make(map[slog.Level]int)}}
}

func (h *logCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h *logCounter) WithGroup(string) slog.Handler            { return h }
func (h *logCounter) WithAttrs(as []slog.Attr) slog.Handler {
	return &logCounter{t: h.t, attrs: append(append([]slog.Attr(nil), h.attrs...), as...), c: h.c}
}

func (h *logCounter) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	for _, a := range h.attrs {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
	}
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	h.t.Logf("log: %s %s%s", r.Level, r.Message, b.String())
	h.c.mu.Lock()
	defer h.c.mu.Unlock()
	h.c.n[r.Level]++
	return nil
}

func (h *logCounter) count(level slog.Level) int {
	h.c.mu.Lock()
	defer h.c.mu.Unlock()
	return h.c.n[level]
}

// fakeServer is a unix socket listener standing in for tcp-info.
type fakeServer struct {
	ln    *net.UnixListener
	conns chan net.Conn // accepted; closed when the accept loop ends
	once  sync.Once
}

// listenFake listens on path. Like tcp-info, it first removes a stale socket
// file. If unlink is false, closing leaves the socket file behind (as a
// killed tcp-info does), so that clients get "connection refused".
func listenFake(t *testing.T, path string, unlink bool) *fakeServer {
	t.Helper()
	os.Remove(path)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(unlink)
	s := &fakeServer{ln: ln, conns: make(chan net.Conn, 64)}
	go func() {
		defer close(s.conns)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case s.conns <- c:
			default:
				c.Close()
			}
		}
	}()
	t.Cleanup(s.close)
	return s
}

// accept returns the next connection a client made.
func (s *fakeServer) accept(t *testing.T) net.Conn {
	t.Helper()
	select {
	case c, ok := <-s.conns:
		if !ok {
			t.Fatal("fake server closed")
		}
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(waitTimeout):
		t.Fatal("no client connected")
		return nil
	}
}

// close stops listening and closes connections not yet accepted.
func (s *fakeServer) close() {
	s.once.Do(func() {
		s.ln.Close()
		for c := range s.conns {
			c.Close()
		}
	})
}

// testClient runs a Client for the duration of a test.
type testClient struct {
	*Client
	reg      *prometheus.Registry
	logs     *logCounter
	events   chan Event
	attempts chan error // every dial attempt's result, if anyone listens
	cancel   context.CancelFunc
	done     chan error
}

// startClient starts a Client on cfg (with short backoffs unless set) and
// stops it, checking that Run returned nil, when the test ends.
func startClient(t *testing.T, cfg ClientConfig) *testClient {
	t.Helper()
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 20 * time.Millisecond
	}
	tc := &testClient{
		reg:      prometheus.NewRegistry(),
		logs:     newLogCounter(t),
		events:   make(chan Event, 1000),
		attempts: make(chan error, 1),
		done:     make(chan error, 1),
	}
	cfg.Logger = slog.New(tc.logs)
	c, err := NewClient(cfg, func(ev Event) { tc.events <- ev }, tc.reg)
	if err != nil {
		t.Fatal(err)
	}
	dial := c.dial
	c.dial = func(ctx context.Context) (net.Conn, error) {
		conn, err := dial(ctx)
		select {
		case tc.attempts <- err:
		default:
		}
		return conn, err
	}
	tc.Client = c
	ctx, cancel := context.WithCancel(context.Background())
	tc.cancel = cancel
	go func() { tc.done <- c.Run(ctx) }()
	t.Cleanup(func() { tc.stop(t) })
	return tc
}

// stop cancels Run and waits for it; idempotent.
func (tc *testClient) stop(t *testing.T) {
	t.Helper()
	tc.cancel()
	select {
	case err, ok := <-tc.done:
		if ok {
			close(tc.done)
			if err != nil {
				t.Errorf("Run() = %v, want nil", err)
			}
		}
	case <-time.After(waitTimeout):
		t.Fatal("Run did not return after cancel")
	}
}

// next returns the next delivered event.
func (tc *testClient) next(t *testing.T) Event {
	t.Helper()
	select {
	case ev := <-tc.events:
		return ev
	case <-time.After(waitTimeout):
		t.Fatal("no event delivered")
		return Event{}
	}
}

// failedAttempts waits until n more dial attempts have failed.
func (tc *testClient) failedAttempts(t *testing.T, n int) {
	t.Helper()
	for n > 0 {
		select {
		case err := <-tc.attempts:
			if err != nil {
				n--
			}
		case <-time.After(waitTimeout):
			t.Fatalf("client stopped trying to connect (%d attempts to go)", n)
		}
	}
}
