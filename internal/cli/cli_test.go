package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type testConfig struct {
	Name  string        `flag:"name" envconfig:"NAME" help:"a name"`
	Wait  time.Duration `flag:"wait-time" envconfig:"WAIT_TIME" help:"a duration"`
	Size  ByteSize      `flag:"x.size" envconfig:"X_SIZE" help:"a size"`
	Items StringList    `flag:"item" envconfig:"ITEM" help:"items"`
	Archive
}

func TestParse(t *testing.T) {
	t.Setenv("NAME", "env")
	t.Setenv("WAIT_TIME", "3s")
	t.Setenv("ITEM", "a, b")
	t.Setenv("ARCHIVE_URL", "file:///tmp/x")
	cfg := testConfig{Size: 5, Archive: DefaultArchive()}
	if err := Parse("t", "test", &cfg, []string{"-wait-time=4s", "-x.size=2KB"}, nil); err != nil {
		t.Fatal(err)
	}
	if cfg.Name != "env" || cfg.Wait != 4*time.Second || cfg.Size != 2000 || cfg.URL != "file:///tmp/x" || cfg.Datatype != "pcap" {
		t.Errorf("cfg = %+v", cfg)
	}
	if strings.Join(cfg.Items.Values, "|") != "a|b" {
		t.Errorf("items from env = %q", cfg.Items.Values)
	}
	cfg2 := testConfig{}
	if err := Parse("t", "test", &cfg2, []string{"-item", "c", "-item", "d"}, nil); err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg2.Items.Values, "|") != "c|d" {
		t.Errorf("the command line does not replace the environment's list: %q", cfg2.Items.Values)
	}
}

func TestHelpNamesEveryEnv(t *testing.T) {
	var out bytes.Buffer
	cfg := testConfig{}
	err := Parse("t", "usage text", &cfg, []string{"-help"}, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err = %v", err)
	}
	names := EnvNames(&cfg)
	if len(names) != 4+7 {
		t.Errorf("EnvNames = %v", names)
	}
	for _, n := range names {
		if !strings.Contains(out.String(), "(env "+n+")") {
			t.Errorf("-help does not name %s", n)
		}
	}
	fs := NewFlagSet("t", "", &cfg, nil)
	fs.VisitAll(func(f *flag.Flag) {
		if !strings.Contains(f.Usage, "(env "+EnvName(f.Name)+")") {
			t.Errorf("-%s: env name is not %s", f.Name, EnvName(f.Name))
		}
	})
}

func TestParseErrors(t *testing.T) {
	t.Setenv("X_SIZE", "lots")
	if err := Parse("t", "", &testConfig{}, nil, nil); err == nil || !strings.Contains(err.Error(), "X_SIZE") {
		t.Errorf("bad env: %v", err)
	}
	t.Setenv("X_SIZE", "")
	if err := Parse("t", "", &testConfig{}, []string{"stray"}, nil); err == nil {
		t.Error("stray argument accepted")
	}
}

func TestByteSize(t *testing.T) {
	for in, want := range map[string]ByteSize{
		"256": 256, "256B": 256, "64KB": 64000, "3GB": 3e9, "8G": 8e9, "1MB": 1e6, "2GiB": 2 << 30, "1KiB": 1024,
	} {
		var b ByteSize
		if err := b.Set(in); err != nil || b != want {
			t.Errorf("Set(%q) = %d, %v; want %d", in, b, err, want)
		}
	}
	for _, in := range []string{"", "GB", "-1", "1.5GB", "3XB", "99999999999999999999", "9999999999999GB", "1iB"} {
		var b ByteSize
		if err := b.Set(in); err == nil {
			t.Errorf("Set(%q) accepted: %d", in, b)
		}
	}
	if s := ByteSize(3 * Gigabyte).String(); s != "3GB" {
		t.Errorf("String() = %q", s)
	}
	if s := ByteSize(128 << 20).String(); s != "128MiB" {
		t.Errorf("String() = %q", s)
	}
}

func TestArchiveConfig(t *testing.T) {
	a := DefaultArchive()
	a.URL = "file:///tmp/bucket"
	if _, err := a.Config("/data", time.Second, false); err == nil {
		t.Error("missing experiment accepted")
	}
	a.Experiment = "ndt"
	a.Node = "third-party"
	cfg, err := a.Config("/data", 0, true)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ShutdownGrace >= 0 || !cfg.Watch || cfg.MaxSize != 20e6 {
		t.Errorf("cfg = %+v", cfg)
	}
}

func TestMetricsServer(t *testing.T) {
	if s, err := ListenMetrics("", nil); s != nil || err != nil {
		t.Errorf("empty address: %v, %v", s, err)
	}
	s, err := ListenMetrics("127.0.0.1:0", prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	resp, err := http.Get("http://" + s.ln.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status %d", resp.StatusCode)
	}
	cancel()
	if err := <-done; err != nil {
		t.Error(err)
	}
	var nilServer *MetricsServer
	ctx2, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if err := nilServer.Run(ctx2); err != nil {
		t.Error(err)
	}
}
