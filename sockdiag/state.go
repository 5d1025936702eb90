package sockdiag

// The bookkeeping of the source's loop: pending lookups, sockets already
// named, recently destroyed sockets. Everything here is owned by the loop
// goroutine and is not safe for concurrent use. Nothing here does I/O or
// reads the clock: times are passed in.

import (
	"container/heap"
	"net/netip"
	"slices"
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
	// maxCookieTuples bounds the cookies remembered with their tuple.
	maxCookieTuples = 1 << 16
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
	// found: a socket was found for it (by a query or a destroy
	// notification); one that never is counts as a miss at the deadline.
	found bool
	// done: no more queries (see staleWindow); it stays until the
	// deadline so that destroy notifications of its tuple are named.
	done  bool
	index int // in pendingHeap
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

// pendingSet is the pending lookups, by tuple and, on a reused tuple, by
// the flow's first packet (one lookup per flow: successive connections on
// one tuple each wait for their own socket), scheduled by next query time.
type pendingSet struct {
	byKey map[tupleKey][]*pending // each sorted by first
	sched pendingHeap
	n     int
}

func newPendingSet() *pendingSet { return &pendingSet{byKey: map[tupleKey][]*pending{}} }

func (s *pendingSet) len() int { return s.n }

// get returns the lookup of the flow on k that began at first.
func (s *pendingSet) get(k tupleKey, first time.Time) *pending {
	for _, p := range s.byKey[k] {
		if p.first.Equal(first) {
			return p
		}
	}
	return nil
}

// onTuple returns the lookups on k, oldest flow first. The slice is the
// set's own: do not keep it across changes.
func (s *pendingSet) onTuple(k tupleKey) []*pending { return s.byKey[k] }

// earliest returns the lookup on k of the earliest flow, or nil.
func (s *pendingSet) earliest(k tupleKey) *pending {
	if ps := s.byKey[k]; len(ps) > 0 {
		return ps[0]
	}
	return nil
}

func (s *pendingSet) add(p *pending) {
	ps := s.byKey[p.key]
	i := len(ps)
	for i > 0 && ps[i-1].first.After(p.first) {
		i--
	}
	s.byKey[p.key] = slices.Insert(ps, i, p)
	s.n++
	heap.Push(&s.sched, p)
}

func (s *pendingSet) remove(p *pending) {
	ps := s.byKey[p.key]
	if i := slices.Index(ps, p); i >= 0 {
		ps = slices.Delete(ps, i, i+1)
		s.n--
		if len(ps) == 0 {
			delete(s.byKey, p.key)
		} else {
			s.byKey[p.key] = ps
		}
	}
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

// namedSet remembers the sockets already passed to Sink.Open, their UUIDs
// and stamps, by tuple, so that none is opened twice or closed under
// another UUID, and so that a tuple's later Opens keep its order.
type namedSet struct {
	m     map[tupleKey][]named
	n     int        // sockets held
	order []namedRef // insertion order, for eviction beyond maxNamed
	gen   uint64
	limit int
}

type named struct {
	cookie uint64
	uuid   string
	stamp  time.Time // of its Sink.Open
	// found: a query found it with its connection in progress, or in
	// TIME_WAIT (see destroyStamp).
	found bool
	gen   uint64
}

type namedRef struct {
	key sockKey
	gen uint64
}

func newNamedSet(limit int) *namedSet {
	return &namedSet{m: map[tupleKey][]named{}, limit: limit}
}

func (s *namedSet) len() int { return s.n }

// get returns what is remembered of socket k.
func (s *namedSet) get(k sockKey) (named, bool) {
	for _, n := range s.m[k.tuple] {
		if n.cookie == k.cookie {
			return n, true
		}
	}
	return named{}, false
}

func (s *namedSet) lookup(k sockKey) (string, bool) {
	n, ok := s.get(k)
	return n.uuid, ok
}

// onTuple returns the sockets named on tuple k. The slice is the set's
// own: do not keep it across changes.
func (s *namedSet) onTuple(k tupleKey) []named { return s.m[k] }

func (s *namedSet) add(k sockKey, uuid string, stamp time.Time, found bool) {
	s.gen++
	n := named{cookie: k.cookie, uuid: uuid, stamp: stamp, found: found, gen: s.gen}
	ns := s.m[k.tuple]
	if i := slices.IndexFunc(ns, func(o named) bool { return o.cookie == k.cookie }); i >= 0 {
		ns[i] = n
	} else {
		s.m[k.tuple] = append(ns, n)
		s.n++
	}
	s.order = append(s.order, namedRef{k, s.gen})
	for s.n > s.limit {
		s.evictOldest()
	}
	// Compact the order slice when stale references dominate it.
	if len(s.order) > 2*s.limit || (len(s.order) > 1024 && len(s.order) > 4*s.n) {
		live := s.order[:0]
		for _, r := range s.order {
			if s.current(r) {
				live = append(live, r)
			}
		}
		clear(s.order[len(live):])
		s.order = live
	}
}

// current reports whether r refers to the socket's latest add.
func (s *namedSet) current(r namedRef) bool {
	n, ok := s.get(r.key)
	return ok && n.gen == r.gen
}

func (s *namedSet) evictOldest() {
	for len(s.order) > 0 {
		r := s.order[0]
		s.order = s.order[1:]
		if s.current(r) {
			s.remove(r.key)
			return
		}
	}
}

func (s *namedSet) remove(k sockKey) {
	ns := s.m[k.tuple]
	i := slices.IndexFunc(ns, func(o named) bool { return o.cookie == k.cookie })
	if i < 0 {
		return
	}
	s.n--
	if ns = slices.Delete(ns, i, i+1); len(ns) == 0 {
		delete(s.m, k.tuple)
	} else {
		s.m[k.tuple] = ns
	}
}

// cookieTuples remembers, by cookie, the tuple of sockets queries found,
// the most recent ones up to a bound. A socket closed with SO_LINGER 0 (or
// disconnected) has its peer port, and unless it was bound its local
// address, zeroed before it is destroyed, so its destroy notification
// names no tuple; its cookie, generated by an earlier query (for a request
// socket the full socket inherits it), still does.
type cookieTuples struct {
	m    map[uint64]sockID
	ring []uint64 // insertion order; 0 is a free slot (no socket has cookie 0)
	pos  int
}

func newCookieTuples(limit int) *cookieTuples {
	return &cookieTuples{m: make(map[uint64]sockID), ring: make([]uint64, limit)}
}

func (c *cookieTuples) add(cookie uint64, id sockID) {
	if cookie == 0 || len(c.ring) == 0 {
		return
	}
	if _, ok := c.m[cookie]; ok {
		c.m[cookie] = id
		return
	}
	if old := c.ring[c.pos]; old != 0 {
		delete(c.m, old)
	}
	c.ring[c.pos] = cookie
	c.pos = (c.pos + 1) % len(c.ring)
	c.m[cookie] = id
}

func (c *cookieTuples) get(cookie uint64) (sockID, bool) {
	id, ok := c.m[cookie]
	return id, ok
}

// gone is a socket seen destroyed.
type gone struct {
	cookie        uint64
	at            time.Time // when the destroy notification arrived
	local, remote netip.AddrPort
	uuid          string // as closed
	// notified: its destroy notification came (not only a query that
	// found it in TIME_WAIT).
	notified bool
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
// remembered (and then only notes that a notification came).
func (c *goneCache) add(k tupleKey, g gone) bool {
	if _, ok := c.get(sockKey{k, g.cookie}); ok {
		if g.notified {
			gs := c.m[k]
			for i := range gs {
				if gs[i].cookie == g.cookie {
					gs[i].notified = true
				}
			}
		}
		return false
	}
	c.m[k] = append(c.m[k], g)
	c.order = append(c.order, goneRef{k, g.cookie})
	c.n++
	return true
}

// after returns the sockets of flow k destroyed after first, within the
// TTL at now. A socket destroyed before first cannot be the flow's (the
// tuple was reused).
func (c *goneCache) after(k tupleKey, first, now time.Time) []gone {
	var out []gone
	for _, g := range c.m[k] {
		if g.at.After(first) && now.Sub(g.at) <= c.ttl {
			out = append(out, g)
		}
	}
	return out
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
