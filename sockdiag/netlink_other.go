//go:build !linux

package sockdiag

// openNetlink returns ErrNotSupported: sock_diag is Linux's.
func openNetlink() (q querier, d destroyReader, subErr, err error) {
	return nil, nil, nil, ErrNotSupported
}
