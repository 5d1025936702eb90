package sockdiag

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

const testPrefix = "host.example.org_1700000000"

var (
	srvAP  = netip.MustParseAddrPort("192.0.2.1:80")
	cliAP  = netip.MustParseAddrPort("192.0.2.2:40000")
	srv6AP = netip.MustParseAddrPort("[2001:db8::1]:443")
	cli6AP = netip.MustParseAddrPort("[2001:db8::2]:50000")
)

// established is a server-side socket seen from its local side.
func established(local, remote netip.AddrPort, cookie uint64) diagMsg {
	return diagMsg{family: afInet, state: stateEstablished, local: local, remote: remote, cookie: cookie}
}

type harness struct {
	t      *testing.T
	k      *fakeKernel
	sink   *recSink
	src    *Source
	logs   *bytes.Buffer
	cancel context.CancelFunc
	done   chan error
}

// start runs a Source on a fake kernel; withDestroy gives it destroy
// notifications. Call inside a synctest bubble.
func start(t *testing.T, cfg Config, withDestroy bool) *harness {
	t.Helper()
	h := &harness{t: t, k: newFakeKernel(), sink: &recSink{}, logs: &bytes.Buffer{}, done: make(chan error, 1)}
	cfg.Logger = slog.New(slog.NewTextHandler(&lockedWriter{w: h.logs}, nil))
	var d destroyReader
	if withDestroy {
		d = h.k
	}
	h.src = newSource(cfg.withDefaults(), h.sink, prometheus.NewRegistry(), h.k, d)
	h.src.SetPrefix(testPrefix)
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.done <- h.src.Run(ctx) }()
	t.Cleanup(h.stop)
	return h
}

func (h *harness) stop() {
	h.cancel()
	if err := <-h.done; err != nil {
		h.t.Errorf("Run: %v", err)
	}
	h.done <- nil // idempotent
}

func (h *harness) metric(c prometheus.Collector) float64 { return testutil.ToFloat64(c) }

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestQueryFindsSocket(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, Config{}, true)
		h.k.put(established(srvAP, cliAP, 0xabc))
		first := time.Now().Add(-time.Millisecond)
		// The capture does not know which side is local.
		h.src.Lookup(cliAP, srvAP, first)
		synctest.Wait()
		want := []event{{open: true, ts: time.Now(), uuid: testPrefix + "_0000000000000ABC", local: srvAP, remote: cliAP}}
		if got := h.sink.events(); !equalEvents(got, want) {
			t.Fatalf("events %+v, want %+v", got, want)
		}
		if got := h.metric(h.src.m.uuidsQuery); got != 1 {
			t.Errorf("uuids{how=query} = %v, want 1", got)
		}
		if got := h.metric(h.src.m.lookups); got != 1 {
			t.Errorf("lookups = %v, want 1", got)
		}
		if q, r := h.k.counts(); q != 1 || r != 2 {
			t.Errorf("%d round trips with %d requests, want 1 with 2 (both orientations)", q, r)
		}
	})
}

func TestRetryUntilFound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, Config{}, true)
		start := time.Now()
		h.src.Lookup(srv6AP, cli6AP, start)
		time.Sleep(30 * time.Millisecond)
		synctest.Wait()
		// Queries at 0, 1, 3, 7, 15 and 31 ms: not yet at 30 ms.
		if q, _ := h.k.counts(); q != 5 {
			t.Errorf("%d round trips in 30ms, want 5 (delays 1, 2, 4, 8 ms)", q)
		}
		h.k.put(diagMsg{family: afInet6, state: stateEstablished, local: srv6AP, remote: cli6AP, cookie: 7})
		time.Sleep(2 * time.Millisecond)
		synctest.Wait()
		opens := h.sink.opens()
		if len(opens) != 1 || opens[0].uuid != FromCookie(testPrefix, 7) {
			t.Fatalf("opens %+v", opens)
		}
		if d := opens[0].ts.Sub(start); d != 31*time.Millisecond {
			t.Errorf("found after %v, want 31ms", d)
		}
		// The delay is capped at MaxRetry.
		h.src.Lookup(srvAP, cliAP, time.Now())
		time.Sleep(time.Second)
		synctest.Wait()
		q0, _ := h.k.counts()
		time.Sleep(time.Second)
		synctest.Wait()
		if q1, _ := h.k.counts(); q1-q0 != int(time.Second/MaxRetry) {
			t.Errorf("%d round trips in a second at the capped delay, want %d", q1-q0, time.Second/MaxRetry)
		}
	})
}

