package sockdiag

import (
	"net/netip"
	"time"
)

// Sockets reset by their own application (SO_LINGER 0 on close, or a
// disconnect) lose their peer's port before the kernel destroys them, so
// their destroy notifications name no flow. When no query found such a
// socket while it lived (a short connection whose lookup came late), the
// RST it sent, which the capture sees on a flow still waiting for its
// UUID, ties the two together: same local port (and address, when the
// notification kept it), same peer address, the RST at most ResetWindow
// before the notification. A match must be unique both ways (one RST for
// the orphan, no other orphan for the RST), or nothing is named.

const (
	// ResetWindow is the longest time from a RST to the destroy
	// notification of the socket that sent it: the notification is queued
	// when the application's close returns, and arrives milliseconds
	// later under load.
	ResetWindow = 50 * time.Millisecond
	// orphanDelay is how long an orphan waits for RSTs before it is
	// matched: the capture reports packets up to tens of milliseconds
	// after they were sent.
	orphanDelay = 250 * time.Millisecond
	// maxOrphans and maxResets bound the memory of both.
	maxOrphans = 4096
	maxResets  = 8192
)

// orphan is a destroyed socket whose notification lost its peer's port.
type orphan struct {
	local  netip.AddrPort // the address may be unspecified
	peer   netip.Addr
	cookie uint64
	at     time.Time // the notification's arrival
}

// resetSeen is a RST the capture reported.
type resetSeen struct {
	src, dst netip.AddrPort
	ts       time.Time
	used     bool
}

func (st *loopState) addOrphan(o orphan) {
	if len(st.orphans) >= maxOrphans {
		st.src.m.orphans.WithLabelValues("unmatched").Inc()
		st.orphans = st.orphans[1:]
	}
	st.orphans = append(st.orphans, o)
}

// resetSeen records a Reset request received at now.
func (st *loopState) resetSeen(r request, now time.Time) {
	src := netip.AddrPortFrom(r.a.Addr().Unmap(), r.a.Port())
	dst := netip.AddrPortFrom(r.b.Addr().Unmap(), r.b.Port())
	if !src.IsValid() || !dst.IsValid() || src.Port() == 0 || dst.Port() == 0 {
		st.src.m.errors.WithLabelValues("invalid_lookup").Inc()
		return
	}
	if len(st.resets) >= maxResets {
		st.resets = st.resets[1:]
	}
	st.resets = append(st.resets, resetSeen{src: src, dst: dst, ts: r.first})
}

// matches reports whether the RST r may have been sent by the orphan o.
func (o *orphan) matches(r *resetSeen) bool {
	if r.used || r.src.Port() != o.local.Port() || r.dst.Addr() != o.peer {
		return false
	}
	if a := o.local.Addr(); a.IsValid() && !a.IsUnspecified() && a != r.src.Addr() {
		return false
	}
	// The RST goes out before the socket is destroyed; allow a little for
	// the two clocks' readings (the capture's packet time, the arrival of
	// the notification).
	return !r.ts.After(o.at.Add(time.Millisecond)) && o.at.Sub(r.ts) <= ResetWindow
}

// matchOrphans matches the orphans that have waited orphanDelay with the
// RSTs seen, and forgets RSTs too old to match any orphan still to come.
func (st *loopState) matchOrphans(now time.Time) {
	n := 0
	for n < len(st.orphans) && now.Sub(st.orphans[n].at) >= orphanDelay {
		st.matchOrphan(&st.orphans[n], now)
		n++
	}
	if n > 0 {
		clear(st.orphans[:n])
		st.orphans = st.orphans[n:]
	}
	// An orphan arriving from now on came after now; RSTs more than
	// ResetWindow before that cannot match it.
	limit := now.Add(-ResetWindow - orphanDelay)
	if len(st.orphans) > 0 && st.orphans[0].at.Add(-ResetWindow).Before(limit) {
		limit = st.orphans[0].at.Add(-ResetWindow)
	}
	k := 0
	for k < len(st.resets) && st.resets[k].ts.Before(limit) {
		k++
	}
	if k > 0 {
		st.resets = st.resets[k:]
	}
}

func (st *loopState) matchOrphan(o *orphan, now time.Time) {
	m := st.src.m
	var cands []*resetSeen
	var p *pending
	ambiguous := false
	for i := range st.resets {
		r := &st.resets[i]
		if !o.matches(r) {
			continue
		}
		// Only a flow still waiting for a socket can be this one's.
		var q *pending
		for _, c := range st.pending.onTuple(keyOf(r.src, r.dst)) {
			if !c.found && !c.first.After(r.ts) {
				q = c
			}
		}
		if q == nil {
			continue
		}
		cands = append(cands, r)
		p = q
		// The RST could be another orphan's just as well (a stall delays
		// several notifications together).
		ambiguous = ambiguous || st.otherOrphanMatches(o, r)
	}
	switch {
	case len(cands) == 0:
		m.orphans.WithLabelValues("unmatched").Inc()
		return
	case len(cands) > 1 || ambiguous:
		// Guessing would risk giving one flow another's name; no later
		// orphan may take these RSTs either.
		for _, r := range cands {
			r.used = true
		}
		m.orphans.WithLabelValues("ambiguous").Inc()
		return
	}
	match := cands[0]
	match.used = true
	p.found = true
	k := keyOf(match.src, match.dst)
	sk := sockKey{k, o.cookie}
	if _, ok := st.named.lookup(sk); ok {
		return
	}
	uuid := FromCookie(st.src.Prefix(), o.cookie)
	g := gone{cookie: o.cookie, at: o.at, local: match.src, remote: match.dst, uuid: uuid, notified: true}
	st.gone.add(k, g)
	m.orphans.WithLabelValues("named").Inc()
	st.open(sk, st.destroyStamp(k, o.at), uuid, match.src, match.dst, p.first, now, howReset, false)
	st.src.sink.Close(o.at, uuid)
}

// otherOrphanMatches reports whether an orphan other than o, still waiting,
// could have sent r.
func (st *loopState) otherOrphanMatches(o *orphan, r *resetSeen) bool {
	for i := range st.orphans {
		if p := &st.orphans[i]; p != o && p.matches(r) {
			return true
		}
	}
	return false
}
