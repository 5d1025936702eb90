package trafficgen

import (
	"context"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"time"
)

// countingConn counts the bytes read from and written to a TCP connection.
// Reads and writes may happen on different goroutines.
type countingConn struct {
	*net.TCPConn
	read, written atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.TCPConn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.TCPConn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

// drain reads from r until EOF. It returns nil on a clean EOF.
func drain(r io.Reader) error {
	_, err := io.Copy(io.Discard, r)
	return err
}

// resetClose aborts c with a RST: SO_LINGER 0, then close.
func resetClose(c *net.TCPConn) error {
	if err := c.SetLinger(0); err != nil {
		c.Close()
		return err
	}
	return c.Close()
}

// isReset reports whether err means the peer reset the connection (or we
// wrote after its RST).
func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// sleepCtx sleeps for d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// ticker writes chunk bytes to w every interval until stop is closed, ctx
// is done or a write fails. It returns the write error, if any.
func tick(ctx context.Context, w io.Writer, interval time.Duration, chunk int, stop <-chan struct{}) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-stop:
			return nil
		case <-t.C:
			if _, err := writeN(w, int64(chunk)); err != nil {
				return err
			}
		}
	}
}

// closeConnOnDone closes c when ctx is done, unblocking any I/O on it. The
// returned function stops the watcher and waits for it.
func closeConnOnDone(ctx context.Context, c net.Conn) (stop func()) {
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		select {
		case <-ctx.Done():
			c.Close()
		case <-done:
		}
	}()
	return func() {
		close(done)
		<-exited
	}
}
