//go:build linux

package archivee2e

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/headercap/headercap/internal/netns"

	"github.com/headercap/headercap/internal/e2etest"
)

// TestSecondArchiverRefused starts a second archiver on a data dir whose
// spool a running pcap-archiver holds: a second pcap-archiver, and a daemon
// archiving in-process (the mistake of running both). Each must fail at
// start, with a message that says why, rather than run without archiving
// or touch the first one's spool.
func TestSecondArchiverRefused(t *testing.T) {
	work := e2etest.WorkDir(t)
	datadir := filepath.Join(work, "data")
	bucketDir := filepath.Join(work, "bucket")
	for _, d := range []string{datadir, bucketDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	first := archiverConfig{
		datadir: datadir,
		url:     "file://" + bucketDir,
		size:    "64KB",
		maxage:  time.Second,
		metrics: "127.0.0.1:" + strconv.Itoa(freePort(t)),
	}
	p := startArchiver(t, work, first)
	waitMetrics(t, p, first.metrics)
	const why = "another archiver is using spool dir"

	t.Run("pcap-archiver", func(t *testing.T) {
		second := first
		second.metrics = "127.0.0.1:" + strconv.Itoa(freePort(t))
		q := startArchiver(t, work, second)
		code := q.Wait(t, 15*time.Second)
		if code == 0 || !strings.Contains(string(q.Out.Bytes()), why) {
			t.Errorf("second pcap-archiver exited with status %d, want 1 with %q:\n%s", code, why, q.Out.Bytes())
		}
	})

	t.Run("packet-headers", func(t *testing.T) {
		if os.Geteuid() != 0 {
			if os.Getenv(requireNetnsEnv) == "1" {
				t.Fatalf("%s=1 but this test needs root (live capture in a network namespace)", requireNetnsEnv)
			}
			t.Skip("needs root (live capture in a network namespace)")
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		pair, err := netns.New(ctx, netns.Config{Prefix: "hcarch"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := pair.Close(); err != nil {
				t.Errorf("remove namespaces: %v", err)
			}
		})
		daemon := e2etest.BuildBinary(t, "./cmd/packet-headers")
		args := []string{"-interface", netns.ServerVeth, "-datadir", datadir,
			"-archive.url", "file://" + bucketDir, "-archive.experiment", experiment,
			"-prometheusx.listen-address", "127.0.0.1:9990"}
		if daemonHasFlag(t, daemon, "uuid.source") {
			args = append(args, "-uuid.source", "netlink") // no tcp-info needed
		}
		q := e2etest.StartProc(t, work, "packet-headers", pair.Server.Command(daemon, args...))
		select {
		case <-q.Done():
			code := q.Cmd.ProcessState.ExitCode()
			if code == 0 || !strings.Contains(string(q.Out.Bytes()), why) {
				t.Errorf("packet-headers exited with status %d, want 1 with %q:\n%s", code, why, q.Out.Bytes())
			}
			return
		case <-time.After(3 * time.Second):
		}
		code, _ := q.Stop(t, syscall.SIGTERM, 15*time.Second)
		t.Errorf("packet-headers with -archive.url kept running for 3 s although its archiver could not lock the spool (held by pcap-archiver); after SIGTERM it exited with status %d:\n%s",
			code, e2etest.Tail(q.Out.Bytes(), 5))
	})

	if code, _ := p.Stop(t, syscall.SIGTERM, 10*time.Second); code != 0 {
		t.Errorf("first pcap-archiver exited with status %d after SIGTERM, want 0", code)
	}
	checkLog(t, p)
}
