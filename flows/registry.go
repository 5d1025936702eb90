package flows

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// KeyFromAddrPorts returns the key of the connection between a and b, and
// false if the two are not both IPv4 or both IPv6 (an IPv4-mapped IPv6
// address counts as IPv4, as it does on the wire).
func KeyFromAddrPorts(a, b netip.AddrPort) (Key, bool) {
	aa, ba := a.Addr().Unmap(), b.Addr().Unmap()
	if !aa.IsValid() || !ba.IsValid() || aa.Is4() != ba.Is4() {
		return Key{}, false
	}
	var x, y [16]byte
	if aa.Is4() {
		a4, b4 := aa.As4(), ba.As4()
		copy(x[:], a4[:])
		copy(y[:], b4[:])
	} else {
		x, y = aa.As16(), ba.As16()
	}
	return makeKey(x, a.Port(), y, b.Port(), !aa.Is4()), true
}

// sideOf says which endpoint of key ep is.
func sideOf(key Key, ep netip.AddrPort) side {
	var b [16]byte
	if a := ep.Addr().Unmap(); a.Is4() {
		a4 := a.As4()
		copy(b[:], a4[:])
	} else {
		b = a.As16()
	}
	switch {
	case key.A == key.B && key.PA == key.PB:
		return sideUnknown
	case b == key.A && ep.Port() == key.PA:
		return sideA
	case b == key.B && ep.Port() == key.PB:
		return sideB
	}
	return sideUnknown
}

// side says which endpoint of a Key is the local socket.
type side uint8

const (
	sideUnknown side = iota
	sideA
	sideB
)

// A claim is a UUID announced for a 4-tuple. It is handed to at most one
// flow. The registry writes closedAt, the owning worker reads it: it is an
// atomic, so a worker never takes the registry's lock to learn of a Close.
type claim struct {
	uuid   string
	key    Key
	opened time.Time // when the socket was seen alive; names the date folder
	local  side
	source string // which UUID source announced it first
	// stamps are the times each source gave it (eventsocket, other);
	// guarded by Registry.mu.
	stamps [2]time.Time
	// closedAt is the Close event's timestamp in Unix nanoseconds, 0 while
	// open. tcp-info stamps a Close late (up to a poll batch), so it only
	// ever delays the end of a flow.
	closedAt atomic.Int64
	// ended is when the owning flow ended (Unix nanoseconds).
	ended atomic.Int64
	taken bool // guarded by Registry.mu
}

// maxClaimsPerKey bounds the sockets remembered per 4-tuple.
const maxClaimsPerKey = 8

// Registry joins UUIDs from tcp-info's eventsocket (or another source) with
// the flows the workers see. It is safe for concurrent use: the event
// sources feed it while every worker looks up its new flows.
//
// Several sockets may use one 4-tuple in a short time (a reused port), and
// events arrive late and out of step with packets (tcp-info polls every
// 10 ms and may hold events for hundreds of milliseconds). So the registry
// keeps, per 4-tuple, the recent claims ordered by the time their socket
// was seen, and the worker that owns the tuple matches each claim to the
// connection that was live at that time. A claim is handed out once.
// Claims live while their socket is open and for Retention after it closed
// or after its flow ended, so that a flow which resumes after -flowtimeout
// cannot take the same UUID again (one file per UUID).
type Registry struct {
	retention  time.Duration
	maxEntries int
	m          *metrics

	mu     sync.Mutex
	byKey  map[Key][]*claim // each sorted by opened
	byUUID map[string]*claim
}

func newRegistry(retention time.Duration, maxEntries int, m *metrics) *Registry {
	return &Registry{
		retention:  retention,
		maxEntries: maxEntries,
		m:          m,
		byKey:      make(map[Key][]*claim),
		byUUID:     make(map[string]*claim),
	}
}

// Open records that the socket local↔remote is named uuid and was alive at
// ts, as tcp-info's eventsocket reports it. Repeated Opens of one UUID are
// ignored.
func (r *Registry) Open(ts time.Time, uuid string, local, remote netip.AddrPort) {
	r.openFrom(SourceEventSocket, ts, uuid, local, remote)
}

// Names of UUID sources, the label values of pcap_flows_named_total.
const (
	SourceEventSocket = "eventsocket"
	SourceNetlink     = "netlink"
)

// SourceSink is the registry as seen by one UUID source: the Opens it
// receives are credited to that source. It is safe for concurrent use.
type SourceSink struct {
	r    *Registry
	name string
}

// Sink returns the registry as seen by the named source.
func (r *Registry) Sink(source string) *SourceSink { return &SourceSink{r: r, name: source} }

// Open is Registry.Open, credited to the sink's source.
func (s *SourceSink) Open(ts time.Time, uuid string, local, remote netip.AddrPort) {
	s.r.openFrom(s.name, ts, uuid, local, remote)
}

// Close is Registry.Close.
func (s *SourceSink) Close(ts time.Time, uuid string) { s.r.Close(ts, uuid) }

func (r *Registry) openFrom(source string, ts time.Time, uuid string, local, remote netip.AddrPort) {
	key, ok := KeyFromAddrPorts(local, remote)
	if !ok {
		r.m.badEvents.WithLabelValues("bad_tuple").Inc()
		return
	}
	r.open(source, ts, uuid, key, sideOf(key, local))
}

