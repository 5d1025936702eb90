//go:build !linux

package trafficgen

import (
	"errors"
	"syscall"
)

// socketCookie is not supported here: SO_COOKIE is Linux's.
func socketCookie(syscall.Conn) (uint64, error) {
	return 0, errors.New("socket cookies (SO_COOKIE) are Linux only")
}
