package main

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/headercap/headercap/anonymize"
	"github.com/headercap/headercap/internal/cli"
)

func TestEveryFlagHasItsEnvVar(t *testing.T) {
	cfg := defaultConfig()
	fs := cli.NewFlagSet("packet-headers", usage, &cfg, io.Discard)
	envs := map[string]bool{}
	for _, e := range cli.EnvNames(&cfg) {
		envs[e] = true
	}
	n := 0
	fs.VisitAll(func(f *flag.Flag) {
		n++
		want := cli.EnvName(f.Name)
		if !envs[want] {
			t.Errorf("flag -%s: no environment variable %s", f.Name, want)
		}
		if !strings.Contains(f.Usage, "(env "+want+")") {
			t.Errorf("flag -%s: help does not name %s", f.Name, want)
		}
	})
	if n != len(envs) {
		t.Errorf("%d flags, %d environment variables", n, len(envs))
	}
	for _, name := range []string{"anonymize.ip", "captureduration", "datadir", "flowtimeout", "interface",
		"maxheadersize", "maxidleram", "maxheap", "maxflows", "prometheusx.listen-address", "sigtermwait",
		"stream", "tcpinfo.eventsocket", "uuidwaitduration"} {
		if fs.Lookup(name) == nil {
			t.Errorf("seed flag -%s missing", name)
		}
	}
}

func TestSeedDefaults(t *testing.T) {
	cfg := defaultConfig()
	fs := cli.NewFlagSet("packet-headers", usage, &cfg, io.Discard)
	for name, want := range map[string]string{
		"anonymize.ip": "none", "captureduration": "30s", "datadir": ".", "flowtimeout": "30s",
		"maxheadersize": "256", "maxidleram": "3GB", "maxheap": "8GB", "maxflows": "0",
		"prometheusx.listen-address": ":9990", "sigtermwait": "1s", "stream": "false",
		"tcpinfo.eventsocket": "", "uuidwaitduration": "5s",
		"capture.ringsize": "128MiB",
		"archive.url":      "", "archive.datatype": "pcap", "archive.size": "20MB", "archive.maxage": "1h0m0s", "archive.compression": "gzip",
	} {
		if got := fs.Lookup(name).DefValue; got != want {
			t.Errorf("-%s default %q, want %q", name, got, want)
		}
	}
}

func TestEnvAndFlags(t *testing.T) {
	t.Setenv("TCPINFO_EVENTSOCKET", "/run/tcpinfo.sock")
	t.Setenv("ANONYMIZE_IP", "netblock")
	t.Setenv("MAXHEAP", "2GB")
	t.Setenv("INTERFACE", "lo")
	t.Setenv("CAPTUREDURATION", "10s")
	cfg, err := parseConfig([]string{"-captureduration=20s"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.EventSocket != "/run/tcpinfo.sock" || cfg.AnonymizeIP != anonymize.Netblock || cfg.MaxHeap != 2*cli.Gigabyte {
		t.Errorf("environment not applied: %+v", cfg)
	}
	if cfg.CaptureDuration != 20*time.Second {
		t.Errorf("command line does not win: %v", cfg.CaptureDuration)
	}
	if strings.Join(cfg.Interfaces.Values, ",") != "lo" {
		t.Errorf("interfaces %v", cfg.Interfaces.Values)
	}
	// A command-line -interface replaces the environment's list.
	cfg, err = parseConfig([]string{"-interface", "lo", "-interface", "lo"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.Interfaces.Values, ",") != "lo,lo" {
		t.Errorf("interfaces %v", cfg.Interfaces.Values)
	}
}

func TestBadConfig(t *testing.T) {
	t.Setenv("TCPINFO_EVENTSOCKET", "/run/tcpinfo.sock")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-anonymize.ip=full"}, "unknown anonymization method"},
		{[]string{"-uuidwaitduration=40s"}, "must not be longer than -captureduration"},
		{[]string{"-interface=hc-no-such0"}, "no such interface"},
		{[]string{"-maxheadersize=10"}, "between 54 and 65535"},
		{[]string{"-maxheap=lots"}, "invalid size"},
		{[]string{"-read.events=x"}, "needs -read"},
		{[]string{"-read=/nonexistent/file.pcap"}, "-read"},
		{[]string{"extra"}, "unexpected arguments"},
		{[]string{"-archive.url=file:///tmp/b"}, "-archive.experiment is required"},
		{[]string{"-archive.url=file:///tmp/b", "-archive.experiment=NDT"}, "Experiment \"NDT\""},
		{[]string{"-archive.url=file:///tmp/b", "-archive.experiment=ndt", "-archive.node=myhost"}, "Node \"myhost\""},
	} {
		_, err := parseConfig(tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want it to mention %q", tc.args, err, tc.want)
		}
	}
	t.Setenv("TCPINFO_EVENTSOCKET", "")
	for _, src := range []string{"eventsocket", "both"} {
		if _, err := parseConfig([]string{"-uuid.source=" + src}, io.Discard); err == nil || !strings.Contains(err.Error(), "needs -tcpinfo.eventsocket") {
			t.Errorf("-uuid.source=%s without eventsocket: err = %v", src, err)
		}
	}
	if _, err := parseConfig([]string{"-uuid.source=magic"}, io.Discard); err == nil || !strings.Contains(err.Error(), "unknown -uuid.source") {
		t.Errorf("bad source: err = %v", err)
	}
	if _, err := parseConfig([]string{"-uuid-prefix-file=/nonexistent/prefix"}, io.Discard); err == nil {
		t.Error("missing prefix file accepted")
	}
	t.Setenv("ANONYMIZE_IP", "bogus")
	if _, err := parseConfig(nil, io.Discard); err == nil || !strings.Contains(err.Error(), "ANONYMIZE_IP") {
		t.Errorf("bad env: err = %v", err)
	}
}

func TestUUIDSourceDefault(t *testing.T) {
	cfg, err := parseConfig(nil, io.Discard)
	if err != nil || cfg.UUIDSource != "netlink" {
		t.Errorf("without eventsocket: source %q, %v", cfg.UUIDSource, err)
	}
	cfg, err = parseConfig([]string{"-tcpinfo.eventsocket=/run/x.sock"}, io.Discard)
	if err != nil || cfg.UUIDSource != "both" {
		t.Errorf("with eventsocket: source %q, %v", cfg.UUIDSource, err)
	}
	t.Setenv("UUID_SOURCE", "eventsocket")
	cfg, err = parseConfig([]string{"-tcpinfo.eventsocket=/run/x.sock"}, io.Discard)
	if err != nil || cfg.UUIDSource != "eventsocket" {
		t.Errorf("UUID_SOURCE: source %q, %v", cfg.UUIDSource, err)
	}
}

func TestHelpListsEnv(t *testing.T) {
	var out bytes.Buffer
	_, err := parseConfig([]string{"-help"}, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err = %v", err)
	}
	cfg := defaultConfig()
	for _, e := range cli.EnvNames(&cfg) {
		if !strings.Contains(out.String(), e) {
			t.Errorf("-help does not mention %s", e)
		}
	}
}
