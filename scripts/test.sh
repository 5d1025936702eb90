#!/usr/bin/env bash
# The README's test command: installs what the tests need (Debian packages,
# tcp-info, fake-gcs-server, versitygw, staticcheck; see install-tools.sh),
# then runs the project's gate: gofmt, go vet, staticcheck, go mod tidy with
# no diff, and go test -race ./... including the end-to-end tests with real
# network namespaces, the real tcp-info and real storage servers.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-tools.sh
export PATH="$PWD/.bin:$PATH"
if [[ $(id -u) -eq 0 ]]; then
	# As root nothing may skip: namespaces and real servers are required.
	export HEADERCAP_REQUIRE_NETNS=1 HEADERCAP_REQUIRE_SERVERS=1
else
	echo "test.sh: not root: tests that need network namespaces will skip" >&2
fi
make check
