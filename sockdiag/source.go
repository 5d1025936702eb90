package sockdiag

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

const (
	// maxBatch is the most lookups queried in one netlink round trip (two
	// requests each, one per orientation). Replies must fit the query
	// socket's receive buffer; the transport may lower it.
	maxBatch = 64
	// maxBatchesPerTurn bounds the round trips between two looks at the
	// request and destroy channels, so neither starves.
	maxBatchesPerTurn = 16
	// destroyQueue is how many batches of destroy notifications may wait
	// for the loop before the reader blocks (and the kernel starts dropping
	// notifications, counted as overruns).
	destroyQueue = 1024
	// drainRequests is the most lookup requests taken from the queue at once.
	drainRequests = 1024
	// maxLocalAddrs bounds the addresses remembered as local.
	maxLocalAddrs = 4096
	// bothEvery: a lookup with one side known local queries only that
	// orientation, but every bothEvery-th attempt asks both, in case the
	// other side is local too or the address moved.
	bothEvery = 4
)

// openTransport opens the netlink sockets; tests replace it.
var openTransport = openNetlink

// querier performs exact socket lookups, one netlink round trip per call.
// Used by the loop goroutine only.
type querier interface {
	// query asks for every id in one round trip and sets res[i] (len(res)
	// >= len(ids)) to the kernel's answer to ids[i]. It returns when the
	// kernel had answered (the kernel looks the sockets up between the
	// call and then). An error means the round trip failed; results it
	// did not fill are resultLost.
	query(ids []sockID, res []queryResult) (time.Time, error)
	// batchLimit is the most ids one query may carry.
	batchLimit() int
	close() error
}

type resultKind uint8

const (
	resultLost     resultKind = iota // no answer (a dropped reply, a failed round trip)
	resultNotFound                   // the kernel has no such socket
	resultFound
)

type queryResult struct {
	kind resultKind
	msg  diagMsg
}

// destroyReader delivers destroy notifications. read is called by one
// goroutine; close may be called concurrently with it and unblocks it.
type destroyReader interface {
	// read blocks until notifications arrive and returns them with their
	// arrival time. It returns errOverrun when the kernel dropped some,
	// and errClosed once close was called.
	read() (destroyBatch, error)
	close() error
}

type destroyBatch struct {
	at   time.Time
	msgs []diagMsg
	bad  int // messages that did not decode
}

var (
	errOverrun = errors.New("sockdiag: destroy notifications dropped by the kernel (receive buffer overrun)")
	errClosed  = errors.New("sockdiag: socket closed")
)

// Source names local TCP sockets with the UUIDs tcp-info gives them, from
// the kernel's sock_diag interface. Create it with New and run it with Run.
// Lookup, SetPrefix and Prefix are safe for concurrent use, also before and
// after Run.
type Source struct {
	cfg    Config
	sink   Sink
	log    *slog.Logger
	m      *metrics
	prefix atomic.Pointer[string]

	// reqs carries Lookup requests to the loop. Never closed: Lookup may be
	// called at any time.
	reqs chan request

	q       querier
	d       destroyReader // nil: no destroy notifications, queries only
	running atomic.Bool
}

type request struct {
	a, b  netip.AddrPort
	first time.Time // the flow's first packet; for a reset, the RST's time
	reset bool      // a RST from a to b (Reset), not a Lookup
}

// New returns a Source that delivers to sink and registers its metrics on
// reg. On Linux it opens its two netlink sockets at once, in the network
// namespace of the calling thread, where they stay: a caller that wants
// another namespace switches the thread (runtime.LockOSThread, setns)
// around New. If the subscription to destroy notifications fails (a kernel
// without the sock_diag destroy groups), New logs it once, counts it in
// pcap_uuid_source_errors_total{reason="subscribe"} and returns a Source
// that works with queries alone. Run owns the sockets and closes them when
// it returns. Elsewhere New returns ErrNotSupported.
func New(cfg Config, sink Sink, reg prometheus.Registerer) (*Source, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if sink == nil {
		return nil, errors.New("sockdiag: nil Sink")
	}
	cfg = cfg.withDefaults()
	p := cfg.Prefix
	if p == "" {
		var err error
		if p, err = DefaultPrefix(cfg.PrefixFile); err != nil {
			return nil, err
		}
	}
	q, d, subErr, err := openTransport()
	if err != nil {
		return nil, err
	}
	s := newSource(cfg, sink, reg, q, d)
	s.SetPrefix(p)
	if subErr != nil {
		s.m.errors.WithLabelValues("subscribe").Inc()
		s.log.Warn("sockdiag: no destroy notifications; naming sockets by queries alone (short connections that end before a query succeeds stay unnamed)", "err", subErr)
	}
	return s, nil
}

