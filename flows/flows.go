// Package flows turns captured frames into one pcap file per TCP flow, named
// by the flow's UUID.
//
// Each capture worker owns a Worker and its flow table: a map from a
// direction-independent 4-tuple Key to the flow's state, touched only from
// that worker's goroutine, without locks. UUIDs come from a Registry, which
// is safe for concurrent use and fed by the tcp-info eventsocket client (or,
// for offline input, synthetic names). Packets wait for their flow's UUID in
// RAM, bounded in count and time (Config.UUIDWait). A named flow appends
// each packet, cut at the end of its TCP header and anonymized, as a pcap
// record to a buffer that spills to a hidden file in the date folder when it
// grows; when the flow's capture duration is over, or the flow ends, the
// records go to a writer pool that gzips them and publishes the file.
//
// The handoff contract with readers of the data dir (the archiver, or
// m-lab/pusher):
//
//   - A finished flow is <DataDir>/YYYY/MM/DD/<UUID>.pcap.gz, the date being
//     the UTC date of the UUID's Open event. It appears by a create-only link
//     from a temporary name once complete, and is never written again: from
//     then on it belongs to the reader, which deletes it.
//   - Everything else flows writes starts with a dot (.<UUID>.pcap.spill for
//     a live flow's records, .<UUID>.pcap.gz.tmp while compressing) and must
//     be ignored by readers. Spill files of a crashed run are salvaged by
//     Recover at the next start.
//   - Files are not fsynced unless Config.Fsync is set: a torn file after a
//     power loss fails its gzip CRC check, which readers must verify.
//
// flows never touches the network and knows nothing about buckets.
package flows

import (
	"errors"
	"fmt"
	"log"
	"net/netip"
	rtmetrics "runtime/metrics"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/headercap/headercap/anonymize"
)

