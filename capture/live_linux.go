package capture

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// monitorInterval is how often kernel statistics are read and sockets are
// checked for a vanished interface.
const monitorInterval = time.Second

// Live captures the TCP frames of one or more interfaces with Workers
// AF_PACKET sockets per interface (see the package documentation). Create it
// with NewLive and call Run once. Its methods are safe for concurrent use,
// but Run returns an error when called a second time.
type Live struct {
	cfg Config
	// autoGroup: the kernel picks each interface's fanout group id.
	autoGroup bool
	prog      []bpf.RawInstruction
	handlers  []Handler
	m         *liveMetrics
	started   atomic.Bool
}

// NewLive checks cfg (see Config.Validate), assembles the filter, calls
// newHandler once per worker (numbered 0..NumWorkers()-1; the workers of the
// i-th interface are i*Workers .. i*Workers+Workers-1) and registers the
// capture metrics on reg (nil: not registered). It opens no socket: Run does.
func NewLive(cfg Config, newHandler func(worker int) Handler, reg prometheus.Registerer) (*Live, error) {
	autoGroup := cfg.FanoutGroup == 0
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if newHandler == nil {
		return nil, errors.New("newHandler is nil")
	}
	prog, err := bpf.Assemble(TCPFilter(uint32(cfg.SnapLen)))
	if err != nil {
		return nil, fmt.Errorf("assemble filter: %w", err)
	}
	m, err := newLiveMetrics(reg)
	if err != nil {
		return nil, err
	}
	l := &Live{cfg: cfg, autoGroup: autoGroup, prog: prog, m: m}
	n := len(cfg.Interfaces) * cfg.Workers
	l.handlers = make([]Handler, n)
	for i := range n {
		if l.handlers[i] = newHandler(i); l.handlers[i] == nil {
			return nil, fmt.Errorf("newHandler returned nil for worker %d", i)
		}
	}
	return l, nil
}

// NumWorkers returns the number of workers (and Handlers): interfaces ×
// Workers.
func (l *Live) NumWorkers() int { return len(l.handlers) }

// Run opens the sockets, captures until ctx is done or a socket fails, and
// returns after every goroutine it started has exited and every socket is
// closed. It returns nil when stopped by ctx, else the first error (for
// example an interface that was deleted). Interfaces are resolved and
// sockets opened by the calling goroutine, in its thread's network namespace;
// the sockets keep that namespace.
func (l *Live) Run(ctx context.Context) error {
	if !l.started.CompareAndSwap(false, true) {
		return errors.New("live capture: Run called twice")
	}
	ifaces, err := lookupInterfaces(l.cfg.Interfaces)
	if err != nil {
		return err
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	defer unix.Close(wake)

	workers := make([]*worker, 0, len(l.handlers))
	defer func() { closeSockets(workers) }()
	for i, ifc := range ifaces {
		group := fanout{id: l.cfg.FanoutGroup + uint16(i), unique: l.autoGroup}
		im := l.m.forInterface(ifc.name)
		for j := range l.cfg.Workers {
			s, err := openSocket(ifc, l.prog, l.cfg, group)
			if err != nil {
				return fmt.Errorf("interface %s: %w", ifc.name, err)
			}
			// The other sockets join the group the first one got.
			group = fanout{id: s.group}
			h := l.handlers[i*l.cfg.Workers+j]
			workers = append(workers, &worker{
				iface:        ifc,
				sock:         s,
				fr:           newFrameReader(h, l.cfg.SnapLen, ifc.index, ifc.loopback),
				tick:         l.cfg.TickInterval,
				blockTimeout: l.cfg.BlockTimeout,
				m:            im,
				wakeFd:       wake,
			})
		}
	}
	l.m.interfaces.Add(float64(len(ifaces)))
	defer l.m.interfaces.Sub(float64(len(ifaces)))

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		errOnce  sync.Once
		firstErr error
	)
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err })
		cancel()
	}
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Go(func() {
			if err := w.run(ctx); err != nil {
				fail(err)
			}
		})
	}
	wg.Go(func() {
		if err := monitor(ctx, workers); err != nil {
			fail(err)
		}
	})
	wakerDone := make(chan struct{})
	go func() {
		defer close(wakerDone)
		<-ctx.Done()
		// Every worker polls wake; once written it stays readable.
		var one [8]byte
		binary.NativeEndian.PutUint64(one[:], 1)
		_, _ = unix.Write(wake, one[:])
	}()
	wg.Wait()
	cancel()
	<-wakerDone

	for _, w := range workers {
		w.readStats()
	}
	return firstErr
}

