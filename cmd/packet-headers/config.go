package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kelseyhightower/envconfig"

	"github.com/headercap/headercap/anonymize"
)

// config holds every setting of the daemon. Each field is a flag (the seed's
// name, m-lab/packet-headers) and an environment variable named like the flag,
// upper-cased, with '.' and '-' turned into '_'. The command line wins over
// the environment, which wins over the defaults.
type config struct {
	AnonymizeIP      anonymize.Method `flag:"anonymize.ip" envconfig:"ANONYMIZE_IP" help:"Anonymize IP addresses in the saved packets and logs: none, or netblock (keep an IPv4 /24 and an IPv6 /48)."`
	CaptureDuration  time.Duration    `flag:"captureduration" envconfig:"CAPTUREDURATION" help:"Save only this much of each flow, from its first packet; the flow's file is finished when the time is up."`
	DataDir          string           `flag:"datadir" envconfig:"DATADIR" help:"Directory under which YYYY/MM/DD/<UUID>.pcap.gz files are written."`
	FlowTimeout      time.Duration    `flag:"flowtimeout" envconfig:"FLOWTIMEOUT" help:"A flow that has been silent this long is over."`
	Interfaces       stringList       `flag:"interface" envconfig:"INTERFACE" help:"Interface to capture on; repeat the flag (or separate with commas in the environment) for several. Unset: every interface that is up, loopback excluded."`
	MaxHeaderSize    byteSize         `flag:"maxheadersize" envconfig:"MAXHEADERSIZE" help:"Save at most this many bytes of each packet (each packet is cut at the end of its TCP header in any case)."`
	MaxIdleRAM       byteSize         `flag:"maxidleram" envconfig:"MAXIDLERAM" help:"Return free heap memory to the OS when more than this much is idle."`
	MaxHeap          byteSize         `flag:"maxheap" envconfig:"MAXHEAP" help:"Refuse new flows (counted in pcap_saver_skipped_total) while the Go heap is larger than this."`
	MaxFlows         int              `flag:"maxflows" envconfig:"MAXFLOWS" help:"Refuse new flows beyond this many live ones; 0 means no limit."`
	PrometheusListen string           `flag:"prometheusx.listen-address" envconfig:"PROMETHEUSX_LISTEN_ADDRESS" help:"Address of the /metrics server; empty disables it."`
	SigtermWait      time.Duration    `flag:"sigtermwait" envconfig:"SIGTERMWAIT" help:"After SIGTERM, keep capturing this long, then finish every open flow and exit."`
	Stream           bool             `flag:"stream" envconfig:"STREAM" help:"Accepted for compatibility: flows are always streamed to disk."`
	EventSocket      string           `flag:"tcpinfo.eventsocket" envconfig:"TCPINFO_EVENTSOCKET" help:"Path of tcp-info's eventsocket, the source of flow UUIDs."`
	UUIDWait         time.Duration    `flag:"uuidwaitduration" envconfig:"UUIDWAITDURATION" help:"How long packets wait for their flow's UUID before the flow is dropped (counted in pcap_missed_uuids_total)."`
	Workers          int              `flag:"workers" envconfig:"WORKERS" help:"Capture workers (fanout sockets) per interface; 0 means one per CPU."`
	Read             string           `flag:"read" envconfig:"READ" help:"Process this pcap or pcapng file (optionally gzipped) instead of capturing, then exit."`
	ReadEvents       string           `flag:"read.events" envconfig:"READ_EVENTS" help:"With -read: tcp-info eventsocket lines (JSON) recorded alongside the capture, for the flows' UUIDs. Without it, flows get deterministic synthetic UUIDs."`
}

func defaultConfig() config {
	return config{
		CaptureDuration:  30 * time.Second,
		DataDir:          ".",
		FlowTimeout:      30 * time.Second,
		MaxHeaderSize:    256,
		MaxIdleRAM:       3 * gigabyte,
		MaxHeap:          8 * gigabyte,
		PrometheusListen: ":9990",
		SigtermWait:      time.Second,
		UUIDWait:         5 * time.Second,
	}
}

// envName is the environment variable of a flag.
func envName(flagName string) string {
	return strings.NewReplacer(".", "_", "-", "_").Replace(strings.ToUpper(flagName))
}

// newFlagSet binds a flag to every field of cfg.
func newFlagSet(cfg *config, output io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("packet-headers", flag.ContinueOnError)
	fs.SetOutput(output)
	v := reflect.ValueOf(cfg).Elem()
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		name, help := f.Tag.Get("flag"), f.Tag.Get("help")
		help += " (env " + envName(name) + ")"
		switch p := v.Field(i).Addr().Interface().(type) {
		case *time.Duration:
			fs.DurationVar(p, name, *p, help)
		case *string:
			fs.StringVar(p, name, *p, help)
		case *int:
			fs.IntVar(p, name, *p, help)
		case *bool:
			fs.BoolVar(p, name, *p, help)
		case flag.Value:
			fs.Var(p, name, help)
		default:
			panic(fmt.Sprintf("config field %s has no flag type", f.Name)) // a programming error, caught by the tests
		}
	}
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: packet-headers [flags]

Captures the packet headers of every TCP flow into <datadir>/YYYY/MM/DD/<UUID>.pcap.gz,
one file per flow, named by the flow's tcp-info UUID. Every flag can also be set by the
environment variable named after it (upper case, '.' and '-' as '_'); the command line wins.

