//go:build linux

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/headercap/headercap/internal/netns"
	"github.com/headercap/headercap/internal/trafficgen"

	"github.com/headercap/headercap/internal/e2etest"
)

// The daemon's settings in the test. Short, so the test is fast: long
// connections (3-6s) outlive the capture duration.
const (
	captureDuration = 4 * time.Second
	flowTimeout     = 3 * time.Second
	uuidWait        = 2 * time.Second
	sigtermWait     = 1 * time.Second
	maxHeaderSize   = 256
	daemonMetrics   = "127.0.0.1:9990"
	tcpinfoMetrics  = "127.0.0.1:9991"
	serverPort      = 8080
)

// pipelineConfig says what runPipeline runs.
type pipelineConfig struct {
	// anonymize is the daemon's -anonymize.ip; daemon false runs no daemon
	// (the harness test).
	anonymize string
	daemon    bool
	// secondDump runs a second tcpdump next to the ground truth.
	secondDump bool
	// uuidSource is the daemon's -uuid.source (default eventsocket: only
	// tcp-info names flows).
	uuidSource string
	// noTCPInfo runs neither tcp-info nor the recorder of its events.
	noTCPInfo bool
	// prefix, if set, is written to a file given to tcp-info and the
	// daemon as -uuid-prefix-file.
	prefix string
	// cookies makes trafficgen serve record every accepted connection
	// with its socket cookie (pipeline.accepts).
	cookies bool
	// Traffic: an empty mix or a zero bulkSize means the eventsocket
	// tests' traffic.
	conns, parallel int
	seed            uint64
	mix             string
	bulkSize        int
	// holdMax is trafficgen's -hold-max (0: its defaults).
	holdMax time.Duration
}

// pipeline is what a run left behind.
type pipeline struct {
	work, datadir string
	ground        *Capture
	second        *Capture
	events        []Event
	badEvents     []string
	opens         []OpenEvent
	records       []trafficgen.Record
	accepts       []trafficgen.Accept // with cfg.cookies
	daemonLog     []byte
	metrics       []byte
	sigtermExit   time.Duration
}

// tcpdump's statistics at exit.
var (
	dropRE     = regexp.MustCompile(`(\d+) packets? dropped by kernel`)
	capturedRE = regexp.MustCompile(`(\d+) packets? captured`)
	receivedRE = regexp.MustCompile(`(\d+) packets? received by filter`)
)

