package archive

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// genCorpus writes realistic per-flow pcap.gz files into dir until they
// total at least bytes: flow lengths are log-uniform between 10 and 40,000
// header-only packets (mean ≈ 120 KB compressed), spread over two date
// folders. It returns the member names.
func genCorpus(t testing.TB, dir string, bytes int64, seed uint64) []string {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 42))
	var rels []string
	var total int64
	for i := 0; total < bytes; i++ {
		packets := int(math.Exp(math.Log(10) + rng.Float64()*(math.Log(40000)-math.Log(10))))
		data := genPcapGz(rng, packets)
		rel := fmt.Sprintf("2024/05/%02d/mlab1-lga03_1700000000_%016X.pcap.gz", 6+i%2, rng.Uint64())
		writeSource(t, dir, rel, data)
		rels = append(rels, rel)
		total += int64(len(data))
	}
	return rels
}
