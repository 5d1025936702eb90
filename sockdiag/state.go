package sockdiag

// The bookkeeping of the source's loop: pending lookups, sockets already
// named, recently destroyed sockets. Everything here is owned by the loop
// goroutine and is not safe for concurrent use. Nothing here does I/O or
// reads the clock: times are passed in.

import (
	"container/heap"
	"net/netip"
	"time"
)

// Bounds on the loop's memory.
const (
	// goneTTL is how long a destroyed socket is remembered, so that a lookup
	// arriving after the destroy (the capture lags) still gets named.
	goneTTL = 5 * time.Second
	// maxGone bounds the destroyed sockets remembered (the oldest go first).
	maxGone = 1 << 17
	// maxNamed bounds the sockets remembered as named (to Open each at most
	// once). Named sockets leave goneTTL after their destroy; live ones are
	// forgotten oldest first beyond this.
	maxNamed = 1 << 18
	// timeWaitLen is the kernel's TCP_TIMEWAIT_LEN, the lifetime of a
	// TIME_WAIT socket unless the retransmission timeout is longer.
	timeWaitLen = 60 * time.Second
	// timeWaitSlack absorbs the jiffy granularity of idiag_expires.
	timeWaitSlack = 20 * time.Millisecond
)

// endpoint is one end of a flow: IPv4 addresses as IPv4-mapped IPv6.
type endpoint struct {
	addr [16]byte
	port uint16
}

func endpointOf(ap netip.AddrPort) endpoint {
	return endpoint{addr: ap.Addr().Unmap().As16(), port: ap.Port()}
}

func (e endpoint) less(o endpoint) bool {
	for i := range e.addr {
		if e.addr[i] != o.addr[i] {
			return e.addr[i] < o.addr[i]
		}
	}
	return e.port < o.port
}

// tupleKey identifies a flow regardless of direction: lo sorts before hi.
// Comparable and pointer-free.
type tupleKey struct{ lo, hi endpoint }

func keyOf(a, b netip.AddrPort) tupleKey {
	ea, eb := endpointOf(a), endpointOf(b)
	if eb.less(ea) {
		ea, eb = eb, ea
	}
	return tupleKey{ea, eb}
}

// sockKey identifies one socket: a flow and the socket's cookie.
type sockKey struct {
	tuple  tupleKey
	cookie uint64
}

// pending is a lookup not answered yet.
type pending struct {
	key      tupleKey
	a, b     netip.AddrPort
	first    time.Time // first packet of the flow, as the capture saw it
	deadline time.Time // give up after this
	next     time.Time // query again at this time
	delay    time.Duration
	tries    int // queries so far
	index    int // in pendingHeap
}

// pendingHeap orders pending lookups by their next query time.
type pendingHeap []*pending

func (h pendingHeap) Len() int           { return len(h) }
func (h pendingHeap) Less(i, j int) bool { return h[i].next.Before(h[j].next) }
func (h pendingHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *pendingHeap) Push(x any) {
	p := x.(*pending)
	p.index = len(*h)
	*h = append(*h, p)
}
func (h *pendingHeap) Pop() any {
	old := *h
	p := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	p.index = -1
	return p
}

// pendingSet is the pending lookups by flow, scheduled by next query time.
type pendingSet struct {
	byKey map[tupleKey]*pending
	sched pendingHeap
}

func newPendingSet() *pendingSet { return &pendingSet{byKey: map[tupleKey]*pending{}} }

func (s *pendingSet) len() int { return len(s.byKey) }

func (s *pendingSet) get(k tupleKey) *pending { return s.byKey[k] }

func (s *pendingSet) add(p *pending) {
	s.byKey[p.key] = p
	heap.Push(&s.sched, p)
}

func (s *pendingSet) remove(p *pending) {
	delete(s.byKey, p.key)
	if p.index >= 0 {
		heap.Remove(&s.sched, p.index)
	}
}

// reschedule moves p to its (changed) next time.
func (s *pendingSet) reschedule(p *pending) {
	if p.index >= 0 {
		heap.Fix(&s.sched, p.index)
	} else {
		heap.Push(&s.sched, p)
	}
}

// nextDue returns the earliest next query time; ok is false when nothing
// is pending.
func (s *pendingSet) nextDue() (time.Time, bool) {
	if len(s.sched) == 0 {
		return time.Time{}, false
	}
	return s.sched[0].next, true
}

// popDue removes from the schedule (not from the set) up to max lookups due
// at now and appends them to dst. Callers reschedule or remove each.
func (s *pendingSet) popDue(dst []*pending, now time.Time, max int) []*pending {
	for len(s.sched) > 0 && len(dst) < max && !s.sched[0].next.After(now) {
		dst = append(dst, heap.Pop(&s.sched).(*pending))
	}
	return dst
}

// namedSet remembers the sockets already passed to Sink.Open and their
// UUIDs, so that none is opened twice or closed under another UUID.
type namedSet struct {
	m     map[sockKey]named
	order []namedRef // insertion order, for eviction beyond maxNamed
	gen   uint64
	limit int
}

type named struct {
	uuid  string
	first time.Time // first packet of the flow it was named for
	gen   uint64
}

type namedRef struct {
	key sockKey
	gen uint64
}

