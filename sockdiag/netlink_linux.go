//go:build linux

package sockdiag

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	// queryRcvBuf is the receive buffer asked for the query socket: every
	// reply of a batch is queued there before the first is read.
	queryRcvBuf = 1 << 20
	// destroyRcvBuf is the receive buffer asked for the destroy socket,
	// the slack for bursts of closes while the loop is busy.
	destroyRcvBuf = 32 << 20
	// replyTruesize is a conservative estimate of the memory one reply
	// takes in the receive buffer (the kernel allocates room for a full
	// tcp_info and more per reply), used to size batches.
	replyTruesize = 4096
	recvBufLen    = 64 << 10 // destroy socket: one notification per read
)

// openNetlink opens the query socket and the destroy socket in the calling
// thread's network namespace. subErr reports a failed subscription to the
// destroy groups (d is then nil); err a failure to open the query socket.
func openNetlink() (q querier, d destroyReader, subErr, err error) {
	nq, err := openQuerier()
	if err != nil {
		return nil, nil, nil, err
	}
	nd, subErr := openDestroyReader()
	if subErr != nil {
		return nq, nil, subErr, nil
	}
	return nq, nd, nil, nil
}

// newNetlinkFile opens a non-blocking NETLINK_SOCK_DIAG socket bound to an
// automatic port id and wraps it in an *os.File, which registers it with
// the runtime poller (blocking reads park the goroutine, Close unblocks
// them) and closes it if it is garbage-collected unclosed.
func newNetlinkFile(name string) (*os.File, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("sockdiag: open netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("sockdiag: bind netlink socket: %w", err)
	}
	return os.NewFile(uintptr(fd), name), nil
}

// setRcvBuf sets the receive buffer to size bytes, beyond net.core.rmem_max
// when the process has CAP_NET_ADMIN, and returns the size in effect (the
// kernel doubles the value asked for, for its bookkeeping).
func setRcvBuf(fd int, size int) int {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size); err != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, size) // capped at rmem_max
	}
	got, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF)
	if err != nil {
		return 0
	}
	return got
}

// nlQuerier performs exact lookups on its own netlink socket. Not safe for
// concurrent use (the loop goroutine owns it).
type nlQuerier struct {
	f     *os.File
	rc    syscall.RawConn
	seq   uint32
	limit int
	req   []byte

	// recvmmsg(2) state: replySlots messages of up to replySlot bytes
	// each, read in one system call (a reply is one datagram).
	buf  []byte
	iovs []unix.Iovec
	msgs []mmsghdr
}

// mmsghdr is struct mmsghdr; Go lays it out as C does (msg_len padded to
// the alignment of struct msghdr).
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
}

const (
	replySlots = 2 * maxBatch
	// replySlot bounds one reply: an inet_diag_msg with the attributes
	// the kernel always adds (no extensions are asked for) takes about
	// 200 bytes, an NLMSG_ERROR 36.
	replySlot = 2048
)

func (q *nlQuerier) initRecv() {
	q.buf = make([]byte, replySlots*replySlot)
	q.iovs = make([]unix.Iovec, replySlots)
	q.msgs = make([]mmsghdr, replySlots)
	for i := range q.msgs {
		q.iovs[i].Base = &q.buf[i*replySlot]
		q.iovs[i].SetLen(replySlot)
		q.msgs[i].hdr.Iov = &q.iovs[i]
		q.msgs[i].hdr.SetIovlen(1)
	}
}

// recvBatch reads the queued replies, up to replySlots, without blocking.
func (q *nlQuerier) recvBatch(fd uintptr) (int, error) {
	for i := range q.msgs {
		q.msgs[i].len = 0
		q.msgs[i].hdr.Flags = 0
	}
	// The slices live in q, on the heap, for as long as q: the kernel's
	// writes through the nested pointers land in live, unmoving memory.
	n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&q.msgs[0])), uintptr(len(q.msgs)), unix.MSG_DONTWAIT, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

func openQuerier() (*nlQuerier, error) {
	f, err := newNetlinkFile("sockdiag-query")
	if err != nil {
		return nil, err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("sockdiag: query socket: %w", err)
	}
	q := &nlQuerier{f: f, rc: rc, seq: uint32(time.Now().UnixNano())}
	q.initRecv()
	var rcvbuf int
	err = rc.Control(func(fd uintptr) {
		rcvbuf = setRcvBuf(int(fd), queryRcvBuf)
		// Error replies carry only the request's header, not its body.
		_ = unix.SetsockoptInt(int(fd), unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	})
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("sockdiag: query socket: %w", err)
	}
	q.limit = max(2, min(2*maxBatch, rcvbuf/replyTruesize))
	return q, nil
}

func (q *nlQuerier) batchLimit() int { return q.limit }

func (q *nlQuerier) close() error { return q.f.Close() }