`)
		fs.PrintDefaults()
	}
	return fs
}

// parseConfig reads the environment (with envconfig), then args, and
// validates the result.
func parseConfig(args []string, output io.Writer) (config, error) {
	cfg := defaultConfig()
	if err := envconfig.Process("", &cfg); err != nil {
		return cfg, fmt.Errorf("environment: %w", err)
	}
	cfg.Interfaces.fromEnv = len(cfg.Interfaces.values) > 0
	// Errors are reported once, by the caller; only -help prints the usage.
	fs := newFlagSet(&cfg, io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(output)
			fs.Usage()
		}
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	return cfg, cfg.validate()
}

func (c *config) validate() error {
	if _, err := anonymize.ParseMethod(c.AnonymizeIP.String()); err != nil {
		return err
	}
	switch {
	case c.CaptureDuration <= 0:
		return fmt.Errorf("-captureduration must be positive, got %v", c.CaptureDuration)
	case c.FlowTimeout <= 0:
		return fmt.Errorf("-flowtimeout must be positive, got %v", c.FlowTimeout)
	case c.UUIDWait <= 0:
		return fmt.Errorf("-uuidwaitduration must be positive, got %v", c.UUIDWait)
	case c.UUIDWait > c.CaptureDuration:
		return fmt.Errorf("-uuidwaitduration (%v) must not be longer than -captureduration (%v)", c.UUIDWait, c.CaptureDuration)
	case c.SigtermWait < 0:
		return fmt.Errorf("-sigtermwait must not be negative, got %v", c.SigtermWait)
	case c.MaxHeaderSize < 54 || c.MaxHeaderSize > 65535:
		return fmt.Errorf("-maxheadersize must be between 54 and 65535 bytes, got %d", c.MaxHeaderSize)
	case c.MaxFlows < 0:
		return fmt.Errorf("-maxflows must not be negative, got %d", c.MaxFlows)
	case c.Workers < 0 || c.Workers > 1024:
		return fmt.Errorf("-workers must be between 0 and 1024, got %d", c.Workers)
	case c.DataDir == "":
		return errors.New("-datadir must not be empty")
	case c.ReadEvents != "" && c.Read == "":
		return errors.New("-read.events needs -read")
	}
	if c.Read != "" {
		if _, err := os.Stat(c.Read); err != nil {
			return fmt.Errorf("-read: %w", err)
		}
		return nil
	}
	if c.EventSocket == "" {
		return errors.New("-tcpinfo.eventsocket is required to name flows (or use -read to process a file)")
	}
	for _, name := range c.Interfaces.values {
		if _, err := net.InterfaceByName(name); err != nil {
			return fmt.Errorf("-interface %s: no such interface", name)
		}
	}
	return nil
}

// stringList is a repeatable flag. Values from the environment (comma
// separated) are replaced, not extended, by the first value on the command
// line.
type stringList struct {
	values  []string
	fromEnv bool
}

func (s *stringList) String() string { return strings.Join(s.values, ",") }

func (s *stringList) Set(v string) error {
	if s.fromEnv {
		s.values, s.fromEnv = nil, false
	}
	if v == "" {
		return errors.New("empty value")
	}
	s.values = append(s.values, v)
	return nil
}

func (s *stringList) Decode(v string) error {
	s.values = nil
	for _, x := range strings.Split(v, ",") {
		if x = strings.TrimSpace(x); x != "" {
			s.values = append(s.values, x)
		}
	}
	return nil
}

// byteSize is a size in bytes written like m-lab/go/bytecount: 256, 64KB,
// 3GB (decimal units), also 8GiB-style binary units.
type byteSize int64

const (
	kilobyte byteSize = 1000
	megabyte          = 1000 * kilobyte
	gigabyte          = 1000 * megabyte
)

var sizeRE = regexp.MustCompile(`^([0-9]+)\s*([KMGT]?)(i?)(B?)$`)

func (b *byteSize) Set(s string) error {
	m := sizeRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil || (m[3] == "i" && m[2] == "") {
		return fmt.Errorf("invalid size %q (want e.g. 256, 64KB, 3GB or 8GiB)", s)
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return fmt.Errorf("invalid size %q: %w", s, err)
	}
	unit := int64(1)
	base := int64(1000)
	if m[3] == "i" {
		base = 1024
	}
	if m[2] != "" {
		for range strings.Index("KMGT", m[2]) + 1 {
			unit *= base
		}
	}
	if m[2] != "" && n > (1<<62)/unit {
		return fmt.Errorf("size %q is too large", s)
	}
	*b = byteSize(n * unit)
	return nil
}

func (b *byteSize) Decode(s string) error { return b.Set(s) }

func (b byteSize) String() string {
	for _, u := range []struct {
		v    byteSize
		name string
	}{{gigabyte, "GB"}, {megabyte, "MB"}, {kilobyte, "KB"}} {
		if b != 0 && b%u.v == 0 {
			return fmt.Sprintf("%d%s", b/u.v, u.name)
		}
	}
	return strconv.FormatInt(int64(b), 10)
}

// envNames lists every environment variable the daemon reads, sorted.
func envNames() []string {
	var names []string
	t := reflect.TypeOf(config{})
	for i := range t.NumField() {
		names = append(names, t.Field(i).Tag.Get("envconfig"))
	}
	sort.Strings(names)
	return names
}