// newSource builds a Source on the given transport; cfg has its defaults.
func newSource(cfg Config, sink Sink, reg prometheus.Registerer, q querier, d destroyReader) *Source {
	return &Source{
		cfg:  cfg,
		sink: sink,
		log:  cfg.Logger,
		m:    newMetrics(reg),
		reqs: make(chan request, cfg.Queue),
		q:    q,
		d:    d,
	}
}

// Lookup asks for the UUID of the TCP flow between a and b (either may be
// the local side) whose first packet was seen at first (the packet's
// capture timestamp: a socket destroyed before it is never this flow's,
// so a zero time would match any recently destroyed socket of the tuple).
// It never blocks: when the queue is full the request is dropped and
// counted. The answer, if any, comes as a Sink.Open. Calling it again for
// the same flow is harmless; a socket is opened at most once.
func (s *Source) Lookup(a, b netip.AddrPort, first time.Time) {
	s.m.lookups.Inc()
	select {
	case s.reqs <- request{a: a, b: b, first: first}:
	default:
		s.m.dropped.Inc()
	}
}

// Reset tells the source that the capture saw a RST from src to dst at ts
// on a flow that still waits for its UUID. A socket reset by its own
// application (SO_LINGER 0, or a disconnect) is destroyed with its peer's
// port zeroed, so its destroy notification does not say which flow it
// was; when exactly one such RST matches it (the socket's port and the
// peer's address, sent at most ResetWindow before the notification came),
// it names that flow. It never blocks, like Lookup.
func (s *Source) Reset(src, dst netip.AddrPort, ts time.Time) {
	select {
	case s.reqs <- request{a: src, b: dst, first: ts, reset: true}:
	default:
		s.m.dropped.Inc()
	}
}

// SetPrefix makes p the prefix of the UUIDs named from now on (sockets
// already named keep their UUID, also in their Close). Safe for concurrent
// use.
func (s *Source) SetPrefix(p string) { s.prefix.Store(&p) }

// Prefix returns the current UUID prefix. Safe for concurrent use.
func (s *Source) Prefix() string { return *s.prefix.Load() }