func newNamedSet(limit int) *namedSet {
	return &namedSet{m: map[sockKey]named{}, limit: limit}
}

func (s *namedSet) lookup(k sockKey) (string, bool) {
	n, ok := s.m[k]
	return n.uuid, ok
}

// firstOf returns the first packet time of the flow k was named for.
func (s *namedSet) firstOf(k sockKey) (time.Time, bool) {
	n, ok := s.m[k]
	return n.first, ok
}

func (s *namedSet) add(k sockKey, uuid string, first time.Time) {
	s.gen++
	s.m[k] = named{uuid: uuid, first: first, gen: s.gen}
	s.order = append(s.order, namedRef{k, s.gen})
	for len(s.m) > s.limit {
		s.evictOldest()
	}
	// Compact the order slice when stale references dominate it.
	if len(s.order) > 2*s.limit || (len(s.order) > 1024 && len(s.order) > 4*len(s.m)) {
		live := s.order[:0]
		for _, r := range s.order {
			if n, ok := s.m[r.key]; ok && n.gen == r.gen {
				live = append(live, r)
			}
		}
		clear(s.order[len(live):])
		s.order = live
	}
}

func (s *namedSet) evictOldest() {
	for len(s.order) > 0 {
		r := s.order[0]
		s.order = s.order[1:]
		if n, ok := s.m[r.key]; ok && n.gen == r.gen {
			delete(s.m, r.key)
			return
		}
	}
}

func (s *namedSet) remove(k sockKey) { delete(s.m, k) }

// gone is a socket seen destroyed.
type gone struct {
	cookie        uint64
	at            time.Time // when the destroy notification arrived
	local, remote netip.AddrPort
	uuid          string // as closed
}

// goneCache remembers recently destroyed sockets by flow for goneTTL, at
// most maxGone of them.
type goneCache struct {
	m     map[tupleKey][]gone
	order []goneRef // arrival order: expiry and eviction
	ttl   time.Duration
	limit int
	n     int // sockets held
}

type goneRef struct {
	key    tupleKey
	cookie uint64
}

func newGoneCache(ttl time.Duration, limit int) *goneCache {
	return &goneCache{m: map[tupleKey][]gone{}, ttl: ttl, limit: limit}
}

// get returns the socket k if it is remembered as destroyed.
func (c *goneCache) get(k sockKey) (gone, bool) {
	for _, g := range c.m[k.tuple] {
		if g.cookie == k.cookie {
			return g, true
		}
	}
	return gone{}, false
}

// add remembers a destroyed socket; it returns false if it was already
// remembered.
func (c *goneCache) add(k tupleKey, g gone) bool {
	if _, ok := c.get(sockKey{k, g.cookie}); ok {
		return false
	}
	c.m[k] = append(c.m[k], g)
	c.order = append(c.order, goneRef{k, g.cookie})
	c.n++
	return true
}

// match returns the socket of flow k destroyed first after first, within
// the TTL at now: the socket a flow that started at first belonged to.
// A socket destroyed before first cannot be that flow's (the tuple was
// reused), so it never matches.
func (c *goneCache) match(k tupleKey, first, now time.Time) (gone, bool) {
	var best gone
	found := false
	for _, g := range c.m[k] {
		if !g.at.After(first) || now.Sub(g.at) > c.ttl {
			continue
		}
		if !found || g.at.Before(best.at) {
			best, found = g, true
		}
	}
	return best, found
}

// expire forgets sockets destroyed more than the TTL before now and the
// oldest ones beyond the limit, calling forget for each.
func (c *goneCache) expire(now time.Time, forget func(sockKey)) {
	for len(c.order) > 0 {
		r := c.order[0]
		gs := c.m[r.key]
		i := -1
		for j, g := range gs {
			if g.cookie == r.cookie {
				i = j
				break
			}
		}
		if i >= 0 && c.n <= c.limit && now.Sub(gs[i].at) <= c.ttl {
			return // the oldest is still young: so are the rest
		}
		c.order[0] = goneRef{}
		c.order = c.order[1:]
		if i < 0 {
			continue
		}
		gs = append(gs[:i], gs[i+1:]...)
		if len(gs) == 0 {
			delete(c.m, r.key)
		} else {
			c.m[r.key] = gs
		}
		c.n--
		forget(sockKey{r.key, r.cookie})
	}
}

// timeWaitIsOlder reports whether a TIME_WAIT socket reported with
// expiresMs left at now entered TIME_WAIT before first, i.e. belongs to an
// earlier connection on the same tuple and not to a flow that started at
// first. The kernel arms the timewait timer for at least TCP_TIMEWAIT_LEN,
// so the estimate of the entry time is never earlier than the real one
// (but for the jiffy rounding absorbed by timeWaitSlack): a genuine flow,
// which started before its own TIME_WAIT, is never rejected.
func timeWaitIsOlder(expiresMs uint32, first, now time.Time) bool {
	elapsed := timeWaitLen - time.Duration(expiresMs)*time.Millisecond
	if elapsed <= 0 {
		return false // a longer timer than TCP_TIMEWAIT_LEN: no estimate
	}
	entered := now.Add(-elapsed)
	return first.After(entered.Add(timeWaitSlack))
}
