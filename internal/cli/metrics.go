package cli

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// MetricsServer serves a registry's /metrics (the -prometheusx.listen-address
// of both binaries). A nil *MetricsServer is valid and serves nothing.
type MetricsServer struct {
	ln  net.Listener
	srv *http.Server
}

// ListenMetrics listens on addr for /metrics requests; an empty addr
// disables the server and returns nil.
func ListenMetrics(addr string, reg *prometheus.Registry) (*MetricsServer, error) {
	if addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics server: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	log.Printf("serving metrics on http://%s/metrics", ln.Addr())
	return &MetricsServer{ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}, nil
}

// Run serves until ctx is done, then shuts the server down.
func (s *MetricsServer) Run(ctx context.Context) error {
	if s == nil {
		<-ctx.Done()
		return nil
	}
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("metrics server: %w", err)
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		s.srv.Shutdown(sctx)
		<-errc
		return nil
	}
}
