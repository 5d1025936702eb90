// Command pcapsynth writes a large synthetic pcap of many interleaved TCP
// flows between documentation addresses, for measuring offline processing
// (scripts/bench-offline.sh). Nothing is sent anywhere.
package main

import (
	"bufio"
	"encoding/binary"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"os"
	"time"
)

func main() {
	out := flag.String("out", "synth.pcap", "output pcap file")
	flows := flag.Int("flows", 100000, "number of TCP flows")
	perFlow := flag.Int("packets", 40, "mean data packets per flow")
	payload := flag.Int("payload", 1448, "payload bytes of a data packet")
	window := flag.Int("window", 2000, "flows in progress at once")
	seed := flag.Uint64("seed", 1, "random seed")
	flag.Parse()
	if err := run(*out, *flows, *perFlow, *payload, *window, *seed); err != nil {
		log.Fatal(err)
	}
}

type flowGen struct {
	cli, srv [4]byte
	cport    uint16
	left     int
	step     int
	seq, ack uint32
}

func run(path string, nflows, perFlow, payload, window int, seed uint64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	var hdr [24]byte
	binary.LittleEndian.PutUint32(hdr[0:], 0xa1b23c4d)
	binary.LittleEndian.PutUint16(hdr[4:], 2)
	binary.LittleEndian.PutUint16(hdr[6:], 4)
	binary.LittleEndian.PutUint32(hdr[16:], 65535)
	binary.LittleEndian.PutUint32(hdr[20:], 1)
	w.Write(hdr[:])
	rng := rand.New(rand.NewPCG(seed, seed))
	ts := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	frame := make([]byte, 14+20+32+payload)
	var active []*flowGen
	started, packets := 0, 0
	for started < nflows || len(active) > 0 {
		for len(active) < window && started < nflows {
			i := started
			active = append(active, &flowGen{
				cli:   [4]byte{198, 51, 100, byte(i % 250)},
				srv:   [4]byte{192, 0, 2, byte(1 + i%7)},
				cport: uint16(1024 + i%60000),
				left:  1 + rng.IntN(2*perFlow),
				seq:   rng.Uint32(),
				ack:   rng.Uint32(),
			})
			started++
		}
		k := rng.IntN(len(active))
		g := active[k]
		ts = ts.Add(time.Duration(1+rng.IntN(20)) * time.Microsecond)
		var n int
		switch {
		case g.step == 0:
			n = build(frame, g.cli, g.srv, g.cport, 443, 0x02, g.seq, 0, 0)
		case g.step == 1:
			n = build(frame, g.srv, g.cli, 443, g.cport, 0x12, g.ack, g.seq+1, 0)
		case g.left > 0:
			g.left--
			if g.left%2 == 0 {
				n = build(frame, g.srv, g.cli, 443, g.cport, 0x18, g.ack, g.seq, payload)
				g.ack += uint32(payload)
			} else {
				n = build(frame, g.cli, g.srv, g.cport, 443, 0x10, g.seq, g.ack, 0)
			}
		default:
			n = build(frame, g.cli, g.srv, g.cport, 443, 0x11, g.seq, g.ack, 0)
			active[k] = active[len(active)-1]
			active = active[:len(active)-1]
		}
		g.step++
		var rec [16]byte
		binary.LittleEndian.PutUint32(rec[0:], uint32(ts.Unix()))
		binary.LittleEndian.PutUint32(rec[4:], uint32(ts.Nanosecond()))
		binary.LittleEndian.PutUint32(rec[8:], uint32(n))
		binary.LittleEndian.PutUint32(rec[12:], uint32(n))
		w.Write(rec[:])
		w.Write(frame[:n])
		packets++
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "pcapsynth: %d flows, %d packets in %s\n", nflows, packets, path)
	return nil
}

// build writes an Ethernet/IPv4/TCP frame with 12 bytes of TCP options
// (timestamps) and n payload bytes, and returns its length.
func build(b []byte, src, dst [4]byte, sport, dport uint16, flags byte, seq, ack uint32, n int) int {
	clear(b[:14+20+32])
	b[12], b[13] = 0x08, 0x00
	ip := b[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+32+n))
	ip[8], ip[9] = 64, 6
	copy(ip[12:], src[:])
	copy(ip[16:], dst[:])
	tcp := ip[20:]
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], dport)
	binary.BigEndian.PutUint32(tcp[4:], seq)
	binary.BigEndian.PutUint32(tcp[8:], ack)
	tcp[12] = 8 << 4
	tcp[13] = flags
	tcp[20], tcp[21], tcp[22], tcp[23] = 1, 1, 8, 10
	return 14 + 20 + 32 + n
}
