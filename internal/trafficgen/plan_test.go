package trafficgen

import (
	"net/netip"
	"reflect"
	"testing"
	"time"
)

func testConfig(seed uint64) ClientConfig {
	return ClientConfig{
		Connect: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:8080"), netip.MustParseAddrPort("[2001:db8::1]:8080")},
		Conns:   500,
		Mix:     Mix{Short: 50, Long: 10, Bulk: 10, Reuse: 20, Abort: 10},
		Seed:    seed,
	}
}

func plan(t *testing.T, cfg ClientConfig) []Job {
	t.Helper()
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c.Plan(1 << 20)
}

func TestPlanDeterministic(t *testing.T) {
	a, b := plan(t, testConfig(7)), plan(t, testConfig(7))
	if !reflect.DeepEqual(a, b) {
		t.Error("same seed gave different plans")
	}
	if reflect.DeepEqual(a, plan(t, testConfig(8))) {
		t.Error("different seeds gave the same plan")
	}
}

func TestPlanBudgetAndShapes(t *testing.T) {
	cfg := testConfig(3)
	cfg.LongDuration = 6 * time.Second
	jobs := plan(t, cfg)
	conns := 0
	shapes := map[Shape]int{}
	servers := map[netip.AddrPort]bool{}
	closes := map[CloseMode]bool{}
	ports := map[uint16]bool{}
	for _, j := range jobs {
		conns += len(j.Conns)
		shapes[j.Shape]++
		servers[j.Server] = true
		for _, r := range j.Conns {
			if err := r.Validate(); err != nil {
				t.Errorf("job %d: invalid request: %v", j.Index, err)
			}
			closes[r.Close] = true
			if r.Shape == Long && (r.Duration < 3*time.Second || r.Duration > 6*time.Second) {
				t.Errorf("job %d: long duration %v outside [3s, 6s]", j.Index, r.Duration)
			}
		}
		if j.Shape == Reuse {
			if len(j.Conns) < 1 || j.LocalPort < 20000 || j.LocalPort >= 30000 {
				t.Errorf("reuse job %d: %d conns, port %d", j.Index, len(j.Conns), j.LocalPort)
			}
			if ports[j.LocalPort] {
				t.Errorf("reuse port %d used twice", j.LocalPort)
			}
			ports[j.LocalPort] = true
			if j.Conns[0].Close != CloseServer {
				t.Errorf("reuse job %d starts with close=%s", j.Index, j.Conns[0].Close)
			}
		}
	}
	if conns != cfg.Conns {
		t.Errorf("planned %d connections, want %d", conns, cfg.Conns)
	}
	for _, s := range Shapes {
		if shapes[s] == 0 {
			t.Errorf("no %s job in the plan", s)
		}
	}
	if len(servers) != 2 {
		t.Errorf("plan uses servers %v, want both", servers)
	}
	for _, m := range []CloseMode{CloseClient, CloseServer, CloseClientRST, CloseServerRST} {
		if !closes[m] {
			t.Errorf("no connection closes with %s", m)
		}
	}
}

func TestParseMix(t *testing.T) {
	m, err := ParseMix("short=70,long=10,bulk=10,reuse=10")
	if err != nil || m[Short] != 70 || m.String() != "short=70,long=10,bulk=10,reuse=10" {
		t.Errorf("ParseMix = %v, %v", m, err)
	}
	for _, bad := range []string{"", "short", "short=-1", "tiny=3", "short=0"} {
		if _, err := ParseMix(bad); err == nil {
			t.Errorf("ParseMix(%q) accepted", bad)
		}
	}
}

func TestRequestValidate(t *testing.T) {
	for _, r := range []Request{
		{Shape: "x", Close: CloseClient},
		{Shape: Short, Close: "x"},
		{Shape: Short, Close: CloseClient, Reply: -1},
		{Shape: Short, Close: CloseClient, Reply: maxReply + 1},
		{Shape: Long, Close: CloseClient, Duration: time.Second, Interval: 0, Chunk: 1},
		{Shape: Long, Close: CloseClient, Duration: time.Hour, Interval: time.Second, Chunk: 1},
		{Shape: Bulk, Close: CloseClient, Dir: "sideways"},
	} {
		if err := r.Validate(); err == nil {
			t.Errorf("Validate(%+v) accepted", r)
		}
	}
}

func TestPlanHoldMax(t *testing.T) {
	holds := func(cfg ClientConfig) (short, reuse [2]time.Duration) {
		short[0], reuse[0] = time.Hour, time.Hour
		for _, j := range plan(t, cfg) {
			for _, r := range j.Conns {
				h := &short
				switch r.Shape {
				case Short:
				case Reuse:
					h = &reuse
				default:
					continue
				}
				h[0], h[1] = min(h[0], r.Hold), max(h[1], r.Hold)
			}
		}
		return short, reuse
	}
	cfg := testConfig(5)
	cfg.Conns = 2000
	short, reuse := holds(cfg)
	if short[1] <= 20*time.Millisecond || short[1] > 60*time.Millisecond || reuse[0] < 30*time.Millisecond || reuse[1] > 120*time.Millisecond {
		t.Errorf("default holds: short %v, reuse %v; want within 0–60ms and 30–120ms", short, reuse)
	}
	cfg.HoldMax = 2 * time.Millisecond
	short, reuse = holds(cfg)
	if short[1] > 2*time.Millisecond || reuse[0] < 500*time.Microsecond || reuse[1] > 2*time.Millisecond {
		t.Errorf("HoldMax 2ms: short %v, reuse %v; want within 0–2ms and 0.5–2ms", short, reuse)
	}
	cfg.HoldMax = -time.Millisecond
	if _, err := NewClient(cfg); err == nil {
		t.Error("NewClient accepted a negative HoldMax")
	}
}