func TestNotYetAndNever(t *testing.T) {
	tests := []struct {
		name string
		msg  diagMsg
		// later replaces msg after 10ms; zero: never.
		later diagMsg
	}{
		{
			name:  "request socket, then the full socket",
			msg:   diagMsg{family: afInet, state: stateSynRecv, timer: 1, local: srvAP, remote: cliAP, cookie: 5},
			later: established(srvAP, cliAP, 5),
		},
		{
			name: "listener only",
			msg:  diagMsg{family: afInet, state: stateListen, local: srvAP, remote: netip.AddrPortFrom(netip.IPv4Unspecified(), 0), cookie: 9},
		},
		{
			name: "another tuple",
			msg:  established(srvAP, netip.MustParseAddrPort("192.0.2.3:40000"), 6),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := start(t, Config{MaxWait: time.Second}, true)
				h.k.put(tt.msg)
				h.src.Lookup(srvAP, cliAP, time.Now())
				time.Sleep(10 * time.Millisecond)
				synctest.Wait()
				if got := h.sink.opens(); len(got) != 0 {
					t.Fatalf("opened %+v", got)
				}
				if tt.later != (diagMsg{}) {
					h.k.put(tt.later)
					time.Sleep(20 * time.Millisecond)
					synctest.Wait()
					if got := h.sink.opens(); len(got) != 1 || got[0].uuid != FromCookie(testPrefix, tt.later.cookie) {
						t.Fatalf("opens %+v", got)
					}
					return
				}
				time.Sleep(time.Second)
				synctest.Wait()
				if got := h.metric(h.src.m.misses); got != 1 {
					t.Errorf("misses = %v, want 1 after MaxWait", got)
				}
				if got := h.metric(h.src.m.pending); got != 0 {
					t.Errorf("pending = %v, want 0", got)
				}
			})
		})
	}
}

func TestDestroyAnswersPending(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, Config{}, true)
		first := time.Now()
		h.src.Lookup(cliAP, srvAP, first)
		time.Sleep(5 * time.Millisecond)
		synctest.Wait()
		at := time.Now()
		h.k.destroy(diagMsg{family: afInet, state: 7, local: srvAP, remote: cliAP, cookie: 0x42}, at)
		synctest.Wait()
		uuid := FromCookie(testPrefix, 0x42)
		want := []event{
			{open: true, ts: at, uuid: uuid, local: srvAP, remote: cliAP},
			{open: false, ts: at, uuid: uuid},
		}
		if got := h.sink.events(); !equalEvents(got, want) {
			t.Fatalf("events %+v, want %+v", got, want)
		}
		if got := h.metric(h.src.m.uuidsDestroy); got != 1 {
			t.Errorf("uuids{how=destroy} = %v, want 1", got)
		}
		// The lookup stays (without queries) until its deadline, for the
		// destroy notifications of newer connections on its tuple, and is
		// not a miss.
		time.Sleep(h.src.cfg.MaxWait + doneSweep)
		synctest.Wait()
		if got := h.metric(h.src.m.pending); got != 0 {
			t.Errorf("pending = %v after the deadline", got)
		}
		if got := h.metric(h.src.m.misses); got != 0 {
			t.Errorf("misses = %v", got)
		}
	})
}