// monitor reads the kernel statistics of every socket each monitorInterval
// and fails when a socket lost its interface (the interface was deleted: the
// kernel then unbinds the socket, which will never see a frame again).
func monitor(ctx context.Context, workers []*worker) error {
	t := time.NewTicker(monitorInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		for _, w := range workers {
			w.readStats()
			if err := w.sock.checkBound(); err != nil {
				return fmt.Errorf("interface %s: %w", w.iface.name, err)
			}
		}
	}
}

// worker reads one socket's ring and calls one Handler. Only its goroutine
// touches fr and the ring; readStats may run on another goroutine.
type worker struct {
	iface ifaceInfo
	sock  *socket
	fr    *frameReader
	tick  time.Duration
	// blockTimeout is how long the kernel may hold frames in a block
	// before it retires it.
	blockTimeout time.Duration
	m            interfaceMetrics
	wakeFd       int
}

// run reads blocks until ctx is done or the socket fails.
func (w *worker) run(ctx context.Context) error {
	r := &w.sock.ring
	h := w.fr.h
	fds := []unix.PollFd{
		{Fd: int32(w.sock.fd), Events: unix.POLLIN},
		{Fd: int32(w.wakeFd), Events: unix.POLLIN},
	}
	next := time.Now().Add(w.tick)
	cur := 0
	for {
		if ctx.Err() != nil {
			return nil
		}
		// Read at most one ring's worth before looking at the clock and
		// ctx again, so a busy worker still ticks and stops.
		for range r.numBlocks {
			if !r.ready(cur) {
				break
			}
			if n := w.fr.readBlock(r.block(cur)); n > 0 {
				w.m.frames.Add(float64(n))
			}
			r.release(cur)
			cur = (cur + 1) % r.numBlocks
			if now := time.Now(); !now.Before(next) {
				h.Tick(w.horizon(now, r.ready(cur)))
				next = now.Add(w.tick)
			}
		}
		if r.ready(cur) {
			continue
		}
		wait := time.Until(next)
		if wait > 0 {
			ms := int((wait + time.Millisecond - 1) / time.Millisecond)
			fds[0].Revents, fds[1].Revents = 0, 0
			_, err := unix.Poll(fds, ms)
			if err != nil && !errors.Is(err, unix.EINTR) {
				return fmt.Errorf("interface %s: poll: %w", w.iface.name, err)
			}
			if fds[1].Revents != 0 {
				return nil // woken: ctx is done
			}
			if fds[0].Revents&unix.POLLNVAL != 0 {
				return fmt.Errorf("interface %s: poll: socket closed", w.iface.name)
			}
			if fds[0].Revents&unix.POLLERR != 0 {
				if err := w.sock.clearError(); err != nil {
					return fmt.Errorf("interface %s: %w", w.iface.name, err)
				}
			}
		}
		if now := time.Now(); !now.Before(next) {
			h.Tick(w.horizon(now, r.ready(cur)))
			next = now.Add(w.tick)
		}
	}
}

// horizon is the time passed to Tick: one before which every frame has been
// handed over. While blocks wait in the ring (the worker is catching up) it
// is the latest frame's timestamp, not the wall clock, so the handler never
// expires a flow whose packets are still in the ring; when the ring is
// drained, frames may still sit in the block the kernel has not retired
// yet, for up to the block timeout.
func (w *worker) horizon(now time.Time, backlog bool) time.Time {
	last := w.fr.frame.Timestamp
	if backlog && !last.IsZero() {
		return last
	}
	return now.Add(-w.blockTimeout)
}

