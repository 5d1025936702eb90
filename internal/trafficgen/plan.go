package trafficgen

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Mix holds the relative weight of each shape.
type Mix map[Shape]int

// DefaultMix is used when a ClientConfig has no Mix.
var DefaultMix = Mix{Short: 70, Long: 10, Bulk: 10, Reuse: 10}

// ParseMix parses "short=70,long=10,bulk=10,reuse=10,abort=5".
func ParseMix(s string) (Mix, error) {
	m := Mix{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		name, val, ok := strings.Cut(f, "=")
		if !ok {
			return nil, fmt.Errorf("mix entry %q: want shape=weight", f)
		}
		w, err := strconv.Atoi(val)
		if err != nil || w < 0 {
			return nil, fmt.Errorf("mix entry %q: weight must be a non-negative integer", f)
		}
		m[Shape(name)] = w
	}
	return m, m.Validate()
}

// Validate checks that every shape is known and some weight is positive.
func (m Mix) Validate() error {
	total := 0
	for s, w := range m {
		known := false
		for _, k := range Shapes {
			known = known || k == s
		}
		if !known {
			return fmt.Errorf("unknown shape %q in mix (known: %v)", s, Shapes)
		}
		if w < 0 {
			return fmt.Errorf("negative weight for %q", s)
		}
		total += w
	}
	if total == 0 {
		return fmt.Errorf("mix has no positive weight")
	}
	return nil
}

// String formats m like ParseMix accepts it.
func (m Mix) String() string {
	var parts []string
	for _, s := range Shapes {
		if w, ok := m[s]; ok {
			parts = append(parts, fmt.Sprintf("%s=%d", s, w))
		}
	}
	return strings.Join(parts, ",")
}

// Job is one unit of planned work: a single connection, or for Reuse a
// series of connections from one local port to one server address.
type Job struct {
	// Index numbers jobs from 0 in plan order.
	Index int
	Shape Shape
	// Server is the address every connection of the job goes to.
	Server netip.AddrPort
	// Conns holds one request per connection, in order.
	Conns []Request
	// LocalPort is the fixed local port of a Reuse series (0 otherwise).
	LocalPort uint16
	// Upload is how many bytes the client sends in a Bulk upload.
	Upload int64
	// AbortAfter is how many bytes an Abort reads before its RST.
	AbortAfter int64
}

// planner draws jobs from a seeded generator: the same seed and config give
// the same sequence of jobs, whatever the timing of their execution.
type planner struct {
	cfg     *ClientConfig
	rng     *rand.Rand
	shapes  []Shape
	weights []int
	total   int
	next    int
	series  int
	planned int // connections planned so far
}

func newPlanner(cfg *ClientConfig) *planner {
	p := &planner{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15))}
	for _, s := range Shapes { // fixed order: map iteration is random
		if w := cfg.Mix[s]; w > 0 {
			p.shapes = append(p.shapes, s)
			p.weights = append(p.weights, w)
			p.total += w
		}
	}
	return p
}

// between returns a uniform duration in [lo, hi].
func (p *planner) between(lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(p.rng.Int64N(int64(hi-lo)+1))
}

// size returns a uniform int64 in [lo, hi].
func (p *planner) size(lo, hi int64) int64 {
	if hi <= lo {
		return lo
	}
	return lo + p.rng.Int64N(hi-lo+1)
}

// closeMode picks a close mode with the given weights (client, server,
// client-rst, server-rst).
func (p *planner) closeMode(wc, ws, wcr, wsr int) CloseMode {
	n := p.rng.IntN(wc + ws + wcr + wsr)
	switch {
	case n < wc:
		return CloseClient
	case n < wc+ws:
		return CloseServer
	case n < wc+ws+wcr:
		return CloseClientRST
	}
	return CloseServerRST
}

// Next returns the next job, or false when the connection budget
// (cfg.Conns, if set) is used up.
func (p *planner) Next() (Job, bool) {
	remaining := -1
	if p.cfg.Conns > 0 {
		remaining = p.cfg.Conns - p.planned
		if remaining <= 0 {
			return Job{}, false
		}
	}
	n := p.rng.IntN(p.total)
	shape := p.shapes[len(p.shapes)-1]
	for i, w := range p.weights {
		if n < w {
			shape = p.shapes[i]
			break
		}
		n -= w
	}
	j := Job{
		Index:  p.next,
		Shape:  shape,
		Server: p.cfg.Connect[p.rng.IntN(len(p.cfg.Connect))],
	}
	p.next++
	switch shape {
	case Short:
		// By default mostly long enough for tcp-info's 10 ms polling to
		// see them, a few not.
		hold := 60 * time.Millisecond
		if p.cfg.HoldMax > 0 {
			hold = p.cfg.HoldMax
		}
		j.Conns = []Request{{
			Shape: Short,
			Close: p.closeMode(40, 40, 10, 10),
			Hold:  p.between(0, hold),
			Reply: p.size(0, 4096),
		}}
	case Long:
		j.Conns = []Request{{
			Shape:    Long,
			Close:    p.closeMode(40, 40, 15, 5),
			Duration: p.between(p.cfg.LongDuration/2, p.cfg.LongDuration),
			Interval: p.between(100*time.Millisecond, 500*time.Millisecond),
			Chunk:    int(p.size(16, 512)),
		}}
	case Bulk:
		r := Request{Shape: Bulk, Close: CloseServer, Dir: Down, Reply: p.size(p.cfg.BulkSize/8, p.cfg.BulkSize)}
		if p.rng.IntN(2) == 0 {
			r.Close, r.Dir, r.Reply = CloseClient, Up, 0
			j.Upload = p.size(p.cfg.BulkSize/8, p.cfg.BulkSize)
		}
		j.Conns = []Request{r}
	case Abort:
		j.Conns = []Request{{Shape: Abort, Close: CloseClientRST, Reply: p.cfg.BulkSize}}
		j.AbortAfter = p.size(1, p.cfg.BulkSize/8)
	case Reuse:
		k := 2 + p.rng.IntN(4) // 2..5 connections on the same 4-tuple
		if remaining > 0 && k > remaining {
			k = remaining
		}
		lo, hi := 30*time.Millisecond, 120*time.Millisecond
		if p.cfg.HoldMax > 0 {
			lo, hi = p.cfg.HoldMax/4, p.cfg.HoldMax
		}
		j.LocalPort = p.cfg.ReusePortBase + uint16(p.series%int(p.cfg.ReusePortCount))
		p.series++
		for i := range k {
			// The client must never hold the tuple in TIME_WAIT, or it
			// could not reconnect at once: the server closes first, or the
			// client resets.
			mode := CloseServer
			if i%2 == 1 {
				mode = CloseClientRST
			}
			j.Conns = append(j.Conns, Request{
				Shape: Reuse,
				Close: mode,
				Hold:  p.between(lo, hi),
				Reply: p.size(1, 2048),
			})
		}
	}
	p.planned += len(j.Conns)
	return j, true
}
