package sockdiag

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/m-lab/uuid/prefix"
)

// Defaults for the zero fields of Config.
const (
	DefaultMaxWait = 5 * time.Second
	DefaultRetry   = time.Millisecond
	DefaultQueue   = 65536

	// MaxRetry caps the delay between two queries for the same lookup.
	MaxRetry = 50 * time.Millisecond
	// MaxQueue bounds Config.Queue.
	MaxQueue = 1 << 22
)

// ErrNotSupported is returned by New on systems without Linux's sock_diag.
var ErrNotSupported = errors.New("sockdiag: sock_diag netlink is only supported on Linux")

// Sink receives what the source learns. Calls come from the source's
// goroutines (in this implementation: always the same one, so a Close never
// overtakes the Open of the same UUID); implementations must be fast and
// safe for concurrent use.
type Sink interface {
	// Open reports a socket and its UUID. local is the socket's own
	// address; IPv4-mapped IPv6 addresses are reported as IPv4, as they
	// appear on the wire. ts is when the source found the socket alive
	// (for a socket named from a destroy notification: when it was
	// destroyed); like tcp-info's poll time, it orders the connections of
	// a reused 4-tuple.
	Open(ts time.Time, uuid string, local, remote netip.AddrPort)
	// Close reports that the socket with this UUID was destroyed. It may
	// come for a UUID never passed to Open (a socket no lookup asked for),
	// and it comes at most once per Open.
	Close(ts time.Time, uuid string)
}

// Config configures a Source. The zero value is valid.
type Config struct {
	// Prefix is the UUID prefix. Empty: read PrefixFile, or if that is
	// empty too, use m-lab/uuid/prefix.UnsafeString() as tcp-info does.
	Prefix string
	// PrefixFile is like tcp-info's -uuid-prefix-file: the file's contents,
	// byte for byte (as flagx.FileBytes reads them, no trimming), are the
	// prefix.
	PrefixFile string
	// MaxWait bounds how long a lookup is retried, counted from when the
	// source received it. Default DefaultMaxWait (the daemon passes its
	// -uuidwaitduration).
	MaxWait time.Duration
	// Retry is the first delay before a lookup not answered yet is queried
	// again; the delay doubles after every query up to MaxRetry. Default
	// DefaultRetry.
	Retry time.Duration
	// Queue is how many lookup requests may wait for the source; Lookup
	// drops and counts requests beyond it. Default DefaultQueue.
	Queue int
	// Logger receives one warning when destroy notifications are not
	// available and one per outage of the query socket. Default
	// slog.Default().
	Logger *slog.Logger
}

// Validate reports whether the configuration is usable.
func (cfg Config) Validate() error {
	if cfg.MaxWait < 0 {
		return fmt.Errorf("sockdiag: negative MaxWait %v", cfg.MaxWait)
	}
	if cfg.Retry < 0 || cfg.Retry > MaxRetry {
		return fmt.Errorf("sockdiag: Retry %v outside [0, %v]", cfg.Retry, MaxRetry)
	}
	if cfg.Queue < 0 || cfg.Queue > MaxQueue {
		return fmt.Errorf("sockdiag: Queue %d outside [0, %d]", cfg.Queue, MaxQueue)
	}
	return nil
}

func (cfg Config) withDefaults() Config {
	if cfg.MaxWait == 0 {
		cfg.MaxWait = DefaultMaxWait
	}
	if cfg.Retry == 0 {
		cfg.Retry = DefaultRetry
	}
	if cfg.Queue == 0 {
		cfg.Queue = DefaultQueue
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return cfg
}

// FromCookie returns the UUID tcp-info gives the socket with this cookie
// when its prefix is prefix: m-lab/uuid's FromCookie, "<prefix>_<%016X>".
func FromCookie(prefix string, cookie uint64) string {
	const hex = "0123456789ABCDEF"
	var buf [128]byte // on the stack for the usual prefix lengths
	b := append(buf[:0], prefix...)
	b = append(b, '_')
	for shift := 60; shift >= 0; shift -= 4 {
		b = append(b, hex[(cookie>>uint(shift))&0xf])
	}
	return string(b)
}

// DefaultPrefix returns the prefix tcp-info uses with -uuid-prefix-file
// prefixFile: the file's contents byte for byte, or, when prefixFile is
// empty, m-lab/uuid/prefix.UnsafeString() ("<hostname>_<boot time>_unsafe",
// the boot time in Unix seconds computed from /proc/uptime at the moment of
// the call, so two processes may disagree by a second).
func DefaultPrefix(prefixFile string) (string, error) {
	if prefixFile == "" {
		return prefix.UnsafeString(), nil
	}
	b, err := os.ReadFile(prefixFile)
	if err != nil {
		return "", fmt.Errorf("sockdiag: read uuid prefix file: %w", err)
	}
	return string(b), nil
}
