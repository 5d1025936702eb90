package flows

import (
	"encoding/binary"
	"errors"
	"path/filepath"
	"slices"
	"time"

	"github.com/headercap/headercap/capture"
	"github.com/headercap/headercap/events"
)

// flowState is where a flow is in its life. The names are the label values
// of pcap_saver_states.
type flowState uint8

const (
	statePending flowState = iota // waiting for its UUID, packets held in RAM
	stateActive                   // named, packets appended
	stateCapped                   // capture duration over, file finished, packets counted and dropped
	nStates
)

var stateNames = [nStates]string{"pending", "active", "capped"}

// Reasons a flow ends: label values of pcap_flows_ended_total.
const (
	endTimeout  = "timeout"  // -flowtimeout of silence
	endClosed   = "closed"   // tcp-info reported the socket closed
	endReused   = "reused"   // a new connection on the same 4-tuple
	endNoUUID   = "no_uuid"  // no UUID within -uuidwaitduration
	endShutdown = "shutdown" // the process is stopping
)

type flow struct {
	key    Key
	state  flowState
	first  time.Time // first packet
	last   time.Time // latest packet
	lookup time.Time // latest registry lookup while pending
	claim  *claim

	isn     uint32 // sequence number of the first SYN seen
	sawSYN  bool
	client  side // the endpoint that sent the first SYN
	sawEnd  bool // a FIN or RST was seen
	packets int  // packets saved (or held while pending)

	// buf holds pcap records not yet written: all of them while pending,
	// the tail after the last spill while active.
	buf []byte
	// spill is the temporary file the head of the flow went to when buf
	// grew past Config.SpillBytes; empty if none.
	spill string
	dir   string // date folder, set when named
	queue uint32 // writer queue, set when named
}

// Worker owns the flow table of one capture worker. It implements
// capture.Handler; all its methods must be called from one goroutine at a
// time (the capture worker's while capture runs, the caller of Finish after).
type Worker struct {
	f     *Flows
	table map[Key]*flow
	// retired holds, per 4-tuple, earlier connections on the tuple that
	// still wait for their UUID (oldest first); table holds the latest.
	retired map[Key][]*flow
	// pending lists the flows waiting for a UUID, in table or retired, so
	// that Tick looks only at them between sweeps.
	pending   map[*flow]struct{}
	lastSweep time.Time
	now       time.Time // latest time seen, packet or tick
	lastPkt   time.Time // latest packet timestamp
	cands     []*claim  // scratch for naming
	gens      []*flow   // scratch for naming
	finishing bool      // Finish: match what can be matched, now
	pkt       Packet
}

// HandleFrame implements capture.Handler.
func (w *Worker) HandleFrame(fr *capture.Frame) {
	m := w.f.m
	ts := fr.Timestamp
	if ts.After(w.now) {
		w.now = ts
	}
	if ts.After(w.lastPkt) {
		w.lastPkt = ts
	}
	if err := Parse(fr.Data, &w.pkt); err != nil {
		if errors.Is(err, errNotTCP) || errors.Is(err, errNotIP) || errors.Is(err, errFragment) {
			m.ignored.Inc()
		} else {
			m.badPackets.Inc()
		}
		return
	}
	key := KeyOf(&w.pkt)
	fl := w.table[key]
	if fl != nil && w.pkt.Flags&(flagSYN|flagACK) == flagSYN && fl.sawSYN && (fl.sawEnd || w.pkt.Seq != fl.isn) {
		// A new connection on a reused 4-tuple: the old one is over. If it
		// still waits for its UUID it keeps waiting, retired.
		w.retire(fl)
		fl = nil
	}
	if fl == nil {
		if fl = w.newFlow(key, ts); fl == nil {
			return
		}
	}
	fl.last = ts
	if w.pkt.Flags&flagSYN != 0 && !fl.sawSYN && w.pkt.Flags&flagACK == 0 {
		fl.sawSYN = true
		fl.isn = w.pkt.Seq
		fl.client = sideA
		if w.pkt.SrcPort != key.PA || w.pkt.Src != key.A {
			fl.client = sideB
		}
	}
	if w.pkt.Flags&(flagFIN|flagRST) != 0 {
		fl.sawEnd = true
		if w.pkt.Flags&flagRST != 0 && fl.state == statePending && w.f.cfg.OnReset != nil {
			src, dst := w.pkt.AddrPorts()
			w.f.cfg.OnReset(src, dst, ts)
		}
	}
	switch fl.state {
	case statePending:
		if ts.Sub(fl.lookup) >= time.Millisecond {
			fl.lookup = ts
			w.nameKey(key, ts)
		}
		if fl.state == statePending && (fl.packets >= w.f.cfg.MaxPendingPackets || w.f.pendingBytes.Load() >= w.f.cfg.MaxPendingBytes) {
			m.missedPackets.WithLabelValues("pending").Inc()
			return
		}
	case stateActive:
		if ts.Sub(fl.first) > w.f.cfg.CaptureDuration {
			w.finishFile(fl)
		}
	}
	if fl.state == stateCapped {
		m.packetsAfterCapture.Inc()
		return
	}
	w.appendPacket(fl, fr)
	if fl.state == stateActive && len(fl.buf) >= w.f.cfg.SpillBytes {
		w.spillFlow(fl)
	}
}

