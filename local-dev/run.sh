#!/usr/bin/env bash
# Runs the whole capture pipeline on this machine, without Docker, and shows
# what it produced:
#
#   sudo local-dev/run.sh            # about 20 s of traffic
#   sudo DURATION=60 local-dev/run.sh
#
# It installs what is missing (scripts/install-tools.sh: tcpdump, iproute2,
# zstd, and tcp-info built from a pinned version), builds packet-headers and
# trafficgen, creates two network namespaces joined by a veth pair (addresses
# from 192.0.2.0/24 and 2001:db8::/64 only; nothing leaves them), and runs in
# the "server" namespace tcp-info, packet-headers and the trafficgen server,
# and in the "client" namespace the trafficgen client. Then it stops
# everything with SIGTERM and prints the connections made, the flows
# captured, the daemon's key metrics and one captured flow.
#
# Everything it writes goes to local-dev/run/ (data/, logs/, conns.jsonl).
# The namespaces and processes are removed on exit, also on Ctrl-C.
#
# Environment:
#   DURATION   seconds (or a Go duration like 90s) of generated traffic; default 20
#   KEEP_DATA  1 to keep local-dev/run/data from the previous run
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

step "Installing tools (scripts/install-tools.sh)"
# The archiver step will add its tools (fake-gcs-server, versitygw) here.
"$root/scripts/install-tools.sh" tcp-info

step "Building packet-headers and trafficgen"
mkdir -p "$bin" "$logs"
(cd "$root" && go build -o "$bin/packet-headers" ./cmd/packet-headers && go build -o "$bin/trafficgen" ./cmd/trafficgen)
tcpinfo="$root/.bin/tcp-info"
tg="$bin/trafficgen"

if [[ ${KEEP_DATA:-0} != 1 ]]; then
	rm -rf "$data"
fi
rm -rf "$run/tcpinfo" "$logs"/*.log "$run/conns.jsonl" "$run/metrics.txt"
mkdir -p "$data" "$run/tcpinfo"
# A unix socket path must be short (108 bytes): keep it under /tmp.
sockdir=$(mktemp -d /tmp/hcdemo.XXXXXX)
sock="$sockdir/tcpevents.sock"

step "Creating namespaces $ns_srv and $ns_cli"
ip netns add "$ns_srv"
ip netns add "$ns_cli"
ip link add "$veth_srv" netns "$ns_srv" type veth peer name "$veth_cli" netns "$ns_cli"
for spec in "$ns_srv $veth_srv $srv4 $srv6" "$ns_cli $veth_cli $cli4 $cli6"; do
	read -r ns dev a4 a6 <<<"$spec"
	ip -n "$ns" link set lo up
	ip -n "$ns" addr add "$a4/24" dev "$dev"
	ip -n "$ns" addr add "$a6/64" dev "$dev" nodad
	ip -n "$ns" link set "$dev" up
done
echo "server $srv4 [$srv6] on $veth_srv  <->  client $cli4 [$cli6] on $veth_cli"

step "Starting tcp-info"
ip netns exec "$ns_srv" "$tcpinfo" -tcpinfo.eventsocket "$sock" -output "$run/tcpinfo" \
	-prometheusx.listen-address 127.0.0.1:9991 >"$logs/tcp-info.log" 2>&1 &
pids+=($!)
tcpinfo_pid=$!
wait_for "tcp-info's eventsocket" 15 test -S "$sock"
alive "$tcpinfo_pid" tcp-info

step "Starting packet-headers (data in ${data#"$root"/})"
ip netns exec "$ns_srv" "$bin/packet-headers" \
	-interface "$veth_srv" \
	-datadir "$data" \
	-tcpinfo.eventsocket "$sock" \
	-prometheusx.listen-address "$metrics_addr" >"$logs/packet-headers.log" 2>&1 &
pids+=($!)
daemon_pid=$!
wait_for "packet-headers' metrics" 15 in_srv "$tg" metrics "http://$metrics_addr/metrics"
alive "$daemon_pid" packet-headers

# --- Archiver: not written yet. When it is, start it here (in the server
# --- namespace, watching $data, uploading to a local bucket such as
# --- fake-gcs-server under $run/bucket), stop it after packet-headers below,
# --- and list the uploaded objects in the summary.

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
echo "packet-headers exited with status $daemon_status after $((SECONDS - start)) s"
kill -TERM "$tcpinfo_pid" 2>/dev/null || true
wait "$tcpinfo_pid" 2>/dev/null || true
wait "$server_pid" 2>/dev/null || true

step "Connections made by trafficgen"
conns=$(wc -l <"$run/conns.jsonl")
echo "$conns connections ($run/conns.jsonl, one JSON line each)"
grep -o '"shape":"[a-z]*"' "$run/conns.jsonl" | sort | uniq -c | sed 's/"shape"://; s/"//g'

step "Flows captured"
mapfile -t files < <(find "$data" -type f -name '*.pcap.gz' | sort)
bytes=$(find "$data" -type f -name '*.pcap.gz' -printf '%s\n' | awk '{s += $1} END {print s + 0}')
temps=$(find "$data" -name '.*' | wc -l)
echo "${#files[@]} files, $bytes bytes in ${data#"$root"/} ($temps temporary files left)"
for f in "${files[@]:0:5}"; do
	echo "  ${f#"$data"/}"
done
((${#files[@]} > 5)) && echo "  ..."

step "Key metrics of packet-headers (before SIGTERM; all in $run/metrics.txt)"
if [[ -s $run/metrics.txt ]]; then
	grep -E '^(pcap_saver_starts_total|pcap_saver_stops_total|pcap_demuxer_uuids_total|pcap_missed_uuids_total|pcap_missed_packets_total|pcap_saver_errors_total|pcap_demuxer_savers_active|pcap_demuxer_bad_packets_total|pcap_muxer_interfaces_with_captures)' \
		"$run/metrics.txt" || echo "(none of the usual pcap_ metrics found)"
else
	echo "(could not read the metrics)"
fi

if ((${#files[@]} > 0)); then
	# Show a flow with some packets in it: the largest file.
	biggest=$(ls -S "${files[@]}" | head -n 1 || true)
	step "One flow: ${biggest#"$data"/}"
	# head closes the pipe early: ignore the resulting SIGPIPE.
	{ zcat "$biggest" | tcpdump -nn -r - 2>/dev/null | head -n 15; } || true
fi

if ((daemon_status != 0)); then
	echo "run.sh: packet-headers exited with status $daemon_status; see $logs/packet-headers.log" >&2
	exit 1
fi
if ((${#files[@]} == 0)); then
	echo "run.sh: no flow was captured; see $logs" >&2
	exit 1
fi
echo
echo "Done. Logs: $logs"
