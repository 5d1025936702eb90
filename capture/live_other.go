//go:build !linux

package capture

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
)

// Live is live capture; on this platform it is not supported.
type Live struct{}

// NewLive returns ErrNotSupported: live capture needs Linux's AF_PACKET.
func NewLive(cfg Config, newHandler func(worker int) Handler, reg prometheus.Registerer) (*Live, error) {
	return nil, ErrNotSupported
}

// NumWorkers returns 0.
func (l *Live) NumWorkers() int { return 0 }

// Run returns ErrNotSupported.
func (l *Live) Run(ctx context.Context) error { return ErrNotSupported }
