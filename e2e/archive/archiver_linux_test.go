//go:build linux

package archivee2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/headercap/headercap/internal/e2etest"
)

// Object naming in every test.
const (
	experiment = "ndt"
	datatype   = "pcap"
)

// archiverConfig is a pcap-archiver sidecar run.
type archiverConfig struct {
	datadir, url string
	// node is -archive.node (default third-party).
	node string
	// size and maxage are -archive.size and -archive.maxage.
	size   string
	maxage time.Duration
	// metrics is -prometheusx.listen-address.
	metrics string
	// env is added to the environment (storage credentials and endpoints).
	env []string
}

func (c archiverConfig) args() []string {
	node := c.node
	if node == "" {
		node = "third-party"
	}
	return []string{
		"-datadir", c.datadir,
		"-archive.url", c.url,
		"-archive.experiment", experiment,
		"-archive.node", node,
		"-archive.size", c.size,
		"-archive.maxage", c.maxage.String(),
		"-sigtermwait", "2s",
		"-prometheusx.listen-address", c.metrics,
	}
}

// startArchiver starts pcap-archiver on the host.
func startArchiver(t *testing.T, work string, c archiverConfig) *e2etest.Proc {
	t.Helper()
	cmd := exec.Command(e2etest.BuildBinary(t, "./cmd/pcap-archiver"), c.args()...)
	cmd.Env = append(os.Environ(), c.env...)
	return e2etest.StartProc(t, work, "pcap-archiver", cmd)
}

// readMetrics reads a /metrics page from the test's network namespace.
func readMetrics(t *testing.T, addr string) metrics {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	b, err := httpGet(ctx, "http://"+addr+"/metrics")
	if err != nil {
		t.Fatalf("read metrics: %v", err)
	}
	return b
}

// waitMetrics waits until a /metrics server answers (the archiver is
// running: it serves metrics once its store is open).
func waitMetrics(t *testing.T, p *e2etest.Proc, addr string) {
	t.Helper()
	waitFor(t, 15*time.Second, p.Name+"'s /metrics", func() bool {
		if p.Exited() {
			t.Fatalf("%s exited early (%v):\n%s", p.Name, p.Err, e2etest.Tail(p.Out.Bytes(), 20))
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		_, err := httpGet(ctx, "http://"+addr+"/metrics")
		return err == nil
	})
}

// awaitDrained waits until the data dir holds no source and no spool file
// (everything uploaded and deleted), or fails after timeout. sources, if
// not nil, limits the sources waited for (others are expected to stay).
func awaitDrained(t *testing.T, p *e2etest.Proc, datadir string, timeout time.Duration, sources map[string][32]byte) time.Duration {
	t.Helper()
	start := time.Now()
	var st *dirState
	deadline := start.Add(timeout)
	for {
		if p != nil && p.Exited() {
			t.Fatalf("%s exited (%v) before the data dir was drained:\n%s", p.Name, p.Err, e2etest.Tail(p.Out.Bytes(), 30))
		}
		st = scanDir(t, datadir)
		left := 0
		for rel := range st.sources {
			if _, ok := sources[rel]; ok || sources == nil {
				left++
			}
		}
		if left == 0 && len(st.spool) == 0 {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("data dir not drained after %v: %s", timeout, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// versity is a versitygw S3 gateway with the posix backend that the test
// can stop and start again on the same port and directory.
type versity struct {
	bin, work, dir string
	port           int
	access, secret string
	p              *e2etest.Proc
}

func newVersity(t *testing.T, work string) *versity {
	t.Helper()
	v := &versity{
		bin:    versityBin(t),
		work:   work,
		dir:    filepath.Join(work, "versitygw"),
		port:   freePort(t),
		access: "archive-e2e-access",
		secret: "archive-e2e-secret-0c7d5e",
	}
	if err := os.MkdirAll(v.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return v
}

func (v *versity) endpoint() string { return "http://127.0.0.1:" + strconv.Itoa(v.port) }

// start runs the gateway and waits until it accepts connections.
func (v *versity) start(t *testing.T) {
	t.Helper()
	v.p = e2etest.StartProc(t, v.work, "versitygw", exec.Command(v.bin, "--access", v.access, "--secret", v.secret,
		"--port", "127.0.0.1:"+strconv.Itoa(v.port), "--quiet", "posix", v.dir))
	waitFor(t, 20*time.Second, "versitygw to listen", func() bool {
		if v.p.Exited() {
			t.Fatalf("versitygw exited (%v):\n%s", v.p.Err, v.p.Out.Bytes())
		}
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(v.port), time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
}

// stop kills the gateway (as a crash or a network outage would end it).
func (v *versity) stop(t *testing.T) { v.p.Kill(t) }

// createBucket makes a bucket: with the posix backend, a directory.
func (v *versity) createBucket(t *testing.T, name string) dirBucket {
	t.Helper()
	dir := filepath.Join(v.dir, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// versitygw writes uploads to unnamed (O_TMPFILE) or dot files, and
	// keeps multipart uploads under .sgwtmp.
	return dirBucket{dir: dir, tmpPrefix: []string{"."}}
}

// env returns the S3 client's environment: the gateway's keys, and no
// shared configuration from the host.
func (v *versity) env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + v.access,
		"AWS_SECRET_ACCESS_KEY=" + v.secret,
		"AWS_CONFIG_FILE=" + os.DevNull,
		"AWS_SHARED_CREDENTIALS_FILE=" + os.DevNull,
		"AWS_EC2_METADATA_DISABLED=true",
	}
}

func (v *versity) url(bucket string) string {
	return fmt.Sprintf("s3://%s?endpoint=%s&region=us-east-1", bucket, v.endpoint())
}

// summary formats a duration and a rate for the test log.
func rate(bytes int64, d time.Duration) string {
	if d <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.1f MB/s", float64(bytes)/1e6/d.Seconds())
}

// objectNames lists the objects' names.
func objectNames(objs []object) []string {
	out := make([]string, len(objs))
	for i, o := range objs {
		out[i] = o.name
	}
	return out
}

func join(l []string) string { return strings.Join(short(l), ", ") }
