// Package e2etest is the harness the end-to-end test packages (e2e and
// e2e/archive) share: the programs they need, the module's binaries built
// once per run, a work directory per test, and the processes they start,
// with their output kept in memory and in a log file. It is for tests only.
package e2etest

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// RequireNetnsEnv, set to 1, turns the skips of RequireTools into failures
// (CI sets it).
const RequireNetnsEnv = "HEADERCAP_REQUIRE_NETNS"

// binDir holds the binaries BuildBinary builds; Main sets it.
var binDir string

// Main runs a test package's tests (call it from TestMain) with a fresh
// directory for the binaries it builds, named after prefix, and checks
// for leaked goroutines when they pass. It returns the exit code.
func Main(m *testing.M, prefix string) int {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			code = 1
		}
	}
	return code
}

// Tools are the programs the traffic tests run besides the module's own.
type Tools struct {
	TCPInfo, TCPDump string
}

// RequireTools skips the test (or, with RequireNetnsEnv=1, fails it) unless
// it can run: root, ip, tcpdump, zstd (tcp-info compresses its own output
// with it), tcp-info ($TCPINFO_BIN or .bin/tcp-info, as
// scripts/install-tools.sh installs it) and the extra programs. who names
// the tests in the message.
func RequireTools(t *testing.T, who string, extra ...string) Tools {
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
	for _, name := range append([]string{"ip", "zstd"}, extra...) {
		look(name)
	}
	tl := Tools{TCPDump: look("tcpdump"), TCPInfo: os.Getenv("TCPINFO_BIN")}
	if tl.TCPInfo == "" {
		if root, err := moduleRoot(); err == nil {
			tl.TCPInfo = filepath.Join(root, ".bin", "tcp-info")
		}
	}
	if _, err := os.Stat(tl.TCPInfo); tl.TCPInfo == "" || err != nil {
		missing = append(missing, "tcp-info (run scripts/install-tools.sh or set TCPINFO_BIN)")
	}
	if len(missing) > 0 {
		msg := who + " needs: " + strings.Join(missing, ", ")
		if os.Getenv(RequireNetnsEnv) == "1" {
			t.Fatalf("%s=1 but the %s", RequireNetnsEnv, msg)
		}
		t.Skip(msg)
	}
	return tl
}

var moduleRoot = sync.OnceValues(func() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside the module (go env GOMOD = %q)", gomod)
	}
	return filepath.Dir(gomod), nil
})

// ModuleRoot returns the module's root directory.
func ModuleRoot(t *testing.T) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

var (
	buildMu sync.Mutex
	built   = map[string]string{}
)

// BuildBinary builds a main package of the module (./cmd/...) once per
// test run, into the directory Main made. The daemon can be replaced by a
// prebuilt binary with PACKET_HEADERS_BIN; HEADERCAP_E2E_RACE=1 builds with
// the race detector.
func BuildBinary(t *testing.T, pkg string) string {
	t.Helper()
	if pkg == "./cmd/packet-headers" {
		if bin := os.Getenv("PACKET_HEADERS_BIN"); bin != "" {
			return bin
		}
	}
	buildMu.Lock()
	defer buildMu.Unlock()
	if bin, ok := built[pkg]; ok {
		return bin
	}
	if binDir == "" {
		t.Fatal("e2etest: BuildBinary without e2etest.Main in TestMain")
	}
	bin := filepath.Join(binDir, filepath.Base(pkg))
	args := []string{"build", "-o", bin}
	if os.Getenv("HEADERCAP_E2E_RACE") == "1" {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, pkg)...)
	cmd.Dir = ModuleRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	built[pkg] = bin
	return bin
}

// WorkDir returns the directory for a test's files: a t.TempDir, or
// $HEADERCAP_E2E_KEEP/<test name>, kept after the test.
func WorkDir(t *testing.T) string {
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

// LockedBuffer is a bytes.Buffer safe for concurrent use.
type LockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// Bytes returns a copy of the content.
func (b *LockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

// Count returns how many times s occurs in the content.
func (b *LockedBuffer) Count(s string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Count(b.buf.Bytes(), []byte(s))
}

// Proc is a process of a test, with its combined output kept in Out and
// appended to <work>/<name>.log (restarted processes share the log).
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	Out  LockedBuffer
	Err  error // the Wait error; valid once Exited

	done chan struct{} // closed when the process has exited
}

// StartProc starts cmd. When the test ends, a process still running is
// killed; if the test failed, the tail of its output is logged.
func StartProc(t *testing.T, work, name string, cmd *exec.Cmd) *Proc {
	t.Helper()
	p := &Proc{Name: name, Cmd: cmd, done: make(chan struct{})}
	f, err := os.OpenFile(filepath.Join(work, name+".log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "---- %s: %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(cmd.Args, " "))
	w := io.MultiWriter(&p.Out, f)
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.Err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.Exited() {
			cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("---- %s (%s) output, last 60 lines ----\n%s", name, strings.Join(cmd.Args, " "), Tail(p.Out.Bytes(), 60))
		}
	})
	return p
}

// Tail returns the last n lines of b.
func Tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[%d lines before]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// WaitOutput waits until the output contains s at least n times.
func (p *Proc) WaitOutput(t *testing.T, s string, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for p.Out.Count(s) < n {
		if p.Exited() {
			t.Fatalf("%s exited (%v) before printing %q %d times", p.Name, p.Err, s, n)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not print %q %d times within %v", p.Name, s, n, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Stop sends sig and waits up to timeout for the exit. It returns the exit
// code (-1 if killed by a signal) and how long the process took to exit;
// after the timeout the process is killed and the test fails.
func (p *Proc) Stop(t *testing.T, sig syscall.Signal, timeout time.Duration) (int, time.Duration) {
	t.Helper()
	start := time.Now()
	if !p.Exited() {
		if err := p.Cmd.Process.Signal(sig); err != nil && !p.Exited() {
			t.Errorf("signal %s: %v", p.Name, err)
		}
	}
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.Cmd.Process.Kill()
		<-p.done
		t.Errorf("%s did not exit within %v of %v; killed", p.Name, timeout, sig)
	}
	return p.Cmd.ProcessState.ExitCode(), time.Since(start)
}

// Kill sends SIGKILL and waits for the process to be gone.
func (p *Proc) Kill(t *testing.T) {
	t.Helper()
	if err := p.Cmd.Process.Signal(syscall.SIGKILL); err != nil && !p.Exited() {
		t.Fatalf("kill %s: %v", p.Name, err)
	}
	<-p.done
}

// Wait waits for the process to exit by itself and returns its exit code;
// after the timeout the process is killed and the test fails.
func (p *Proc) Wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.Cmd.Process.Kill()
		<-p.done
		t.Fatalf("%s did not finish within %v; killed", p.Name, timeout)
	}
	return p.Cmd.ProcessState.ExitCode()
}
