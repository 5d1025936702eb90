package events

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	local  = netip.MustParseAddrPort("192.0.2.1:443")
	remote = netip.MustParseAddrPort("198.51.100.7:54321")
)

func sockPath(t *testing.T) string {
	return filepath.Join(t.TempDir(), "ev.sock")
}

func TestClientConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  ClientConfig
		ok   bool
	}{
		{"defaults", ClientConfig{Path: "/run/tcpinfo.sock"}, true},
		{"explicit", ClientConfig{Path: "x", MinBackoff: time.Second, MaxBackoff: time.Second, MaxLineBytes: 1}, true},
		{"min only below default max", ClientConfig{Path: "x", MinBackoff: time.Second}, true},
		{"no path", ClientConfig{}, false},
		{"negative min", ClientConfig{Path: "x", MinBackoff: -1}, false},
		{"negative max", ClientConfig{Path: "x", MaxBackoff: -1}, false},
		{"min above max", ClientConfig{Path: "x", MinBackoff: 2 * time.Second, MaxBackoff: time.Second}, false},
		{"min above default max", ClientConfig{Path: "x", MinBackoff: time.Minute}, false},
		{"negative line limit", ClientConfig{Path: "x", MaxLineBytes: -1}, false},
		{"huge line limit", ClientConfig{Path: "x", MaxLineBytes: 1 << 30}, false},
	}
	for _, tt := range tests {
		err := tt.cfg.Validate()
		if (err == nil) != tt.ok {
			t.Errorf("%s: Validate() = %v, want ok=%v", tt.name, err, tt.ok)
		}
		_, err = NewClient(tt.cfg, func(Event) {}, nil)
		if (err == nil) != tt.ok {
			t.Errorf("%s: NewClient() = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
	if _, err := NewClient(ClientConfig{Path: "x"}, nil, nil); err == nil {
		t.Error("NewClient accepted a nil handler")
	}
}

func TestNewClientRegistersMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := NewClient(ClientConfig{Path: "x"}, func(Event) {}, reg); err != nil {
		t.Fatal(err)
	}
	for _, r := range reasons {
		if v := metricValue(t, reg, "pcap_tcpinfohandler_bad_events_total", "reason", r); v != 0 {
			t.Errorf("bad_events_total{reason=%q} = %v", r, v)
		}
	}
	for _, k := range []string{"open", "close"} {
		if v := metricValue(t, reg, "pcap_tcpinfohandler_events_total", "kind", k); v != 0 {
			t.Errorf("events_total{kind=%q} = %v", k, v)
		}
	}
	metricValue(t, reg, "pcap_tcpinfohandler_connected")
	metricValue(t, reg, "pcap_tcpinfohandler_reconnects_total")
}

func TestClientDeliversEventsInOrder(t *testing.T) {
	path := sockPath(t)
	srv := listenFake(t, path, true)
	tc := startClient(t, ClientConfig{Path: path})
	conn := srv.accept(t)

	const n = 200
	var b strings.Builder
	for i := range n {
		uuid := fmt.Sprintf("host_1_%016X", i)
		if i%2 == 0 {
			b.WriteString(openLine(uuid, local, remote))
		} else {
			b.WriteString(closeLine(uuid))
		}
		if i%50 == 0 {
			b.WriteString("\n  \r\n") // blank lines are ignored, not counted
		}
	}
	all := b.String()
	// The first part in one write, the rest in tiny writes to split lines.
	if _, err := io.WriteString(conn, all[:len(all)/2]); err != nil {
		t.Fatal(err)
	}
	for rest := all[len(all)/2:]; rest != ""; {
		k := min(7, len(rest))
		if _, err := io.WriteString(conn, rest[:k]); err != nil {
			t.Fatal(err)
		}
		rest = rest[k:]
	}
	for i := range n {
		ev := tc.next(t)
		want := fmt.Sprintf("host_1_%016X", i)
		if ev.UUID != want {
			t.Fatalf("event %d: UUID %s, want %s", i, ev.UUID, want)
		}
		if wantKind := Kind(i % 2); ev.Kind != wantKind {
			t.Fatalf("event %d: kind %v, want %v", i, ev.Kind, wantKind)
		}
		if ev.Kind == Open && (ev.Local != local || ev.Remote != remote || !ev.HasID) {
			t.Fatalf("event %d: %+v", i, ev)
		}
	}
	if !tc.Connected() {
		t.Error("Connected() = false while connected")
	}
	if v := metricValue(t, tc.reg, "pcap_tcpinfohandler_connected"); v != 1 {
		t.Errorf("connected = %v, want 1", v)
	}
	for _, k := range []string{"open", "close"} {
		if v := metricValue(t, tc.reg, "pcap_tcpinfohandler_events_total", "kind", k); v != n/2 {
			t.Errorf("events_total{kind=%q} = %v, want %d", k, v, n/2)
		}
	}
	for _, r := range reasons {
		if v := metricValue(t, tc.reg, "pcap_tcpinfohandler_bad_events_total", "reason", r); v != 0 {
			t.Errorf("bad_events_total{reason=%q} = %v, want 0", r, v)
		}
	}
	tc.stop(t)
	if tc.Connected() || metricValue(t, tc.reg, "pcap_tcpinfohandler_connected") != 0 {
		t.Error("still connected after Run returned")
	}
}

func TestClientSkipsBadLines(t *testing.T) {
	path := sockPath(t)
	srv := listenFake(t, path, true)
	tc := startClient(t, ClientConfig{Path: path, MaxLineBytes: 512})
	conn := srv.accept(t)

	good := openLine("host_1_0000000000000001", local, remote)
	long := `{"Event":1,"Timestamp":"2019-11-19T17:42:03Z","UUID":"` + strings.Repeat("a", 600) + `"}` + "\n"
	lines := []string{
		"not json\n",
		closeLine("../../etc/passwd"),
		`{"Event":7,"Timestamp":"2019-11-19T17:42:03Z","UUID":"host_1_1"}` + "\n",
		`{"Event":0,"Timestamp":"2019-11-19T17:42:03Z","UUID":"host_1_1"}` + "\n",
		long,
		good,
		strings.Repeat("x", 512) + "\n", // exactly the limit: read, then malformed
		strings.Repeat("y", 513) + "\n", // one over
		strings.Repeat(`{"Event":1,"UUID":"`, 200_000) + "\n",       // 4 MB
		good[:len(good)-1] + strings.Repeat(" ", 600) + "\n" + good, // long, then resync
	}
	werr := make(chan error, 1)
	go func() {
		// Written concurrently: the 4 MB line exceeds the socket buffer.
		for _, l := range lines {
			if _, err := io.WriteString(conn, l); err != nil {
				werr <- err
				return
			}
		}
		werr <- nil
	}()
	for range 2 {
		if ev := tc.next(t); ev.UUID != "host_1_0000000000000001" {
			t.Fatalf("unexpected event %+v", ev)
		}
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	// The second good event was the last line, so every bad one before it
	// has been counted.
	for r, want := range map[string]float64{"malformed": 2, "bad_uuid": 1, "bad_kind": 1, "bad_id": 1, "too_long": 4} {
		if v := metricValue(t, tc.reg, "pcap_tcpinfohandler_bad_events_total", "reason", r); v != want {
			t.Errorf("bad_events_total{reason=%q} = %v, want %v", r, v, want)
		}
	}
	if v := metricValue(t, tc.reg, "pcap_tcpinfohandler_events_total", "kind", "open"); v != 2 {
		t.Errorf("events_total{kind=open} = %v, want 2", v)
	}
	if !tc.Connected() {
		t.Error("bad lines broke the connection")
	}
}

// TestClientReconnectsAfterServerRestart mimics a tcp-info restart: the
// server dies (leaving its socket file behind, so clients get "connection
// refused"), a partial line is cut off, and a new server listens again.
func TestClientReconnectsAfterServerRestart(t *testing.T) {
	path := sockPath(t)
	srv := listenFake(t, path, false)
	tc := startClient(t, ClientConfig{Path: path})
	conn := srv.accept(t)

	io.WriteString(conn, openLine("host_1_A", local, remote))
	if ev := tc.next(t); ev.UUID != "host_1_A" {
		t.Fatalf("got %+v", ev)
	}
	io.WriteString(conn, `{"Event":1,"Timestamp":"2019-11-19T17:4`) // cut off by the crash
	conn.Close()
	srv.close()
	tc.failedAttempts(t, 3) // refused: the stale socket file is still there

	srv2 := listenFake(t, path, true)
	conn2 := srv2.accept(t)
	io.WriteString(conn2, closeLine("host_1_A"))
	if ev := tc.next(t); ev.UUID != "host_1_A" || ev.Kind != Close {
		t.Fatalf("got %+v", ev)
	}
	if v := metricValue(t, tc.reg, "pcap_tcpinfohandler_reconnects_total"); v != 1 {
		t.Errorf("reconnects_total = %v, want 1", v)
	}
	if v := metricValue(t, tc.reg, "pcap_tcpinfohandler_bad_events_total", "reason", "malformed"); v != 1 {
		t.Errorf("the partial line was counted %v times as malformed, want 1", v)
	}
	if n := tc.logs.count(slog.LevelWarn); n != 1 {
		t.Errorf("%d warnings for one outage, want 1", n)
	}

	// And once more, this time with the socket file removed.
	conn2.Close()
	srv2.close()
	tc.failedAttempts(t, 3)
	srv3 := listenFake(t, path, true)
	conn3 := srv3.accept(t)
	io.WriteString(conn3, closeLine("host_1_B"))
	if ev := tc.next(t); ev.UUID != "host_1_B" {
		t.Fatalf("got %+v", ev)
	}
	if v := metricValue(t, tc.reg, "pcap_tcpinfohandler_reconnects_total"); v != 2 {
		t.Errorf("reconnects_total = %v, want 2", v)
	}
	if n := tc.logs.count(slog.LevelWarn); n != 2 {
		t.Errorf("%d warnings for two outages, want 2", n)
	}
}

func TestClientWaitsForSocket(t *testing.T) {
	path := sockPath(t)
	tc := startClient(t, ClientConfig{Path: path})
	tc.failedAttempts(t, 5)
	if tc.Connected() {
		t.Fatal("connected without a server")
	}

	srv := listenFake(t, path, true)
	conn := srv.accept(t)
	io.WriteString(conn, openLine("host_1_A", local, remote))
	if ev := tc.next(t); ev.UUID != "host_1_A" {
		t.Fatalf("got %+v", ev)
	}
	if !tc.Connected() {
		t.Error("Connected() = false")
	}
	if n := tc.logs.count(slog.LevelWarn); n != 1 {
		t.Errorf("%d warnings while waiting for the socket, want 1", n)
	}
	if v := metricValue(t, tc.reg, "pcap_tcpinfohandler_reconnects_total"); v != 0 {
		t.Errorf("reconnects_total = %v, want 0 (first connection)", v)
	}
}

func TestClientCancelInterruptsRead(t *testing.T) {
	path := sockPath(t)
	srv := listenFake(t, path, true)
	tc := startClient(t, ClientConfig{Path: path})
	conn := srv.accept(t)
	io.WriteString(conn, closeLine("host_1_A"))
	tc.next(t) // Run is now blocked reading an idle connection.

	start := time.Now()
	tc.stop(t)
	if d := time.Since(start); d > time.Second {
		t.Errorf("Run took %v to return after cancel", d)
	}
	// The client closed its end.
	conn.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("server read after client stop: %v, want EOF", err)
	}
}

func TestClientRunTwice(t *testing.T) {
	tc := startClient(t, ClientConfig{Path: sockPath(t)})
	tc.failedAttempts(t, 1)
	if err := tc.Run(context.Background()); err == nil {
		t.Error("second concurrent Run returned nil")
	}
}

func TestEqualJitter(t *testing.T) {
	for _, d := range []time.Duration{0, 1, 2, 3, time.Millisecond, 5 * time.Second} {
		for range 1000 {
			if j := equalJitter(d); j < d/2 || j > d {
				t.Fatalf("equalJitter(%v) = %v, outside [%v, %v]", d, j, d/2, d)
			}
		}
	}
}

// fakeDialer scripts the results of a Client's dial attempts in a synctest
// bubble and records when they happened.
type fakeDialer struct {
	mu     sync.Mutex
	times  []time.Time
	script func(n int) (net.Conn, error) // n counts from 1
}

func (d *fakeDialer) dial(context.Context) (net.Conn, error) {
	d.mu.Lock()
	d.times = append(d.times, time.Now())
	n := len(d.times)
	d.mu.Unlock()
	return d.script(n)
}

func (d *fakeDialer) attempts() []time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]time.Time(nil), d.times...)
}

