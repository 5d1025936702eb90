package flows

import (
	"errors"
	"syscall"
)

var errNoSpace = syscall.ENOSPC

func classify(err error) error {
	if errors.Is(err, syscall.EDQUOT) {
		return errors.Join(err, errNoSpace)
	}
	return err
}
