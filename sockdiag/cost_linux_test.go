//go:build linux

package sockdiag

// The cost measurement: the Source, as its own process in the server
// namespace, against the real tcp-info over the same load of short
// connections, each process's CPU time read from /proc/<pid>/stat at the
// same instants. Run it (as root, without -race) with
//
//	SOCKDIAG_COST=1 go test -run TestCost -v ./sockdiag/
//
// SOCKDIAG_COST_CONNS sets the number of connections (default 5000).

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"
)

func init() { helpers["source"] = helperSource }

// helperSummary is what the helper process reports when its input ends.
type helperSummary struct {
	Opens                    [][3]string // uuid, local, remote
	Closes                   int
	Lookups, Queries         float64
	Misses, Dropped          float64
	Overruns                 float64
	UUIDsQuery, UUIDsDestroy float64
	UserSec, SysSec          float64 // getrusage(RUSAGE_SELF) over the whole process
}

// countingSink collects Opens for the summary.
type countingSink struct {
	mu     sync.Mutex
	opens  [][3]string
	closes int
}

func (s *countingSink) Open(_ time.Time, uuid string, local, remote netip.AddrPort) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opens = append(s.opens, [3]string{uuid, local.String(), remote.String()})
}

func (s *countingSink) Close(time.Time, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closes++
}

// helperSource runs a Source in the namespace it was started in. It reads
// lookups from standard input, one per line ("<a> <b> <first unix nanos>"),
// says "ready" on standard output once its sockets are open, and at the
// end of its input waits MaxWait, stops, and prints a helperSummary.
func helperSource() int {
	const maxWait = 2 * time.Second
	if p := os.Getenv("SOCKDIAG_CPUPROFILE"); p != "" {
		f, err := os.Create(p)
		if err == nil && pprof.StartCPUProfile(f) == nil {
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
	}
	sink := &countingSink{}
	src, err := New(Config{PrefixFile: os.Getenv("SOCKDIAG_PREFIX_FILE"), MaxWait: maxWait}, sink, prometheus.NewRegistry())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	fmt.Println("ready")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 {
			continue
		}
		a, err1 := netip.ParseAddrPort(f[0])
		b, err2 := netip.ParseAddrPort(f[1])
		ns, err3 := strconv.ParseInt(f[2], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil {
			continue
		}
		src.Lookup(a, b, time.Unix(0, ns))
	}
	time.Sleep(maxWait + 500*time.Millisecond)
	cancel()
	<-done
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	sink.mu.Lock()
	sum := helperSummary{
		Opens:        sink.opens,
		Closes:       sink.closes,
		Lookups:      testutil.ToFloat64(src.m.lookups),
		Queries:      testutil.ToFloat64(src.m.queries),
		Misses:       testutil.ToFloat64(src.m.misses),
		Dropped:      testutil.ToFloat64(src.m.dropped),
		Overruns:     testutil.ToFloat64(src.m.overruns),
		UUIDsQuery:   testutil.ToFloat64(src.m.uuidsQuery),
		UUIDsDestroy: testutil.ToFloat64(src.m.uuidsDestroy),
		UserSec:      time.Duration(ru.Utime.Nano()).Seconds(),
		SysSec:       time.Duration(ru.Stime.Nano()).Seconds(),
	}
	sink.mu.Unlock()
	if err := json.NewEncoder(os.Stdout).Encode(sum); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// cpuSeconds returns the user+system CPU time of a process so far, from
// /proc/<pid>/stat (fields 14 and 15, in USER_HZ = 100 ticks per second).
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain spaces: split after its ')'.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	utime, err1 := strconv.ParseFloat(f[11], 64)
	stime, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat: %v %v", pid, err1, err2)
	}
	return (utime + stime) / 100, nil
}

