// Command packet-headers captures the packet headers of every TCP flow on the
// host into one pcap file per flow, named by the flow's tcp-info UUID. It is a
// drop-in replacement for m-lab/packet-headers: same flags, environment
// variables, metric names and on-disk layout. See the README for the flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/headercap/headercap/capture"
	"github.com/headercap/headercap/events"
	"github.com/headercap/headercap/flows"
	"github.com/headercap/headercap/internal/cli"
	"github.com/headercap/headercap/sockdiag"
)

func main() {
	log.SetFlags(log.LstdFlags | log.LUTC)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		log.Printf("packet-headers: %v", err)
		os.Exit(1)
	}
}

// run parses args and the environment, then captures until ctx is done (or,
// with -read, until the file is processed).
func run(ctx context.Context, args []string) error {
	cfg, err := parseConfig(args, os.Stderr)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if cfg.Read != "" {
		return runFile(ctx, cfg, reg)
	}
	return runLive(ctx, cfg, reg)
}

func flowsConfig(cfg config) flows.Config {
	return flows.Config{
		DataDir:         cfg.DataDir,
		CaptureDuration: cfg.CaptureDuration,
		FlowTimeout:     cfg.FlowTimeout,
		UUIDWait:        cfg.UUIDWait,
		MaxHeaderSize:   int(cfg.MaxHeaderSize),
		Anonymize:       cfg.AnonymizeIP,
		MaxFlows:        cfg.MaxFlows,
		MaxHeap:         uint64(cfg.MaxHeap),
	}
}

func runLive(ctx context.Context, cfg config, reg *prometheus.Registry) error {
	ifaces := cfg.Interfaces.Values
	if len(ifaces) == 0 {
		var err error
		if ifaces, err = capture.DefaultInterfaces(); err != nil {
			return err
		}
	}
	fcfg := flowsConfig(cfg)
	// The netlink source names flows from the kernel's socket cookies; the
	// registry it feeds exists only once the flows do, so it reaches it
	// through sink.
	var nl *sockdiag.Source
	sink := &lateSink{}
	if cfg.UUIDSource != uuidEventSocket {
		var err error
		nl, err = sockdiag.New(sockdiag.Config{PrefixFile: cfg.UUIDPrefixFile, MaxWait: cfg.UUIDWait}, sink, reg)
		if err != nil {
			return fmt.Errorf("netlink uuid source: %w", err)
		}
		fcfg.OnNewFlow = nl.Lookup
		fcfg.OnReset = nl.Reset
	}
	arch, err := newArchiver(ctx, cfg, cfg.SigtermWait, reg)
	if err != nil {
		return err
	}
	if arch != nil {
		fcfg.OnPublish = func(path string) { arch.Add(context.Background(), path) }
	}
	fl, err := flows.New(fcfg, reg)
	if err != nil {
		return err
	}
	sink.set(fl.Registry().Sink(flows.SourceNetlink))
	if st, err := fl.Recover(); err != nil {
		return fmt.Errorf("recover %s: %w", cfg.DataDir, err)
	} else if st.Salvaged+st.Removed > 0 {
		log.Printf("recovered %d flows of an earlier run, removed %d temporary files", st.Salvaged, st.Removed)
	}
	workers := cfg.Workers
	if workers == 0 {
		workers = runtime.NumCPU()
	}
	live, err := capture.NewLive(capture.Config{
		Interfaces: ifaces,
		Workers:    workers,
		SnapLen:    int(cfg.MaxHeaderSize),
		BlockSize:  capture.DefaultBlockSize,
		NumBlocks:  ringBlocks(int64(cfg.RingSize), workers),
	}, func(int) capture.Handler { return fl.NewWorker() }, reg)
	if err != nil {
		return err
	}
	registry := fl.Registry()
	var client *events.Client
	if cfg.UUIDSource != uuidNetlink {
		client, err = events.NewClient(events.ClientConfig{Path: cfg.EventSocket}, func(ev events.Event) {
			if nl != nil {
				adoptPrefix(nl, ev)
			}
			feed(registry, ev)
		}, reg)
		if err != nil {
			return err
		}
	}
	srv, err := cli.ListenMetrics(cfg.PrometheusListen, reg)
	if err != nil {
		return err
	}

	// Capture stops -sigtermwait after ctx is done; the event client and the
	// metrics server live until every flow is written.
	captureCtx, stopCapture := context.WithCancel(context.Background())
	defer stopCapture()
	auxCtx, stopAux := context.WithCancel(context.Background())
	defer stopAux()
	flowsDone := make(chan struct{})
	go func() { fl.Run(); close(flowsDone) }()

	g, gctx := errgroup.WithContext(auxCtx)
	if client != nil {
		g.Go(func() error { return client.Run(gctx) })
	}
	if nl != nil {
		g.Go(func() error { return nl.Run(gctx) })
	}
	g.Go(func() error { return srv.Run(gctx) })
	g.Go(func() error { freeIdleRAM(gctx, uint64(cfg.MaxIdleRAM)); return nil })
	// The archiver stops after the last flow is written; it then seals what
	// it has and uploads for up to -sigtermwait more.
	archCtx, stopArch := context.WithCancel(context.Background())
	defer stopArch()
	archDone := make(chan error, 1)
	if arch != nil {
		go func() { archDone <- arch.Run(archCtx) }()
		log.Printf("archiving to %s", arch)
	} else {
		archDone <- nil
	}

	captureErr := make(chan error, 1)
	go func() { captureErr <- live.Run(captureCtx) }()
	log.Printf("capturing on %v into %s, UUIDs from %s", ifaces, cfg.DataDir, describeSource(cfg))

	var runErr error
	archEarly := false
	var archStopped <-chan error // nil without an archiver: never ready
	if arch != nil {
		archStopped = archDone
	}
	select {
	case <-ctx.Done():
		log.Printf("stopping: capturing %v more, then finishing every flow", cfg.SigtermWait)
		select {
		case <-time.After(cfg.SigtermWait):
		case runErr = <-captureErr:
		}
	case runErr = <-captureErr:
	case <-gctx.Done():
		// A component failed; g.Wait below returns its error.
	case err := <-archStopped:
		// The archiver stopped on its own: it could not start (e.g.
		// another archiver holds the spool dir). Capturing without it
		// would fill the disk unnoticed.
		archEarly = true
		runErr = fmt.Errorf("archiver stopped: %w", err)
		if err == nil {
			runErr = errors.New("archiver stopped")
		}
	}
	stopCapture()
	if runErr == nil {
		runErr = <-captureErr
	}
	fl.Close()
	<-flowsDone
	stopArch()
	var archErr error
	if !archEarly {
		archErr = <-archDone
	}
	stopAux()
	if err := g.Wait(); err != nil && runErr == nil && !errors.Is(err, context.Canceled) {
		runErr = err
	}
	if runErr != nil {
		return runErr
	}
	if archErr != nil {
		return archErr
	}
	log.Printf("stopped")
	return nil
}

