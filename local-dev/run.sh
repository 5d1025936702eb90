#!/usr/bin/env bash
# Runs the whole pipeline on this machine, without Docker, and shows what it
# produced: generated traffic -> packet-headers -> per-flow pcaps
# -> tarballs in a bucket.
#
#   sudo local-dev/run.sh                 # about 20 s of traffic, bucket in local-dev/run/bucket
#   sudo BUCKET=gcs local-dev/run.sh      # the bucket is a fake-gcs-server
#   sudo BUCKET=s3 local-dev/run.sh       # the bucket is a versitygw S3 gateway
#   sudo DURATION=60 local-dev/run.sh
#   sudo TCPINFO=1 local-dev/run.sh       # also run tcp-info (-uuid.source=both)
#
# The daemon names flows itself from the kernel's socket cookies
# (-uuid.source=netlink): tcp-info is not needed unless TCPINFO=1.
#
# It installs what is missing (scripts/install-tools.sh: tcpdump, iproute2,
# zstd; tcp-info with TCPINFO=1, fake-gcs-server or versitygw when asked
# for, built from pinned versions), builds packet-headers, trafficgen and bucketls, creates
# two network namespaces joined by a veth pair (addresses from 192.0.2.0/24
# and 2001:db8::/64 only; nothing leaves them), and runs in the "server"
# namespace the storage server (for gcs and s3, on 127.0.0.1 there), tcp-info
# (with TCPINFO=1),
# packet-headers archiving in-process to the bucket, and the trafficgen
# server, and in the "client" namespace the trafficgen client. Then it stops
# everything with SIGTERM and prints the connections made, the daemon's key
# metrics, the objects in the bucket and one flow read back from a tarball.
#
# Everything it writes goes to local-dev/run/ (data/, bucket/ or s3/, logs/,
# conns.jsonl, metrics.txt, sample/). The namespaces and processes are
# removed on exit, also on Ctrl-C.
#
# Environment:
#   BUCKET     file (default: local-dev/run/bucket), gcs (fake-gcs-server,
#              in memory) or s3 (versitygw, objects in local-dev/run/s3/)
#   DURATION   seconds (or a Go duration like 90s) of generated traffic; default 20
#   KEEP_DATA  1 to keep local-dev/run/data and the bucket from the previous run
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
	echo "run.sh: needs root (it creates network namespaces and captures packets); try: sudo $0" >&2
	exit 1
fi

if ! command -v go >/dev/null 2>&1; then
	echo "run.sh: go is not in PATH (sudo resets PATH; try: sudo env PATH=\"\$PATH\" $0)" >&2
	exit 1
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
run="$here/run"
bin="$run/bin"
logs="$run/logs"
data="$run/data"

duration=${DURATION:-20}
[[ $duration =~ ^[0-9]+$ ]] && duration="${duration}s"
bucket_kind=${BUCKET:-file}
case $bucket_kind in
file | gcs | s3) ;;
*)
	echo "run.sh: BUCKET=$bucket_kind: want file, gcs or s3" >&2
	exit 1
	;;
esac

ns_srv="hcdemo-$$-srv"
ns_cli="hcdemo-$$-cli"
veth_srv=hc-srv0
veth_cli=hc-cli0
srv4=192.0.2.1
cli4=192.0.2.2
srv6=2001:db8::1
cli6=2001:db8::2
port=8080
metrics_addr=127.0.0.1:9990
# The storage server listens on the server namespace's own loopback.
storage_addr=127.0.0.1:4443
bucket_name=ndt-archive
# Small tarballs, sealed often, so that objects appear within the run.
archive_size=64KB
archive_maxage=5s
sockdir=""
pids=()

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
# For foreground commands only: a backgrounded function runs in a subshell,
# and $! would be the subshell, not the program (signals would miss it).
in_srv() { ip netns exec "$ns_srv" "$@"; }
in_cli() { ip netns exec "$ns_cli" "$@"; }

cleanup() {
	local status=$?
	trap - EXIT INT TERM
	# Our own processes first (by pid), then anything left in the namespaces.
	for pid in "${pids[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for ns in "$ns_srv" "$ns_cli"; do
		if ip netns list | grep -qw "^$ns"; then
			for pid in $(ip netns pids "$ns" 2>/dev/null); do
				kill -9 "$pid" 2>/dev/null || true
			done
			ip netns del "$ns" 2>/dev/null || true
		fi
	done
	[[ -n $sockdir ]] && rm -rf "$sockdir"
	if ((status != 0)); then
		echo "run.sh: failed (status $status); logs are in $logs" >&2
	fi
	exit "$status"
}
trap cleanup EXIT
trap 'echo; echo "run.sh: interrupted" >&2; exit 130' INT TERM

