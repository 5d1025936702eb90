// Package deploy holds no code. Its tests check the deployment files of the
// repository without Docker or Kubernetes: the Dockerfile and .dockerignore,
// docker-compose.yml (loaded with compose-go) and its env files,
// deploy/packet-headers.env, the Kubernetes manifests in deploy/k8s, the
// Prometheus configuration and the Grafana dashboard.
//
// Facts are taken from their sources, not restated: the environment variables
// the binaries read come from their -help output (the tests build them), the
// metric names from the Go sources that register them, the image layout from
// the Dockerfile. The tests never run docker or kubectl and never touch the
// network.
package deploy
