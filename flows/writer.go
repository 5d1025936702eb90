package flows

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/klauspost/compress/gzip"
)

// File names. A finished flow is <UUID>.pcap.gz; everything else the flow
// table writes starts with a dot and ends in one of these suffixes, so
// readers that take only <UUID>.pcap.gz never see a partial file.
const (
	FileSuffix  = ".pcap.gz"
	spillSuffix = ".pcap.spill" // uncompressed records of a live flow
	tmpSuffix   = ".pcap.gz.tmp"
)

// job is a flow's records on their way to disk: either a spill (append buf
// to the flow's spill file) or the flow's end (compress the spill file and
// buf, publish). The writer owns buf and the spill file from submit on.
type job struct {
	uuid    string
	dir     string
	buf     []byte
	spill   string
	isSpill bool
}

// writer appends spills and compresses finished flows on a pool of
// goroutines, so that capture workers never wait for the disk or for gzip.
// All jobs of one flow go to the same queue, in order.
type writer struct {
	f      *Flows
	queues []chan *job // closed by Flows.Close after the last worker finished
	gzPool sync.Pool
	bwPool sync.Pool
}

func newWriter(f *Flows) *writer {
	wr := &writer{f: f}
	for range f.cfg.Writers {
		wr.queues = append(wr.queues, make(chan *job, f.cfg.WriteQueue/f.cfg.Writers+1))
	}
	return wr
}

// queueOf picks the queue of a flow by its UUID.
func (wr *writer) queueOf(uuid string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(uuid); i++ {
		h = (h ^ uint32(uuid[i])) * 16777619
	}
	return h % uint32(len(wr.queues))
}

// submit queues j on queue q. It blocks when the queue is full: the kernel
// ring absorbs the stall, while dropping a flow's records would lose them.
func (wr *writer) submit(q uint32, j *job) {
	select {
	case wr.queues[q] <- j:
	default:
		start := time.Now()
		wr.queues[q] <- j
		wr.f.m.writerStalls.Observe(time.Since(start).Seconds())
	}
}

func (wr *writer) close() {
	for _, q := range wr.queues {
		close(q)
	}
}

// run handles the jobs of queue q until it is closed and drained.
func (wr *writer) run(q int) {
	// failed holds the flows whose spill failed: their files would have a
	// hole, so they are not published.
	failed := map[string]bool{}
	// open keeps the spill files of long flows open between spills: opening
	// a file costs more than appending 64 KiB to it.
	open := map[string]*os.File{}
	defer func() {
		for _, f := range open {
			f.Close()
		}
	}()
	for j := range wr.queues[q] {
		if !j.isSpill && j.spill != "" {
			if f := open[j.spill]; f != nil {
				delete(open, j.spill)
				if err := f.Close(); err != nil {
					failed[j.uuid] = true
					wr.f.logf("flows: close spill of flow %s: %v", j.uuid, err)
				}
			}
		}
		if j.isSpill {
			if failed[j.uuid] {
				wr.f.putBuf(j.buf)
				continue
			}
			if err := wr.appendSpill(j, open); err != nil {
				failed[j.uuid] = true
				wr.f.m.saverErrors.WithLabelValues("spill").Inc()
				wr.f.logf("flows: spill flow %s: %v", j.uuid, err)
			}
			wr.f.putBuf(j.buf)
			continue
		}
		if failed[j.uuid] {
			delete(failed, j.uuid)
			os.Remove(j.spill)
			wr.f.putBuf(j.buf)
			wr.f.logf("flows: flow %s not published: part of it could not be written", j.uuid)
			continue
		}
		path, err := wr.write(j)
		if err != nil {
			wr.f.m.saverErrors.WithLabelValues(errReason(err)).Inc()
			wr.f.logf("flows: write flow %s: %v", j.uuid, err)
		} else {
			wr.f.m.filesWritten.Inc()
			if wr.f.cfg.OnPublish != nil {
				wr.f.cfg.OnPublish(path)
			}
		}
		wr.f.putBuf(j.buf)
	}
}

// maxOpenSpills bounds the spill files each writer keeps open.
const maxOpenSpills = 256