// query sends one request per id in a single sendto. The kernel handles
// NETLINK_SOCK_DIAG requests synchronously in the sender's context, so when
// sendto returns every reply (an inet_diag_msg, or an NLMSG_ERROR such as
// ENOENT) is queued on the socket, or was dropped for lack of buffer room.
// The replies are then read without blocking.
func (q *nlQuerier) query(ids []sockID, res []queryResult) (time.Time, error) {
	if len(ids) == 0 {
		return time.Now(), nil
	}
	q.req = q.req[:0]
	base := q.seq + 1
	for i, id := range ids {
		q.seq++
		var err error
		if q.req, err = appendRequest(q.req, q.seq, id); err != nil {
			res[i].kind = resultNotFound // no request, no reply for this seq
		}
	}
	var opErr error
	var answered time.Time
	err := q.rc.Control(func(fd uintptr) {
		for {
			// An unconnected netlink socket sends to the kernel, which
			// answers every request before the write returns.
			_, err := unix.Write(int(fd), q.req)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				opErr = fmt.Errorf("sockdiag: send query: %w", err)
				return
			}
			answered = time.Now()
			break
		}
		for {
			n, err := q.recvBatch(fd)
			switch err {
			case nil:
			case unix.EINTR, unix.ENOBUFS:
				// ENOBUFS: some replies were dropped; those results stay
				// resultLost and are retried.
				continue
			case unix.EAGAIN:
				return
			default:
				opErr = fmt.Errorf("sockdiag: receive query replies: %w", err)
				return
			}
			for m := range q.msgs[:n] {
				if q.msgs[m].hdr.Flags&unix.MSG_TRUNC != 0 {
					continue // cannot happen with replySlot; stays resultLost
				}
				b := q.buf[m*replySlot:][:q.msgs[m].len]
				_ = walkMessages(b, func(h nlHeader, payload []byte) error {
					i := h.seq - base
					if i >= uint32(len(ids)) {
						return nil // not ours (cannot happen: replies are synchronous)
					}
					switch h.typ {
					case nlmsgError:
						if errno, err := decodeError(payload); err == nil && errno != 0 {
							// ENOENT for no such socket; anything else is
							// treated alike (never found).
							res[i].kind = resultNotFound
						}
					case sockDiagByFamily:
						if m, err := decodeDiagMsg(payload); err == nil {
							res[i] = queryResult{kind: resultFound, msg: m}
						} else {
							res[i].kind = resultNotFound
						}
					}
					return nil
				})
			}
		}
	})
	if err != nil {
		return time.Now(), fmt.Errorf("sockdiag: query socket: %w", err)
	}
	if answered.IsZero() {
		answered = time.Now()
	}
	return answered, opErr
}

// nlDestroyReader reads the destroy notifications of the TCP sockets of
// its network namespace.
type nlDestroyReader struct {
	f      *os.File
	rc     syscall.RawConn
	buf    []byte
	closed atomic.Bool // set before f is closed, so read knows why it failed
}

func openDestroyReader() (*nlDestroyReader, error) {
	f, err := newNetlinkFile("sockdiag-destroy")
	if err != nil {
		return nil, err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("sockdiag: destroy socket: %w", err)
	}
	var subErr error
	err = rc.Control(func(fd uintptr) {
		for _, g := range []int{groupInetTCPDestroy, groupInet6TCPDestroy} {
			// Seen on Linux 6.18: joining these groups needs no
			// capability (kernel_linux_test.go); older kernels or an LSM
			// may refuse it, and then the source works with queries only.
			if err := unix.SetsockoptInt(int(fd), unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, g); err != nil {
				subErr = fmt.Errorf("sockdiag: subscribe to sock_diag group %d: %w", g, err)
				return
			}
		}
		setRcvBuf(int(fd), destroyRcvBuf)
	})
	if err == nil {
		err = subErr
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return &nlDestroyReader{f: f, rc: rc, buf: make([]byte, recvBufLen)}, nil
}

func (d *nlDestroyReader) close() error {
	d.closed.Store(true)
	return d.f.Close()
}

func (d *nlDestroyReader) read() (destroyBatch, error) {
	for {
		var n int
		var rerr error
		err := d.rc.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), d.buf, 0)
			return rerr != unix.EAGAIN
		})
		if err != nil {
			// A RawConn of an *os.File reports internal/poll's
			// ErrFileClosing, not os.ErrClosed.
			if d.closed.Load() || errors.Is(err, os.ErrClosed) {
				return destroyBatch{}, errClosed
			}
			return destroyBatch{}, fmt.Errorf("sockdiag: read destroy notifications: %w", err)
		}
		switch rerr {
		case nil:
		case unix.EINTR:
			continue
		case unix.ENOBUFS:
			return destroyBatch{}, errOverrun
		default:
			return destroyBatch{}, fmt.Errorf("sockdiag: read destroy notifications: %w", rerr)
		}
		b := destroyBatch{at: time.Now()}
		err = walkMessages(d.buf[:n], func(h nlHeader, payload []byte) error {
			if h.typ != sockDiagByFamily {
				return nil
			}
			m, err := decodeDiagMsg(payload)
			if err != nil {
				b.bad++
				return nil
			}
			b.msgs = append(b.msgs, m)
			return nil
		})
		if err != nil {
			b.bad++
		}
		return b, nil
	}
}