// readStats adds the socket's kernel counters (which the kernel resets on
// every read) to the interface's metrics.
func (w *worker) readStats() {
	st, err := unix.GetsockoptTpacketStatsV3(w.sock.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	if err != nil {
		return
	}
	if st.Packets > 0 {
		w.m.kernelPackets.Add(float64(st.Packets))
	}
	if st.Drops > 0 {
		w.m.kernelDrops.Add(float64(st.Drops))
	}
	if st.Freeze_q_cnt > 0 {
		w.m.kernelFreezes.Add(float64(st.Freeze_q_cnt))
	}
}

// socket is an AF_PACKET socket with its mapped TPACKET_V3 ring.
type socket struct {
	fd      int
	ifindex int
	group   uint16 // fanout group id
	ring    ring
}

// openSocket opens a socket on ifc that sees only frames accepted by prog,
// maps its ring and joins the fanout group. The order matters: a socket with
// protocol 0 receives nothing, so the filter is in place before bind starts
// the flow of frames; the kernel accepts PACKET_FANOUT only on a bound socket.
func openSocket(ifc ifaceInfo, prog []bpf.RawInstruction, c Config, group fanout) (_ *socket, err error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open AF_PACKET socket: %w", err)
	}
	s := &socket{fd: fd, ifindex: ifc.index}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	fprog := unix.SockFprog{
		Len:    uint16(len(prog)),
		Filter: (*unix.SockFilter)(unsafe.Pointer(&prog[0])),
	}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fprog); err != nil {
		return nil, fmt.Errorf("attach filter: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V3); err != nil {
		return nil, fmt.Errorf("set TPACKET_V3: %w", err)
	}
	if ifc.loopback {
		// On loopback every frame passes twice, as outgoing and as
		// incoming. Kernels since 4.20 can skip the outgoing copy;
		// frameReader drops it as well, for older kernels.
		_ = unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1)
	}
	req := unix.TpacketReq3{
		Block_size:     uint32(c.BlockSize),
		Block_nr:       uint32(c.NumBlocks),
		Frame_size:     uint32(c.BlockSize), // V3 packs frames; one "frame" per block satisfies the checks
		Frame_nr:       uint32(c.NumBlocks),
		Retire_blk_tov: uint32(c.BlockTimeout / time.Millisecond),
	}
	if err := unix.SetsockoptTpacketReq3(fd, unix.SOL_PACKET, unix.PACKET_RX_RING, &req); err != nil {
		return nil, fmt.Errorf("set up ring (%d blocks of %d bytes): %w", c.NumBlocks, c.BlockSize, err)
	}
	mem, err := unix.Mmap(fd, 0, c.BlockSize*c.NumBlocks, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map ring: %w", err)
	}
	s.ring = ring{mem: mem, blockSize: c.BlockSize, numBlocks: c.NumBlocks}
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifc.index}
	if err := unix.Bind(fd, sa); err != nil {
		return nil, fmt.Errorf("bind: %w", err)
	}
	if s.group, err = joinFanout(fd, group); err != nil {
		return nil, err
	}
	return s, nil
}

// fanout names the group a socket joins: id, or, if unique, one the kernel
// picks (id is the fallback for kernels that cannot pick).
type fanout struct {
	id     uint16
	unique bool
}

// joinFanout joins fd to the PACKET_FANOUT_HASH group g and returns the id of
// the group joined. The argument is a 4-byte int, the size every kernel
// accepts (before 5.11 any other size is rejected; gopacket's afpacket passes
// 8 bytes): id | (mode | flags) << 16.
func joinFanout(fd int, g fanout) (uint16, error) {
	if g.unique {
		err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_FANOUT,
			(unix.PACKET_FANOUT_HASH|unix.PACKET_FANOUT_FLAG_UNIQUEID)<<16)
		if err == nil {
			v, err := unix.GetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_FANOUT)
			if err != nil {
				return 0, fmt.Errorf("read fanout group id: %w", err)
			}
			return uint16(v), nil
		}
		if !errors.Is(err, unix.EINVAL) {
			return 0, fmt.Errorf("join new fanout group: %w", err)
		}
		// Before Linux 4.12: no PACKET_FANOUT_FLAG_UNIQUEID.
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_FANOUT, int(g.id)|unix.PACKET_FANOUT_HASH<<16); err != nil {
		return 0, fmt.Errorf("join fanout group %d: %w", g.id, err)
	}
	return g.id, nil
}

