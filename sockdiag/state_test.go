package sockdiag

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

func TestKeyOf(t *testing.T) {
	a, b := netip.MustParseAddrPort("192.0.2.1:80"), netip.MustParseAddrPort("192.0.2.2:40000")
	mapped := netip.MustParseAddrPort("[::ffff:192.0.2.1]:80")
	if keyOf(a, b) != keyOf(b, a) {
		t.Error("keyOf depends on orientation")
	}
	if keyOf(mapped, b) != keyOf(a, b) {
		t.Error("keyOf distinguishes v4-mapped from IPv4")
	}
	if keyOf(a, b) == keyOf(a, netip.MustParseAddrPort("192.0.2.2:40001")) {
		t.Error("different flows share a key")
	}
	// Same address, ports decide the order.
	c, d := netip.MustParseAddrPort("192.0.2.1:2"), netip.MustParseAddrPort("192.0.2.1:1")
	if k := keyOf(c, d); k.lo.port != 1 || keyOf(d, c) != k {
		t.Errorf("keyOf(%v, %v) = %+v", c, d, k)
	}
}

func TestGoneCache(t *testing.T) {
	t0 := time.Unix(1700000000, 0)
	k := keyOf(srvAP, cliAP)
	c := newGoneCache(5*time.Second, 3)
	if !c.add(k, gone{cookie: 1, at: t0}) || c.add(k, gone{cookie: 1, at: t0.Add(time.Second)}) {
		t.Fatal("add: want true, then false for the same socket")
	}
	c.add(k, gone{cookie: 2, at: t0.Add(2 * time.Second)})
	tests := []struct {
		first, now time.Time
		want       []uint64
	}{
		{first: t0.Add(-time.Second), now: t0, want: []uint64{1, 2}}, // destroyed after first
		{first: t0, now: t0, want: []uint64{2}},                      // destroyed at first: not this flow's
		{first: t0.Add(time.Second), now: t0.Add(3 * time.Second), want: []uint64{2}},
		{first: t0.Add(3 * time.Second), now: t0.Add(3 * time.Second)},                 // all destroyed before first
		{first: t0.Add(-time.Second), now: t0.Add(6 * time.Second), want: []uint64{2}}, // 1 is past its TTL
	}
	for _, tt := range tests {
		var got []uint64
		for _, g := range c.after(k, tt.first, tt.now) {
			got = append(got, g.cookie)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("after(first %v, now %v) = %v, want %v", tt.first.Sub(t0), tt.now.Sub(t0), got, tt.want)
		}
	}
	var forgot []uint64
	forget := func(sk sockKey) { forgot = append(forgot, sk.cookie) }
	c.expire(t0.Add(5*time.Second), forget)
	if len(forgot) != 0 {
		t.Errorf("forgot %v at the TTL", forgot)
	}
	c.expire(t0.Add(5*time.Second+1), forget)
	if len(forgot) != 1 || forgot[0] != 1 {
		t.Errorf("forgot %v, want [1]", forgot)
	}
	// Beyond the limit the oldest go first, whatever their age.
	k2 := keyOf(srv6AP, cli6AP)
	for i := range uint64(3) {
		c.add(k2, gone{cookie: 10 + i, at: t0.Add(5 * time.Second)})
	}
	c.expire(t0.Add(5*time.Second), forget)
	if len(forgot) != 2 || forgot[1] != 2 || c.n != 3 {
		t.Errorf("forgot %v, %d held; want [1 2], 3", forgot, c.n)
	}
	if _, ok := c.get(sockKey{k, 2}); ok {
		t.Error("evicted socket still there")
	}
	if _, ok := c.m[k]; ok {
		t.Error("empty tuple entry kept")
	}
}

func TestNamedSet(t *testing.T) {
	s := newNamedSet(3)
	key := func(c uint64) sockKey { return sockKey{keyOf(srvAP, cliAP), c} }
	for c := range uint64(5) {
		s.add(key(c), "u", time.Time{}, false)
	}
	for c := range uint64(5) {
		_, ok := s.lookup(key(c))
		if want := c >= 2; ok != want {
			t.Errorf("cookie %d present %v, want %v", c, ok, want)
		}
	}
	// Removed entries and re-added keys do not confuse eviction.
	s.remove(key(2))
	s.add(key(3), "again", time.Time{}, false) // now the newest
	s.add(key(5), "u", time.Time{}, false)
	s.add(key(6), "u", time.Time{}, false)
	if _, ok := s.lookup(key(3)); !ok {
		t.Error("re-added key evicted by its stale reference")
	}
	if _, ok := s.lookup(key(4)); ok {
		t.Error("oldest key not evicted")
	}
	if s.len() != 3 {
		t.Errorf("%d entries, want 3", s.len())
	}
	for range 100 {
		s.add(key(7), "u", time.Time{}, false)
	}
	if len(s.order) > 2*s.limit {
		t.Errorf("order holds %d references for %d entries", len(s.order), s.len())
	}
}

func TestPendingSet(t *testing.T) {
	t0 := time.Unix(1700000000, 0)
	s := newPendingSet()
	var ps []*pending
	for i, d := range []time.Duration{30, 10, 20} {
		p := &pending{key: keyOf(srvAP, netip.AddrPortFrom(cliAP.Addr(), uint16(i+1))), next: t0.Add(d)}
		s.add(p)
		ps = append(ps, p)
	}
	if next, ok := s.nextDue(); !ok || !next.Equal(t0.Add(10)) {
		t.Errorf("nextDue = %v", next)
	}
	due := s.popDue(nil, t0.Add(25), 10)
	if len(due) != 2 || due[0] != ps[1] || due[1] != ps[2] {
		t.Fatalf("popDue = %v", due)
	}
	if s.len() != 3 {
		t.Errorf("popDue removed from the set: %d", s.len())
	}
	due[0].next = t0.Add(40)
	s.reschedule(due[0])
	s.remove(due[1])
	s.remove(ps[0])
	if next, ok := s.nextDue(); !ok || !next.Equal(t0.Add(40)) || s.len() != 1 {
		t.Errorf("nextDue = %v, len %d", next, s.len())
	}
	if got := s.popDue(nil, t0.Add(100), 0); len(got) != 0 {
		t.Errorf("popDue with max 0 = %v", got)
	}
}

func TestTimeWaitIsOlder(t *testing.T) {
	now := time.Unix(1700000000, 0)
	tests := []struct {
		expires uint32
		first   time.Time
		want    bool
	}{
		{expires: 58000, first: now.Add(-3 * time.Second), want: false},                     // began before TIME_WAIT
		{expires: 58000, first: now.Add(-time.Second), want: true},                          // began after
		{expires: 58000, first: now.Add(-2*time.Second + 10*time.Millisecond), want: false}, // within the slack
		{expires: 60000, first: now, want: false},                                           // just entered
		{expires: 70000, first: now, want: false},                                           // a longer timer: no estimate
	}
	for _, tt := range tests {
		if got := timeWaitIsOlder(tt.expires, tt.first, now); got != tt.want {
			t.Errorf("timeWaitIsOlder(%d, now%v) = %v, want %v", tt.expires, tt.first.Sub(now), got, tt.want)
		}
	}
}