func (wr *writer) appendSpill(j *job, open map[string]*os.File) error {
	f := open[j.spill]
	if f == nil {
		if err := os.MkdirAll(j.dir, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", j.dir, classify(err))
		}
		var err error
		f, err = os.OpenFile(j.spill, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return fmt.Errorf("open %s: %w", j.spill, classify(err))
		}
		if len(open) >= maxOpenSpills {
			for name, g := range open { // evict one, any
				delete(open, name)
				if err := g.Close(); err != nil {
					wr.f.logf("flows: close %s: %v", name, err)
				}
				break
			}
		}
		open[j.spill] = f
	}
	if _, err := f.Write(j.buf); err != nil {
		delete(open, j.spill)
		f.Close()
		return fmt.Errorf("write %s: %w", j.spill, classify(err))
	}
	return nil
}

var errExists = errors.New("file already exists")

func errReason(err error) string {
	switch {
	case errors.Is(err, errExists):
		return "exists"
	case errors.Is(err, errNoSpace):
		return "nospace"
	}
	return "write"
}

// write compresses j into a temporary file and links it to its final name,
// which must not exist yet. It returns the final path.
func (wr *writer) write(j *job) (string, error) {
	if err := os.MkdirAll(j.dir, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", j.dir, classify(err))
	}
	final := filepath.Join(j.dir, j.uuid+FileSuffix)
	tmp := filepath.Join(j.dir, "."+j.uuid+tmpSuffix)
	if err := wr.compress(j, tmp); err != nil {
		os.Remove(tmp)
		return "", err
	}
	// Link, unlike rename, never replaces: a second file for one UUID is an
	// error, not a silent overwrite of the first.
	if err := os.Link(tmp, final); err != nil {
		os.Remove(tmp)
		if errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("%s: %w", final, errExists)
		}
		return "", fmt.Errorf("publish %s: %w", final, classify(err))
	}
	if err := os.Remove(tmp); err != nil {
		return final, fmt.Errorf("remove %s: %w", tmp, err)
	}
	if j.spill != "" {
		if err := os.Remove(j.spill); err != nil {
			return final, fmt.Errorf("remove %s: %w", j.spill, err)
		}
	}
	return final, nil
}

func (wr *writer) compress(j *job, tmp string) (err error) {
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, classify(err))
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("close %s: %w", tmp, classify(cerr))
		}
	}()
	bw, _ := wr.bwPool.Get().(*bufio.Writer)
	if bw == nil {
		bw = bufio.NewWriterSize(out, 64<<10)
	} else {
		bw.Reset(out)
	}
	defer wr.bwPool.Put(bw)
	zw, _ := wr.gzPool.Get().(*gzip.Writer)
	if zw == nil {
		zw, err = gzip.NewWriterLevel(bw, wr.f.cfg.CompressionLevel)
		if err != nil {
			return err
		}
	} else {
		zw.Reset(bw)
	}
	defer wr.gzPool.Put(zw)
	if _, err := zw.Write(pcapHeader(wr.f.cfg.MaxHeaderSize)); err != nil {
		return fmt.Errorf("write %s: %w", tmp, classify(err))
	}
	if j.spill != "" {
		sf, err := os.Open(j.spill)
		if err != nil {
			return fmt.Errorf("open spill: %w", err)
		}
		_, err = io.Copy(zw, sf)
		sf.Close()
		if err != nil {
			return fmt.Errorf("copy spill to %s: %w", tmp, classify(err))
		}
	}
	if _, err := zw.Write(j.buf); err != nil {
		return fmt.Errorf("write %s: %w", tmp, classify(err))
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("compress %s: %w", tmp, classify(err))
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write %s: %w", tmp, classify(err))
	}
	if wr.f.cfg.Fsync {
		if err := out.Sync(); err != nil {
			return fmt.Errorf("sync %s: %w", tmp, classify(err))
		}
	}
	return nil
}

// pcapHeader returns a pcap file header for nanosecond timestamps and link
// type Ethernet, little-endian, as pcapgo and the seed write it.
func pcapHeader(snaplen int) []byte {
	var h [24]byte
	binary.LittleEndian.PutUint32(h[0:], 0xa1b23c4d)
	binary.LittleEndian.PutUint16(h[4:], 2)
	binary.LittleEndian.PutUint16(h[6:], 4)
	binary.LittleEndian.PutUint32(h[16:], uint32(snaplen))
	binary.LittleEndian.PutUint32(h[20:], 1)
	return h[:]
}
