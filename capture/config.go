package capture

import (
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"runtime"
	"time"
)

// Defaults applied to the zero values of Config and FileConfig fields.
const (
	DefaultSnapLen      = 256
	DefaultBlockSize    = 1 << 20
	DefaultNumBlocks    = 16
	DefaultBlockTimeout = 2 * time.Millisecond
	DefaultTickInterval = 50 * time.Millisecond

	// MaxSnapLen bounds SnapLen: headers never need more, and it keeps the
	// per-worker buffers small.
	MaxSnapLen = 65535
	// MinSnapLen is the smallest SnapLen accepted: an Ethernet header, a VLAN
	// tag and an IPv6 header.
	MinSnapLen = ethHeaderLen + vlanTagLen + ipv6HeaderLen
	// MaxWorkers bounds Config.Workers: a fanout group joined with the
	// 4-byte PACKET_FANOUT argument holds at most 256 sockets.
	MaxWorkers = 256
)

// ErrNoSuchInterface is returned (wrapped, with the interface's name) when a
// configured interface does not exist.
var ErrNoSuchInterface = errors.New("no such interface")

// ErrNotSupported is returned by NewLive and Live.Run on platforms other than
// Linux.
var ErrNotSupported = errors.New("live capture is only supported on Linux (AF_PACKET)")

// Config configures live capture. The zero value of every field except
// Interfaces selects its default.
type Config struct {
	// Interfaces lists the names of the interfaces to capture on. Required;
	// no name may repeat. See DefaultInterfaces.
	Interfaces []string
	// Workers is the number of sockets, goroutines and Handlers per
	// interface, at most MaxWorkers. 0 means runtime.NumCPU() (capped at
	// MaxWorkers).
	Workers int
	// SnapLen is the number of bytes kept per frame, counted from the start of
	// the Ethernet header. 0 means DefaultSnapLen (256); from MinSnapLen to
	// MaxSnapLen.
	SnapLen int
	// BlockSize is the size in bytes of one TPACKET_V3 ring block. 0 means
	// DefaultBlockSize (1 MiB). It must be a multiple of the page size and
	// hold at least one frame of SnapLen bytes.
	BlockSize int
	// NumBlocks is the number of blocks in each socket's ring. 0 means
	// DefaultNumBlocks (16). Each socket maps BlockSize*NumBlocks bytes.
	NumBlocks int
	// BlockTimeout is how long the kernel keeps a partly filled block before
	// handing it to the worker; it bounds the delay between a frame's arrival
	// and its HandleFrame at low packet rates. 0 means DefaultBlockTimeout
	// (2ms: a new flow's UUID lookup starts that much sooner, which matters
	// for connections that live a few milliseconds; the cost is up to 500
	// wakeups a second per idle socket). Kernel resolution is one
	// millisecond; at least 1ms.
	BlockTimeout time.Duration
	// TickInterval is the longest time between two Tick calls of a worker,
	// also when no frame arrives. 0 means DefaultTickInterval (50ms); at least
	// 1ms.
	TickInterval time.Duration
	// FanoutGroup is the PACKET_FANOUT group id of the first interface; the
	// i-th interface uses FanoutGroup+i (mod 65536), because the kernel binds a
	// group to one interface. Groups are per network namespace and shared with
	// any socket that joins the same id, even from another process, which
	// then takes a share of the frames. 0 means an id the kernel picks among
	// the unused ones (PACKET_FANOUT_FLAG_UNIQUEID), so that two captures in
	// one namespace never split each other's frames; kernels before 4.12 lack
	// that flag, and there 0 means an id derived from the process id.
	FanoutGroup uint16
}

// withDefaults returns c with every zero field replaced by its default. A
// zero FanoutGroup gets the process-derived id, the fallback for kernels that
// cannot pick one.
func (c Config) withDefaults() Config {
	if c.Workers == 0 {
		c.Workers = min(runtime.NumCPU(), MaxWorkers)
	}
	if c.SnapLen == 0 {
		c.SnapLen = DefaultSnapLen
	}
	if c.BlockSize == 0 {
		c.BlockSize = DefaultBlockSize
	}
	if c.NumBlocks == 0 {
		c.NumBlocks = DefaultNumBlocks
	}
	if c.BlockTimeout == 0 {
		c.BlockTimeout = DefaultBlockTimeout
	}
	if c.TickInterval == 0 {
		c.TickInterval = DefaultTickInterval
	}
	if c.FanoutGroup == 0 {
		c.FanoutGroup = uint16(os.Getpid())
		if c.FanoutGroup == 0 {
			c.FanoutGroup = 1
		}
	}
	return c
}