// newFlow starts a flow for key, or returns nil if limits shed it.
func (w *Worker) newFlow(key Key, ts time.Time) *flow {
	f := w.f
	if f.cfg.MaxFlows > 0 && f.live.Load() >= int64(f.cfg.MaxFlows) {
		f.m.skipped.WithLabelValues("maxflows").Inc()
		f.m.missedPackets.WithLabelValues("shed").Inc()
		return nil
	}
	if f.cfg.MaxHeap > 0 && f.heap.bytes(ts) > f.cfg.MaxHeap {
		f.m.skipped.WithLabelValues("maxheap").Inc()
		f.m.missedPackets.WithLabelValues("shed").Inc()
		return nil
	}
	fl := &flow{key: key, state: statePending, first: ts, last: ts}
	w.table[key] = fl
	f.live.Add(1)
	f.m.active.Inc()
	f.m.states[statePending].Inc()
	w.pending[fl] = struct{}{}
	if f.cfg.OnNewFlow != nil {
		a, b := key.AddrPorts()
		f.cfg.OnNewFlow(a, b, ts)
	}
	w.nameKey(key, ts)
	return fl
}

// clientMargin is how long before its connection's first packet a socket
// may be seen alive: a client socket exists just before it sends its SYN.
const clientMargin = 50 * time.Millisecond

// settle is how long after a claim's time a worker that saw no later packet
// waits before trusting that it has seen every connection that started
// before the claim.
const settle = 100 * time.Millisecond

// expiryMargin is how long before a waiting connection would be dropped
// that nameKey stops waiting for more claims on its tuple: a few ticks.
const expiryMargin = 150 * time.Millisecond

// nameKey hands the claims for key to the connections on key they belong
// to.
//
// tcp-info stamps an Open with the time its poll finished, which may be
// well after it saw the socket, and delivers it later still. What holds is
// order: on one 4-tuple, connections follow each other without overlap,
// and their UUIDs' stamps follow the same order, each after its
// connection's start. So the claims, newest first, go to the latest
// connection still waiting that started before the claim's stamp and
// before the connection given to the next newer claim. When a tuple has a
// single connection waiting (no reuse: the common case) a claim is handed
// over at once; when several wait, the claims are matched only
// Config.ReuseSettle after their stamp, or when one of the waiting
// connections is about to be dropped, so that the newer claims that could
// change the match have arrived (tcp-info may deliver them seconds late on
// a loaded host).
func (w *Worker) nameKey(key Key, now time.Time) {
	gens := w.gens[:0]
	gens = append(gens, w.retired[key]...)
	if fl := w.table[key]; fl != nil && fl.state == statePending {
		gens = append(gens, fl)
	}
	if len(gens) == 0 {
		return
	}
	w.cands = w.f.names.candidates(key, now, w.cands[:0])
	// Only claims whose connection has surely been seen by now.
	ready := w.cands[:0]
	for _, c := range w.cands {
		if c.opened.After(w.lastPkt) && now.Sub(c.opened) < settle && !w.finishing {
			break // candidates are sorted; later ones are not ready either
		}
		ready = append(ready, c)
	}
	// Waiting for newer claims ends when a connection that could take one
	// is about to be dropped for want of a UUID.
	expiring := w.finishing
	for _, g := range gens {
		if now.Sub(g.first) >= w.f.cfg.UUIDWait-expiryMargin {
			expiring = true
		}
	}
	limit := len(gens)
	for i := len(ready) - 1; i >= 0 && limit > 0; i-- {
		c := ready[i]
		j := limit - 1
		for j >= 0 && !startedBefore(gens[j], c) {
			j--
		}
		if j < 0 {
			continue
		}
		limit = j
		if (len(gens) > 1 || len(ready) > 1) && now.Sub(c.opened) < w.f.cfg.ReuseSettle && !expiring {
			continue // ambiguous: a newer claim may still take gens[j]
		}
		if w.f.names.take(c) {
			w.setName(gens[j], c, now)
		}
	}
	clear(w.cands)
	clear(gens)
	w.gens = gens
}