// Run answers lookups and reads destroy notifications until ctx is done,
// then closes the netlink sockets and returns nil once every goroutine it
// started has exited. Failed round trips are not errors: they are logged
// once per outage, counted, and retried. Run may be called only once.
func (s *Source) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("sockdiag: Source.Run called more than once")
	}
	// destroys carries notifications from the reader to the loop; the
	// reader never closes it (the loop stops on ctx, not on the channel).
	destroys := make(chan destroyBatch, destroyQueue)
	var wg sync.WaitGroup
	if s.d != nil {
		wg.Go(func() { s.readDestroys(ctx, destroys) })
	}
	s.loop(ctx, destroys)
	var errs []error
	if s.d != nil {
		if err := s.d.close(); err != nil {
			errs = append(errs, fmt.Errorf("sockdiag: close destroy socket: %w", err))
		}
	}
	wg.Wait()
	if err := s.q.close(); err != nil {
		errs = append(errs, fmt.Errorf("sockdiag: close query socket: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		s.log.Warn("sockdiag: closing netlink sockets", "err", err)
	}
	return nil
}

// readDestroys forwards destroy notifications to the loop until the socket
// is closed or ctx is done.
func (s *Source) readDestroys(ctx context.Context, out chan<- destroyBatch) {
	for {
		b, err := s.d.read()
		switch {
		case err == nil:
		case errors.Is(err, errOverrun):
			s.m.overruns.Inc()
		case errors.Is(err, errClosed):
			return
		default:
			if ctx.Err() == nil {
				s.m.errors.WithLabelValues("destroy_read").Inc()
				s.log.Warn("sockdiag: reading destroy notifications failed; continuing with queries alone", "err", err)
			}
			return
		}
		if b.bad > 0 {
			s.m.errors.WithLabelValues("decode").Add(float64(b.bad))
		}
		if len(b.msgs) == 0 {
			continue
		}
		select {
		case out <- b:
		case <-ctx.Done():
			return
		}
	}
}

// loop owns all lookup state; it is the only caller of the querier and of
// the Sink.
func (s *Source) loop(ctx context.Context, destroys <-chan destroyBatch) {
	st := &loopState{
		src:        s,
		pending:    newPendingSet(),
		named:      newNamedSet(maxNamed),
		gone:       newGoneCache(goneTTL, maxGone),
		cookies:    newCookieTuples(maxCookieTuples),
		localAddrs: map[netip.Addr]struct{}{},
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := time.Now()
		more := st.runDue(now)
		st.matchOrphans(time.Now())
		st.gone.expire(time.Now(), st.named.remove)
		s.m.pending.Set(float64(st.pending.len()))

		wait := goneTTL
		if more {
			wait = 0
		} else if next, ok := st.pending.nextDue(); ok {
			wait = max(0, time.Until(next))
		}
		if len(st.orphans) > 0 {
			wait = min(wait, max(0, time.Until(st.orphans[0].at.Add(orphanDelay))))
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case r := <-s.reqs:
			st.request(r, time.Now())
		drain:
			for range drainRequests - 1 {
				select {
				case r := <-s.reqs:
					st.request(r, time.Now())
				default:
					break drain
				}
			}
		case b := <-destroys:
			for _, m := range b.msgs {
				st.destroyed(m, b.at)
			}
		case <-timer.C:
		}
	}
}

// loopState is the loop goroutine's state; not safe for concurrent use.
type loopState struct {
	src     *Source
	pending *pendingSet
	named   *namedSet
	gone    *goneCache
	cookies *cookieTuples
	// orphans are destroyed sockets whose notification lost the peer's
	// port (see Reset), oldest first, until orphanDelay after they came;
	// resets are the RSTs the capture reported, until they are too old
	// to match one.
	orphans []orphan
	resets  []resetSeen

	// localAddrs are addresses seen as the local side of a socket. A
	// lookup between a known local address and another one needs only one
	// request, not one per orientation.
	localAddrs map[netip.Addr]struct{}

	// Scratch buffers reused by runDue.
	due   []*pending
	spans [][2]int // ids[spans[i][0]:spans[i][1]] are due[i]'s requests
	ids   []sockID
	res   []queryResult

	queryFailing bool // a round trip failed and none succeeded since
}

// request handles one request received at now.
func (st *loopState) request(r request, now time.Time) {
	if r.reset {
		st.resetSeen(r, now)
		return
	}
	st.lookup(r, now)
}

// lookup handles one Lookup request received at now.
func (st *loopState) lookup(r request, now time.Time) {
	s := st.src
	a := netip.AddrPortFrom(r.a.Addr().Unmap(), r.a.Port())
	b := netip.AddrPortFrom(r.b.Addr().Unmap(), r.b.Port())
	if !a.IsValid() || !b.IsValid() || a.Port() == 0 || b.Port() == 0 || a.Addr().Is4() != b.Addr().Is4() {
		s.m.errors.WithLabelValues("invalid_lookup").Inc()
		return
	}
	k := keyOf(a, b)
	// Sockets of the tuple destroyed after the flow began are the flow's,
	// or newer flows': their notifications came before the lookup (the
	// capture lags). Name them all; the flow table gives each name to the
	// connection it belongs to by the names' times.
	found := false
	for _, g := range st.gone.after(k, r.first, now) {
		found = true
		st.openGone(sockKey{k, g.cookie}, g, r.first, now)
	}
	if p := st.pending.get(k, r.first); p != nil {
		p.deadline = now.Add(s.cfg.MaxWait)
		return
	}
	st.pending.add(&pending{
		key:      k,
		a:        a,
		b:        b,
		first:    r.first,
		deadline: now.Add(s.cfg.MaxWait),
		next:     now,
		delay:    s.cfg.Retry,
		found:    found,
	})
}

// runDue queries the lookups due at now, at most maxBatchesPerTurn round
// trips; it reports whether more are due.
func (st *loopState) runDue(now time.Time) bool {
	s := st.src
	limit := max(1, min(maxBatch, s.q.batchLimit()/2))
	for range maxBatchesPerTurn {
		st.due = st.pending.popDue(st.due[:0], now, limit)
		if len(st.due) == 0 {
			return false
		}
		st.ids, st.spans = st.ids[:0], st.spans[:0]
		for _, p := range st.due {
			start := len(st.ids)
			if p.done {
				// Due at its deadline only: forgotten below.
				st.spans = append(st.spans, [2]int{start, start})
				continue
			}
			aLocal, bLocal := st.isLocal(p.a.Addr()), st.isLocal(p.b.Addr())
			both := aLocal == bLocal || p.tries%bothEvery == bothEvery-1
			if both || aLocal {
				st.ids = append(st.ids, sockID{local: p.a, remote: p.b})
			}
			if both || bLocal {
				st.ids = append(st.ids, sockID{local: p.b, remote: p.a})
			}
			st.spans = append(st.spans, [2]int{start, len(st.ids)})
			p.tries++
		}
		if cap(st.res) < len(st.ids) {
			st.res = make([]queryResult, len(st.ids))
		}
		res := st.res[:len(st.ids)]
		clear(res)
		sent := time.Now()
		answered, err := s.q.query(st.ids, res)
		s.m.queries.Inc()
		after := time.Now()
		st.noteQueryError(err)
		for i, p := range st.due {
			for _, r := range res[st.spans[i][0]:st.spans[i][1]] {
				if r.kind != resultFound || keyOf(r.msg.local, r.msg.remote) != p.key {
					continue
				}
				st.cookies.add(r.msg.cookie, sockID{r.msg.local, r.msg.remote})
				if st.acceptable(p, r.msg, after) {
					st.answer(p, r.msg, sent, answered, after)
				}
			}
			switch {
			case !after.Before(p.deadline):
				if !p.found {
					s.m.misses.Inc()
				}
				st.pending.remove(p)
			default:
				p.next = after.Add(p.delay)
				switch {
				case p.done:
					// No more queries: forgotten at the deadline, rounded
					// so that one wakeup forgets many.
					p.next = p.deadline.Truncate(doneSweep).Add(doneSweep)
				case p.next.After(p.deadline):
					p.next = p.deadline
				}
				p.delay = min(2*p.delay, MaxRetry)
				st.pending.reschedule(p)
			}
		}
	}
	next, ok := st.pending.nextDue()
	return ok && !next.After(now)
}

func (st *loopState) noteQueryError(err error) {
	s := st.src
	switch {
	case err != nil:
		s.m.errors.WithLabelValues("query").Inc()
		if !st.queryFailing {
			st.queryFailing = true
			s.log.Warn("sockdiag: netlink query failed; retrying", "err", err)
		}
	case st.queryFailing:
		st.queryFailing = false
		s.log.Info("sockdiag: netlink queries work again")
	}
}

// acceptable reports whether the socket m, found by an exact lookup for
// p's flow, is the socket of that flow.
func (st *loopState) acceptable(p *pending, m diagMsg, now time.Time) bool {
	switch {
	case m.state == stateSynRecv || m.state == stateNewSynRecv:
		// A request socket: its cookie is not the one of the full socket
		// the completed handshake creates. Not yet. (A full socket in
		// SYN_RECV, TCP Fast Open's, is ESTABLISHED a round trip later,
		// with the same cookie; tcp-info skips SYN_RECV too.)
		return false
	case m.state == stateListen || m.remote.Port() == 0:
		// A listener matched the orientation that makes our side remote.
		return false
	case keyOf(m.local, m.remote) != p.key:
		return false
	}
	if g, ok := st.gone.get(sockKey{p.key, m.cookie}); ok && !g.at.After(p.first) {
		// Destroyed before the flow began: an earlier connection on the
		// same tuple, still in TIME_WAIT.
		return false
	}
	if m.isTimeWait() && m.state == stateTimeWait && timeWaitIsOlder(m.expires, p.first, now) {
		return false
	}
	return true
}

func (st *loopState) isLocal(a netip.Addr) bool {
	_, ok := st.localAddrs[a]
	return ok
}

func (st *loopState) learnLocal(a netip.Addr) {
	if len(st.localAddrs) < maxLocalAddrs && a.IsValid() && !a.IsUnspecified() {
		st.localAddrs[a] = struct{}{}
	}
}

// staleWindow is how long after a connection's first packet a query may
// still find the socket of the connection before it on the same tuple: the
// capture stamps the new SYN when it arrives, the old socket learns of its
// end when the kernel processes the packets before it, later if the
// application holds the socket's lock. A lookup keeps asking until a query
// sent a staleWindow after its flow began found a socket: that one is the
// flow's, or a newer connection's (and then the flow's own socket is gone
// and named by its destroy notification).
const staleWindow = 2 * time.Millisecond

// doneSweep is the granularity of the deadlines of lookups done querying.
const doneSweep = 100 * time.Millisecond

// answer names the socket m that a query for p found (the kernel looked
// between sent and answered; now is later still), unless it is named
// already, and marks p done when the socket settles it.
//
// The source does not decide which connection of a reused tuple a socket
// belongs to: the flow table does, from the times of the Opens (each name
// goes to the latest connection begun before its time, newest name
// first, each older name to an older connection). So every Open's time
// comes after the socket's connection began, and the tuple's sockets are
// opened in their order. A socket found with its connection open is
// stamped when the kernel had answered (a connection that began while the
// query was on its way may be the one found); one found closing
// (FIN_WAIT, CLOSING, LAST_ACK...) when the query was sent: its
// connection began before, and a connection that begins during the query
// is a newer one; one in TIME_WAIT with the time it entered it (see
// destroyStamp for those named from destroy notifications). A socket
// found open may still be an older connection's that has not learned of
// its end yet, after a newer connection's SYN came in: stamped after that
// SYN, it still goes to the older connection, as long as the newer one's
// socket is named too, with a later time.
func (st *loopState) answer(p *pending, m diagMsg, sent, answered, now time.Time) {
	st.learnLocal(m.local.Addr())
	p.found = true
	k := sockKey{p.key, m.cookie}
	if sent.Sub(p.first) >= staleWindow || !st.reused(k) {
		p.done = true
	}
	if _, ok := st.named.lookup(k); ok {
		return
	}
	if g, ok := st.gone.get(k); ok {
		// Its destroy notification came first (and closed it).
		st.openGone(k, g, p.first, now)
		return
	}
	uuid := FromCookie(st.src.Prefix(), m.cookie)
	if !m.isTimeWait() {
		stamp := answered
		if m.state != stateEstablished && m.state != stateSynSent && m.state != stateSynRecv {
			stamp = sent // closing
		}
		// Found with its connection in progress unless in CLOSE (an
		// application holding a socket whose connection ended).
		st.open(k, stamp, uuid, m.local, m.remote, p.first, now, howQuery, m.state != stateClose)
		return
	}
	// The full socket is gone already; its destroy notification (if any)
	// came or comes separately and is deduplicated.
	closed := now
	if m.state == stateTimeWait {
		if elapsed := timeWaitLen - time.Duration(m.expires)*time.Millisecond; elapsed > 0 {
			closed = now.Add(-elapsed)
		}
	}
	p.done = p.done || closed.Sub(p.first) >= staleWindow
	// The estimate is coarse (idiag_expires counts jiffies): never before
	// the flow began (acceptable rejected older ones).
	stamp := closed
	if stamp.Before(p.first) {
		stamp = p.first
	}
	st.open(k, stamp, uuid, m.local, m.remote, p.first, now, howQuery, true)
	st.gone.add(p.key, gone{cookie: m.cookie, at: closed, local: m.local, remote: m.remote, uuid: uuid})
	st.src.sink.Close(closed, uuid)
}

// reused reports whether the tuple of socket k has seen other sockets or
// other flows lately: only then can a query find a socket older than the
// flow that asked.
func (st *loopState) reused(k sockKey) bool {
	if len(st.pending.onTuple(k.tuple)) > 1 || len(st.gone.m[k.tuple]) > 0 {
		return true
	}
	for _, n := range st.named.onTuple(k.tuple) {
		if n.cookie != k.cookie {
			return true
		}
	}
	return false
}

// openGone names a socket that was already destroyed (and closed), unless
// it was named before: Open (see destroyStamp), then Close again at its
// destroy time.
func (st *loopState) openGone(k sockKey, g gone, first, now time.Time) {
	if _, ok := st.named.lookup(k); ok {
		return
	}
	st.open(k, st.destroyStamp(k.tuple, g.at), g.uuid, g.local, g.remote, first, now, howDestroy, false)
	st.src.sink.Close(g.at, g.uuid)
}

// destroyStamp is the Open time of a socket of tuple k destroyed at at,
// named from its destroy notification. The tuple's sockets follow each
// other, and its Opens must keep their order (see answer). A socket the
// source found by a query before at, and whose own destroy notification
// has not come yet, is newer: the destroyed one died before the other was
// found, its notification came late (by milliseconds under load). So the
// stamp is at, or just before the earliest such socket's, and after every
// socket named before with an earlier stamp (older ones, whose
// notifications came first).
func (st *loopState) destroyStamp(k tupleKey, at time.Time) time.Time {
	hi := at
	for _, n := range st.named.onTuple(k) {
		if !n.found || n.stamp.After(hi) {
			continue
		}
		if g, dead := st.gone.get(sockKey{k, n.cookie}); dead && g.notified {
			continue
		}
		hi = n.stamp
	}
	if hi.Equal(at) {
		return at
	}
	var lo time.Time
	for _, n := range st.named.onTuple(k) {
		if n.stamp.Before(hi) && n.stamp.After(lo) {
			lo = n.stamp
		}
	}
	stamp := hi.Add(-time.Microsecond)
	if !stamp.After(lo) {
		stamp = lo.Add(hi.Sub(lo) / 2)
	}
	return stamp
}

// destroyed handles a destroy notification that arrived at at.
func (st *loopState) destroyed(m diagMsg, at time.Time) {
	if m.remote.Port() == 0 || !m.remote.Addr().IsValid() || m.remote.Addr().IsUnspecified() {
		// A listener, a socket that never connected, or one closed with
		// SO_LINGER 0 (the kernel zeroed its peer): only a query that saw
		// its cookie before knows its tuple.
		id, ok := st.cookies.get(m.cookie)
		if !ok {
			if m.local.Port() != 0 && m.remote.Addr().IsValid() && !m.remote.Addr().IsUnspecified() {
				st.addOrphan(orphan{local: m.local, peer: m.remote.Addr(), cookie: m.cookie, at: at})
			}
			return
		}
		m.local, m.remote = id.local, id.remote
	}
	st.learnLocal(m.local.Addr())
	k := keyOf(m.local, m.remote)
	sk := sockKey{k, m.cookie}
	uuid, named := st.named.lookup(sk)
	if !named {
		uuid = FromCookie(st.src.Prefix(), m.cookie)
	}
	g := gone{cookie: m.cookie, at: at, local: m.local, remote: m.remote, uuid: uuid, notified: true}
	if !st.gone.add(k, g) {
		return // already seen destroyed
	}
	if !named {
		if p := st.pending.earliest(k); p != nil && p.first.Before(at) {
			// A flow waiting on the tuple began before this socket died:
			// it is that flow's socket or a newer one's.
			p.found = true
			st.openGone(sk, g, p.first, time.Now())
			return
		}
	}
	st.src.sink.Close(at, uuid)
}

type how int

const (
	howQuery   how = iota // a query found it
	howDestroy            // a destroy notification
	howReset              // an orphan destroy notification and a RST
)

// open passes a socket to Sink.Open and remembers it as named. first is
// the first packet of the flow whose lookup led to it; foundAlive: a query
// found it (with its connection in progress, or in TIME_WAIT).
func (st *loopState) open(k sockKey, ts time.Time, uuid string, local, remote netip.AddrPort, first, now time.Time, h how, foundAlive bool) {
	st.named.add(k, uuid, ts, foundAlive)
	st.src.sink.Open(ts, uuid, local, remote)
	m := st.src.m
	switch h {
	case howQuery:
		m.uuidsQuery.Inc()
	case howDestroy:
		m.uuidsDestroy.Inc()
	default:
		m.uuidsReset.Inc()
	}
	m.latency.Observe(max(0, now.Sub(first)).Seconds())
}

// metrics are the source's Prometheus metrics.
type metrics struct {
	uuidsQuery   prometheus.Counter
	uuidsDestroy prometheus.Counter
	uuidsReset   prometheus.Counter
	orphans      *prometheus.CounterVec
	lookups      prometheus.Counter
	queries      prometheus.Counter
	misses       prometheus.Counter
	dropped      prometheus.Counter
	overruns     prometheus.Counter
	errors       *prometheus.CounterVec
	pending      prometheus.Gauge
	latency      prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	uuids := f.NewCounterVec(prometheus.CounterOpts{
		Name: "pcap_uuid_source_uuids_total",
		Help: "UUIDs a UUID source handed to the flow table, by source and by how they were learned (query: a sock_diag lookup; destroy: a destroy notification; reset: a destroy notification without the peer's port, tied to its flow by the RST the capture saw).",
	}, []string{"source", "how"})
	m := &metrics{
		uuidsQuery:   uuids.WithLabelValues("netlink", "query"),
		uuidsDestroy: uuids.WithLabelValues("netlink", "destroy"),
		uuidsReset:   uuids.WithLabelValues("netlink", "reset"),
		orphans: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pcap_uuid_source_orphans_total",
			Help: "Destroy notifications without the peer's port (sockets reset by their application), by outcome: named (one RST the capture saw matched), ambiguous (several did), unmatched (none did).",
		}, []string{"outcome"}),
		lookups: f.NewCounter(prometheus.CounterOpts{
			Name: "pcap_uuid_source_lookups_total",
			Help: "Lookup requests made to the netlink UUID source, dropped ones included.",
		}),
		queries: f.NewCounter(prometheus.CounterOpts{
			Name: "pcap_uuid_source_queries_total",
			Help: "Netlink round trips of the netlink UUID source (each carries up to 64 lookups).",
		}),
		misses: f.NewCounter(prometheus.CounterOpts{
			Name: "pcap_uuid_source_misses_total",
			Help: "Lookups given up after the maximum wait: the flow was not a local socket (forwarded traffic, another namespace) or ended unseen.",
		}),
		dropped: f.NewCounter(prometheus.CounterOpts{
			Name: "pcap_uuid_source_dropped_total",
			Help: "Lookup and Reset requests dropped because the netlink UUID source's queue was full.",
		}),
		overruns: f.NewCounter(prometheus.CounterOpts{
			Name: "pcap_uuid_source_destroy_overruns_total",
			Help: "Times the kernel dropped destroy notifications because the receive buffer was full (ENOBUFS).",
		}),
		errors: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pcap_uuid_source_errors_total",
			Help: "Errors of the netlink UUID source: subscribe (no destroy notifications, e.g. no CAP_NET_ADMIN), query (a failed round trip), destroy_read, decode (an undecodable kernel message), invalid_lookup.",
		}, []string{"reason"}),
		pending: f.NewGauge(prometheus.GaugeOpts{
			Name: "pcap_uuid_source_pending",
			Help: "Lookups of the netlink UUID source waiting for an answer.",
		}),
		latency: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "pcap_uuid_source_latency_seconds",
			Help:    "Time from a flow's first packet to its UUID.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 17), // 100µs .. 6.5s
		}),
	}
	for _, r := range []string{"subscribe", "query", "destroy_read", "decode", "invalid_lookup"} {
		m.errors.WithLabelValues(r)
	}
	for _, o := range []string{"named", "ambiguous", "unmatched"} {
		m.orphans.WithLabelValues(o)
	}
	return m
}
