//go:build race

package archive

// raceEnabled: the race detector slows compression about tenfold, so the
// heavier tests shrink their data.
const raceEnabled = true