var errRefused = errors.New("connection refused")

func TestClientBackoffSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		logs := newLogCounter(t)
		c, err := NewClient(ClientConfig{Path: "x", Logger: slog.New(logs)}, func(Event) {}, nil)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		const attempts = 20
		d := &fakeDialer{script: func(n int) (net.Conn, error) {
			if n == attempts {
				cancel()
			}
			return nil, errRefused
		}}
		c.dial = d.dial
		if err := c.Run(ctx); err != nil {
			t.Fatalf("Run() = %v", err)
		}
		times := d.attempts()
		if len(times) != attempts {
			t.Fatalf("%d attempts, want %d", len(times), attempts)
		}
		wait := DefaultMinBackoff
		for i := 1; i < len(times); i++ {
			if got := times[i].Sub(times[i-1]); got < wait/2 || got > wait {
				t.Errorf("wait before attempt %d: %v, want in [%v, %v]", i+1, got, wait/2, wait)
			}
			wait = min(2*wait, DefaultMaxBackoff)
		}
		if n := logs.count(slog.LevelWarn); n != 1 {
			t.Errorf("%d warnings for one outage of %d attempts, want 1", n, attempts)
		}
	})
}

// TestClientBackoffResetSynctest checks that the backoff returns to its
// minimum only after a connection that stayed up for MaxBackoff, not after
// one that failed at once.
func TestClientBackoffResetSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const (
			minB = 100 * time.Millisecond
			maxB = 5 * time.Second
		)
		logs := newLogCounter(t)
		events := make(chan Event, 10)
		reg := prometheus.NewRegistry()
		c, err := NewClient(ClientConfig{Path: "x", MinBackoff: minB, MaxBackoff: maxB, Logger: slog.New(logs)},
			func(ev Event) { events <- ev }, reg)
		if err != nil {
			t.Fatal(err)
		}
		c.jitter = func(d time.Duration) time.Duration { return d }
		ctx, cancel := context.WithCancel(context.Background())
		servers := make(chan net.Conn)
		d := &fakeDialer{script: func(n int) (net.Conn, error) {
			switch n {
			case 6, 8:
				cli, srv := net.Pipe()
				servers <- srv
				return cli, nil
			case 10:
				cancel()
			}
			return nil, errRefused
		}}
		c.dial = d.dial
		done := make(chan error)
		go func() { done <- c.Run(ctx) }()

		// Attempt 6 connects; the connection lives 10s, longer than maxB.
		srv := <-servers
		io.WriteString(srv, closeLine("host_1_A"))
		if ev := <-events; ev.UUID != "host_1_A" {
			t.Fatalf("got %+v", ev)
		}
		if !c.Connected() || metricValue(t, reg, "pcap_tcpinfohandler_connected") != 1 {
			t.Error("not connected")
		}
		time.Sleep(10 * time.Second)
		end6 := time.Now()
		srv.Close()
		synctest.Wait()
		if c.Connected() || metricValue(t, reg, "pcap_tcpinfohandler_connected") != 0 {
			t.Error("still connected after EOF")
		}

		// Attempt 8 connects and is closed at once.
		srv = <-servers
		end8 := time.Now()
		srv.Close()

		if err := <-done; err != nil {
			t.Fatalf("Run() = %v", err)
		}
		times := d.attempts()
		if len(times) != 10 {
			t.Fatalf("%d attempts, want 10", len(times))
		}
		waits := []time.Duration{
			times[1].Sub(times[0]), times[2].Sub(times[1]), times[3].Sub(times[2]), times[4].Sub(times[3]),
			times[5].Sub(times[4]), times[6].Sub(end6), times[7].Sub(times[6]), times[8].Sub(end8),
			times[9].Sub(times[8]),
		}
		want := []time.Duration{minB, 2 * minB, 4 * minB, 8 * minB, 16 * minB, minB, 2 * minB, 4 * minB, 8 * minB}
		for i := range want {
			if waits[i] != want[i] {
				t.Errorf("waits = %v, want %v", waits, want)
				break
			}
		}
		if n := logs.count(slog.LevelWarn); n != 3 {
			t.Errorf("%d warnings for 3 outages, want 3", n)
		}
		if n := logs.count(slog.LevelInfo); n != 2 {
			t.Errorf("%d info lines for 2 connections, want 2", n)
		}
		if v := metricValue(t, reg, "pcap_tcpinfohandler_reconnects_total"); v != 1 {
			t.Errorf("reconnects_total = %v, want 1", v)
		}
	})
}

