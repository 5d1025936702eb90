#!/usr/bin/env bash
# Measures offline processing (packet-headers -read) on a large synthetic
# capture next to `tcpdump -r FILE -w OUT` on the same file, in the same run.
# Usage: scripts/bench-offline.sh [FLOWS]   (default 100000 flows, ~4M packets)
set -euo pipefail
cd "$(dirname "$0")/.."
flows=${1:-100000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
command -v tcpdump >/dev/null || ./scripts/install-tools.sh
go build -o "$work/packet-headers" ./cmd/packet-headers
go run ./internal/tools/pcapsynth -out "$work/synth.pcap" -flows "$flows"
size=$(stat -c %s "$work/synth.pcap")
packets=$(( $(tcpdump -r "$work/synth.pcap" -nn -q 2>/dev/null | wc -l) ))
cat "$work/synth.pcap" >/dev/null # warm the page cache for both
t0=$(date +%s.%N)
tcpdump -r "$work/synth.pcap" -w "$work/copy.pcap" 2>/dev/null
t1=$(date +%s.%N)
"$work/packet-headers" -read "$work/synth.pcap" -datadir "$work/out" -prometheusx.listen-address= 2>"$work/ph.log"
t2=$(date +%s.%N)
files=$(find "$work/out" -name '*.pcap.gz' | wc -l)
awk -v p="$packets" -v s="$size" -v a="$t0" -v b="$t1" -v c="$t2" -v f="$files" 'BEGIN {
	printf "capture: %d packets, %.1f MB\n", p, s/1e6
	printf "tcpdump -r -w:           %6.2f s  %10.0f packets/s\n", b-a, p/(b-a)
	printf "packet-headers -read:    %6.2f s  %10.0f packets/s  (%d flow files)\n", c-b, p/(c-b), f
}'