// startedBefore reports whether fl began before c's socket was seen (with
// a margin when the local socket may be the client).
func startedBefore(fl *flow, c *claim) bool {
	limit := c.opened
	if c.local == sideUnknown || fl.client == sideUnknown || c.local == fl.client {
		limit = limit.Add(clientMargin)
	}
	return !fl.first.After(limit)
}

// setName makes fl active under c's UUID.
func (w *Worker) setName(fl *flow, c *claim, now time.Time) {
	if err := events.ValidateUUID(c.uuid); err != nil {
		// The event sources already refuse these; this is the last line.
		w.f.m.saverErrors.WithLabelValues("bad_uuid").Inc()
		c.ended.Store(now.UnixNano())
		return
	}
	w.f.pendingBytes.Add(-int64(len(fl.buf)))
	fl.claim = c
	fl.queue = w.f.writer.queueOf(c.uuid)
	fl.dir = filepath.Join(w.f.cfg.DataDir, c.opened.UTC().Format("2006/01/02"))
	w.setState(fl, stateActive)
	delete(w.pending, fl)
	w.f.m.starts.Inc()
	if c.source != "" {
		w.f.m.named.WithLabelValues(c.source).Inc()
	}
	w.f.m.uuidWait.Observe(max(now.Sub(fl.first), 0).Seconds())
	switch {
	case w.table[fl.key] != fl:
		w.end(fl, endReused) // retired: its connection is over
	case now.Sub(fl.first) > w.f.cfg.CaptureDuration:
		w.finishFile(fl)
	}
}

// retire ends fl because a new connection began on its tuple, or keeps it
// waiting for its UUID outside the table.
func (w *Worker) retire(fl *flow) {
	if fl.state != statePending {
		w.end(fl, endReused)
		return
	}
	delete(w.table, fl.key)
	w.retired[fl.key] = append(w.retired[fl.key], fl)
}

func (w *Worker) setState(fl *flow, s flowState) {
	w.f.m.states[fl.state].Dec()
	w.f.m.states[s].Inc()
	fl.state = s
}

// pcap record header: seconds, nanoseconds, captured length, wire length.
const recordHeaderLen = 16

func (w *Worker) appendPacket(fl *flow, fr *capture.Frame) {
	n := min(len(fr.Data), w.pkt.HeaderEnd, w.f.cfg.MaxHeaderSize)
	ts := fr.Timestamp
	var hdr [recordHeaderLen]byte
	binary.LittleEndian.PutUint32(hdr[0:], uint32(ts.Unix()))
	binary.LittleEndian.PutUint32(hdr[4:], uint32(ts.Nanosecond()))
	binary.LittleEndian.PutUint32(hdr[8:], uint32(n))
	binary.LittleEndian.PutUint32(hdr[12:], uint32(max(fr.WireLen, n)))
	if fl.buf == nil {
		fl.buf = w.f.getBuf()
	}
	fl.buf = append(fl.buf, hdr[:]...)
	start := len(fl.buf)
	fl.buf = append(fl.buf, fr.Data[:n]...)
	if method := w.f.cfg.Anonymize; method != 0 {
		rec := fl.buf[start:]
		alen := 4
		if w.pkt.IPv6 {
			alen = 16
		}
		anonymizeAt(method, rec, w.pkt.AddrOff, alen)
		anonymizeAt(method, rec, w.pkt.AddrOff+alen, alen)
	}
	fl.packets++
	if fl.state == statePending {
		w.f.pendingBytes.Add(int64(recordHeaderLen + n))
	}
	w.f.m.packetsSaved.Inc()
}