// TestClientCancelDuringBackoffSynctest checks that cancel interrupts a
// backoff wait at once.
func TestClientCancelDuringBackoffSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, err := NewClient(ClientConfig{Path: "x", MinBackoff: time.Hour, MaxBackoff: time.Hour,
			Logger: slog.New(newLogCounter(t))}, func(Event) {}, nil)
		if err != nil {
			t.Fatal(err)
		}
		d := &fakeDialer{script: func(int) (net.Conn, error) { return nil, errRefused }}
		c.dial = d.dial
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- c.Run(ctx) }()
		synctest.Wait() // Run is waiting out its backoff.
		start := time.Now()
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Run() = %v", err)
		}
		if d := time.Since(start); d != 0 {
			t.Errorf("Run returned %v after cancel", d)
		}
		if n := len(d.attempts()); n != 1 {
			t.Errorf("%d attempts, want 1", n)
		}
	})
}

// TestClientCancelDuringReadSynctest checks that cancel interrupts a read
// that would otherwise block forever.
func TestClientCancelDuringReadSynctest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, err := NewClient(ClientConfig{Path: "x", Logger: slog.New(newLogCounter(t))}, func(Event) {}, nil)
		if err != nil {
			t.Fatal(err)
		}
		cli, srv := net.Pipe()
		defer srv.Close()
		c.dial = func(context.Context) (net.Conn, error) { return cli, nil }
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- c.Run(ctx) }()
		synctest.Wait()
		if !c.Connected() {
			t.Fatal("not connected")
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Run() = %v", err)
		}
		if c.Connected() {
			t.Error("Connected() after Run returned")
		}
	})
}
