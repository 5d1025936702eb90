package flows

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// metrics keeps the seed's (m-lab/packet-headers) names, with the closest
// honest meaning in this design: a "saver" is a flow's file, the "demuxer" is
// the set of flow tables, and its "GC" is each worker's periodic sweep.
type metrics struct {
	missedPackets       *prometheus.CounterVec
	missedUUIDs         *prometheus.CounterVec
	starts              prometheus.Counter
	stops               prometheus.Counter
	saverErrors         *prometheus.CounterVec
	states              [nStates]prometheus.Gauge
	skipped             *prometheus.CounterVec
	badPackets          prometheus.Counter
	gcLatency           prometheus.Histogram
	uuids               prometheus.Counter
	active              prometheus.Gauge
	ignored             prometheus.Counter
	badEvents           *prometheus.CounterVec
	ended               *prometheus.CounterVec
	uuidWait            prometheus.Histogram
	packetsSaved        prometheus.Counter
	packetsAfterCapture prometheus.Counter
	filesWritten        prometheus.Counter
	writerStalls        prometheus.Histogram
	registryEntries     prometheus.Gauge
	garbageCollected    prometheus.Counter
	named               *prometheus.CounterVec
	disagreements       prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	m := &metrics{
		missedPackets: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pcap_missed_packets_total",
			Help: "Packets of a flow that were not saved, by the state of the flow's file: pending (the flow never got a UUID, or held too many packets while waiting), shed (the flow was refused by -maxflows or -maxheap).",
		}, []string{"saverstate"}),
		missedUUIDs: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pcap_missed_uuids_total",
			Help: "Flows dropped because no UUID arrived within -uuidwaitduration (saverstate=pending) or before shutdown (saverstate=shutdown).",
		}, []string{"saverstate"}),
		starts: f.NewCounter(prometheus.CounterOpts{
			Name: "pcap_saver_starts_total",
			Help: "Flow files started: flows that received their UUID.",
		}),
		stops: f.NewCounter(prometheus.CounterOpts{
			Name: "pcap_saver_stops_total",
			Help: "Flow files finished and handed to the writers.",
		}),
		saverErrors: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pcap_saver_errors_total",
			Help: "Errors writing flow files, by reason (write, nospace, exists, spill, mkdir, bad_uuid).",
		}, []string{"reason"}),
		skipped: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pcap_saver_skipped_total",
			Help: "New flows refused because a limit was reached (reason maxflows or maxheap).",
		}, []string{"reason"}),
		badPackets: f.NewCounter(prometheus.CounterOpts{
			Name: "pcap_demuxer_bad_packets_total",
			Help: "Frames whose Ethernet, IP or TCP header could not be parsed.",
		}),
		gcLatency: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "pcap_demuxer_gc_latency_seconds",
			Help:    "Duration of one worker's sweep over its flow table for timed-out and closed flows.",
			Buckets: prometheus.ExponentialBuckets(1e-6, 4, 12),
		}),
		uuids: f.NewCounter(prometheus.CounterOpts{
			Name: "pcap_demuxer_uuids_total",
			Help: "UUIDs received (Open events).",
		}),
		active: f.NewGauge(prometheus.GaugeOpts{
			Name: "pcap_demuxer_savers_active",
			Help: "Flows currently in the flow tables, named or not.",
		}),
		ignored: f.NewCounter(prometheus.CounterOpts{
			Name: "pcap_demuxer_ignored_total",
			Help: "Frames ignored: not TCP over IPv4/IPv6, or a non-first IP fragment.",
		}),
		badEvents: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pcap_flows_bad_events_total",
			Help: "UUID events the registry refused, by reason (registry_full, bad_tuple).",
		}, []string{"reason"}),
		ended: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pcap_flows_ended_total",
			Help: "Flows removed from the flow tables, by reason: timeout, closed, reused, no_uuid, shutdown.",
		}, []string{"reason"}),
		uuidWait: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "pcap_uuid_wait_seconds",
			Help:    "Time from a flow's first packet to its UUID.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		packetsSaved: f.NewCounter(prometheus.CounterOpts{
			Name: "pcap_packets_saved_total",
			Help: "Packets appended to a flow's records (including those held while waiting for a UUID).",
		}),
		packetsAfterCapture: f.NewCounter(prometheus.CounterOpts{
			Name: "pcap_packets_after_capture_total",
			Help: "Packets not saved because they came after their flow's -captureduration.",
		}),
		filesWritten: f.NewCounter(prometheus.CounterOpts{
			Name: "pcap_files_written_total",
			Help: "Flow files published under their final name.",
		}),
		writerStalls: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "pcap_writer_stall_seconds",
			Help:    "Time a capture worker waited because the write queue was full.",
			Buckets: prometheus.ExponentialBuckets(1e-4, 4, 10),
		}),
		garbageCollected: f.NewCounter(prometheus.CounterOpts{
			Name: "pcap_demuxer_savers_garbage_collected_total",
			Help: "Flows ended by a worker's sweep because they were silent for -flowtimeout (the same as pcap_flows_ended_total{reason=\"timeout\"}).",
		}),
		named: f.NewCounterVec(prometheus.CounterOpts{
			Name: "pcap_flows_named_total",
			Help: "Flows named, by the UUID source whose name they took first (eventsocket or netlink).",
		}, []string{"source"}),
		disagreements: f.NewCounter(prometheus.CounterOpts{
			Name: "pcap_uuid_source_disagreements_total",
			Help: "Sockets that two UUID sources named differently (same cookie, different prefix); the first name was kept.",
		}),
		registryEntries: f.NewGauge(prometheus.GaugeOpts{
			Name: "pcap_registry_uuids",
			Help: "UUIDs currently held by the registry.",
		}),
	}
	states := f.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pcap_saver_states",
		Help: "Flows by state: pending (waiting for a UUID), active (being saved), capped (capture duration over, file finished, flow still alive).",
	}, []string{"state"})
	for i, name := range stateNames {
		m.states[i] = states.WithLabelValues(name)
	}
	// Pre-create the label values dashboards expect to see at zero.
	for _, s := range []string{"pending", "shed"} {
		m.missedPackets.WithLabelValues(s)
	}
	for _, r := range []string{endTimeout, endClosed, endReused, endNoUUID, endShutdown} {
		m.ended.WithLabelValues(r)
	}
	m.missedUUIDs.WithLabelValues("pending")
	m.named.WithLabelValues(SourceEventSocket)
	m.named.WithLabelValues(SourceNetlink)
	return m
}