func TestDestroyBeforeLookup(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, Config{MaxWait: 100 * time.Millisecond}, true)
		first := time.Now()
		time.Sleep(time.Millisecond)
		at := time.Now()
		m := diagMsg{family: afInet, state: 7, local: srvAP, remote: cliAP, cookie: 0x43}
		h.k.destroy(m, at)
		synctest.Wait()
		uuid := FromCookie(testPrefix, 0x43)
		// The capture lags: the lookup comes a second later.
		time.Sleep(time.Second)
		h.src.Lookup(srvAP, cliAP, first)
		synctest.Wait()
		// A duplicate lookup changes nothing.
		h.src.Lookup(cliAP, srvAP, first)
		synctest.Wait()
		want := []event{
			{open: false, ts: at, uuid: uuid},
			{open: true, ts: at, uuid: uuid, local: srvAP, remote: cliAP},
			{open: false, ts: at, uuid: uuid},
		}
		if got := h.sink.events(); !equalEvents(got, want) {
			t.Fatalf("events %+v, want %+v", got, want)
		}
		// Beyond the cache's TTL the destroyed socket is forgotten.
		time.Sleep(goneTTL)
		h.src.Lookup(srvAP, cliAP, first)
		time.Sleep(time.Second)
		synctest.Wait()
		if got := len(h.sink.events()); got != 3 {
			t.Errorf("%d events after the TTL, want 3", got)
		}
		if got := h.metric(h.src.m.misses); got != 1 {
			t.Errorf("misses = %v, want 1", got)
		}
	})
}

func TestTupleReuse(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, Config{}, true)
		old := diagMsg{family: afInet, state: 7, local: srvAP, remote: cliAP, cookie: 1}
		h.k.destroy(old, time.Now())
		synctest.Wait()
		time.Sleep(10 * time.Millisecond)
		// A new connection on the same tuple, seen after the old socket
		// died: never the old cookie, even while the old one lingers in
		// TIME_WAIT.
		h.k.put(diagMsg{family: afInet, state: stateTimeWait, timer: timerTimeWait, local: srvAP, remote: cliAP, cookie: 1, expires: 59990})
		first := time.Now()
		h.src.Lookup(cliAP, srvAP, first)
		time.Sleep(5 * time.Millisecond)
		synctest.Wait()
		if got := h.sink.opens(); len(got) != 0 {
			t.Fatalf("reused tuple named with %+v", got)
		}
		h.k.put(established(srvAP, cliAP, 2))
		time.Sleep(20 * time.Millisecond)
		synctest.Wait()
		if got := h.sink.opens(); len(got) != 1 || got[0].uuid != FromCookie(testPrefix, 2) {
			t.Fatalf("opens %+v, want the new cookie", got)
		}
	})
}

func TestTimeWait(t *testing.T) {
	tw := func(expires uint32) diagMsg {
		return diagMsg{family: afInet, state: stateTimeWait, timer: timerTimeWait, local: srvAP, remote: cliAP, cookie: 3, expires: expires}
	}
	t.Run("the flow's own", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			// No destroy notifications: the TIME_WAIT socket is all there is.
			h := start(t, Config{}, false)
			// Entered TIME_WAIT 2s ago; the flow began 3s ago.
			h.k.put(tw(58000))
			first := time.Now().Add(-3 * time.Second)
			h.src.Lookup(srvAP, cliAP, first)
			synctest.Wait()
			uuid := FromCookie(testPrefix, 3)
			// Opened and closed when it entered TIME_WAIT.
			want := []event{
				{open: true, ts: time.Now().Add(-2 * time.Second), uuid: uuid, local: srvAP, remote: cliAP},
				{open: false, ts: time.Now().Add(-2 * time.Second), uuid: uuid},
			}
			if got := h.sink.events(); !equalEvents(got, want) {
				t.Fatalf("events %+v, want %+v", got, want)
			}
		})
	})
	t.Run("an earlier connection's", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := start(t, Config{MaxWait: 50 * time.Millisecond}, false)
			h.k.put(tw(58000)) // entered TIME_WAIT 2s ago
			h.src.Lookup(srvAP, cliAP, time.Now().Add(-time.Second))
			time.Sleep(time.Second)
			synctest.Wait()
			if got := h.sink.events(); len(got) != 0 {
				t.Fatalf("events %+v, want none", got)
			}
			if got := h.metric(h.src.m.misses); got != 1 {
				t.Errorf("misses = %v", got)
			}
		})
	})
}

func TestOpenOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, Config{}, true)
		m := established(srvAP, cliAP, 8)
		h.k.put(m)
		first := time.Now()
		for range 3 {
			h.src.Lookup(srvAP, cliAP, first)
			synctest.Wait()
		}
		h.src.Lookup(cliAP, srvAP, first.Add(time.Millisecond))
		synctest.Wait()
		// The prefix changes: the socket keeps its UUID, also in Close.
		h.src.SetPrefix("other")
		h.src.Lookup(srvAP, cliAP, first)
		synctest.Wait()
		at := time.Now()
		h.k.destroy(m, at)
		synctest.Wait()
		uuid := FromCookie(testPrefix, 8)
		want := []event{
			{open: true, ts: at, uuid: uuid, local: srvAP, remote: cliAP},
			{open: false, ts: at, uuid: uuid},
		}
		if got := h.sink.events(); !equalEvents(got, want) {
			t.Fatalf("events %+v, want %+v", got, want)
		}
		// A new socket is named with the new prefix.
		h.k.put(established(srv6AP, cli6AP, 9))
		h.src.Lookup(srv6AP, cli6AP, time.Now())
		synctest.Wait()
		if got := h.sink.opens(); len(got) != 2 || got[1].uuid != "other_0000000000000009" {
			t.Fatalf("opens %+v", got)
		}
		if h.src.Prefix() != "other" {
			t.Errorf("Prefix() = %q", h.src.Prefix())
		}
	})
}

func TestDestroyOfUnnamedAndListeners(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, Config{}, true)
		at := time.Now()
		h.k.destroys <- destroyBatch{at: at, msgs: []diagMsg{
			{family: afInet, state: stateListen, local: srvAP, remote: netip.AddrPortFrom(netip.IPv4Unspecified(), 0), cookie: 1},
			{family: afInet, state: 7, local: srvAP, remote: cliAP, cookie: 2},
			{family: afInet, state: 7, local: srvAP, remote: cliAP, cookie: 2}, // duplicate
		}}
		synctest.Wait()
		want := []event{{open: false, ts: at, uuid: FromCookie(testPrefix, 2)}}
		if got := h.sink.events(); !equalEvents(got, want) {
			t.Fatalf("events %+v, want %+v", got, want)
		}
	})
}

func TestDroppedAndInvalid(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		k := newFakeKernel()
		src := newSource(Config{Queue: 1}.withDefaults(), &recSink{}, prometheus.NewRegistry(), k, nil)
		src.SetPrefix(testPrefix)
		src.Lookup(srvAP, cliAP, time.Now())
		src.Lookup(srvAP, cliAP, time.Now())
		if got := testutil.ToFloat64(src.m.dropped); got != 1 {
			t.Errorf("dropped = %v, want 1", got)
		}
		if got := testutil.ToFloat64(src.m.lookups); got != 2 {
			t.Errorf("lookups = %v, want 2", got)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- src.Run(ctx) }()
		for _, bad := range [][2]netip.AddrPort{
			{srvAP, cli6AP},                              // mixed families
			{srvAP, netip.AddrPort{}},                    // invalid
			{netip.AddrPortFrom(srvAP.Addr(), 0), cliAP}, // port 0
		} {
			synctest.Wait() // the queue holds one request
			src.Lookup(bad[0], bad[1], time.Now())
		}
		synctest.Wait()
		if got := testutil.ToFloat64(src.m.errors.WithLabelValues("invalid_lookup")); got != 3 {
			t.Errorf("invalid lookups = %v, want 3", got)
		}
		if err := src.Run(ctx); err == nil {
			t.Error("second Run returned nil")
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func TestQueryErrorsAreRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, Config{}, false)
		h.k.failNext = 3
		h.k.put(established(srvAP, cliAP, 4))
		h.src.Lookup(srvAP, cliAP, time.Now())
		time.Sleep(20 * time.Millisecond)
		synctest.Wait()
		if got := h.sink.opens(); len(got) != 1 {
			t.Fatalf("opens %+v", got)
		}
		if got := h.metric(h.src.m.errors.WithLabelValues("query")); got != 3 {
			t.Errorf("query errors = %v, want 3", got)
		}
		logs := h.logs.String()
		if n := strings.Count(logs, "netlink query failed"); n != 1 {
			t.Errorf("logged the outage %d times, want once:\n%s", n, logs)
		}
		if !strings.Contains(logs, "work again") {
			t.Errorf("recovery not logged:\n%s", logs)
		}
	})
}