// runPipeline runs tcp-info, the recorder, tcpdump, optionally the daemon,
// and trafficgen in a fresh pair of namespaces, then stops everything in
// order. Every process and the namespaces are cleaned up even on failure.
func runPipeline(t *testing.T, tl e2etest.Tools, cfg pipelineConfig) *pipeline {
	t.Helper()
	tg := e2etest.BuildBinary(t, "./cmd/trafficgen")
	var daemon string
	if cfg.daemon {
		daemon = e2etest.BuildBinary(t, "./cmd/packet-headers")
	}
	work := t.TempDir()
	if keep := os.Getenv("HEADERCAP_E2E_KEEP"); keep != "" {
		work = filepath.Join(keep, strings.NewReplacer("/", "_", "=", "-").Replace(t.Name()))
		os.RemoveAll(work)
		if err := os.MkdirAll(work, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Logf("keeping the run's files in %s", work)
	}
	// A unix socket path must stay under 108 bytes.
	sockDir, err := os.MkdirTemp("", "hce2e")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	res := &pipeline{work: work, datadir: filepath.Join(work, "data")}
	sock := filepath.Join(sockDir, "events.sock")
	for _, d := range []string{res.datadir, filepath.Join(work, "tcpinfo")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}

	e2etest.EnableKernelTimestamps(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	pair, err := netns.New(ctx, netns.Config{Prefix: "hce2e"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pair.Close(); err != nil {
			t.Errorf("remove namespaces: %v", err)
		}
	})
	srv := pair.Server

	var prefixArgs []string
	if cfg.prefix != "" {
		pf := filepath.Join(work, "uuid-prefix")
		if err := os.WriteFile(pf, []byte(cfg.prefix), 0o644); err != nil {
			t.Fatal(err)
		}
		prefixArgs = []string{"-uuid-prefix-file", pf}
	}

	// tcp-info, and our own recorder of its events.
	var tcpinfo *e2etest.Proc
	var rec *Recorder
	if !cfg.noTCPInfo {
		tcpinfo = e2etest.StartProc(t, work, "tcp-info", srv.Command(tl.TCPInfo, append([]string{
			"-tcpinfo.eventsocket", sock, "-output", filepath.Join(work, "tcpinfo"),
			"-prometheusx.listen-address", tcpinfoMetrics}, prefixArgs...)...))
		rctx, rcancel := context.WithTimeout(ctx, 15*time.Second)
		rec, err = RecordEvents(rctx, sock)
		rcancel()
		if err != nil {
			t.Fatalf("tcp-info eventsocket: %v", err)
		}
		t.Cleanup(func() { rec.Close() })
		tcpinfo.WaitOutput(t, "Adding new TCP event client", 1, 10*time.Second)
	}

	// Ground truth.
	dump := func(name string) *e2etest.Proc {
		p := e2etest.StartProc(t, work, name, srv.Command(tl.TCPDump, "-i", netns.ServerVeth,
			"-w", filepath.Join(work, name+".pcap"), "-s", "0", "-U", "-n", "-B", "32768",
			"-Z", "root", "--time-stamp-precision=nano", "tcp"))
		p.WaitOutput(t, "listening on", 1, 10*time.Second)
		return p
	}
	dumps := []*e2etest.Proc{dump("ground")}
	if cfg.secondDump {
		dumps = append(dumps, dump("second"))
	}

	// The daemon.
	var ph *e2etest.Proc
	if cfg.daemon {
		source := cfg.uuidSource
		if source == "" {
			// Only tcp-info names flows: the test checks the daemon
			// against the connections tcp-info reported.
			source = "eventsocket"
		}
		args := []string{
			"-interface", netns.ServerVeth,
			"-datadir", res.datadir,
			"-uuid.source", source,
			"-captureduration", captureDuration.String(),
			"-flowtimeout", flowTimeout.String(),
			"-uuidwaitduration", uuidWait.String(),
			"-sigtermwait", sigtermWait.String(),
			"-maxheadersize", strconv.Itoa(maxHeaderSize),
			"-anonymize.ip", cfg.anonymize,
			"-prometheusx.listen-address", daemonMetrics,
		}
		if !cfg.noTCPInfo {
			args = append(args, "-tcpinfo.eventsocket", sock)
		}
		args = append(args, prefixArgs...)
		ph = e2etest.StartProc(t, work, "packet-headers", srv.Command(daemon, args...))
		// Ready when it listens to tcp-info and serves metrics.
		if tcpinfo != nil {
			tcpinfo.WaitOutput(t, "Adding new TCP event client", 2, 15*time.Second)
		}
		deadline := time.Now().Add(15 * time.Second)
		for {
			if ph.Exited() {
				t.Fatalf("packet-headers exited early: %v", ph.Err)
			}
			if _, err := srv.Exec(ctx, tg, "metrics", "http://"+daemonMetrics+"/metrics"); err == nil {
				break
			} else if time.Now().After(deadline) {
				t.Fatalf("packet-headers metrics not reachable: %v", err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		time.Sleep(500 * time.Millisecond) // let the capture sockets settle
	}

	// Traffic.
	listen := fmt.Sprintf("%s,%s", netip.AddrPortFrom(srv.IPv4, serverPort), netip.AddrPortFrom(srv.IPv6, serverPort))
	serveArgs := []string{"serve", "-listen", listen}
	acceptsPath := filepath.Join(work, "accepted.jsonl")
	if cfg.cookies {
		serveArgs = append(serveArgs, "-cookies", acceptsPath)
	}
	tgs := e2etest.StartProc(t, work, "trafficgen-serve", srv.Command(tg, serveArgs...))
	tgs.WaitOutput(t, "serving on", 1, 10*time.Second)
	connsPath := filepath.Join(work, "conns.jsonl")
	mix, bulkSize := cfg.mix, cfg.bulkSize
	if mix == "" {
		mix = "short=60,long=10,bulk=10,reuse=15,abort=5"
	}
	if bulkSize == 0 {
		bulkSize = 2 << 20
	}
	start := time.Now()
	tgc := e2etest.StartProc(t, work, "trafficgen-client", pair.Client.Command(tg, "client",
		"-connect", listen,
		"-conns", strconv.Itoa(cfg.conns),
		"-parallel", strconv.Itoa(cfg.parallel),
		"-mix", mix,
		"-duration-long", (captureDuration*3/2).String(),
		"-bulk-size", strconv.Itoa(bulkSize),
		"-hold-max", cfg.holdMax.String(),
		"-seed", strconv.FormatUint(cfg.seed, 10),
		"-out", connsPath))
	if code := tgc.Wait(t, 2*time.Minute); code != 0 {
		t.Fatalf("trafficgen client failed (exit %d):\n%s", code, e2etest.Tail(tgc.Out.Bytes(), 30))
	}
	t.Logf("traffic: %s (%v)", strings.TrimSpace(e2etest.Tail(tgc.Out.Bytes(), 1)), time.Since(start).Round(time.Millisecond))

	if cfg.daemon {
		// Let every flow time out, read the metrics, then stop the daemon.
		time.Sleep(flowTimeout + 1500*time.Millisecond)
		m, err := srv.Exec(ctx, tg, "metrics", "http://"+daemonMetrics+"/metrics")
		if err != nil {
			t.Errorf("read daemon metrics: %v", err)
		}
		res.metrics = m
		if err := os.WriteFile(filepath.Join(work, "metrics.txt"), m, 0o644); err != nil {
			t.Fatal(err)
		}
		code, took := ph.Stop(t, syscall.SIGTERM, sigtermWait+10*time.Second)
		res.sigtermExit = took
		if code != 0 {
			t.Errorf("packet-headers exited with status %d after SIGTERM (%v), want 0", code, ph.Err)
		}
		if took > sigtermWait+5*time.Second {
			t.Errorf("packet-headers took %v to exit after SIGTERM (-sigtermwait %v)", took, sigtermWait)
		}
		res.daemonLog = ph.Out.Bytes()
		for _, bad := range []string{"panic:", "DATA RACE", "fatal error:"} {
			if bytes.Contains(res.daemonLog, []byte(bad)) {
				t.Errorf("packet-headers output contains %q", bad)
			}
		}
	}
	if code, _ := tgs.Stop(t, syscall.SIGTERM, 10*time.Second); code != 0 {
		t.Errorf("trafficgen server exited with status %d", code)
	}
	if !cfg.daemon {
		// Let tcpdump read the last ring blocks before it is stopped.
		time.Sleep(time.Second)
	}
	for _, d := range dumps {
		d.Stop(t, syscall.SIGINT, 10*time.Second)
		out := d.Out.Bytes()
		drops, captured, received := dropRE.FindSubmatch(out), capturedRE.FindSubmatch(out), receivedRE.FindSubmatch(out)
		if drops == nil || captured == nil || received == nil {
			t.Fatalf("%s printed no statistics; the ground truth is unusable:\n%s", d.Name, out)
		}
		if string(drops[1]) != "0" {
			t.Fatalf("%s: %s packets dropped by the kernel; the ground truth is incomplete", d.Name, drops[1])
		}
		if string(captured[1]) != string(received[1]) {
			t.Fatalf("%s: %s packets captured of %s received; the ground truth is incomplete", d.Name, captured[1], received[1])
		}
	}
	if tcpinfo != nil {
		tcpinfo.Stop(t, syscall.SIGTERM, 10*time.Second)
		if err := rec.Wait(5 * time.Second); err != nil {
			t.Errorf("event recorder: %v", err)
		}
		res.events, res.badEvents = rec.Events(), rec.Bad()
	}
	var evBuf bytes.Buffer
	enc := json.NewEncoder(&evBuf)
	for _, ev := range res.events {
		if err := enc.Encode(ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(work, "events.jsonl"), evBuf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	opens, errs := Opens(res.events)
	for _, err := range errs {
		t.Errorf("tcp-info event: %v", err)
	}
	for _, l := range res.badEvents {
		t.Errorf("unparseable tcp-info event line: %q", l)
	}
	res.opens = opens
	if res.ground, err = ReadPcapFile(filepath.Join(work, "ground.pcap"), 1024); err != nil {
		t.Fatal(err)
	}
	if cfg.secondDump {
		if res.second, err = ReadPcapFile(filepath.Join(work, "second.pcap"), 1024); err != nil {
			t.Fatal(err)
		}
	}
	res.records = readJSONLines[trafficgen.Record](t, connsPath)
	if cfg.cookies {
		res.accepts = readJSONLines[trafficgen.Accept](t, acceptsPath)
	}
	return res
}

// readJSONLines reads a file of JSON lines.
func readJSONLines[T any](t *testing.T, path string) []T {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var recs []T
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r T
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		recs = append(recs, r)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return recs
}

// checkHarness fails the test if the run cannot exercise what the checks
// are about: errors in the traffic, no reused tuple reported twice, no flow
// longer than the capture duration, a missing address family. names are
// the connections the checks expect files for; who says where they come
// from (tcp-info's Open events, or the server's accepted sockets).
func checkHarness(t *testing.T, p *pipeline, wantConns int, names []OpenEvent, who string) {
	t.Helper()
	if len(p.records) != wantConns {
		t.Errorf("harness: trafficgen recorded %d connections, want %d", len(p.records), wantConns)
	}
	for _, r := range p.records {
		if r.Error != "" {
			t.Errorf("harness: trafficgen connection failed: %+v", r)
		}
	}
	if p.ground.LinkType != 1 || !p.ground.Nanosecond {
		t.Errorf("harness: ground truth link type %v nanosecond=%v", p.ground.LinkType, p.ground.Nanosecond)
	}
	conns, skipped := SplitConns(p.ground.Packets)
	if skipped != 0 {
		t.Errorf("harness: %d ground-truth packets are not parseable TCP", skipped)
	}
	perTuple := map[Tuple]int{}
	long, v4, v6 := 0, 0, 0
	matched := MatchConns(conns, names)
	for _, ev := range names {
		key := Tuple{Src: ev.Src, Dst: ev.Dst}.Key()
		perTuple[key]++
		if ev.Src.Addr().Is4() {
			v4++
		} else {
			v6++
		}
		if c := matched[ev.UUID]; c != nil && c.Packets[len(c.Packets)-1].TS.Sub(c.Start) > captureDuration+200*time.Millisecond {
			long++
		}
	}
	// How late tcp-info delivers Open events: a daemon that trusts arrival
	// order rather than the events' timestamps suffers from late ones.
	var lags []time.Duration
	for _, ev := range p.events {
		if ev.Event == EventOpen && !ev.Received.IsZero() {
			lags = append(lags, ev.Received.Sub(ev.Timestamp))
		}
	}
	if len(lags) > 0 {
		slices.Sort(lags)
		t.Logf("harness: tcp-info Open events arrived %v (median) / %v (p99) / %v (max) after their timestamps",
			lags[len(lags)/2].Round(time.Microsecond), lags[len(lags)*99/100].Round(time.Microsecond), lags[len(lags)-1].Round(time.Microsecond))
	}
	reused := 0
	for _, n := range perTuple {
		if n > 1 {
			reused++
		}
	}
	t.Logf("harness: %s %d IPv4 and %d IPv6 connections; %d tuples reported more than once (reuse); %d connections longer than the %v capture duration",
		who, v4, v6, reused, long, captureDuration)
	if v4 == 0 || v6 == 0 || reused == 0 || long == 0 {
		t.Error("harness: the run does not exercise IPv4, IPv6, tuple reuse and the capture duration cut")
	}
}

// TestHarness checks the test's own machinery without the daemon:
// namespaces, tcp-info, the event recorder, trafficgen and tcpdump. A second
// tcpdump of the same interface stands in for the daemon: what a correct
// daemon would write is derived from it, and Check must accept that against
// the ground truth. This also measures how far two packet sockets'
// timestamps differ.
func TestHarness(t *testing.T) {
	tl := e2etest.RequireTools(t, "end-to-end test")
	const conns = 200
	p := runPipeline(t, tl, pipelineConfig{secondDump: true, conns: conns, parallel: 16, seed: 11})
	checkHarness(t, p, conns, p.opens, "tcp-info reported")
	if n1, n2 := len(p.ground.Packets), len(p.second.Packets); n1 != n2 {
		t.Errorf("two tcpdumps of one interface captured %d and %d packets", n1, n2)
	}
	cfg := CheckConfig{CaptureDuration: captureDuration, MaxHeaderSize: maxHeaderSize}
	writeReference(t, p.datadir, cfg, p.second.Packets, p.opens)
	r := Check(cfg, p.ground.Packets, p.opens, p.datadir)
	dd, err := ScanDataDir(p.datadir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("coverage:\n%s", computeCoverage(p.records, p.ground.Packets, p.opens, nil, dd))
	t.Logf("check of the reference output:\n%s", r.Summary(5))
	if len(r.Failures) > 0 {
		t.Error("Check rejects a correct output derived from a second capture")
	}
}

// TestEndToEnd runs the daemon against real traffic and compares its files
// with the ground truth: named by tcp-info only, without and with netblock
// anonymization; then named from the kernel's socket cookies (netlink, with
// and without a prefix file, and both sources), checked against every
// connection the server accepted (testNaming).
func TestEndToEnd(t *testing.T) {
	tl := e2etest.RequireTools(t, "end-to-end test")
	for _, tc := range []struct {
		anonymize string
		conns     int
		seed      uint64
	}{
		{"none", 400, 1},
		{"netblock", 200, 2},
	} {
		t.Run("anonymize="+tc.anonymize, func(t *testing.T) {
			p := runPipeline(t, tl, pipelineConfig{daemon: true, anonymize: tc.anonymize, conns: tc.conns, parallel: 16, seed: tc.seed})
			t.Logf("packet-headers exited %v after SIGTERM", p.sigtermExit.Round(time.Millisecond))
			t.Logf("packet-headers metrics before SIGTERM (drops explain missing packets):\n%s", grepMetrics(p.metrics,
				"pcap_capture_kernel_drops_total", "pcap_capture_kernel_freezes_total", "pcap_missed_", "pcap_flows_ended_total", "pcap_packets_after_capture_total"))
			checkHarness(t, p, tc.conns, p.opens, "tcp-info reported")
			cfg := CheckConfig{CaptureDuration: captureDuration, MaxHeaderSize: maxHeaderSize, Netblock: tc.anonymize == "netblock"}
			r := Check(cfg, p.ground.Packets, p.opens, p.datadir)
			dd, err := ScanDataDir(p.datadir)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("coverage (connections made by trafficgen / seen in the ground truth / reported by tcp-info / with a file):\n%s",
				computeCoverage(p.records, p.ground.Packets, p.opens, nil, dd))
			summary := r.Summary(1000)
			t.Logf("result:\n%s", summary)
			if err := os.WriteFile(filepath.Join(p.work, "report.txt"), []byte(summary), 0o644); err != nil {
				t.Fatal(err)
			}
			if len(r.Failures) > 0 {
				t.Errorf("packet-headers output differs from the ground truth:\n%s", r.Summary(8))
			}
			if cfg.Netblock {
				checkNoLeaks(t, p, dd)
			}
		})
	}
	for _, tc := range namingCases {
		t.Run(tc.name, func(t *testing.T) { testNaming(t, tl, tc) })
	}
}

// grepMetrics returns the sample lines of text whose names start with one
// of prefixes.
func grepMetrics(text []byte, prefixes ...string) string {
	var out []string
	for _, line := range strings.Split(string(text), "\n") {
		for _, p := range prefixes {
			if strings.HasPrefix(line, p) {
				out = append(out, "  "+line)
				break
			}
		}
	}
	if len(out) == 0 {
		return "  (none found)"
	}
	return strings.Join(out, "\n")
}

// checkNoLeaks looks for the full client and server addresses in every
// output of an anonymizing daemon: pcap bytes, file names, its log and its
// metrics.
func checkNoLeaks(t *testing.T, p *pipeline, dd *DataDir) {
	t.Helper()
	addrs := []netip.Addr{netns.ServerIPv4, netns.ClientIPv4, netns.ServerIPv6, netns.ClientIPv6}
	var leaks []string
	for u, paths := range dd.Files {
		for _, path := range paths {
			if hits := FindTextAddrs([]byte(path), addrs); len(hits) > 0 {
				leaks = append(leaks, fmt.Sprintf("file name %s: %v", path, hits))
			}
			c, err := ReadFlowFile(filepath.Join(p.datadir, path))
			if err != nil {
				continue // reported by Check
			}
			for _, h := range FindBinaryAddrs(c.Packets, addrs) {
				leaks = append(leaks, fmt.Sprintf("uuid=%s: %s", u, h))
			}
		}
	}
	for _, h := range FindTextAddrs(p.daemonLog, addrs) {
		leaks = append(leaks, "daemon log: "+h)
	}
	for _, h := range FindTextAddrs(p.metrics, addrs) {
		leaks = append(leaks, "metrics: "+h)
	}
	if len(leaks) > 0 {
		if len(leaks) > 20 {
			leaks = append(leaks[:20], fmt.Sprintf("... and %d more", len(leaks)-20))
		}
		t.Errorf("anonymization: %d full addresses found in the daemon's outputs:\n  %s", len(leaks), strings.Join(leaks, "\n  "))
	}
}
