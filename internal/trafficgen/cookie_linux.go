//go:build linux

package trafficgen

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// socketCookie returns the kernel's cookie of c's socket (SO_COOKIE): the
// number sock_diag reports for the socket and tcp-info names it by.
func socketCookie(c syscall.Conn) (uint64, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cookie uint64
	var serr error
	if err := rc.Control(func(fd uintptr) {
		cookie, serr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE)
	}); err != nil {
		return 0, err
	}
	if serr != nil {
		return 0, serr
	}
	return cookie, nil
}