func TestNewWithoutDestroyNotifications(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		k := newFakeKernel()
		defer func(f func() (querier, destroyReader, error, error)) { openTransport = f }(openTransport)
		openTransport = func() (querier, destroyReader, error, error) {
			return k, nil, errors.New("no such group"), nil
		}
		var logs bytes.Buffer
		sink := &recSink{}
		src, err := New(Config{Prefix: testPrefix, Logger: slog.New(slog.NewTextHandler(&lockedWriter{w: &logs}, nil))}, sink, prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		if got := testutil.ToFloat64(src.m.errors.WithLabelValues("subscribe")); got != 1 {
			t.Errorf("subscribe errors = %v, want 1", got)
		}
		if !strings.Contains(logs.String(), "no destroy notifications") {
			t.Errorf("not logged: %q", logs.String())
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- src.Run(ctx) }()
		k.put(established(srvAP, cliAP, 1))
		src.Lookup(srvAP, cliAP, time.Now())
		synctest.Wait()
		if got := sink.opens(); len(got) != 1 {
			t.Errorf("opens %+v", got)
		}
		cancel()
		<-done
	})
}

func TestConfig(t *testing.T) {
	for _, cfg := range []Config{
		{MaxWait: -1},
		{Retry: -1},
		{Retry: time.Second},
		{Queue: -1},
		{Queue: MaxQueue + 1},
	} {
		if err := cfg.Validate(); err == nil {
			t.Errorf("%+v: Validate() = nil", cfg)
		}
		if _, err := New(cfg, &recSink{}, prometheus.NewRegistry()); err == nil {
			t.Errorf("%+v: New succeeded", cfg)
		}
	}
	if err := (Config{}).Validate(); err != nil {
		t.Errorf("zero Config: %v", err)
	}
	d := Config{}.withDefaults()
	if d.MaxWait != DefaultMaxWait || d.Retry != DefaultRetry || d.Queue != DefaultQueue || d.Logger == nil {
		t.Errorf("defaults: %+v", d)
	}
	if _, err := New(Config{}, nil, prometheus.NewRegistry()); err == nil {
		t.Error("New with a nil Sink succeeded")
	}
	if _, err := New(Config{PrefixFile: "/nonexistent/prefix"}, &recSink{}, prometheus.NewRegistry()); err == nil {
		t.Error("New with a missing prefix file succeeded")
	}
}

func equalEvents(got, want []event) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.open != w.open || !g.ts.Equal(w.ts) || g.uuid != w.uuid || g.local != w.local || g.remote != w.remote {
			return false
		}
	}
	return true
}

func TestLearnsLocalSide(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, Config{MaxWait: 100 * time.Millisecond}, true)
		h.k.put(established(srvAP, cliAP, 1))
		h.src.Lookup(cliAP, srvAP, time.Now())
		synctest.Wait()
		if _, r := h.k.counts(); r != 2 {
			t.Fatalf("%d requests for an unknown local side, want 2", r)
		}
		// 192.0.2.1 is now known local: one request per attempt, both
		// orientations every bothEvery-th attempt.
		other := netip.MustParseAddrPort("192.0.2.3:40001")
		h.src.Lookup(other, srvAP, time.Now())
		time.Sleep(20 * time.Millisecond) // attempts at 0, 1, 3, 7, 15 ms
		synctest.Wait()
		if q, r := h.k.counts(); q != 6 || r != 2+4*1+1*2 {
			t.Errorf("%d round trips, %d requests; want 6, 8", q, r)
		}
	})
}

func TestLookupDoesNotAllocate(t *testing.T) {
	src := newSource(Config{Queue: 1}.withDefaults(), &recSink{}, prometheus.NewRegistry(), newFakeKernel(), nil)
	first := time.Now()
	if n := testing.AllocsPerRun(1000, func() { src.Lookup(srvAP, cliAP, first) }); n != 0 {
		t.Errorf("Lookup allocates %v times", n)
	}
}

