#!/usr/bin/env bash
# Installs everything the tests and local-dev need on a fresh Debian 12 machine:
# Debian packages (tcpdump, iproute2, zstd for tcp-info) and the tool binaries
# built from pinned versions through the Go module proxy into .bin/.
# Idempotent: a tool already built from the current tools/*/go.mod is kept.
# Usage: install-tools.sh [TOOL...] (default: all) | --apt-only
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bin="$root/.bin"
mkdir -p "$bin"

need_apt=()
for p in tcpdump:tcpdump ip:iproute2 zstd:zstd; do
	cmd=${p%%:*}; pkg=${p##*:}
	command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
	if [[ $(id -u) -ne 0 ]]; then
		echo "install-tools: need root to apt-get install ${need_apt[*]}" >&2
		exit 1
	fi
	echo "install-tools: apt-get install ${need_apt[*]}" >&2
	DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# build DIR BINARY PACKAGE: builds PACKAGE from the tools module in tools/DIR.
build() {
	local dir=$1 name=$2 pkg=$3
	local stamp="$bin/.$name.sum"
	local sum
	sum=$(cat "tools/$dir/go.mod" "tools/$dir/go.sum" | sha256sum | cut -d' ' -f1)
	if [[ -x "$bin/$name" && -f "$stamp" && $(cat "$stamp") == "$sum" ]]; then
		return 0
	fi
	echo "install-tools: building $name" >&2
	(cd "tools/$dir" && CGO_ENABLED=0 go build -o "$bin/$name" "$pkg")
	echo "$sum" >"$stamp"
}

tools=("$@")
if [[ ${1:-} == --apt-only ]]; then
	exit 0
fi
if ((${#tools[@]} == 0)); then
	tools=(tcp-info staticcheck fake-gcs-server versitygw)
fi
for t in "${tools[@]}"; do
	case $t in
	tcp-info) build tcpinfo tcp-info github.com/m-lab/tcp-info & ;;
	staticcheck) build staticcheck staticcheck honnef.co/go/tools/cmd/staticcheck & ;;
	fake-gcs-server) build fakegcs fake-gcs-server github.com/fsouza/fake-gcs-server & ;;
	versitygw) build versitygw versitygw github.com/versity/versitygw/cmd/versitygw & ;;
	*) echo "install-tools: unknown tool $t" >&2; exit 2 ;;
	esac
done
fail=0
for job in $(jobs -p); do wait "$job" || fail=1; done
exit $fail
