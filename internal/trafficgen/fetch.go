package trafficgen

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"syscall"
	"time"
)

// Fetch GETs rawURL and copies the body to w. It exists so scripts can read
// a daemon's /metrics from inside a network namespace without curl. The
// host must be a loopback or documentation IP literal; proxies from the
// environment are ignored.
func Fetch(ctx context.Context, rawURL string, w io.Writer) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return fmt.Errorf("fetch: %w", err)
	}
	if u.Scheme != "http" {
		return fmt.Errorf("fetch %s: only http is supported", rawURL)
	}
	host, err := netip.ParseAddr(u.Hostname())
	if err != nil {
		return fmt.Errorf("fetch %s: host must be an IP address: %w", rawURL, err)
	}
	if err := CheckLocal(host); err != nil {
		return fmt.Errorf("fetch %s: %w", rawURL, err)
	}
	d := net.Dialer{
		Timeout: 5 * time.Second,
		Control: func(network, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return err
			}
			return CheckLocal(ap.Addr())
		},
	}
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{Proxy: nil, DialContext: d.DialContext},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("fetch: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("fetch: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fetch %s: %s", rawURL, resp.Status)
	}
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("fetch %s: %w", rawURL, err)
	}
	return nil
}
