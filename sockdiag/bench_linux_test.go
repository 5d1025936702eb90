//go:build linux

package sockdiag

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// BenchmarkQueryRoundTrip measures one netlink round trip of exact lookups
// against a kernel holding 64 established connections (plus listeners),
// for a single lookup (2 requests: both orientations) and for a full batch
// of 64 lookups (128 requests). It needs root (network namespaces).
func BenchmarkQueryRoundTrip(b *testing.B) {
	n := newTestNet(b)
	ln := listen(b, n.server, "tcp4", "192.0.2.1:0")
	q := openQuerierIn(b, n.server)
	d := newDialer(b, n.client)
	server := addrPort(ln.Addr())
	var clients []netip.AddrPort
	for range maxBatch {
		c, err := d.dial(context.Background(), netip.AddrPort{}, server)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		acceptOne(b, ln)
		clients = append(clients, addrPort(c.LocalAddr()))
	}
	for _, lookups := range []int{1, 8, maxBatch} {
		b.Run(fmt.Sprintf("lookups=%d", lookups), func(b *testing.B) {
			var ids []sockID
			for _, c := range clients[:lookups] {
				ids = append(ids, sockID{server, c}, sockID{c, server})
			}
			res := make([]queryResult, len(ids))
			b.ReportAllocs()
			start := time.Now()
			for b.Loop() {
				if _, err := q.query(ids, res); err != nil {
					b.Fatal(err)
				}
			}
			for i := 0; i < len(ids); i += 2 {
				if res[i].kind != resultFound {
					b.Fatalf("lookup %d: %+v", i/2, res[i])
				}
			}
			perLookup := time.Since(start) / time.Duration(b.N*lookups)
			b.ReportMetric(float64(perLookup.Nanoseconds())/1000, "µs/lookup")
		})
	}
}
