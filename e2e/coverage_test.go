package e2e

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/headercap/headercap/internal/trafficgen"
)

// coverage joins what trafficgen made, what the ground truth saw, what
// tcp-info reported, what the server accepted and what files exist, per
// shape.
type coverage struct {
	rows  map[string]*coverageRow
	order []string
	// withAccepts: the server's accepted sockets were recorded.
	withAccepts bool
}

type coverageRow struct {
	made, inGround, reported, accepted, files int
}

// computeCoverage matches each trafficgen record to the ground-truth
// connection on its tuple that started during the record's lifetime, and
// each such connection to the tcp-info UUID naming it. accepts, if not nil,
// are the server's accepted sockets named by their cookies (acceptOpens):
// then the files counted are those named after the connection's socket
// cookie, whoever named it; otherwise those named by tcp-info.
func computeCoverage(records []trafficgen.Record, ground []Packet, opens, accepts []OpenEvent, dd *DataDir) *coverage {
	conns, _ := SplitConns(ground)
	uuidOf := map[*Conn]string{}
	for u, c := range MatchConns(conns, opens) {
		uuidOf[c] = u
	}
	cookieUUIDOf := map[*Conn]string{}
	for u, c := range MatchConns(conns, accepts) {
		cookieUUIDOf[c] = u
	}
	cov := &coverage{rows: map[string]*coverageRow{}, withAccepts: accepts != nil}
	row := func(name string) *coverageRow {
		r, ok := cov.rows[name]
		if !ok {
			r = &coverageRow{}
			cov.rows[name] = r
			cov.order = append(cov.order, name)
		}
		return r
	}
	for _, rec := range records {
		name := string(rec.Shape) + "/" + string(rec.Close)
		for _, r := range []*coverageRow{row("total"), row(name)} {
			r.made++
		}
		local, err1 := netip.ParseAddrPort(rec.Local)
		remote, err2 := netip.ParseAddrPort(rec.Remote)
		if err1 != nil || err2 != nil {
			continue
		}
		var conn *Conn
		for _, c := range conns[Tuple{Src: local, Dst: remote}.Key()] {
			if !c.Start.Before(rec.Start.Add(-time.Millisecond)) && !c.Start.After(rec.End) {
				conn = c
				break
			}
		}
		if conn == nil {
			continue
		}
		u, reported := uuidOf[conn]
		cu, accepted := cookieUUIDOf[conn]
		for _, r := range []*coverageRow{row("total"), row(name)} {
			r.inGround++
			if reported {
				r.reported++
			}
			if accepted {
				r.accepted++
			}
			switch {
			case cov.withAccepts && accepted && len(dd.Files[cu]) > 0:
				r.files++
			case !cov.withAccepts && reported && len(dd.Files[u]) > 0:
				r.files++
			}
		}
	}
	if len(cov.order) > 1 {
		sort.Strings(cov.order[1:])
	}
	return cov
}

func (c *coverage) String() string {
	var b strings.Builder
	if !c.withAccepts {
		fmt.Fprintf(&b, "%-22s %6s %9s %9s %6s\n", "shape/close", "made", "captured", "tcp-info", "files")
		for _, name := range c.order {
			r := c.rows[name]
			fmt.Fprintf(&b, "%-22s %6d %9d %9d %6d\n", name, r.made, r.inGround, r.reported, r.files)
		}
		return b.String()
	}
	fmt.Fprintf(&b, "%-22s %6s %9s %9s %9s %6s\n", "shape/close", "made", "captured", "accepted", "tcp-info", "files")
	for _, name := range c.order {
		r := c.rows[name]
		fmt.Fprintf(&b, "%-22s %6d %9d %9d %9d %6d\n", name, r.made, r.inGround, r.accepted, r.reported, r.files)
	}
	return b.String()
}
