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
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/headercap/headercap/upload/uploadtest"
)

// Environment variables that turn a skip into a failure (CI sets both).
const (
	requireNetnsEnv   = "HEADERCAP_REQUIRE_NETNS"
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

// netTools are the programs the traffic tests need besides the module's
// own binaries.
type netTools struct {
	tcpinfo, tcpdump string
}

// requireNetTools skips (or, with HEADERCAP_REQUIRE_NETNS=1, fails) unless
// the traffic tests can run: root, ip, tcpdump, zstd and tcp-info.
func requireNetTools(t *testing.T) netTools {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	look := func(name string) string {
		p, err := exec.LookPath(name)
		if err != nil {
			missing = append(missing, name)
		}
		return p
	}
	look("ip")
	look("ss")
	look("zstd") // tcp-info compresses its own output with it
	tl := netTools{tcpdump: look("tcpdump")}
	tl.tcpinfo = os.Getenv("TCPINFO_BIN")
	if tl.tcpinfo == "" {
		if root, err := rootOnce(); err == nil {
			tl.tcpinfo = filepath.Join(root, ".bin", "tcp-info")
		}
	}
	if _, err := os.Stat(tl.tcpinfo); tl.tcpinfo == "" || err != nil {
		missing = append(missing, "tcp-info (run scripts/install-tools.sh or set TCPINFO_BIN)")
	}
	if len(missing) > 0 {
		msg := "archive end-to-end test needs: " + strings.Join(missing, ", ")
		if os.Getenv(requireNetnsEnv) == "1" {
			t.Fatalf("%s=1 but the %s", requireNetnsEnv, msg)
		}
		t.Skip(msg)
	}
	return tl
}

// Server binaries: $ENV, else .bin/NAME; missing skips, or fails with
// HEADERCAP_REQUIRE_SERVERS=1.
func fakeGCSBin(t *testing.T) string {
	return uploadtest.Binary(t, "FAKE_GCS_SERVER_BIN", "fake-gcs-server")
}

func versityBin(t *testing.T) string {
	return uploadtest.Binary(t, "VERSITYGW_BIN", "versitygw")
}

var rootOnce = sync.OnceValues(func() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside the module")
	}
	return filepath.Dir(gomod), nil
})

var (
	buildMu sync.Mutex
	built   = map[string]string{}
)

// buildBinary builds a main package of the module with go build, once per
// test run. HEADERCAP_E2E_RACE=1 builds with the race detector.
func buildBinary(t *testing.T, pkg string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if bin, ok := built[pkg]; ok {
		return bin
	}
	root, err := rootOnce()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(binDir, filepath.Base(pkg))
	args := []string{"build", "-o", bin}
	if os.Getenv("HEADERCAP_E2E_RACE") == "1" {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, pkg)...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	built[pkg] = bin
	return bin
}

// workDir returns the directory for a test's files: a t.TempDir, or
// $HEADERCAP_E2E_KEEP/<test name>, kept after the test.
func workDir(t *testing.T) string {
	t.Helper()
	keep := os.Getenv("HEADERCAP_E2E_KEEP")
	if keep == "" {
		return t.TempDir()
	}
	dir := filepath.Join(keep, strings.NewReplacer("/", "_", "=", "-").Replace(t.Name()))
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("keeping the run's files in %s", dir)
	return dir
}

// lockedBuffer is a bytes.Buffer safe for concurrent use.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

func (b *lockedBuffer) count(s string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Count(b.buf.Bytes(), []byte(s))
}

// proc is a process of the test, with its combined output kept in memory
// and appended to <work>/<name>.log (restarted processes share the log).
type proc struct {
	name string
	cmd  *exec.Cmd
	out  lockedBuffer
	done chan struct{} // closed when the process has exited
	err  error         // valid after done is closed
}

// startProc starts cmd. When the test ends, a process still running is
// killed; if the test failed, the tail of its output is logged.
func startProc(t *testing.T, work, name string, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	f, err := os.OpenFile(filepath.Join(work, name+".log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "---- %s: %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(cmd.Args, " "))
	w := io.MultiWriter(&p.out, f)
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.exited() {
			cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("---- %s (%s) output, last 40 lines ----\n%s", name, strings.Join(cmd.Args, " "), tail(p.out.Bytes(), 40))
		}
	})
	return p
}

func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[%d lines before]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitOutput waits until the output contains s at least n times.
func (p *proc) waitOutput(t *testing.T, s string, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for p.out.count(s) < n {
		if p.exited() {
			t.Fatalf("%s exited (%v) before printing %q %d times", p.name, p.err, s, n)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not print %q %d times within %v", p.name, s, n, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stop sends sig and waits up to timeout for the exit. It returns the exit
// code (-1 if killed by a signal) and how long the process took to exit;
// after the timeout the process is killed and the test fails.
func (p *proc) stop(t *testing.T, sig syscall.Signal, timeout time.Duration) (int, time.Duration) {
	t.Helper()
	start := time.Now()
	if !p.exited() {
		if err := p.cmd.Process.Signal(sig); err != nil && !p.exited() {
			t.Errorf("signal %s: %v", p.name, err)
		}
	}
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.cmd.Process.Kill()
		<-p.done
		t.Errorf("%s did not exit within %v of %v; killed", p.name, timeout, sig)
	}
	return p.cmd.ProcessState.ExitCode(), time.Since(start)
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil && !p.exited() {
		t.Fatalf("kill %s: %v", p.name, err)
	}
	<-p.done
}

// wait waits for the process to exit by itself and returns its exit code.
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("%s did not finish within %v; killed", p.name, timeout)
	}
	return p.cmd.ProcessState.ExitCode()
}

var crashRE = regexp.MustCompile(`panic:|DATA RACE|fatal error:|goroutine [0-9]+ \[`)

// checkLog fails the test if a process's output shows a crash.
func checkLog(t *testing.T, p *proc) {
	t.Helper()
	out := p.out.Bytes()
	if m := crashRE.Find(out); m != nil {
		t.Errorf("%s output contains %q:\n%s", p.name, m, tail(out, 40))
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
