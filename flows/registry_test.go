package flows

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestRegistrySourcesAgree(t *testing.T) {
	m := newMetrics(prometheus.NewRegistry())
	r := newRegistry(time.Minute, 100, m)
	key, _ := KeyFromAddrPorts(srv4, cli4)
	nl, es := r.Sink(SourceNetlink), r.Sink(SourceEventSocket)
	nl.Open(t0, "host_1_0000000000000ABC", srv4, cli4)
	es.Open(t0.Add(10*time.Millisecond), "host_1_0000000000000ABC", srv4, cli4) // the same name: nothing new
	if got := r.candidates(key, t0, nil); len(got) != 1 || got[0].source != SourceNetlink {
		t.Fatalf("candidates = %v", got)
	}
	es.Open(t0.Add(20*time.Millisecond), "otherhost_2_0000000000000ABC", srv4, cli4) // same cookie, other prefix
	if got := r.candidates(key, t0, nil); len(got) != 1 {
		t.Errorf("a second name for one socket was kept: %d claims", len(got))
	}
	if v := testutil.ToFloat64(m.disagreements); v != 1 {
		t.Errorf("disagreements = %v", v)
	}
	es.Open(t0.Add(30*time.Millisecond), "host_1_0000000000000ABD", srv4, cli4) // a new socket on the tuple
	if got := r.candidates(key, t0, nil); len(got) != 2 {
		t.Errorf("a new socket on the tuple: %d claims", len(got))
	}
}

// When the second source to name a socket saw it earlier (tcp-info stamps
// its Opens when a poll ends, possibly after the next connection on the
// tuple began), the claim moves to the earlier time, before the claim of
// the next socket, and keeps its Close and its first source.
func TestRegistryEarlierStampWins(t *testing.T) {
	m := newMetrics(prometheus.NewRegistry())
	r := newRegistry(time.Minute, 100, m)
	key, _ := KeyFromAddrPorts(srv4, cli4)
	nl, es := r.Sink(SourceNetlink), r.Sink(SourceEventSocket)
	es.Open(t0.Add(30*time.Millisecond), "host_1_0000000000000001", srv4, cli4) // late stamp
	nl.Open(t0.Add(20*time.Millisecond), "host_1_0000000000000002", srv4, cli4) // the next socket
	es.Close(t0.Add(40*time.Millisecond), "host_1_0000000000000001")
	stale := r.candidates(key, t0, nil)
	nl.Open(t0.Add(10*time.Millisecond), "host_1_0000000000000001", srv4, cli4) // seen alive earlier
	got := r.candidates(key, t0, nil)
	if len(got) != 2 || got[0].uuid != "host_1_0000000000000001" || !got[0].opened.Equal(t0.Add(10*time.Millisecond)) || got[1].uuid != "host_1_0000000000000002" {
		t.Fatalf("claims %+v, want ...01 at +10ms, then ...02", got)
	}
	if got[0].source != SourceEventSocket || got[0].closedAt.Load() != t0.Add(40*time.Millisecond).UnixNano() {
		t.Errorf("moved claim: source %q closedAt %d; want eventsocket and the Close", got[0].source, got[0].closedAt.Load())
	}
	// The replaced claim is never handed out, even to a worker that
	// looked it up before.
	if stale[1].uuid != "host_1_0000000000000001" || r.take(stale[1]) {
		t.Error("took a replaced claim")
	}
	// A later stamp does not move a claim, nor does anything move one
	// handed out already.
	es.Open(t0.Add(25*time.Millisecond), "host_1_0000000000000002", srv4, cli4)
	if !r.take(got[0]) {
		t.Fatal("take failed")
	}
	nl.Open(t0, "host_1_0000000000000001", srv4, cli4)
	got = r.candidates(key, t0, nil)
	if len(got) != 1 || got[0].uuid != "host_1_0000000000000002" || !got[0].opened.Equal(t0.Add(20*time.Millisecond)) {
		t.Errorf("claims %+v, want ...02 at +20ms only", got)
	}
	if r.Len() != 2 {
		t.Errorf("registry holds %d UUIDs, want 2", r.Len())
	}
}

func TestRegistryExpire(t *testing.T) {
	m := newMetrics(prometheus.NewRegistry())
	r := newRegistry(time.Second, 100, m)
	r.Open(t0, "a_1_0000000000000001", srv4, cli4)
	r.Open(t0, "a_1_0000000000000002", srv6, cli6)
	r.Close(t0.Add(time.Second), "a_1_0000000000000001")
	r.Expire(t0.Add(1500 * time.Millisecond))
	if r.Len() != 2 {
		t.Fatalf("expired too early: %d", r.Len())
	}
	r.Expire(t0.Add(3 * time.Second))
	if r.Len() != 1 {
		t.Errorf("closed claim not expired: %d", r.Len())
	}
}

// A source's stamps keep its sockets' order even when another source moved
// one of them earlier: tcp-info stamps the newer socket before netlink
// names the older one from its destroy notification.
func TestRegistryKeepsSourceOrder(t *testing.T) {
	m := newMetrics(prometheus.NewRegistry())
	r := newRegistry(time.Minute, 100, m)
	key, _ := KeyFromAddrPorts(srv4, cli4)
	nl, es := r.Sink(SourceNetlink), r.Sink(SourceEventSocket)
	es.Open(t0.Add(10*time.Millisecond), "host_1_0000000000000002", srv4, cli4) // the newer socket, early stamp
	nl.Open(t0.Add(30*time.Millisecond), "host_1_0000000000000002", srv4, cli4) // netlink saw it later
	nl.Open(t0.Add(29*time.Millisecond), "host_1_0000000000000001", srv4, cli4) // older, says netlink
	got := r.candidates(key, t0, nil)
	if len(got) != 2 || got[0].uuid != "host_1_0000000000000001" || !got[0].opened.Before(got[1].opened) {
		t.Fatalf("claims %+v, want ...01 before ...02", got)
	}
	if !got[0].opened.Equal(t0.Add(10*time.Millisecond - time.Nanosecond)) {
		t.Errorf("older claim at %v, want just before the newer one's", got[0].opened.Sub(t0))
	}
}

// A claim moved earlier by a second source stays after the claims its
// first source stamped before it.
func TestRegistryMoveKeepsOrder(t *testing.T) {
	m := newMetrics(prometheus.NewRegistry())
	r := newRegistry(time.Minute, 100, m)
	key, _ := KeyFromAddrPorts(srv4, cli4)
	nl, es := r.Sink(SourceNetlink), r.Sink(SourceEventSocket)
	nl.Open(t0.Add(30*time.Millisecond), "host_1_0000000000000002", srv4, cli4)
	nl.Open(t0.Add(29*time.Millisecond), "host_1_0000000000000001", srv4, cli4) // older, says netlink
	es.Open(t0.Add(10*time.Millisecond), "host_1_0000000000000002", srv4, cli4) // tcp-info's earlier stamp
	got := r.candidates(key, t0, nil)
	if len(got) != 2 || got[0].uuid != "host_1_0000000000000001" || got[1].uuid != "host_1_0000000000000002" {
		t.Fatalf("claims %+v, want ...01 before ...02", got)
	}
	if want := t0.Add(29*time.Millisecond + time.Nanosecond); !got[1].opened.Equal(want) {
		t.Errorf("moved claim at %v, want just after the older one's %v", got[1].opened.Sub(t0), want.Sub(t0))
	}
}
