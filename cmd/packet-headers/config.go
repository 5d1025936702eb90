package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/headercap/headercap/anonymize"
	"github.com/headercap/headercap/internal/cli"
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
	Interfaces       cli.StringList   `flag:"interface" envconfig:"INTERFACE" help:"Interface to capture on; repeat the flag (or separate with commas in the environment) for several. Unset: every interface that is up, loopback excluded."`
	MaxHeaderSize    cli.ByteSize     `flag:"maxheadersize" envconfig:"MAXHEADERSIZE" help:"Save at most this many bytes of each packet (each packet is cut at the end of its TCP header in any case)."`
	MaxIdleRAM       cli.ByteSize     `flag:"maxidleram" envconfig:"MAXIDLERAM" help:"Return free heap memory to the OS when more than this much is idle."`
	MaxHeap          cli.ByteSize     `flag:"maxheap" envconfig:"MAXHEAP" help:"Refuse new flows (counted in pcap_saver_skipped_total) while the Go heap is larger than this."`
	MaxFlows         int              `flag:"maxflows" envconfig:"MAXFLOWS" help:"Refuse new flows beyond this many live ones; 0 means no limit."`
	PrometheusListen string           `flag:"prometheusx.listen-address" envconfig:"PROMETHEUSX_LISTEN_ADDRESS" help:"Address of the /metrics server; empty disables it."`
	SigtermWait      time.Duration    `flag:"sigtermwait" envconfig:"SIGTERMWAIT" help:"After SIGTERM, keep capturing this long, then finish every open flow (and give the archiver as long again to upload) and exit."`
	Stream           bool             `flag:"stream" envconfig:"STREAM" help:"Accepted for compatibility: flows are always streamed to disk."`
	EventSocket      string           `flag:"tcpinfo.eventsocket" envconfig:"TCPINFO_EVENTSOCKET" help:"Path of tcp-info's eventsocket, a source of flow UUIDs (see -uuid.source)."`
	UUIDSource       string           `flag:"uuid.source" envconfig:"UUID_SOURCE" help:"Where flow UUIDs come from: eventsocket (tcp-info's, needs -tcpinfo.eventsocket), netlink (the kernel's socket cookies, looked up with sock_diag: every local socket, no tcp-info needed), or both. Default: both with -tcpinfo.eventsocket, else netlink."`
	UUIDPrefixFile   string           `flag:"uuid-prefix-file" envconfig:"UUID_PREFIX_FILE" help:"File holding the UUID prefix for sockets of this network namespace, as tcp-info's flag of the same name; without it the prefix is derived as tcp-info derives it (<hostname>_<boottime>_unsafe). With -uuid.source=both the prefix in tcp-info's UUIDs wins."`
	UUIDWait         time.Duration    `flag:"uuidwaitduration" envconfig:"UUIDWAITDURATION" help:"How long packets wait for their flow's UUID before the flow is dropped (counted in pcap_missed_uuids_total)."`
	Workers          int              `flag:"workers" envconfig:"WORKERS" help:"Capture workers (fanout sockets) per interface; 0 means one per CPU."`
	RingSize         cli.ByteSize     `flag:"capture.ringsize" envconfig:"CAPTURE_RINGSIZE" help:"Kernel ring memory per interface, split among its workers (at least 8 MiB each); a larger ring rides out longer stalls of the workers without drops."`
	Read             string           `flag:"read" envconfig:"READ" help:"Process this pcap or pcapng file (optionally gzipped) instead of capturing, then exit."`
	ReadEvents       string           `flag:"read.events" envconfig:"READ_EVENTS" help:"With -read: tcp-info eventsocket lines (JSON) recorded alongside the capture, for the flows' UUIDs. Without it, flows get deterministic synthetic UUIDs."`
	cli.Archive
}

// Values of -uuid.source.
const (
	uuidEventSocket = "eventsocket"
	uuidNetlink     = "netlink"
	uuidBoth        = "both"
)

const usage = `Captures the packet headers of every TCP flow into <datadir>/YYYY/MM/DD/<UUID>.pcap.gz,
one file per flow, named by the flow's tcp-info UUID (from tcp-info's eventsocket, or
computed the same way from the kernel's socket cookies); with -archive.url, also bundles
finished files into tarballs and uploads them. Every flag can also be set by the
environment variable named after it (upper case, '.' and '-' as '_'); the command
line wins.`

func defaultConfig() config {
	return config{
		CaptureDuration:  30 * time.Second,
		DataDir:          ".",
		FlowTimeout:      30 * time.Second,
		MaxHeaderSize:    256,
		MaxIdleRAM:       3 * cli.Gigabyte,
		MaxHeap:          8 * cli.Gigabyte,
		RingSize:         128 << 20,
		PrometheusListen: ":9990",
		SigtermWait:      time.Second,
		UUIDWait:         5 * time.Second,
		Archive:          cli.DefaultArchive(),
	}
}

// parseConfig reads the environment (with envconfig), then args, and
// validates the result.
func parseConfig(args []string, output io.Writer) (config, error) {
	cfg := defaultConfig()
	if err := cli.Parse("packet-headers", usage, &cfg, args, output); err != nil {
		return cfg, err
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
	case c.RingSize < 0:
		return fmt.Errorf("-capture.ringsize must not be negative, got %d", c.RingSize)
	case c.Workers < 0 || c.Workers > 1024:
		return fmt.Errorf("-workers must be between 0 and 1024, got %d", c.Workers)
	case c.DataDir == "":
		return errors.New("-datadir must not be empty")
	case c.ReadEvents != "" && c.Read == "":
		return errors.New("-read.events needs -read")
	}
	if c.Archive.URL != "" {
		if _, err := c.Archive.Config(c.DataDir, c.SigtermWait, false); err != nil {
			return err
		}
	}
	if c.Read != "" {
		if _, err := os.Stat(c.Read); err != nil {
			return fmt.Errorf("-read: %w", err)
		}
		return nil
	}
	switch c.UUIDSource {
	case "":
		c.UUIDSource = uuidNetlink
		if c.EventSocket != "" {
			c.UUIDSource = uuidBoth
		}
	case uuidEventSocket, uuidBoth:
		if c.EventSocket == "" {
			return fmt.Errorf("-uuid.source=%s needs -tcpinfo.eventsocket", c.UUIDSource)
		}
	case uuidNetlink:
	default:
		return fmt.Errorf("unknown -uuid.source %q (want eventsocket, netlink or both)", c.UUIDSource)
	}
	if c.UUIDPrefixFile != "" {
		if _, err := os.Stat(c.UUIDPrefixFile); err != nil {
			return fmt.Errorf("-uuid-prefix-file: %w", err)
		}
	}
	for _, name := range c.Interfaces.Values {
		if _, err := net.InterfaceByName(name); err != nil {
			return fmt.Errorf("-interface %s: no such interface", name)
		}
	}
	return nil
}
