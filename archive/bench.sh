#!/bin/sh
# Measures the archiver's bundling throughput next to `tar czf` on the same
# generated backlog of realistic per-flow pcap.gz files, in one run.
#
#   archive/bench.sh                 # 200 MB backlog in a temporary dir
#   ARCHIVE_BENCH_MB=500 ARCHIVE_BENCH_DIR=/var/tmp/corpus archive/bench.sh
#
# Micro-benchmark of the bundle writer alone:
#   go test -run '^$' -bench Bundle -benchtime 5x ./archive/
set -eu
cd "$(dirname "$0")/.."
ARCHIVE_BENCH=1 exec go test -run '^TestThroughput$' -count=1 -v -timeout 60m ./archive/ "$@"
