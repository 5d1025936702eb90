//go:build unix

package trafficgen

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// setReuseAddr sets SO_REUSEADDR on a socket before it binds.
func setReuseAddr(rc syscall.RawConn) error {
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	}); err != nil {
		return err
	}
	return serr
}