func BenchmarkLookup(b *testing.B) {
	src := newSource(Config{}.withDefaults(), &recSink{}, prometheus.NewRegistry(), newFakeKernel(), nil)
	first := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		src.Lookup(srvAP, cliAP, first)
		select {
		case <-src.reqs:
		default:
		}
	}
}

// A connection that reuses a tuple while the previous socket still exists
// (the client reset, the server has not closed yet) must not take that
// socket's name when it is destroyed.
func TestDestroyOfNamedSocketLeavesNewLookup(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, Config{}, true)
		h.k.put(established(srvAP, cliAP, 1))
		h.src.Lookup(cliAP, srvAP, time.Now())
		synctest.Wait()
		h.k.del(srvAP, cliAP)
		time.Sleep(time.Millisecond)
		h.src.Lookup(cliAP, srvAP, time.Now()) // the new connection's SYN
		synctest.Wait()
		time.Sleep(time.Millisecond)
		h.k.destroy(established(srvAP, cliAP, 1), time.Now())
		synctest.Wait()
		h.k.put(established(srvAP, cliAP, 2))
		time.Sleep(100 * time.Millisecond)
		synctest.Wait()
		var names []string
		for _, o := range h.sink.opens() {
			names = append(names, o.uuid)
		}
		want := []string{FromCookie(testPrefix, 1), FromCookie(testPrefix, 2)}
		if !slices.Equal(names, want) {
			t.Errorf("opens %v, want %v", names, want)
		}
	})
}

// The same, when the capture lags and the new connection's lookup comes
// after the old socket's destroy.
func TestLateLookupAfterNamedSocketDestroyed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, Config{}, true)
		h.k.put(established(srvAP, cliAP, 1))
		h.src.Lookup(cliAP, srvAP, time.Now())
		synctest.Wait()
		h.k.del(srvAP, cliAP)
		time.Sleep(time.Millisecond)
		first := time.Now() // the new connection's SYN
		time.Sleep(time.Millisecond)
		h.k.destroy(established(srvAP, cliAP, 1), time.Now())
		h.k.put(established(srvAP, cliAP, 2))
		synctest.Wait()
		h.src.Lookup(cliAP, srvAP, first)
		time.Sleep(100 * time.Millisecond)
		synctest.Wait()
		var names []string
		for _, o := range h.sink.opens() {
			names = append(names, o.uuid)
		}
		want := []string{FromCookie(testPrefix, 1), FromCookie(testPrefix, 2)}
		if !slices.Equal(names, want) {
			t.Errorf("opens %v, want %v", names, want)
		}
	})
}

// opensByUUID returns the Open events by UUID.
func opensByUUID(evs []event) map[string]event {
	m := map[string]event{}
	for _, e := range evs {
		if e.open {
			m[e.uuid] = e
		}
	}
	return m
}

// On a reused tuple the older socket, named from a notification that came
// late, is stamped before the newer socket a query found: the flow table
// gives names by those times.
func TestDestroyStampKeepsTupleOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, Config{}, true)
		first1 := time.Now()
		time.Sleep(3 * time.Millisecond)
		first2 := time.Now()
		// The first connection's lookup comes late: the tuple already
		// holds the second connection's socket.
		h.k.put(established(srvAP, cliAP, 2))
		time.Sleep(5 * time.Millisecond)
		h.src.Lookup(cliAP, srvAP, first1)
		synctest.Wait()
		h.src.Lookup(cliAP, srvAP, first2)
		synctest.Wait()
		// Then the first socket's notification, late.
		time.Sleep(time.Millisecond)
		h.k.destroy(diagMsg{family: afInet, state: stateClose, local: srvAP, remote: cliAP, cookie: 1}, time.Now())
		synctest.Wait()
		opens := opensByUUID(h.sink.events())
		o1, o2 := opens[FromCookie(testPrefix, 1)], opens[FromCookie(testPrefix, 2)]
		if o1.uuid == "" || o2.uuid == "" {
			t.Fatalf("opens %+v, want both sockets", opens)
		}
		if !o1.ts.Before(o2.ts) {
			t.Errorf("older socket stamped %v, newer %v: want the older first", o1.ts, o2.ts)
		}
		if o1.ts.Before(first1) {
			t.Errorf("older socket stamped before its flow began")
		}
	})
}

