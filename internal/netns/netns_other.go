//go:build !linux

package netns

import (
	"context"
	"os/exec"
)

// Pair is two namespaces joined by a veth pair (Linux only).
type Pair struct {
	Server, Client Namespace
}

// New returns ErrNotSupported outside Linux.
func New(ctx context.Context, cfg Config) (*Pair, error) { return nil, ErrNotSupported }

// Close does nothing outside Linux.
func (p *Pair) Close() error { return nil }

// Command returns a Cmd that fails with ErrNotSupported when run.
func Command(ns, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Err = ErrNotSupported
	return cmd
}

// CommandContext returns a Cmd that fails with ErrNotSupported when run.
func CommandContext(ctx context.Context, ns, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Err = ErrNotSupported
	return cmd
}

// Exec returns ErrNotSupported outside Linux.
func Exec(ctx context.Context, ns, name string, args ...string) ([]byte, error) {
	return nil, ErrNotSupported
}

// Command returns a Cmd that fails with ErrNotSupported when run.
func (n Namespace) Command(name string, args ...string) *exec.Cmd {
	return Command(n.Name, name, args...)
}

// CommandContext returns a Cmd that fails with ErrNotSupported when run.
func (n Namespace) CommandContext(ctx context.Context, name string, args ...string) *exec.Cmd {
	return CommandContext(ctx, n.Name, name, args...)
}

// Exec returns ErrNotSupported outside Linux.
func (n Namespace) Exec(ctx context.Context, name string, args ...string) ([]byte, error) {
	return nil, ErrNotSupported
}

// Do needs Linux.
func Do(ns string, fn func() error) error { return ErrNotSupported }