# wait_for DESCRIPTION SECONDS COMMAND...: retries COMMAND until it succeeds.
wait_for() {
	local what=$1 secs=$2
	shift 2
	local deadline=$((SECONDS + secs))
	until "$@" >/dev/null 2>&1; do
		if ((SECONDS >= deadline)); then
			echo "run.sh: timed out waiting for $what; see $logs" >&2
			return 1
		fi
		sleep 0.2
	done
}

# alive PID NAME: fails with the log's tail if the process has exited.
alive() {
	if ! kill -0 "$1" 2>/dev/null; then
		echo "run.sh: $2 exited early; last lines of $logs/$2.log:" >&2
		tail -n 20 "$logs/$2.log" >&2
		return 1
	fi
}

# listening ADDR: succeeds once something listens on ADDR (host:port) in the
# server namespace.
listening() { in_srv ss -Hltn "sport = :${1##*:}" | grep -q .; }

# The daemon names flows itself (-uuid.source=netlink) unless TCPINFO=1,
# which also runs tcp-info and lets both sources name flows.
with_tcpinfo=${TCPINFO:-0}

step "Installing tools (scripts/install-tools.sh)"
tools=()
[[ $with_tcpinfo == 1 ]] && tools+=(tcp-info)
case $bucket_kind in
gcs) tools+=(fake-gcs-server) ;;
s3) tools+=(versitygw) ;;
esac
if ((${#tools[@]})); then
	"$root/scripts/install-tools.sh" "${tools[@]}"
else
	"$root/scripts/install-tools.sh" --apt-only
fi

step "Building packet-headers, trafficgen and bucketls"
mkdir -p "$bin" "$logs"
(cd "$root" && go build -o "$bin/packet-headers" ./cmd/packet-headers &&
	go build -o "$bin/trafficgen" ./cmd/trafficgen &&
	go build -o "$bin/bucketls" ./local-dev/bucketls)
tcpinfo="$root/.bin/tcp-info"
tg="$bin/trafficgen"

if [[ ${KEEP_DATA:-0} != 1 ]]; then
	rm -rf "$data" "$run/bucket" "$run/s3"
fi
rm -rf "$run/tcpinfo" "$run/gcs-init" "$run/sample" "$logs"/*.log "$run/conns.jsonl" "$run/metrics.txt" "$run/objects.txt"
mkdir -p "$data" "$run/tcpinfo"
# A unix socket path must be short (108 bytes): keep it under /tmp.
sockdir=$(mktemp -d /tmp/hcdemo.XXXXXX)
sock="$sockdir/tcpevents.sock"

# The bucket: its URL for -archive.url, and the environment the daemon (and
# bucketls) need to reach it.
storage_env=()
case $bucket_kind in
file)
	mkdir -p "$run/bucket"
	archive_url="file://$run/bucket"
	;;
gcs)
	archive_url="gs://$bucket_name"
	storage_env=("STORAGE_EMULATOR_HOST=http://$storage_addr")
	;;
s3)
	mkdir -p "$run/s3/$bucket_name"
	archive_url="s3://$bucket_name?endpoint=http://$storage_addr&region=us-east-1"
	# versitygw's root account, for this demo only.
	s3_access=headercap-demo
	s3_secret=headercap-demo-secret
	storage_env=("AWS_ACCESS_KEY_ID=$s3_access" "AWS_SECRET_ACCESS_KEY=$s3_secret"
		"AWS_CONFIG_FILE=/dev/null" "AWS_SHARED_CREDENTIALS_FILE=/dev/null" "AWS_EC2_METADATA_DISABLED=true")
	;;
esac
# with_storage COMMAND...: runs COMMAND in the server namespace with the
# bucket's environment (foreground only, like in_srv).
with_storage() { ip netns exec "$ns_srv" env "${storage_env[@]}" "$@"; }

step "Creating namespaces $ns_srv and $ns_cli"
ip netns add "$ns_srv"
ip netns add "$ns_cli"
ip link add "$veth_srv" netns "$ns_srv" type veth peer name "$veth_cli" netns "$ns_cli"
for spec in "$ns_srv $veth_srv $srv4 $srv6" "$ns_cli $veth_cli $cli4 $cli6"; do
	read -r ns dev a4 a6 <<<"$spec"
	ip -n "$ns" link set lo up
	# Only documentation addresses: no IPv6 link-local address.
	ip -n "$ns" link set "$dev" addrgenmode none
	ip -n "$ns" addr add "$a4/24" dev "$dev"
	ip -n "$ns" addr add "$a6/64" dev "$dev" nodad
	ip -n "$ns" link set "$dev" up
done
echo "server $srv4 [$srv6] on $veth_srv  <->  client $cli4 [$cli6] on $veth_cli"

case $bucket_kind in
gcs)
	step "Starting fake-gcs-server on $storage_addr (bucket $bucket_name, in memory)"
	# -data creates a bucket for each (empty) directory.
	mkdir -p "$run/gcs-init/$bucket_name"
	ip netns exec "$ns_srv" "$root/.bin/fake-gcs-server" -scheme http -host "${storage_addr%:*}" -port "${storage_addr##*:}" \
		-backend memory -data "$run/gcs-init" -log-level warn >"$logs/fake-gcs-server.log" 2>&1 &
	pids+=($!)
	storage_pid=$!
	wait_for "fake-gcs-server" 20 listening "$storage_addr"
	alive "$storage_pid" fake-gcs-server
	;;
s3)
	step "Starting versitygw on $storage_addr (bucket $bucket_name in ${run#"$root"/}/s3)"
	ip netns exec "$ns_srv" "$root/.bin/versitygw" --access "$s3_access" --secret "$s3_secret" \
		--port "$storage_addr" --quiet posix "$run/s3" >"$logs/versitygw.log" 2>&1 &
	pids+=($!)
	storage_pid=$!
	wait_for "versitygw" 20 listening "$storage_addr"
	alive "$storage_pid" versitygw
	;;
esac

uuid_args=(-uuid.source netlink)
tcpinfo_pid=
if [[ $with_tcpinfo == 1 ]]; then
	step "Starting tcp-info"
	ip netns exec "$ns_srv" "$tcpinfo" -tcpinfo.eventsocket "$sock" -output "$run/tcpinfo" \
		-prometheusx.listen-address 127.0.0.1:9991 >"$logs/tcp-info.log" 2>&1 &
	pids+=($!)
	tcpinfo_pid=$!
	wait_for "tcp-info's eventsocket" 15 test -S "$sock"
	alive "$tcpinfo_pid" tcp-info
	uuid_args=(-uuid.source both -tcpinfo.eventsocket "$sock")
fi

step "Starting packet-headers (data in ${data#"$root"/}, archiving to $archive_url)"
# `env` execs the daemon: $! is the daemon itself.
ip netns exec "$ns_srv" env "${storage_env[@]}" "$bin/packet-headers" \
	-interface "$veth_srv" \
	-datadir "$data" \
	"${uuid_args[@]}" \
	-archive.url "$archive_url" \
	-archive.experiment ndt \
	-archive.size "$archive_size" \
	-archive.maxage "$archive_maxage" \
	-prometheusx.listen-address "$metrics_addr" >"$logs/packet-headers.log" 2>&1 &
pids+=($!)
daemon_pid=$!
wait_for "packet-headers' metrics" 15 in_srv "$tg" metrics "http://$metrics_addr/metrics"
alive "$daemon_pid" packet-headers

step "Generating traffic for $duration"
listen="$srv4:$port,[$srv6]:$port"
ip netns exec "$ns_srv" "$tg" serve -listen "$listen" >"$logs/trafficgen-serve.log" 2>&1 &
pids+=($!)
server_pid=$!
wait_for "the trafficgen server" 10 grep -q "serving on" "$logs/trafficgen-serve.log"
in_cli "$tg" client -connect "$listen" -for "$duration" -parallel 8 \
	-mix short=70,long=10,bulk=10,reuse=10 -duration-long 5s -seed "$$" \
	-max-errors -1 -out "$run/conns.jsonl" 2>&1 | tee "$logs/trafficgen-client.log"

step "Stopping (SIGTERM)"
in_srv "$tg" metrics "http://$metrics_addr/metrics" >"$run/metrics.txt" 2>/dev/null || true
kill -TERM "$server_pid" 2>/dev/null || true
kill -TERM "$daemon_pid"
start=$SECONDS
daemon_status=0
wait "$daemon_pid" || daemon_status=$?
echo "packet-headers exited with status $daemon_status after $((SECONDS - start)) s (it archives what is left before it exits)"
if [[ -n $tcpinfo_pid ]]; then
	kill -TERM "$tcpinfo_pid" 2>/dev/null || true
	wait "$tcpinfo_pid" 2>/dev/null || true
fi
wait "$server_pid" 2>/dev/null || true

step "Connections made by trafficgen"
conns=$(wc -l <"$run/conns.jsonl")
echo "$conns connections ($run/conns.jsonl, one JSON line each)"
grep -o '"shape":"[a-z]*"' "$run/conns.jsonl" | sort | uniq -c | sed 's/"shape"://; s/"//g'

step "Key metrics of packet-headers (before SIGTERM, zeros left out; all in $run/metrics.txt)"
if [[ -s $run/metrics.txt ]]; then
	grep -E '^(pcap_saver_starts_total|pcap_saver_stops_total|pcap_files_written_total|pcap_demuxer_uuids_total|pcap_missed_uuids_total|pcap_missed_packets_total|pcap_saver_errors_total|pcap_demuxer_savers_active|pcap_demuxer_bad_packets_total|pcap_muxer_interfaces_with_captures|pcap_archive_uploads_total|pcap_archive_files_archived_total|pcap_archive_bundles_sealed_total|pcap_archive_upload_failures_total|pcap_archive_quarantined)' \
		"$run/metrics.txt" | grep -v ' 0$' || echo "(none of the usual pcap_ metrics found)"
else
	echo "(could not read the metrics)"
fi

step "Data dir after the daemon exited (${data#"$root"/})"
left=$(find "$data" -path "$data/.archive" -prune -o -type f -name '*.pcap.gz' -print | wc -l)
temps=$(find "$data" -path "$data/.archive" -prune -o -name '.*' -print | wc -l)
sealed=$(find "$data/.archive" -maxdepth 1 -name '*.json' 2>/dev/null | wc -l)
quarantined=$(find "$data/.archive/quarantine" -type f 2>/dev/null | wc -l)
echo "$left flow files not yet archived, $sealed sealed bundles waiting for upload, $quarantined quarantined files, $temps temporary files"
if ((left + sealed > 0)); then
	echo "(the next start, of packet-headers or pcap-archiver on this data dir, uploads them)"
fi

step "Objects in the bucket ($archive_url)"
objects_status=0
# One line per object: size, number of flows in it, name.
with_storage "$bin/bucketls" -members "$archive_url" >"$run/objects.txt" || objects_status=$?
nobjects=$(wc -l <"$run/objects.txt")
awk -F'\t' '{b += $1; f += $2} END {printf "%d objects, %d bytes, %d flows (list in '"$run"'/objects.txt)\n", NR, b, f}' "$run/objects.txt"
awk -F'\t' '{printf "  %8d bytes %5d flows  %s\n", $1, $2, $3}' "$run/objects.txt" | head -n 10
if ((nobjects > 10)); then echo "  ..."; fi

if ((nobjects > 0)); then
	# The largest tarball has the most flows to choose from.
	object=$(sort -t$'\t' -k1,1nr "$run/objects.txt" | head -n 1 | cut -f3)
	mkdir -p "$run/sample"
	with_storage "$bin/bucketls" -get "$object" -o "$run/sample/sample.tgz" "$archive_url"
	tar -xzf "$run/sample/sample.tgz" -C "$run/sample"
	members=$(tar -tzf "$run/sample/sample.tgz" | wc -l)
	# Show a flow with some packets in it: the tarball's largest member.
	flow=$(find "$run/sample" -type f -name '*.pcap.gz' -printf '%s\t%p\n' | sort -nr | head -n 1 | cut -f2)
	step "One flow from ${object##*/} ($members flows; extracted in ${run#"$root"/}/sample): ${flow#"$run/sample/"}"
	# head closes the pipe early: ignore the resulting SIGPIPE.
	{ zcat "$flow" | tcpdump -nn -r - 2>/dev/null | head -n 15; } || true
fi

if ((daemon_status != 0)); then
	echo "run.sh: packet-headers exited with status $daemon_status; see $logs/packet-headers.log" >&2
	exit 1
fi
if ((objects_status != 0)); then
	echo "run.sh: could not list the bucket $archive_url" >&2
	exit 1
fi
if ((nobjects == 0)); then
	echo "run.sh: nothing was archived; see $logs/packet-headers.log" >&2
	exit 1
fi
echo
echo "Done. Logs: $logs"
