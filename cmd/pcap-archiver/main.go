// Command pcap-archiver is the archiver as a sidecar: it watches a data dir
// written by packet-headers (this project's or m-lab/packet-headers: same
// layout), bundles finished YYYY/MM/DD/<UUID>.pcap.gz files into compressed
// tarballs named for M-Lab's pipeline, uploads them to a bucket and deletes
// the files once the upload is confirmed. See the README for the flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/headercap/headercap/internal/cli"
)

func main() {
	log.SetFlags(log.LstdFlags | log.LUTC)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		log.Printf("pcap-archiver: %v", err)
		os.Exit(1)
	}
}

// config holds every setting; each field is a flag and an environment
// variable, as in packet-headers.
type config struct {
	DataDir          string        `flag:"datadir" envconfig:"DATADIR" help:"The data dir packet-headers writes: YYYY/MM/DD/<UUID>.pcap.gz files are archived from it."`
	PrometheusListen string        `flag:"prometheusx.listen-address" envconfig:"PROMETHEUSX_LISTEN_ADDRESS" help:"Address of the /metrics server; empty disables it."`
	SigtermWait      time.Duration `flag:"sigtermwait" envconfig:"SIGTERMWAIT" help:"After SIGTERM, seal what is bundled and keep uploading this long; what is left stays sealed for the next start."`
	cli.Archive
}

const usage = `Watches a packet-headers data dir and archives its finished flow files: bundles them
into tarballs named for M-Lab's pipeline, uploads them create-only with a checksum, and
deletes the files once the upload is confirmed. Every flag can also be set by the
environment variable named after it (upper case, '.' and '-' as '_'); the command
line wins.`

func defaultConfig() config {
	return config{
		DataDir:          ".",
		PrometheusListen: ":9990",
		SigtermWait:      time.Second,
		Archive:          cli.DefaultArchive(),
	}
}

func parseConfig(args []string, output io.Writer) (config, error) {
	cfg := defaultConfig()
	if err := cli.Parse("pcap-archiver", usage, &cfg, args, output); err != nil {
		return cfg, err
	}
	if cfg.URL == "" {
		return cfg, errors.New("-archive.url is required (file:///dir, gs://bucket or s3://bucket?endpoint=...)")
	}
	if cfg.SigtermWait < 0 {
		return cfg, fmt.Errorf("-sigtermwait must not be negative, got %v", cfg.SigtermWait)
	}
	if fi, err := os.Stat(cfg.DataDir); err != nil {
		return cfg, fmt.Errorf("-datadir: %w", err)
	} else if !fi.IsDir() {
		return cfg, fmt.Errorf("-datadir %s is not a directory", cfg.DataDir)
	}
	return cfg, nil
}

func run(ctx context.Context, args []string, output io.Writer) error {
	cfg, err := parseConfig(args, output)
	if err != nil {
		return err
	}
	acfg, err := cfg.Archive.Config(cfg.DataDir, cfg.SigtermWait, true)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	arch, err := cfg.Archive.NewArchiver(ctx, acfg, reg, slog.Default())
	if err != nil {
		return err
	}
	srv, err := cli.ListenMetrics(cfg.PrometheusListen, reg)
	if err != nil {
		return err
	}
	log.Printf("archiving %s to %s", cfg.DataDir, arch)

	// The archiver runs until ctx is done and its grace is over; the
	// metrics server until the archiver has stopped.
	srvCtx, stopSrv := context.WithCancel(context.Background())
	defer stopSrv()
	g := new(errgroup.Group)
	g.Go(func() error {
		defer stopSrv()
		return arch.Run(ctx)
	})
	g.Go(func() error { return srv.Run(srvCtx) })
	if err := g.Wait(); err != nil {
		return err
	}
	log.Printf("stopped")
	return nil
}
