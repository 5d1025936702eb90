package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/headercap/headercap/archive"
	"github.com/headercap/headercap/upload"
)

// Archive holds the -archive.* flags both binaries take.
type Archive struct {
	URL         string        `flag:"archive.url" envconfig:"ARCHIVE_URL" help:"Where to archive finished flows: file:///dir, gs://bucket[/prefix] (Application Default Credentials; STORAGE_EMULATOR_HOST for an emulator) or s3://bucket[/prefix]?endpoint=http://host:port&region=R (AWS credential variables; path-style when an endpoint is given)."`
	Experiment  string        `flag:"archive.experiment" envconfig:"ARCHIVE_EXPERIMENT" help:"Experiment of the archive's object names: lowercase letters only (e.g. ndt). Required with -archive.url."`
	Datatype    string        `flag:"archive.datatype" envconfig:"ARCHIVE_DATATYPE" help:"Datatype of the archive's object names: lowercase letters and digits."`
	Node        string        `flag:"archive.node" envconfig:"ARCHIVE_NODE" help:"Node of the archive's object names: mlabN-SITE (or its FQDN) or third-party. Default: the host name if it has the M-Lab form, else third-party."`
	Size        ByteSize      `flag:"archive.size" envconfig:"ARCHIVE_SIZE" help:"Seal a tarball when its compressed size reaches this."`
	MaxAge      time.Duration `flag:"archive.maxage" envconfig:"ARCHIVE_MAXAGE" help:"Seal a tarball when its oldest file has waited this long."`
	Compression string        `flag:"archive.compression" envconfig:"ARCHIVE_COMPRESSION" help:"Tarball compression: gzip (.tgz, what M-Lab's ETL reads) or zstd (.tar.zst)."`
}

// DefaultArchive returns the defaults of the -archive.* flags.
func DefaultArchive() Archive {
	return Archive{Datatype: "pcap", Size: 20 * Megabyte, MaxAge: time.Hour, Compression: "gzip"}
}

// Config returns the archiver's configuration for dataDir, validated.
// grace is how long uploads may go on after shutdown begins.
func (a Archive) Config(dataDir string, grace time.Duration, watch bool) (archive.Config, error) {
	if a.Experiment == "" {
		return archive.Config{}, errors.New("-archive.experiment is required with -archive.url (lowercase letters, e.g. ndt)")
	}
	cfg := archive.Config{
		DataDir:       dataDir,
		Watch:         watch,
		Experiment:    a.Experiment,
		Datatype:      a.Datatype,
		Node:          a.Node,
		MaxSize:       int64(a.Size),
		MaxAge:        a.MaxAge,
		Compression:   a.Compression,
		ShutdownGrace: grace,
	}
	if grace == 0 {
		cfg.ShutdownGrace = -1 // seal and leave everything for the next start
	}
	if err := cfg.Validate(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// Archiver is an archiver with its storage.
type Archiver struct {
	*archive.Archiver
	store upload.Store
}

// NewArchiver opens the destination and builds the archiver.
func (a Archive) NewArchiver(ctx context.Context, cfg archive.Config, reg prometheus.Registerer, logger *slog.Logger) (*Archiver, error) {
	store, err := upload.Open(ctx, a.URL)
	if err != nil {
		return nil, fmt.Errorf("-archive.url: %w", err)
	}
	cfg.Logger = logger
	arch, err := archive.New(cfg, store, reg)
	if err != nil {
		store.Close()
		return nil, err
	}
	return &Archiver{Archiver: arch, store: store}, nil
}

// Run runs the archiver until ctx is done and its shutdown grace is over,
// then closes the storage client.
func (a *Archiver) Run(ctx context.Context) error {
	err := a.Archiver.Run(ctx)
	if cerr := a.store.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close %s: %w", a.store, cerr)
	}
	return err
}

// String names the destination, without credentials.
func (a *Archiver) String() string { return a.store.String() }
