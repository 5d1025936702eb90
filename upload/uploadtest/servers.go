package uploadtest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// RequireServersEnv names the environment variable that, set to 1 (CI sets
// it), turns a missing server binary from a skip into a failure.
const RequireServersEnv = "HEADERCAP_REQUIRE_SERVERS"

// probe asks a starting server whether it is ready.
var probe = &http.Client{Timeout: time.Second}

// readyTimeout bounds how long a started server may take to answer.
const readyTimeout = 20 * time.Second

// FakeGCS is a running fake-gcs-server with the in-memory backend.
type FakeGCS struct {
	// Endpoint is the server's base URL, "http://127.0.0.1:PORT"; pass it as
	// gcs.Config.Endpoint or STORAGE_EMULATOR_HOST.
	Endpoint string
}

// StartFakeGCS starts fake-gcs-server on a free 127.0.0.1 port, waits until it
// answers and stops it when the test ends. The binary is $FAKE_GCS_SERVER_BIN,
// else .bin/fake-gcs-server under the module root; if neither exists the test
// is skipped (failed when HEADERCAP_REQUIRE_SERVERS=1).
func StartFakeGCS(t testing.TB) *FakeGCS {
	t.Helper()
	bin := Binary(t, "FAKE_GCS_SERVER_BIN", "fake-gcs-server")
	var endpoint string
	startServer(t, "fake-gcs-server", func(port int) *exec.Cmd {
		endpoint = fmt.Sprintf("http://127.0.0.1:%d", port)
		return exec.Command(bin, "-scheme", "http", "-host", "127.0.0.1", "-port", strconv.Itoa(port),
			"-backend", "memory", "-log-level", "warn")
	}, func() bool {
		resp, err := probe.Get(endpoint + "/storage/v1/b")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return &FakeGCS{Endpoint: endpoint}
}

// CreateBucket creates a bucket through the fake's JSON API.
func (f *FakeGCS) CreateBucket(t testing.TB, name string) {
	t.Helper()
	body := fmt.Sprintf(`{"name":%q}`, name)
	resp, err := http.Post(f.Endpoint+"/storage/v1/b?project=test", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("create bucket %s: %v", name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(resp.Body)
		t.Fatalf("create bucket %s: %s: %s", name, resp.Status, msg)
	}
}

// VersityGW is a running versitygw S3 gateway with the posix backend.
type VersityGW struct {
	// Endpoint is the server's base URL, "http://127.0.0.1:PORT".
	Endpoint string
	// Access and Secret are the root account's keys.
	Access, Secret string
	// Dir is the posix root: every subdirectory is a bucket.
	Dir string
}

// StartVersityGW starts versitygw on a free 127.0.0.1 port with a posix root
// in a t.TempDir, waits until it answers and stops it when the test ends.
// The binary is $VERSITYGW_BIN, else .bin/versitygw under the module root;
// missing, the test is skipped (failed when HEADERCAP_REQUIRE_SERVERS=1).
func StartVersityGW(t testing.TB) *VersityGW {
	t.Helper()
	bin := Binary(t, "VERSITYGW_BIN", "versitygw")
	g := &VersityGW{Access: "headercap-test-access", Secret: "headercap-test-secret-4f1b9a", Dir: t.TempDir()}
	startServer(t, "versitygw", func(port int) *exec.Cmd {
		g.Endpoint = fmt.Sprintf("http://127.0.0.1:%d", port)
		return exec.Command(bin, "--access", g.Access, "--secret", g.Secret,
			"--port", fmt.Sprintf("127.0.0.1:%d", port), "--quiet", "posix", g.Dir)
	}, func() bool {
		// Any S3 answer (403 to an anonymous request) means it is serving.
		resp, err := probe.Get(g.Endpoint + "/")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})
	return g
}

// CreateBucket creates a bucket: with the posix backend, a directory.
func (g *VersityGW) CreateBucket(t testing.TB, name string) {
	t.Helper()
	if err := os.Mkdir(filepath.Join(g.Dir, name), 0o755); err != nil {
		t.Fatalf("create bucket %s: %v", name, err)
	}
}

// Binary returns the path of a server binary: $env, else .bin/name under the
// module root. A missing binary skips the test, or fails it when
// HEADERCAP_REQUIRE_SERVERS=1.
func Binary(t testing.TB, env, name string) string {
	t.Helper()
	missing := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...) + " (build it with scripts/install-tools.sh)"
		if os.Getenv(RequireServersEnv) == "1" {
			t.Fatalf("%s; %s=1 requires it", msg, RequireServersEnv)
		}
		t.Skip(msg)
	}
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err != nil {
			missing("%s=%s: %v", env, p, err)
		}
		return p
	}
	root, err := moduleRoot()
	if err != nil {
		missing("%s not set and %v", env, err)
		return ""
	}
	p := filepath.Join(root, ".bin", name)
	if _, err := os.Stat(p); err != nil {
		missing("%s not set and %v", env, err)
	}
	return p
}

// moduleRoot walks up from the working directory to the directory holding
// go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// startServer runs the command built for a free port until ready reports
// true, and kills it when the test ends. Picking a free port and binding it
// are two steps, so a lost race (the process exits) is retried on a new port.
func startServer(t testing.TB, what string, cmdFor func(port int) *exec.Cmd, ready func() bool) {
	t.Helper()
	var lastErr error
	for range 3 {
		port, err := freePort()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		cmd := cmdFor(port)
		out := &syncBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatalf("%s: start: %v", what, err)
		}
		exited := make(chan error, 1) // closed by nobody; one value from Wait
		go func() { exited <- cmd.Wait() }()
		stop := func() {
			_ = cmd.Process.Kill()
			<-exited
		}
		deadline := time.Now().Add(readyTimeout)
		for {
			if ready() {
				t.Cleanup(func() {
					stop()
					if t.Failed() {
						t.Logf("%s output:\n%s", what, out.String())
					}
				})
				return
			}
			select {
			case err := <-exited:
				lastErr = fmt.Errorf("exited before ready (%v):\n%s", err, out.String())
			case <-time.After(20 * time.Millisecond):
				if time.Now().Before(deadline) {
					continue
				}
				stop()
				t.Fatalf("%s: not ready after %v:\n%s", what, readyTimeout, out.String())
			}
			break
		}
	}
	t.Fatalf("%s: %v", what, lastErr)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// syncBuffer collects a server's output; the process writes while the test
// may read.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
