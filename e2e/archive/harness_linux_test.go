//go:build linux

package archivee2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/headercap/headercap/upload/uploadtest"

	"github.com/headercap/headercap/internal/e2etest"
)

// Environment variables that turn a skip into a failure (CI sets both).
const (
	requireNetnsEnv   = e2etest.RequireNetnsEnv
	requireServersEnv = uploadtest.RequireServersEnv
)

// seedFor returns the random seed of a test: $HEADERCAP_E2E_SEED if set,
// else a fresh one. It is logged so that a failure can be replayed.
func seedFor(t *testing.T) uint64 {
	t.Helper()
	if s := os.Getenv("HEADERCAP_E2E_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("HEADERCAP_E2E_SEED=%q: %v", s, err)
		}
		t.Logf("seed %d (from HEADERCAP_E2E_SEED)", seed)
		return seed
	}
	seed := rand.Uint64() >> 1
	t.Logf("seed %d (replay with HEADERCAP_E2E_SEED=%d)", seed, seed)
	return seed
}

// Server binaries: $ENV, else .bin/NAME; missing skips, or fails with
// HEADERCAP_REQUIRE_SERVERS=1.
func fakeGCSBin(t *testing.T) string {
	return uploadtest.Binary(t, "FAKE_GCS_SERVER_BIN", "fake-gcs-server")
}

func versityBin(t *testing.T) string {
	return uploadtest.Binary(t, "VERSITYGW_BIN", "versitygw")
}

var crashRE = regexp.MustCompile(`panic:|DATA RACE|fatal error:|goroutine [0-9]+ \[`)

// checkLog fails the test if a process's output shows a crash.
func checkLog(t *testing.T, p *e2etest.Proc) {
	t.Helper()
	out := p.Out.Bytes()
	if m := crashRE.Find(out); m != nil {
		t.Errorf("%s output contains %q:\n%s", p.Name, m, e2etest.Tail(out, 40))
	}
}

// freePort returns a TCP port that was free on 127.0.0.1 a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitFor polls cond every 20ms until it returns true; it fails the test
// with what after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// httpGet fetches a URL from the test's own network namespace.
func httpGet(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, bytes.TrimSpace(body))
	}
	return body, nil
}

// metrics is a Prometheus text exposition.
type metrics []byte

var sampleRE = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)`)

// get returns the value of the sample named exactly series (with its
// labels, as printed: `name{k="v"}`), or the sum of every sample of that
// name when series has no labels. ok is false if there is none.
func (m metrics) get(series string) (v float64, ok bool) {
	name, labels, _ := strings.Cut(series, "{")
	for _, line := range strings.Split(string(m), "\n") {
		s := sampleRE.FindStringSubmatch(line)
		if s == nil || s[1] != name {
			continue
		}
		if labels != "" && s[2] != "{"+labels {
			continue
		}
		f, err := strconv.ParseFloat(s[3], 64)
		if err != nil {
			continue
		}
		v += f
		ok = true
	}
	return v, ok
}

// value is get that treats a missing series as 0.
func (m metrics) value(series string) float64 {
	v, _ := m.get(series)
	return v
}

// grep returns the sample lines whose names start with one of prefixes.
func (m metrics) grep(prefixes ...string) string {
	var out []string
	for _, line := range strings.Split(string(m), "\n") {
		for _, p := range prefixes {
			if strings.HasPrefix(line, p) {
				out = append(out, "  "+line)
				break
			}
		}
	}
	if len(out) == 0 {
		return "  (none found)"
	}
	return strings.Join(out, "\n")
}