// On a tuple with history, a lookup keeps asking until a query sent a
// staleWindow after its flow began found a socket; a first connection on
// a tuple is settled by the first socket found.
func TestReusedTupleLookupWaitsOutStaleWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, Config{}, true)
		h.k.put(established(srvAP, cliAP, 1))
		h.src.Lookup(cliAP, srvAP, time.Now())
		time.Sleep(10 * time.Millisecond)
		synctest.Wait()
		if q, _ := h.k.counts(); q != 1 {
			t.Fatalf("%d round trips for a tuple without history, want 1", q)
		}
		// The old socket lingers as the new connection begins: found at
		// once, ambiguous; the new socket replaces it a millisecond later.
		h.src.Lookup(cliAP, srvAP, time.Now())
		synctest.Wait()
		time.Sleep(time.Millisecond)
		h.k.del(srvAP, cliAP)
		h.k.destroy(established(srvAP, cliAP, 1), time.Now())
		h.k.put(established(srvAP, cliAP, 2))
		time.Sleep(10 * time.Millisecond)
		synctest.Wait()
		if _, ok := opensByUUID(h.sink.events())[FromCookie(testPrefix, 2)]; !ok {
			t.Errorf("the new connection's socket was not named: %+v", h.sink.events())
		}
	})
}

// A socket reset by its application is destroyed without its peer's port.
// A query that saw its cookie, or else the one RST the capture saw from it,
// ties it to its flow; two candidate RSTs name nothing.
func TestOrphanDestroys(t *testing.T) {
	peer := netip.AddrPortFrom(cliAP.Addr(), 0)
	orphan := func(cookie uint64) diagMsg {
		return diagMsg{family: afInet, state: stateClose, local: srvAP, remote: peer, cookie: cookie}
	}
	t.Run("cookie seen by a query", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := start(t, Config{}, true)
			h.k.put(established(srvAP, cliAP, 7))
			h.src.Lookup(cliAP, srvAP, time.Now())
			synctest.Wait()
			h.k.del(srvAP, cliAP)
			at := time.Now()
			h.k.destroy(orphan(7), at)
			synctest.Wait()
			evs := h.sink.events()
			if len(evs) != 2 || evs[1].open || !evs[1].ts.Equal(at) || evs[1].uuid != FromCookie(testPrefix, 7) {
				t.Errorf("events %+v, want the Open, then its Close at the notification", evs)
			}
		})
	})
	t.Run("one RST", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := start(t, Config{}, true)
			first := time.Now()
			h.src.Lookup(cliAP, srvAP, first) // never found by a query
			time.Sleep(3 * time.Millisecond)
			other := netip.AddrPortFrom(cliAP.Addr(), 40001)
			h.src.Lookup(other, srvAP, time.Now()) // another flow, not reset
			h.src.Reset(srvAP, cliAP, time.Now())
			h.src.Reset(cliAP, srvAP, time.Now()) // the peer's RST: not the socket's
			time.Sleep(time.Millisecond)
			at := time.Now()
			h.k.destroy(orphan(8), at)
			time.Sleep(orphanDelay + time.Millisecond)
			synctest.Wait()
			opens := opensByUUID(h.sink.events())
			o, ok := opens[FromCookie(testPrefix, 8)]
			if !ok || o.local != srvAP || o.remote != cliAP || len(opens) != 1 {
				t.Fatalf("opens %+v, want cookie 8 for %v-%v", opens, srvAP, cliAP)
			}
			if got := h.metric(h.src.m.orphans.WithLabelValues("named")); got != 1 {
				t.Errorf("orphans{named} = %v", got)
			}
			if got := h.metric(h.src.m.uuidsReset); got != 1 {
				t.Errorf("uuids{how=reset} = %v", got)
			}
		})
	})
	// unnamed waits for the orphan to be matched and checks that it was
	// not, for the reason given.
	unnamedIn := func(t *testing.T, h *harness) func(outcome string) {
		return func(outcome string) {
			t.Helper()
			time.Sleep(orphanDelay + time.Millisecond)
			synctest.Wait()
			if opens := opensByUUID(h.sink.events()); len(opens) != 0 {
				t.Errorf("opens %+v, want none (%s)", opens, outcome)
			}
			if got := h.metric(h.src.m.orphans.WithLabelValues(outcome)); got != 1 {
				t.Errorf("orphans{%s} = %v, want 1", outcome, got)
			}
		}
	}
	t.Run("two RSTs", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := start(t, Config{}, true)
			unnamed := unnamedIn(t, h)
			other := netip.AddrPortFrom(cliAP.Addr(), 40001)
			h.src.Lookup(cliAP, srvAP, time.Now())
			h.src.Lookup(other, srvAP, time.Now())
			time.Sleep(3 * time.Millisecond)
			h.src.Reset(srvAP, cliAP, time.Now())
			h.src.Reset(srvAP, other, time.Now())
			time.Sleep(time.Millisecond)
			h.k.destroy(orphan(9), time.Now())
			unnamed("ambiguous")
		})
	})
	t.Run("RST too old", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := start(t, Config{MaxWait: time.Second}, true)
			unnamed := unnamedIn(t, h)
			h.src.Lookup(cliAP, srvAP, time.Now())
			time.Sleep(time.Millisecond)
			h.src.Reset(srvAP, cliAP, time.Now())
			time.Sleep(ResetWindow + 10*time.Millisecond)
			h.k.destroy(orphan(10), time.Now())
			unnamed("unmatched")
		})
	})
}