// clearError reads (and so clears) the socket's pending error. ENETDOWN
// means the interface went down: the kernel detaches the socket and attaches
// it again, still in its fanout group, when the interface comes back up, so
// capture just waits. Any other error is returned.
func (s *socket) clearError() error {
	serr, err := unix.GetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return fmt.Errorf("read socket error: %w", err)
	}
	if serr == 0 || unix.Errno(serr) == unix.ENETDOWN {
		return nil
	}
	return fmt.Errorf("capture socket: %w", unix.Errno(serr))
}

// checkBound fails when the kernel unbound the socket from its interface,
// which it does when the interface is deleted.
func (s *socket) checkBound() error {
	sa, err := unix.Getsockname(s.fd)
	if err != nil {
		return fmt.Errorf("getsockname: %w", err)
	}
	if ll, ok := sa.(*unix.SockaddrLinklayer); !ok || ll.Ifindex != s.ifindex {
		return fmt.Errorf("%w (deleted during capture)", ErrNoSuchInterface)
	}
	return nil
}

// closeSockets closes the sockets of workers, concurrently: the kernel waits
// for an RCU grace period (tens of milliseconds) when it releases a packet
// socket, and in parallel those waits overlap.
func closeSockets(workers []*worker) {
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Go(w.sock.close)
	}
	wg.Wait()
}

func (s *socket) close() {
	if s.ring.mem != nil {
		_ = unix.Munmap(s.ring.mem)
		s.ring.mem = nil
	}
	if s.fd >= 0 {
		_ = unix.Close(s.fd)
		s.fd = -1
	}
}

// htons converts v to network byte order, as sockaddr_ll's protocol wants it.
func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

// liveMetrics are the capture metrics of one registry.
type liveMetrics struct {
	kernelPackets *prometheus.CounterVec
	kernelDrops   *prometheus.CounterVec
	kernelFreezes *prometheus.CounterVec
	frames        *prometheus.CounterVec
	interfaces    prometheus.Gauge
}

// interfaceMetrics are the children of liveMetrics for one interface.
type interfaceMetrics struct {
	kernelPackets, kernelDrops, kernelFreezes, frames prometheus.Counter
}

func newLiveMetrics(reg prometheus.Registerer) (*liveMetrics, error) {
	var m liveMetrics
	var err error
	counter := func(name, help string) *prometheus.CounterVec {
		c, rerr := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{"interface"}))
		err = errors.Join(err, rerr)
		return c
	}
	m.kernelPackets = counter("pcap_capture_kernel_packets_total",
		"Frames that passed the TCP filter into the capture sockets of the interface, including those dropped for lack of ring space (kernel PACKET_STATISTICS tp_packets, summed over the interface's sockets).")
	m.kernelDrops = counter("pcap_capture_kernel_drops_total",
		"Frames that passed the TCP filter but were dropped by the kernel because the capture ring of their socket was full (kernel PACKET_STATISTICS tp_drops).")
	m.kernelFreezes = counter("pcap_capture_kernel_freezes_total",
		"Times the kernel found no free block in a capture ring of the interface and froze the ring's queue until the worker released one (kernel PACKET_STATISTICS tp_freeze_q_cnt).")
	m.frames = counter("pcap_capture_frames_total",
		"Frames handed to the capture handlers: frames that passed the TCP filter, less outgoing duplicates on loopback interfaces.")
	g, rerr := register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pcap_muxer_interfaces_with_captures",
		Help: "Interfaces whose capture sockets are currently open (the seed's name; there is no muxer, capture owns the sockets).",
	}))
	m.interfaces = g
	if err = errors.Join(err, rerr); err != nil {
		return nil, err
	}
	return &m, nil
}

func (m *liveMetrics) forInterface(name string) interfaceMetrics {
	return interfaceMetrics{
		kernelPackets: m.kernelPackets.WithLabelValues(name),
		kernelDrops:   m.kernelDrops.WithLabelValues(name),
		kernelFreezes: m.kernelFreezes.WithLabelValues(name),
		frames:        m.frames.WithLabelValues(name),
	}
}

// register registers c on reg and returns it, or the collector already
// registered under the same description, so that several Live on one registry
// share their metrics. Unlike promauto it returns an error instead of
// panicking.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if reg == nil {
		return c, nil
	}
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, fmt.Errorf("register metric: %w", err)
}