// spillFlow hands fl's buffered records to its writer, to be appended to
// its spill file, so that a long flow holds at most Config.SpillBytes in RAM.
func (w *Worker) spillFlow(fl *flow) {
	if fl.spill == "" {
		fl.spill = filepath.Join(fl.dir, "."+fl.claim.uuid+spillSuffix)
	}
	w.f.writer.submit(fl.queue, &job{uuid: fl.claim.uuid, dir: fl.dir, buf: fl.buf, spill: fl.spill, isSpill: true})
	fl.buf = w.f.getBuf()
}

// finishFile hands fl's records to the writer and caps the flow: later
// packets are counted and dropped until the flow ends.
func (w *Worker) finishFile(fl *flow) {
	if fl.state != stateActive {
		return
	}
	w.f.writer.submit(fl.queue, &job{uuid: fl.claim.uuid, dir: fl.dir, buf: fl.buf, spill: fl.spill})
	fl.buf = nil
	fl.spill = ""
	w.setState(fl, stateCapped)
	w.f.m.stops.Inc()
}

// end removes fl from the table, finishing its file if it has one.
func (w *Worker) end(fl *flow, reason string) {
	m := w.f.m
	switch fl.state {
	case statePending:
		if reason == endShutdown {
			m.missedUUIDs.WithLabelValues("shutdown").Inc()
		} else {
			m.missedUUIDs.WithLabelValues("pending").Inc()
		}
		reason = endNoUUID
		m.missedPackets.WithLabelValues("pending").Add(float64(fl.packets))
		w.f.pendingBytes.Add(-int64(len(fl.buf)))
		w.f.putBuf(fl.buf)
		fl.buf = nil
		delete(w.pending, fl)
	case stateActive:
		w.finishFile(fl)
	}
	if fl.claim != nil {
		fl.claim.ended.Store(max(w.now.UnixNano(), 1))
	}
	m.states[fl.state].Dec()
	m.ended.WithLabelValues(reason).Inc()
	m.active.Dec()
	w.f.live.Add(-1)
	if w.table[fl.key] == fl {
		delete(w.table, fl.key)
	} else if old := w.retired[fl.key]; len(old) > 0 {
		old = slices.DeleteFunc(old, func(x *flow) bool { return x == fl })
		if len(old) == 0 {
			delete(w.retired, fl.key)
		} else {
			w.retired[fl.key] = old
		}
	}
}

// Tick implements capture.Handler. It names waiting flows, and every
// Config.SweepInterval ends the flows that timed out, closed or ran past
// the capture duration.
func (w *Worker) Tick(now time.Time) {
	if now.After(w.now) {
		w.now = now
	}
	now = w.now
	cfg := &w.f.cfg
	for fl := range w.pending {
		w.nameKey(fl.key, now)
		if fl.state == statePending && now.Sub(fl.first) > cfg.UUIDWait {
			w.end(fl, endNoUUID)
		}
	}
	if now.Sub(w.lastSweep) < cfg.SweepInterval {
		return
	}
	w.lastSweep = now
	start := time.Now()
	for _, fl := range w.table {
		switch {
		case now.Sub(fl.last) > cfg.FlowTimeout:
			w.end(fl, endTimeout)
			w.f.m.garbageCollected.Inc()
		case fl.claim != nil && fl.claim.closedAt.Load() != 0 &&
			now.Sub(time.Unix(0, fl.claim.closedAt.Load())) > cfg.CloseGrace:
			w.end(fl, endClosed)
		case fl.state == stateActive && now.Sub(fl.first) > cfg.CaptureDuration:
			w.finishFile(fl)
		}
	}
	w.f.m.gcLatency.Observe(time.Since(start).Seconds())
}

// Finish ends every flow, as at shutdown: named flows are written, flows
// still waiting for a UUID are counted as missed.
func (w *Worker) Finish() {
	w.finishing = true
	now := w.now
	for key := range w.table {
		w.nameKey(key, now)
	}
	for key := range w.retired {
		w.nameKey(key, now)
	}
	for _, fl := range w.table {
		w.end(fl, endShutdown)
	}
	for _, old := range w.retired {
		for _, fl := range old {
			w.end(fl, endShutdown)
		}
	}
}

// Len returns the number of flows the worker holds.
func (w *Worker) Len() int {
	n := len(w.table)
	for _, old := range w.retired {
		n += len(old)
	}
	return n
}
