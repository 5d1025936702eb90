package sockdiag

import (
	"errors"
	"net/netip"
	"sync"
	"time"
)

// fakeKernel is a querier and destroyReader over a table of sockets, for
// unit tests of the source's loop (run inside a synctest bubble).
type fakeKernel struct {
	mu       sync.Mutex
	socks    map[sockID]diagMsg // by (local, remote) as the kernel looks them up
	queries  int
	requests int
	failNext int // fail this many round trips

	destroys chan destroyBatch
	closed   chan struct{}
	once     sync.Once
}

func newFakeKernel() *fakeKernel {
	return &fakeKernel{
		socks:    map[sockID]diagMsg{},
		destroys: make(chan destroyBatch, 16),
		closed:   make(chan struct{}),
	}
}

// put makes a socket exist, seen from its local side.
func (k *fakeKernel) put(m diagMsg) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.socks[sockID{m.local, m.remote}] = m
}

func (k *fakeKernel) del(local, remote netip.AddrPort) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.socks, sockID{local, remote})
}

// destroy removes the socket and sends its destroy notification.
func (k *fakeKernel) destroy(m diagMsg, at time.Time) {
	k.del(m.local, m.remote)
	k.destroys <- destroyBatch{at: at, msgs: []diagMsg{m}}
}

func (k *fakeKernel) counts() (queries, requests int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.queries, k.requests
}

func (k *fakeKernel) query(ids []sockID, res []queryResult) (time.Time, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.queries++
	k.requests += len(ids)
	if k.failNext > 0 {
		k.failNext--
		return time.Now(), errors.New("fake round trip failure")
	}
	for i, id := range ids {
		m, ok := k.socks[id]
		if !ok {
			// Like inet_lookup: a listener on the local port matches.
			m, ok = k.socks[sockID{id.local, netip.AddrPortFrom(netip.IPv4Unspecified(), 0)}]
		}
		if ok {
			res[i] = queryResult{kind: resultFound, msg: m}
		} else {
			res[i] = queryResult{kind: resultNotFound}
		}
	}
	return time.Now(), nil
}

func (k *fakeKernel) batchLimit() int { return 2 * maxBatch }

func (k *fakeKernel) close() error {
	k.once.Do(func() { close(k.closed) })
	return nil
}

func (k *fakeKernel) read() (destroyBatch, error) {
	select {
	case b := <-k.destroys:
		return b, nil
	case <-k.closed:
		return destroyBatch{}, errClosed
	}
}

// event is one Sink call.
type event struct {
	open          bool
	ts            time.Time
	uuid          string
	local, remote netip.AddrPort
}

// recSink records Sink calls.
type recSink struct {
	mu  sync.Mutex
	evs []event
}

func (s *recSink) Open(ts time.Time, uuid string, local, remote netip.AddrPort) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.evs = append(s.evs, event{true, ts, uuid, local, remote})
}

func (s *recSink) Close(ts time.Time, uuid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.evs = append(s.evs, event{open: false, ts: ts, uuid: uuid})
}

func (s *recSink) events() []event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]event(nil), s.evs...)
}

func (s *recSink) opens() []event {
	var out []event
	for _, e := range s.events() {
		if e.open {
			out = append(out, e)
		}
	}
	return out
}