func TestCostVsTCPInfo(t *testing.T) {
	if os.Getenv("SOCKDIAG_COST") != "1" {
		t.Skip("set SOCKDIAG_COST=1 to measure the source's CPU cost against tcp-info")
	}
	if raceEnabled {
		t.Skip("the race detector inflates CPU time; run without -race")
	}
	conns := 5000
	if v := os.Getenv("SOCKDIAG_COST_CONNS"); v != "" {
		var err error
		if conns, err = strconv.Atoi(v); err != nil {
			t.Fatal(err)
		}
	}
	n := newTestNet(t)
	prefixFile := filepath.Join(t.TempDir(), "uuid-prefix")
	if err := os.WriteFile(prefixFile, []byte(integrationPrefix), 0o444); err != nil {
		t.Fatal(err)
	}
	ti := startTCPInfo(t, n.server, prefixFile)

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	helper := exec.Command("ip", "netns", "exec", n.server, exe, "-test.run=^$")
	helper.Env = append(os.Environ(), "SOCKDIAG_HELPER=source", "SOCKDIAG_PREFIX_FILE="+prefixFile)
	stdin, err := helper.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	helper.Stderr = os.Stderr
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		helper.Process.Kill()
		helper.Wait()
	}()
	out := bufio.NewReader(stdout)
	if line, err := out.ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("helper: %q, %v", line, err)
	}

	ft := newFlowTable()
	var srvWG sync.WaitGroup
	ln := listen(t, n.server, "tcp", ":0")
	serve(t, ln, ft, &srvWG)
	defer func() { ln.Close(); srvWG.Wait() }()
	port := addrPort(ln.Addr()).Port()

	sample := func() (src, tcpinfo float64) {
		t.Helper()
		a, err1 := cpuSeconds(helper.Process.Pid)
		b, err2 := cpuSeconds(ti.cmd.Process.Pid)
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		return a, b
	}

	// Idle: both processes running, no traffic.
	const idle = 2 * time.Second
	s0, t0 := sample()
	time.Sleep(idle)
	s1, t1 := sample()

	// Load: short connections (connect, write, close), IPv4 and IPv6,
	// from 4 workers as fast as they go; each connection's lookup goes to
	// the helper right after connect, as a capture would send it.
	var inMu sync.Mutex
	in := bufio.NewWriter(stdin)
	var recsMu sync.Mutex
	var recs []*flowRec
	var wg sync.WaitGroup
	const workers = 4
	start := time.Now()
	for w := range workers {
		d := newDialer(t, n.client)
		wg.Go(func() {
			payload := make([]byte, 64)
			for i := w; i < conns; i += workers {
				target := netip.AddrPortFrom(serverV4, port)
				if i%2 == 1 {
					target = netip.AddrPortFrom(serverV6, port)
				}
				first := time.Now()
				c, err := d.dial(context.Background(), netip.AddrPort{}, target)
				if err != nil {
					t.Errorf("dial: %v", err)
					return
				}
				r := ft.get(addrPort(c.LocalAddr()), target)
				r.first = first
				inMu.Lock()
				fmt.Fprintf(in, "%s %s %d\n", r.client, r.server, first.UnixNano())
				in.Flush()
				inMu.Unlock()
				c.Write(payload)
				c.Close()
				recsMu.Lock()
				recs = append(recs, r)
				recsMu.Unlock()
			}
		})
	}
	wg.Wait()
	loadDur := time.Since(start)
	time.Sleep(time.Second) // let both catch up with the last connections
	s2, t2 := sample()
	stdin.Close()

	var sum helperSummary
	if err := json.NewDecoder(out).Decode(&sum); err != nil {
		t.Fatalf("helper summary: %v", err)
	}
	if _, err := io.Copy(io.Discard, out); err != nil {
		t.Fatal(err)
	}
	if err := helper.Wait(); err != nil {
		t.Fatalf("helper: %v", err)
	}

	// Coverage and agreement.
	for _, r := range recs {
		select {
		case <-r.accepted:
		case <-time.After(5 * time.Second):
			t.Fatalf("connection from %v never accepted", r.client)
		}
	}
	byKey := map[tupleKey]*flowRec{}
	for _, r := range recs {
		byKey[keyOf(r.client, r.server)] = r
	}
	named, wrong := 0, 0
	for _, o := range sum.Opens {
		l, err1 := netip.ParseAddrPort(o[1])
		rem, err2 := netip.ParseAddrPort(o[2])
		if err1 != nil || err2 != nil {
			t.Fatalf("helper open %v", o)
		}
		r := byKey[keyOf(l, rem)]
		if r == nil {
			continue
		}
		if o[0] == FromCookie(integrationPrefix, r.cookie) {
			named++
		} else {
			wrong++
		}
	}
	tiSaw, tiWrong := 0, 0
	for _, ev := range ti.opens() {
		src, err1 := netip.ParseAddr(ev.ID.SrcIP)
		dst, err2 := netip.ParseAddr(ev.ID.DstIP)
		if err1 != nil || err2 != nil {
			continue
		}
		r := byKey[keyOf(netip.AddrPortFrom(src.Unmap(), ev.ID.SPort), netip.AddrPortFrom(dst.Unmap(), ev.ID.DPort))]
		if r == nil {
			continue
		}
		tiSaw++
		if ev.UUID != FromCookie(integrationPrefix, r.cookie) {
			tiWrong++
		}
	}
	if wrong > 0 || tiWrong > 0 {
		t.Errorf("wrong UUIDs: source %d, tcp-info %d", wrong, tiWrong)
	}
	report := fmt.Sprintf(`cost over the same run (%d short connections in %v, %.0f/s, 4 dialers, server namespace):
  idle %v:  source %.2f CPU-s, tcp-info %.2f CPU-s
  load+1s:  source %.2f CPU-s (%.1f µs/connection), tcp-info %.2f CPU-s (%.1f µs/connection)
  named:    source %d/%d (query %v, destroy %v; %v round trips; misses %v, dropped %v, overruns %v), tcp-info %d/%d
  source process total (getrusage): user %.2fs sys %.2fs`,
		len(recs), loadDur.Round(time.Millisecond), float64(len(recs))/loadDur.Seconds(),
		idle, s1-s0, t1-t0,
		s2-s1, 1e6*(s2-s1)/float64(len(recs)), t2-t1, 1e6*(t2-t1)/float64(len(recs)),
		named, len(recs), sum.UUIDsQuery, sum.UUIDsDestroy, sum.Queries, sum.Misses, sum.Dropped, sum.Overruns, tiSaw, len(recs),
		sum.UserSec, sum.SysSec)
	t.Log(report)
	if named*100 < len(recs)*99 {
		t.Errorf("the source named %d of %d connections", named, len(recs))
	}
}