// newArchiver returns the in-process archiver, or nil without -archive.url.
func newArchiver(ctx context.Context, cfg config, grace time.Duration, reg prometheus.Registerer) (*cli.Archiver, error) {
	if cfg.Archive.URL == "" {
		return nil, nil
	}
	acfg, err := cfg.Archive.Config(cfg.DataDir, grace, false)
	if err != nil {
		return nil, err
	}
	return cfg.Archive.NewArchiver(ctx, acfg, reg, slog.Default())
}

func describeSource(cfg config) string {
	switch cfg.UUIDSource {
	case uuidEventSocket:
		return "tcp-info's eventsocket " + cfg.EventSocket
	case uuidBoth:
		return "netlink and tcp-info's eventsocket " + cfg.EventSocket
	}
	return "netlink (socket cookies)"
}

// lateSink passes a UUID source's findings to the registry once it exists.
type lateSink struct {
	mu sync.Mutex
	s  sockdiag.Sink
}

func (l *lateSink) set(s sockdiag.Sink) { l.mu.Lock(); l.s = s; l.mu.Unlock() }

func (l *lateSink) get() sockdiag.Sink { l.mu.Lock(); defer l.mu.Unlock(); return l.s }

func (l *lateSink) Open(ts time.Time, uuid string, local, remote netip.AddrPort) {
	if s := l.get(); s != nil {
		s.Open(ts, uuid, local, remote)
	}
}

func (l *lateSink) Close(ts time.Time, uuid string) {
	if s := l.get(); s != nil {
		s.Close(ts, uuid)
	}
}

// adoptPrefix makes the netlink source use the prefix of tcp-info's UUIDs,
// so that both name a socket alike even when their prefix files differ or
// tcp-info derived its own: a UUID is <prefix>_<cookie as %016X>.
func adoptPrefix(nl *sockdiag.Source, ev events.Event) {
	if ev.Kind != events.Open || !ev.HasID {
		return
	}
	suffix := fmt.Sprintf("_%016X", ev.Cookie)
	prefix, ok := strings.CutSuffix(ev.UUID, suffix)
	if !ok || prefix == "" || prefix == nl.Prefix() {
		return
	}
	log.Printf("netlink uuid source: using tcp-info's UUID prefix %q instead of %q", prefix, nl.Prefix())
	nl.SetPrefix(prefix)
}

// ringBlocks is the number of ring blocks per socket that splits ringSize
// bytes among workers sockets, at least 8 blocks each.
func ringBlocks(ringSize int64, workers int) int {
	return max(8, int(ringSize/int64(workers)/capture.DefaultBlockSize))
}

// feed passes one eventsocket event to the registry.
func feed(r *flows.Registry, ev events.Event) {
	switch ev.Kind {
	case events.Open:
		r.Open(ev.Timestamp, ev.UUID, ev.Local, ev.Remote)
	case events.Close:
		r.Close(ev.Timestamp, ev.UUID)
	}
}

