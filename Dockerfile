# syntax=docker/dockerfile:1

# Images of headercap, built from this repository with BuildKit (the default
# builder of Docker 23 and later):
#
#   docker build -t headercap .                                 # packet-headers and pcap-archiver
#   docker build --target trafficgen -t headercap-trafficgen .  # demo traffic (docker-compose.yml)
#
# The default image holds two static binaries (CGO_ENABLED=0, no libpcap) and
# runs as distroless's "nonroot" user, 65532:65532. Its entrypoint is
# packet-headers; a sidecar sets the entrypoint to /usr/local/bin/pcap-archiver.
# Both are configured entirely by environment variables, named like their
# flags (deploy/packet-headers.env lists all of them). The data dir is /data.
#
# Capabilities. packet-headers captures with AF_PACKET sockets and needs only
# CAP_NET_RAW (the netlink UUID source's sock_diag queries and destroy
# notifications need none). A non-root process gets capabilities only from
# file capabilities, so the build stage puts cap_net_raw on the binary
# (setcap writes the security.capability xattr, which BuildKit's COPY keeps).
# Running the image therefore needs:
#
#   - CAP_NET_RAW in the container's bounding set: docker run --cap-add
#     NET_RAW, compose cap_add, Kubernetes securityContext.capabilities.add.
#     The file capability is an effective one, so without it the kernel
#     refuses to start the binary: "exec /usr/local/bin/packet-headers:
#     operation not permitted". With --build-arg
#     PACKET_HEADERS_CAPS=cap_net_raw,cap_net_admin=ep (and NET_ADMIN granted)
#     the netlink source may also grow its receive buffer beyond
#     net.core.rmem_max, for hosts that close sockets in large bursts;
#   - no no_new_privs: not security_opt no-new-privileges, not Kubernetes
#     allowPrivilegeEscalation: false. With it the kernel ignores file
#     capabilities and capture fails with EPERM.
#
# pcap-archiver needs no capability; it only reads and deletes files in /data
# and talks to the bucket.
#
# No HEALTHCHECK: the image has no shell and no HTTP client. Kubernetes probes
# GET /metrics on :9990 itself (deploy/k8s/daemonset.yaml); compose relies on
# restart policies and Prometheus' up metric.

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION}-bookworm AS build
RUN apt-get update \
	&& apt-get install -y --no-install-recommends libcap2-bin \
	&& rm -rf /var/lib/apt/lists/*
WORKDIR /src
ENV CGO_ENABLED=0
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
	go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
	--mount=type=cache,target=/root/.cache/go-build \
	go build -trimpath -ldflags='-s -w' -o /out/ ./cmd/packet-headers ./cmd/pcap-archiver ./cmd/trafficgen
ARG PACKET_HEADERS_CAPS=cap_net_raw=ep
RUN setcap "${PACKET_HEADERS_CAPS}" /out/packet-headers \
	&& getcap /out/packet-headers \
	&& mkdir -p /rootfs/data

# The traffic generator of the local stack. It refuses every address but
# documentation and loopback ones (see internal/trafficgen).
FROM gcr.io/distroless/static-debian12:nonroot AS trafficgen
COPY --from=build /out/trafficgen /usr/local/bin/trafficgen
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/trafficgen"]

# The default target (the last stage): packet-headers and pcap-archiver.
FROM gcr.io/distroless/static-debian12:nonroot AS headercap
LABEL org.opencontainers.image.title="headercap" \
	org.opencontainers.image.description="packet-headers: per-flow TCP header capture named by tcp-info UUIDs; pcap-archiver: bundles and uploads the captures" \
	org.opencontainers.image.source="https://github.com/headercap/headercap"
COPY --from=build /out/packet-headers /out/pcap-archiver /usr/local/bin/
# /data belongs to the runtime user, so a fresh named volume mounted there
# (Docker copies the image's ownership into it) is writable.
COPY --from=build --chown=65532:65532 /rootfs/data /data
USER 65532:65532
ENV DATADIR=/data
VOLUME ["/data"]
EXPOSE 9990
ENTRYPOINT ["/usr/local/bin/packet-headers"]