// A TIME_WAIT socket's entry time is coarse; its Open is never stamped
// before the flow began.
func TestTimeWaitStampNotBeforeFlow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, Config{}, false)
		// Entered TIME_WAIT 5ms ago by its expiry, the flow began 4ms ago
		// (within timeWaitSlack: the flow's own).
		h.k.put(diagMsg{family: afInet, state: stateTimeWait, timer: timerTimeWait, local: srvAP, remote: cliAP, cookie: 3, expires: 59995})
		first := time.Now().Add(-4 * time.Millisecond)
		h.src.Lookup(srvAP, cliAP, first)
		synctest.Wait()
		opens := h.sink.opens()
		if len(opens) != 1 || !opens[0].ts.Equal(first) {
			t.Errorf("opens %+v, want one stamped at the flow's first packet", opens)
		}
	})
}

// One RST that two orphans could have sent names neither.
func TestOrphanRSTOfTwoOrphans(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, Config{}, true)
		peer := netip.AddrPortFrom(cliAP.Addr(), 0)
		h.src.Lookup(cliAP, srvAP, time.Now())
		time.Sleep(3 * time.Millisecond)
		h.src.Reset(srvAP, cliAP, time.Now())
		time.Sleep(time.Millisecond)
		h.k.destroy(diagMsg{family: afInet, state: stateClose, local: srvAP, remote: peer, cookie: 11}, time.Now())
		time.Sleep(time.Millisecond)
		h.k.destroy(diagMsg{family: afInet, state: stateClose, local: srvAP, remote: peer, cookie: 12}, time.Now())
		// Matched one after the other: the second finds the RST alone.
		time.Sleep(orphanDelay)
		synctest.Wait()
		time.Sleep(2 * time.Millisecond)
		synctest.Wait()
		if opens := opensByUUID(h.sink.events()); len(opens) != 0 {
			t.Errorf("opens %+v, want none", opens)
		}
		// The first sees the second waiting; the second no longer finds
		// the RST, withheld.
		for outcome, want := range map[string]float64{"ambiguous": 1, "unmatched": 1, "named": 0} {
			if got := h.metric(h.src.m.orphans.WithLabelValues(outcome)); got != want {
				t.Errorf("orphans{%s} = %v, want %v", outcome, got, want)
			}
		}
	})
}
