package trafficgen

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"log"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// startServer runs a server on loopback (allowed for servers) until the
// test ends.
func startServer(t *testing.T) (*Server, []netip.AddrPort) {
	t.Helper()
	srv, err := NewServer(ServerConfig{
		Listen: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0"), netip.MustParseAddrPort("[::1]:0")},
		Log:    log.New(testWriter{t}, "server: ", 0),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server Run: %v", err)
		}
	})
	select {
	case <-srv.Ready():
	case err := <-done:
		t.Fatalf("server: %v", err)
	}
	var addrs []netip.AddrPort
	for _, a := range srv.Addrs() {
		addrs = append(addrs, a.(*net.TCPAddr).AddrPort())
	}
	return srv, addrs
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func TestClientServerAllShapes(t *testing.T) {
	srv, addrs := startServer(t)
	var out bytes.Buffer
	c, err := NewClient(ClientConfig{
		Connect:       addrs,
		Conns:         80,
		Parallel:      8,
		Mix:           Mix{Short: 40, Long: 10, Bulk: 10, Reuse: 30, Abort: 10},
		LongDuration:  600 * time.Millisecond,
		BulkSize:      512 << 10,
		Seed:          42,
		Out:           &out,
		Log:           log.New(testWriter{t}, "client: ", 0),
		allowLoopback: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.Run(ctx); err != nil {
		t.Fatal(err)
	}
	s := c.Summary()
	if s.Conns != 80 || s.Errors != 0 {
		t.Errorf("summary %+v, want 80 connections and no errors", s)
	}
	recs := map[int][]Record{}
	sc := bufio.NewScanner(&out)
	n := 0
	for sc.Scan() {
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("record %q: %v", sc.Text(), err)
		}
		n++
		recs[r.Job] = append(recs[r.Job], r)
		if r.Local == "" || r.Remote == "" || r.End.Before(r.Start) || r.Error != "" {
			t.Errorf("bad record %+v", r)
		}
		if r.Sent == 0 {
			t.Errorf("record %+v sent nothing (the request line at least)", r)
		}
	}
	if n != 80 {
		t.Errorf("%d records, want 80", n)
	}
	series := 0
	for job, rs := range recs {
		if rs[0].Shape != Reuse || len(rs) < 2 {
			continue
		}
		series++
		for _, r := range rs[1:] {
			if r.Local != rs[0].Local || r.Remote != rs[0].Remote {
				t.Errorf("reuse job %d: tuples %s->%s and %s->%s differ", job, rs[0].Local, rs[0].Remote, r.Local, r.Remote)
			}
		}
	}
	if series == 0 {
		t.Error("no reuse series of 2 or more connections ran")
	}
	if st := srv.Stats(); st.Errors != 0 || st.Accepted != 80 {
		t.Errorf("server stats %+v, want 80 accepted, no errors", st)
	}
}

func TestClientStopsOnCancel(t *testing.T) {
	_, addrs := startServer(t)
	c, err := NewClient(ClientConfig{
		Connect:       addrs,
		For:           time.Hour,
		Mix:           Mix{Long: 1},
		LongDuration:  5 * time.Minute,
		allowLoopback: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := c.Run(ctx); err == nil {
		t.Error("Run returned nil after cancellation")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Run took %v to stop", d)
	}
}

func TestServerRejectsBadRequest(t *testing.T) {
	srv, addrs := startServer(t)
	conn, err := net.Dial("tcp", addrs[0].String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(`{"shape":"short","close":"client","reply":999999999999}` + "\n")); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, _ := conn.Read(make([]byte, 10)); n != 0 {
		t.Errorf("server answered an invalid request with %d bytes", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for srv.Stats().Errors == 0 && time.Now().Before(deadline) {
		runtime.Gosched()
		time.Sleep(10 * time.Millisecond)
	}
	if srv.Stats().Errors != 1 {
		t.Errorf("server counted %d errors, want 1", srv.Stats().Errors)
	}
}
