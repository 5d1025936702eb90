//go:build !race

package sockdiag

const raceEnabled = false