// runFile processes one capture file with the same rules as live capture,
// with the file's timestamps as the clock.
func runFile(ctx context.Context, cfg config, reg *prometheus.Registry) error {
	fcfg := flowsConfig(cfg)
	var evs []events.Event
	if cfg.ReadEvents != "" {
		st, err := events.ReadFile(ctx, cfg.ReadEvents, func(ev events.Event) { evs = append(evs, ev) })
		if err != nil {
			return err
		}
		if n := st.Skipped(); n > 0 {
			log.Printf("%s: skipped %d bad lines", cfg.ReadEvents, n)
		}
		sort.SliceStable(evs, func(i, j int) bool { return evs[i].Timestamp.Before(evs[j].Timestamp) })
	} else {
		fcfg.SyntheticUUIDs = true
		fcfg.SyntheticPrefix = syntheticPrefix(cfg.Read)
	}
	// Offline, the archiver may take its time: everything is uploaded
	// before the command exits, unless it is interrupted.
	arch, err := newArchiver(ctx, cfg, offlineUploadGrace, reg)
	if err != nil {
		return err
	}
	archCtx, stopArch := context.WithCancel(context.Background())
	defer stopArch()
	archDone := make(chan error, 1)
	if arch != nil {
		fcfg.OnPublish = func(path string) { arch.Add(context.Background(), path) }
		go func() { archDone <- arch.Run(archCtx) }()
	} else {
		archDone <- nil
	}
	fl, err := flows.New(fcfg, reg)
	if err != nil {
		return err
	}
	flowsDone := make(chan struct{})
	go func() { fl.Run(); close(flowsDone) }()
	h := &replay{w: fl.NewWorker(), reg: fl.Registry(), events: evs}
	fcap := capture.FileConfig{Path: cfg.Read, SnapLen: int(cfg.MaxHeaderSize)}
	if fi, err := os.Stderr.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		fcap.Progress = os.Stderr // progress on a terminal only
	}
	start := time.Now()
	st, readErr := capture.ReadFile(ctx, fcap, h)
	h.flush()
	fl.Close()
	<-flowsDone
	stopArch()
	if err := <-archDone; err != nil && readErr == nil {
		readErr = err
	}
	elapsed := time.Since(start)
	log.Printf("%s: %d frames in %v (%.0f frames/s), %d flows with UUIDs written to %s",
		cfg.Read, st.Frames, elapsed.Round(time.Millisecond), float64(st.Frames)/elapsed.Seconds(),
		counterValue(reg, "pcap_files_written_total"), cfg.DataDir)
	if readErr != nil {
		return readErr // it names the file
	}
	return nil
}

// offlineUploadGrace bounds the uploads after an offline run.
const offlineUploadGrace = 10 * time.Minute

// replay feeds recorded events to the registry in time order, interleaved
// with the frames of the file.
type replay struct {
	w      *flows.Worker
	reg    *flows.Registry
	events []events.Event
}

func (r *replay) upTo(t time.Time) {
	for len(r.events) > 0 && !r.events[0].Timestamp.After(t) {
		feed(r.reg, r.events[0])
		r.events = r.events[1:]
	}
}

func (r *replay) HandleFrame(f *capture.Frame) {
	r.upTo(f.Timestamp)
	r.w.HandleFrame(f)
}

func (r *replay) Tick(now time.Time) {
	r.upTo(now)
	r.w.Tick(now)
}

// flush applies the remaining events and lets the worker name flows that
// waited for them.
func (r *replay) flush() {
	for len(r.events) > 0 {
		t := r.events[0].Timestamp
		r.upTo(t)
		r.w.Tick(t)
	}
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9-]+`)

// syntheticPrefix derives the UUID prefix of synthetic names from the file.
func syntheticPrefix(path string) string {
	base := filepath.Base(path)
	for _, ext := range []string{".gz", ".pcapng", ".pcap"} {
		if len(base) > len(ext) && base[len(base)-len(ext):] == ext {
			base = base[:len(base)-len(ext)]
		}
	}
	p := unsafeChars.ReplaceAllString(base, "-")
	if len(p) > 64 {
		p = p[:64]
	}
	if p == "" || p[0] == '-' {
		p = "file" + p
	}
	return p
}

func counterValue(g prometheus.Gatherer, name string) int {
	mfs, err := g.Gather()
	if err != nil {
		return 0
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			total := 0.0
			for _, m := range mf.GetMetric() {
				total += m.GetCounter().GetValue()
			}
			return int(total)
		}
	}
	return 0
}

// freeIdleRAM returns free heap memory to the OS whenever more than limit
// bytes of it are idle, like the seed's -maxidleram.
func freeIdleRAM(ctx context.Context, limit uint64) {
	if limit == 0 {
		return
	}
	sample := []rtmetrics.Sample{{Name: "/memory/classes/heap/free:bytes"}}
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			rtmetrics.Read(sample)
			if sample[0].Value.Kind() == rtmetrics.KindUint64 && sample[0].Value.Uint64() > limit {
				debug.FreeOSMemory()
			}
		}
	}
}
