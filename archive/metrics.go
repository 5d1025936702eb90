package archive

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// metrics are the archiver's Prometheus metrics, named after m-lab/pusher's
// with a pcap_archive_ prefix.
type metrics struct {
	uploads        *prometheus.CounterVec
	failures       *prometheus.CounterVec
	uploadDuration prometheus.Histogram
	uploadedBytes  prometheus.Counter
	filesArchived  prometheus.Counter
	bytesArchived  prometheus.Counter
	lastSuccess    prometheus.Gauge

	bundlesSealed  prometheus.Counter
	bundlesAborted *prometheus.CounterVec
	enospc         prometheus.Counter
	pending        prometheus.Gauge

	quarantinedFiles   *prometheus.CounterVec
	quarantinedBundles *prometheus.CounterVec
	ignored            *prometheus.CounterVec
	hintsDropped       prometheus.Counter

	backlogFiles prometheus.Gauge
	backlogBytes prometheus.Gauge
	backlogAge   prometheus.Gauge
}

// Label values.
const (
	resultSuccess  = "success"
	resultExists   = "exists"
	resultConflict = "conflict"
	resultError    = "error"

	reasonNetwork   = "network"
	reasonPermanent = "permanent"
	reasonChecksum  = "checksum"
	reasonOther     = "other"
)

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	m := &metrics{
		uploads: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pcap_archive_uploads_total",
			Help: "Upload attempts of sealed bundles by result: success (created), exists (already there with the same checksum: an earlier attempt stored it and its answer was lost, or another run did), conflict (name taken by different content; the bundle is re-sealed under a new name), error (retried).",
		}, []string{"result"}),
		failures: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pcap_archive_upload_failures_total",
			Help: "Failed upload attempts by reason: network, permanent (bad credentials, missing bucket: needs an operator; still retried), checksum (local tarball does not match its manifest), other.",
		}, []string{"reason"}),
		uploadDuration: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "pcap_archive_upload_duration_seconds",
			Help:    "Duration of one upload attempt.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 16),
		}),
		uploadedBytes: f.NewCounter(prometheus.CounterOpts{
			Name: "pcap_archive_uploaded_bytes_total",
			Help: "Compressed bytes of bundles whose upload was confirmed.",
		}),
		filesArchived: f.NewCounter(prometheus.CounterOpts{
			Name: "pcap_archive_files_archived_total",
			Help: "Source files whose bundle was uploaded and which were then deleted.",
		}),
		bytesArchived: f.NewCounter(prometheus.CounterOpts{
			Name: "pcap_archive_bytes_archived_total",
			Help: "Bytes of source files whose bundle was uploaded and which were then deleted.",
		}),
		lastSuccess: f.NewGauge(prometheus.GaugeOpts{
			Name: "pcap_archive_last_success_timestamp_seconds",
			Help: "Unix time of the last confirmed upload.",
		}),
		bundlesSealed: f.NewCounter(prometheus.CounterOpts{
			Name: "pcap_archive_bundles_sealed_total",
			Help: "Bundles sealed (tarball fsynced and manifest written).",
		}),
		bundlesAborted: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pcap_archive_bundles_aborted_total",
			Help: "Bundles abandoned while being written, by reason (enospc, io); their sources stay in the data dir and are bundled again later.",
		}, []string{"reason"}),
		enospc: f.NewCounter(prometheus.CounterOpts{
			Name: "pcap_archive_enospc_total",
			Help: "Times the spool file system was full while writing a bundle.",
		}),
		pending: f.NewGauge(prometheus.GaugeOpts{
			Name: "pcap_archive_pending_bundles",
			Help: "Sealed bundles not yet confirmed uploaded.",
		}),
		quarantinedFiles: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pcap_archive_quarantined_files_total",
			Help: "Source files moved to the quarantine, by reason: torn (gzip check failed), too_large (over 200 MiB, which the ETL skips).",
		}, []string{"reason"}),
		quarantinedBundles: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pcap_archive_quarantined_bundles_total",
			Help: "Sealed bundles moved to the quarantine because they could not be recovered, by reason: manifest (unreadable), tarball (torn and not rebuildable).",
		}, []string{"reason"}),
		ignored: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pcap_archive_ignored_files_total",
			Help: "Names in the data dir that are not YYYY/MM/DD/<UUID>.pcap.gz, each counted once while it exists, by reason: temp (leading '.'), name, type (not a regular file), layout (outside the date folders).",
		}, []string{"reason"}),
		hintsDropped: f.NewCounter(prometheus.CounterOpts{
			Name: "pcap_archive_hints_dropped_total",
			Help: "New-file notifications (Add, fsnotify) dropped because the bundler was busy; the periodic scan finds those files.",
		}),
		backlogFiles: f.NewGauge(prometheus.GaugeOpts{
			Name: "pcap_archive_backlog_files",
			Help: "Source files in the data dir waiting for a confirmed upload, as of the last scan.",
		}),
		backlogBytes: f.NewGauge(prometheus.GaugeOpts{
			Name: "pcap_archive_backlog_bytes",
			Help: "Bytes of source files in the data dir waiting for a confirmed upload, as of the last scan.",
		}),
		backlogAge: f.NewGauge(prometheus.GaugeOpts{
			Name: "pcap_archive_backlog_oldest_age_seconds",
			Help: "Age of the oldest source file waiting for a confirmed upload, as of the last scan (0 when none).",
		}),
	}
	for _, r := range []string{resultSuccess, resultExists, resultConflict, resultError} {
		m.uploads.WithLabelValues(r)
	}
	for _, r := range []string{reasonNetwork, reasonPermanent, reasonChecksum, reasonOther} {
		m.failures.WithLabelValues(r)
	}
	for _, r := range []string{"enospc", "io"} {
		m.bundlesAborted.WithLabelValues(r)
	}
	for _, r := range []string{"torn", "too_large"} {
		m.quarantinedFiles.WithLabelValues(r)
	}
	for _, r := range []string{"manifest", "tarball"} {
		m.quarantinedBundles.WithLabelValues(r)
	}
	for _, r := range []string{"temp", "name", "type", "layout"} {
		m.ignored.WithLabelValues(r)
	}
	return m
}