// Validate reports the first problem with c, after defaults are applied: an
// empty or repeated interface name, an interface that does not exist in the
// caller's network namespace ("interface eth7: no such interface", matching
// ErrNoSuchInterface), or a size or duration out of range.
func (c Config) Validate() error {
	c = c.withDefaults()
	if err := c.validateSizes(); err != nil {
		return err
	}
	_, err := lookupInterfaces(c.Interfaces)
	return err
}

func (c Config) validateSizes() error {
	if c.Workers < 1 || c.Workers > MaxWorkers {
		return fmt.Errorf("workers %d out of range [1, %d]", c.Workers, MaxWorkers)
	}
	if c.SnapLen < MinSnapLen || c.SnapLen > MaxSnapLen {
		return fmt.Errorf("snaplen %d out of range [%d, %d]", c.SnapLen, MinSnapLen, MaxSnapLen)
	}
	page := os.Getpagesize()
	if c.BlockSize <= 0 || c.BlockSize%page != 0 {
		return fmt.Errorf("block size %d is not a positive multiple of the page size %d", c.BlockSize, page)
	}
	if c.BlockSize < maxFrameSpace(c.SnapLen) {
		return fmt.Errorf("block size %d cannot hold a frame of snaplen %d", c.BlockSize, c.SnapLen)
	}
	if c.NumBlocks < 1 {
		return fmt.Errorf("number of blocks %d must be at least 1", c.NumBlocks)
	}
	if size := int64(c.BlockSize) * int64(c.NumBlocks); size > 1<<32-1 || size > math.MaxInt {
		return fmt.Errorf("ring of %d blocks of %d bytes is too large", c.NumBlocks, c.BlockSize)
	}
	if c.BlockTimeout < time.Millisecond || c.BlockTimeout > time.Duration(1<<31-1)*time.Millisecond {
		return fmt.Errorf("block timeout %v out of range (at least 1ms)", c.BlockTimeout)
	}
	if c.TickInterval < time.Millisecond {
		return fmt.Errorf("tick interval %v must be at least 1ms", c.TickInterval)
	}
	return nil
}

// maxFrameSpace is an upper bound of the ring space one frame of snapLen
// bytes takes: block header, tpacket3_hdr, sockaddr_ll, MAC offset padding.
func maxFrameSpace(snapLen int) int {
	const blockHeader, frameHeader = 48, 48 + 32 + 16
	return blockHeader + frameHeader + snapLen + 16
}

// ifaceInfo is a resolved interface.
type ifaceInfo struct {
	name     string
	index    int
	loopback bool
}

// lookupInterfaces resolves names in the caller's network namespace.
func lookupInterfaces(names []string) ([]ifaceInfo, error) {
	if len(names) == 0 {
		return nil, errors.New("no interface configured")
	}
	all, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	seen := make(map[string]bool, len(names))
	out := make([]ifaceInfo, 0, len(names))
	for _, name := range names {
		if name == "" {
			return nil, errors.New("empty interface name")
		}
		if seen[name] {
			return nil, fmt.Errorf("interface %s: listed twice", name)
		}
		seen[name] = true
		i := indexOfInterface(all, name)
		if i < 0 {
			return nil, fmt.Errorf("interface %s: %w", name, ErrNoSuchInterface)
		}
		out = append(out, ifaceInfo{
			name:     name,
			index:    all[i].Index,
			loopback: all[i].Flags&net.FlagLoopback != 0,
		})
	}
	return out, nil
}

func indexOfInterface(all []net.Interface, name string) int {
	for i := range all {
		if all[i].Name == name {
			return i
		}
	}
	return -1
}

// DefaultInterfaces returns the names of every interface that is up, loopback
// excluded, in the caller's network namespace: what the daemon captures on
// when no interface is configured. It fails when there is none.
func DefaultInterfaces() ([]string, error) {
	all, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var names []string
	for _, ifc := range all {
		if ifc.Flags&net.FlagUp != 0 && ifc.Flags&net.FlagLoopback == 0 {
			names = append(names, ifc.Name)
		}
	}
	if len(names) == 0 {
		return nil, errors.New("no interface is up (loopback excluded)")
	}
	return names, nil
}
