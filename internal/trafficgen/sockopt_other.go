//go:build !unix

package trafficgen

import (
	"errors"
	"syscall"
)

// setReuseAddr is not supported here: Reuse series need a Unix socket API.
func setReuseAddr(rc syscall.RawConn) error {
	return errors.New("reuse connections need SO_REUSEADDR (unix only)")
}
