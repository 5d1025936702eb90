package archive

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	rtmetrics "runtime/metrics"
	"sync"
	"testing"
	"time"
)

// heapSampler records the peak of live heap objects.
type heapSampler struct {
	stop chan struct{}
	done sync.WaitGroup
	peak uint64
}

func heapBytes() uint64 {
	s := []rtmetrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	rtmetrics.Read(s)
	return s[0].Value.Uint64()
}

func sampleHeap() *heapSampler {
	h := &heapSampler{stop: make(chan struct{})}
	h.done.Go(func() {
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			h.peak = max(h.peak, heapBytes())
			select {
			case <-h.stop:
				return
			case <-t.C:
			}
		}
	})
	return h
}

func (h *heapSampler) finish() uint64 {
	close(h.stop)
	h.done.Wait()
	return h.peak
}

func TestMemoryBoundedByBundleNotBacklog(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 200 MB")
	}
	const nFiles = 2000
	size := 100 << 10 // 2,000 × 100 KiB ≈ 200 MiB
	if raceEnabled {
		size = 25 << 10 // same number of files, 50 MiB
	}
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(7, 7))
	data := randomGz(rng, size)
	for i := range nFiles {
		writeSource(t, dir, fmt.Sprintf("2024/05/%02d/host_%05d.pcap.gz", 6+i%3, i), data)
	}
	store := newFakeStore()
	store.discard = true // keep only checksums
	cfg := testConfig(t, dir)
	cfg.MaxSize = DefaultMaxSize
	cfg.MaxAge = time.Second // mostly sealed by size; the tails by age
	cfg.RetryMin, cfg.RetryMax = 10*time.Millisecond, 100*time.Millisecond

	runtime.GC()
	base := heapBytes()
	h := sampleHeap()
	a, err := New(cfg, store, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- a.Run(ctx) }()
	t0 := time.Now()
	waitFor(t, "backlog archived", func() bool { return len(files(t, dir)) == 0 }, 5*time.Minute)
	elapsed := time.Since(t0)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	peak := h.finish()
	growth := int64(peak) - int64(base)
	t.Logf("archived %d files, %d MiB in %v (%d bundles); heap peak %d MiB above a %d MiB base",
		nFiles, nFiles*size>>20, elapsed.Round(time.Millisecond), len(store.names()), growth>>20, base>>20)
	if growth > 48<<20 {
		t.Errorf("heap grew by %d MiB while archiving %d MiB; want it bounded by the bundle, not the backlog", growth>>20, nFiles*size>>20)
	}
	if got, want := len(store.names()), nFiles*size/DefaultMaxSize; got < want {
		t.Errorf("%d bundles for %d MiB with MaxSize 20 MiB", got, nFiles*size>>20)
	}
}
