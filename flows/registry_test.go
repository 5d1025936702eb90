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
	if got := r.candidates(key, t0, nil); len(got) != 2 || !got[0].replaced.Load() {
		t.Errorf("a new socket on the tuple: %d claims", len(got))
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