// cookieOf returns the socket cookie part of a UUID (<prefix>_<%016X>).
func cookieOf(uuid string) string {
	if i := strings.LastIndexByte(uuid, '_'); i >= 0 && len(uuid)-i-1 == 16 {
		return uuid[i+1:]
	}
	return ""
}

// keepOrder returns ts, moved if need be so that a claim stamped stamps
// by its sources stays after every claim of list that one of those
// sources stamped earlier, and before every claim one stamped later. Each
// source stamps a tuple's sockets in their order, but their stamps differ
// (tcp-info stamps when its poll ends, the netlink source when it learns
// of a socket), and a claim's time is the earliest of its stamps.
func keepOrder(list []*claim, stamps [2]time.Time, ts time.Time) time.Time {
	for y, sy := range stamps {
		if sy.IsZero() {
			continue
		}
		for _, e := range list {
			ey := e.stamps[y]
			switch {
			case ey.IsZero():
			case ey.Before(sy) && !ts.After(e.opened):
				ts = e.opened.Add(time.Nanosecond)
			case ey.After(sy) && !ts.Before(e.opened):
				ts = e.opened.Add(-time.Nanosecond)
			}
		}
	}
	return ts
}

// sourceIndex is the index of a source's stamp in claim.stamps.
func sourceIndex(source string) int {
	if source == SourceEventSocket {
		return 0
	}
	return 1
}

func (r *Registry) open(source string, ts time.Time, uuid string, key Key, s side) {
	r.m.uuids.Inc()
	r.mu.Lock()
	defer r.mu.Unlock()
	credit := source // the source that named the socket first
	var closed int64
	var stamps [2]time.Time
	if old, ok := r.byUUID[uuid]; ok {
		if old.key != key {
			// The same UUID for another tuple: tcp-info never does this.
			// The later event wins.
			r.remove(old)
		} else if old.taken || old.source == source || !ts.Before(old.opened) {
			if old.stamps[sourceIndex(source)].IsZero() {
				old.stamps[sourceIndex(source)] = ts
			}
			return
		} else {
			// Two sources saw the socket; each stamp is a time it was
			// alive (or later), so the earlier one is closer to the
			// truth and keeps the tuple's claims in order (tcp-info
			// stamps when its poll ends, which can be after the next
			// connection on the tuple began). Replace the claim: the old
			// one is never handed out.
			old.taken = true
			r.remove(old)
			credit, closed, stamps = old.source, old.closedAt.Load(), old.stamps
		}
	}
	if r.maxEntries > 0 && len(r.byUUID) >= r.maxEntries {
		r.m.badEvents.WithLabelValues("registry_full").Inc()
		return
	}
	list := r.byKey[key]
	if ck := cookieOf(uuid); ck != "" {
		for _, c := range list {
			if c.source != source && cookieOf(c.uuid) == ck {
				// One socket, two names: the sources use different
				// prefixes. The first name stands.
				r.m.disagreements.Inc()
				return
			}
		}
	}
	stamps[sourceIndex(source)] = ts
	ts = keepOrder(list, stamps, ts)
	c := &claim{uuid: uuid, key: key, opened: ts, local: s, source: credit, stamps: stamps}
	c.closedAt.Store(closed)
	i, _ := slices.BinarySearchFunc(list, ts, func(c *claim, t time.Time) int { return c.opened.Compare(t) })
	list = slices.Insert(list, i, c)
	if len(list) > maxClaimsPerKey {
		delete(r.byUUID, list[0].uuid)
		list = slices.Delete(list, 0, 1)
	}
	r.byKey[key] = list
	r.byUUID[uuid] = c
	r.m.registryEntries.Set(float64(len(r.byUUID)))
}

// remove forgets c; r.mu must be held.
func (r *Registry) remove(c *claim) {
	delete(r.byUUID, c.uuid)
	list := slices.DeleteFunc(r.byKey[c.key], func(x *claim) bool { return x == c })
	if len(list) == 0 {
		delete(r.byKey, c.key)
	} else {
		r.byKey[c.key] = list
	}
}

// Close records that the socket named uuid closed at ts. Unknown UUIDs are
// ignored: the Open may have come before this process connected.
func (r *Registry) Close(ts time.Time, uuid string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.byUUID[uuid]; c != nil && c.closedAt.Load() == 0 {
		c.closedAt.Store(max(ts.UnixNano(), 1))
	}
}

// candidates appends to buf the claims for key not handed out yet, oldest
// first.
func (r *Registry) candidates(key Key, _ time.Time, buf []*claim) []*claim {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.byKey[key] {
		if !c.taken {
			buf = append(buf, c)
		}
	}
	return buf
}

// take hands c out, if nobody has taken it yet.
func (r *Registry) take(c *claim) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c.taken {
		return false
	}
	c.taken = true
	return true
}

// Expire forgets claims whose socket closed, or whose flow ended, more than
// the retention before now.
func (r *Registry) Expire(now time.Time) {
	limit := now.Add(-r.retention).UnixNano()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.byUUID {
		closed, ended := c.closedAt.Load(), c.ended.Load()
		if (closed != 0 && closed < limit) || (ended != 0 && ended < limit) {
			r.remove(c)
		}
	}
	r.m.registryEntries.Set(float64(len(r.byUUID)))
}

// Len returns the number of UUIDs the registry holds.
func (r *Registry) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.byUUID)
}
