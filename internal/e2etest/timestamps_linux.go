package e2etest

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// EnableKernelTimestamps holds a socket with SO_TIMESTAMPNS open while the
// test runs. That turns on the kernel's global packet timestamping, so every
// packet socket (tcpdump's and the daemon's) sees the same timestamp for
// the packets the host sends; otherwise each socket may read the clock on
// its own.
func EnableKernelTimestamps(t *testing.T) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
		t.Fatalf("SO_TIMESTAMPNS: %v", err)
	}
	time.Sleep(50 * time.Millisecond) // the kernel enables it from a workqueue
}