// Config configures the flow tables. The zero value of every field but
// DataDir means the default given in its comment.
type Config struct {
	// DataDir is the root of the output tree. Required.
	DataDir string
	// CaptureDuration is how much of each flow, from its first packet, is
	// saved. Default 30s.
	CaptureDuration time.Duration
	// FlowTimeout ends a flow after this much silence. Default 30s.
	FlowTimeout time.Duration
	// UUIDWait bounds how long packets wait for their flow's UUID. Default 5s.
	UUIDWait time.Duration
	// ReuseSettle is how long after its stamp a UUID waits before it is
	// matched, when several connections on its 4-tuple wait for theirs; it
	// is matched earlier if one of them is about to be dropped. Default
	// UUIDWait: wait as long as the connections can.
	ReuseSettle time.Duration
	// CloseGrace is how long a flow lives after its socket closed, for
	// trailing FIN/ACKs. Default 1s.
	CloseGrace time.Duration
	// MaxHeaderSize caps the bytes saved per packet. Default 256.
	MaxHeaderSize int
	// Anonymize is applied to the addresses in every saved packet.
	Anonymize anonymize.Method
	// MaxFlows sheds new flows beyond this many live ones; 0 = unlimited.
	MaxFlows int
	// MaxHeap sheds new flows while the Go heap exceeds this many bytes;
	// 0 = unlimited.
	MaxHeap uint64
	// MaxPendingPackets bounds the packets a flow holds while waiting for
	// its UUID; more are dropped and counted. Default 65536: a bulk flow
	// must survive tcp-info delivering its UUID half a second late.
	MaxPendingPackets int
	// MaxPendingBytes bounds the bytes all flows waiting for a UUID hold
	// together; beyond it their packets are dropped and counted. Default
	// 256 MiB.
	MaxPendingBytes int64
	// SpillBytes is how much of a named flow is held in RAM before it is
	// appended to its spill file. Default 64 KiB.
	SpillBytes int
	// SweepInterval is how often each worker looks at all its flows for
	// timeouts. Default 100ms.
	SweepInterval time.Duration
	// Retention is how long a UUID is remembered after its socket closed or
	// its flow ended. Default FlowTimeout + UUIDWait.
	Retention time.Duration
	// MaxUUIDs bounds the registry. Default 1,000,000.
	MaxUUIDs int
	// Writers is the number of goroutines that compress and publish files.
	// Default 8: creating a file is mostly waiting for the file system,
	// and with 2 writers an offline run spent twice as long (measured in
	// the README).
	Writers int
	// WriteQueue is how many finished flows may wait for a writer. Default 4096.
	WriteQueue int
	// CompressionLevel is the gzip level. Default gzip.BestSpeed: flow
	// files are small, so a slower level mostly pays for building Huffman
	// tables, and saves little (measured in the README).
	CompressionLevel int
	// Fsync makes every published file durable before it is linked.
	Fsync bool
	// SyntheticUUIDs names every flow at once with a deterministic UUID
	// derived from SyntheticPrefix, the flow's 4-tuple and first packet time,
	// instead of waiting for the Registry (for offline input without an
	// events file).
	SyntheticUUIDs  bool
	SyntheticPrefix string
	// OnNewFlow, if set, is called by a worker for each new flow, with the
	// flow's endpoints and first packet time, so that a UUID source can look
	// the socket up. It must not block.
	OnNewFlow func(a, b netip.AddrPort, first time.Time)
	// OnReset, if set, is called by a worker for each RST of a flow that
	// still waits for its UUID, with the RST's sender and receiver and its
	// time: a socket reset by its application (SO_LINGER 0) is destroyed
	// without its peer's port, and the RST ties it to its flow. It must
	// not block.
	OnReset func(src, dst netip.AddrPort, ts time.Time)
	// OnPublish, if set, is called by a writer goroutine with the path of
	// each published file. It must not block for long.
	OnPublish func(path string)
	// Logf logs rare events (write errors). Default log.Printf.
	Logf func(format string, args ...any)
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.CaptureDuration, 30*time.Second)
	def(&c.FlowTimeout, 30*time.Second)
	def(&c.UUIDWait, 5*time.Second)
	def(&c.CloseGrace, time.Second)
	def(&c.SweepInterval, 100*time.Millisecond)
	def(&c.ReuseSettle, c.UUIDWait)
	def(&c.Retention, c.FlowTimeout+c.UUIDWait)
	defInt := func(d *int, v int) {
		if *d == 0 {
			*d = v
		}
	}
	defInt(&c.MaxHeaderSize, 256)
	defInt(&c.MaxPendingPackets, 65536)
	if c.MaxPendingBytes == 0 {
		c.MaxPendingBytes = 256 << 20
	}
	defInt(&c.SpillBytes, 64<<10)
	defInt(&c.MaxUUIDs, 1_000_000)
	defInt(&c.Writers, 8)
	defInt(&c.WriteQueue, 4096)
	if c.CompressionLevel == 0 {
		c.CompressionLevel = gzip.BestSpeed
	}
	if c.Logf == nil {
		c.Logf = log.Printf
	}
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	switch {
	case c.DataDir == "":
		return errors.New("data dir is required")
	case c.CaptureDuration < 0, c.FlowTimeout < 0, c.UUIDWait < 0, c.CloseGrace < 0:
		return errors.New("durations must not be negative")
	case c.CaptureDuration > 0 && c.UUIDWait > c.CaptureDuration:
		return fmt.Errorf("uuid wait duration %v is longer than the capture duration %v", c.UUIDWait, c.CaptureDuration)
	case c.MaxHeaderSize < 0 || (c.MaxHeaderSize > 0 && c.MaxHeaderSize < 54):
		return fmt.Errorf("max header size %d is too small to hold an Ethernet, IP and TCP header (minimum 54)", c.MaxHeaderSize)
	case c.MaxHeaderSize > 65535:
		return fmt.Errorf("max header size %d is larger than any packet", c.MaxHeaderSize)
	case c.MaxFlows < 0:
		return errors.New("max flows must not be negative")
	case c.CompressionLevel != 0 && (c.CompressionLevel < gzip.HuffmanOnly || c.CompressionLevel > gzip.BestCompression):
		return fmt.Errorf("compression level %d out of range", c.CompressionLevel)
	}
	return nil
}

// Flows ties the per-worker tables to the shared registry and writers.
type Flows struct {
	cfg    Config
	m      *metrics
	reg    *Registry
	names  namer
	writer *writer
	live   atomic.Int64 // flows in all tables
	// pendingBytes is what the flows waiting for a UUID hold, in all tables.
	pendingBytes atomic.Int64
	heap         heapWatcher
	bufs         sync.Pool

	mu      sync.Mutex
	workers []*Worker
	started bool
	closed  bool
	done    chan struct{}
}

// New returns flow tables configured by cfg, registering metrics on reg.
func New(cfg Config, reg prometheus.Registerer) (*Flows, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	m := newMetrics(reg)
	f := &Flows{cfg: cfg, m: m, done: make(chan struct{})}
	f.reg = newRegistry(cfg.Retention, cfg.MaxUUIDs, m)
	if cfg.SyntheticUUIDs {
		f.names = syntheticNamer{prefix: cfg.SyntheticPrefix}
	} else {
		f.names = f.reg
	}
	f.writer = newWriter(f)
	return f, nil
}

// Registry returns the registry that UUID events must be fed to.
func (f *Flows) Registry() *Registry { return f.reg }

// NewWorker returns the table of one capture worker.
func (f *Flows) NewWorker() *Worker {
	w := &Worker{
		f:       f,
		table:   make(map[Key]*flow),
		pending: make(map[*flow]struct{}),
		retired: make(map[Key][]*flow),
	}
	f.mu.Lock()
	f.workers = append(f.workers, w)
	f.mu.Unlock()
	return w
}

// Run runs the writers and the registry's expiry until Close has been
// called and every finished flow is on disk. It is the owner of every
// goroutine of the package.
func (f *Flows) Run() {
	f.mu.Lock()
	f.started = true
	f.mu.Unlock()
	var wg sync.WaitGroup
	for q := range f.cfg.Writers {
		wg.Go(func() { f.writer.run(q) })
	}
	expiry := time.NewTicker(time.Second)
	defer expiry.Stop()
	writersDone := make(chan struct{})
	go func() { wg.Wait(); close(writersDone) }()
	for {
		select {
		case <-writersDone:
			close(f.done)
			return
		case now := <-expiry.C:
			f.reg.Expire(now)
		}
	}
}

// Close finishes every flow of every worker and lets the writers drain.
// It must be called once, after capture stopped calling the workers.
func (f *Flows) Close() {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.closed = true
	workers := f.workers
	f.mu.Unlock()
	for _, w := range workers {
		w.Finish()
	}
	f.writer.close()
}

func (f *Flows) logf(format string, args ...any) { f.cfg.Logf(format, args...) }

func (f *Flows) getBuf() []byte {
	if b, ok := f.bufs.Get().(*[]byte); ok {
		return (*b)[:0]
	}
	return make([]byte, 0, 4096)
}

func (f *Flows) putBuf(b []byte) {
	if b == nil || cap(b) > 4*f.cfg.SpillBytes {
		return
	}
	f.bufs.Put(&b)
}

// anonymizeAt anonymizes the address of length alen at off in rec, or the
// part of it that rec holds.
func anonymizeAt(m anonymize.Method, rec []byte, off, alen int) {
	if off >= len(rec) {
		return
	}
	if off+alen <= len(rec) {
		m.Bytes(rec[off : off+alen])
		return
	}
	var tmp [16]byte
	n := copy(tmp[:alen], rec[off:])
	m.Bytes(tmp[:alen])
	copy(rec[off:off+n], tmp[:n])
}

// namer hands out UUIDs to new flows: the Registry, or synthetic names.
type namer interface {
	// candidates appends the claims not handed out yet for key.
	candidates(key Key, now time.Time, buf []*claim) []*claim
	// take hands c out, once.
	take(c *claim) bool
}

// syntheticNamer names every flow at once, deterministically, from its
// 4-tuple and the time of the worker's current packet (its first).
type syntheticNamer struct{ prefix string }

func (s syntheticNamer) candidates(key Key, now time.Time, buf []*claim) []*claim {
	h := uint64(14695981039346656037) // FNV-1a over the key
	mix := func(b byte) { h ^= uint64(b); h *= 1099511628211 }
	for _, b := range key.A {
		mix(b)
	}
	for _, b := range key.B {
		mix(b)
	}
	mix(byte(key.PA >> 8))
	mix(byte(key.PA))
	mix(byte(key.PB >> 8))
	mix(byte(key.PB))
	uuid := fmt.Sprintf("%s_%d_%016X", s.prefix, now.UnixNano(), h)
	return append(buf, &claim{uuid: uuid, key: key, opened: now})
}

func (syntheticNamer) take(*claim) bool { return true }

// heapWatcher reads the Go heap size from runtime/metrics at most every
// 100ms, for whichever worker asks first.
type heapWatcher struct {
	mu     sync.Mutex
	next   time.Time
	value  atomic.Uint64
	sample [1]rtmetrics.Sample
}

func (h *heapWatcher) bytes(now time.Time) uint64 {
	if h.mu.TryLock() {
		if now.After(h.next) || now.Before(h.next.Add(-time.Second)) {
			h.sample[0].Name = "/memory/classes/heap/objects:bytes"
			rtmetrics.Read(h.sample[:])
			if h.sample[0].Value.Kind() == rtmetrics.KindUint64 {
				h.value.Store(h.sample[0].Value.Uint64())
			}
			h.next = now.Add(100 * time.Millisecond)
		}
		h.mu.Unlock()
	}
	return h.value.Load()
}
