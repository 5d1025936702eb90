package archive

import (
	"errors"
	"path"
	"strings"
	"testing"
	"time"
)

func TestObjectName(t *testing.T) {
	date := time.Date(2024, 1, 2, 0, 0, 0, 0, time.UTC)
	sealed := time.Date(2024, 1, 3, 4, 5, 6, 789012345, time.UTC)
	tests := []struct {
		n    ObjectName
		want string
		etl  bool
	}{
		{ObjectName{Experiment: "ndt", Datatype: "pcap", Date: date, Sealed: sealed, Node: "mlab1-lga03", Compression: "gzip"},
			"ndt/pcap/2024/01/02/20240103T040506.789012Z-pcap-mlab1-lga03-ndt.tgz", true},
		{ObjectName{Experiment: "ndt", Datatype: "pcap", Date: date, Sealed: sealed, Node: "third-party", Compression: "gzip"},
			"ndt/pcap/2024/01/02/20240103T040506.789012Z-pcap-third-party-ndt.tgz", true},
		{ObjectName{Experiment: "host", Datatype: "pcap2", Date: date, Sealed: sealed, Node: "mlab4-abc0t", Compression: "gzip"},
			"host/pcap2/2024/01/02/20240103T040506.789012Z-pcap2-mlab4-abc0t-host.tgz", true},
		{ObjectName{Prefix: "a/b", Experiment: "ndt", Datatype: "pcap", Date: date, Sealed: sealed, Node: "mlab1-lga03", Compression: "gzip"},
			"a/b/ndt/pcap/2024/01/02/20240103T040506.789012Z-pcap-mlab1-lga03-ndt.tgz", false},
		{ObjectName{Experiment: "ndt", Datatype: "pcap", Date: date, Sealed: sealed, Node: "mlab1-lga03", Compression: "zstd"},
			"ndt/pcap/2024/01/02/20240103T040506.789012Z-pcap-mlab1-lga03-ndt.tar.zst", false},
		// Whole microseconds still get six digits; a non-UTC zone is converted.
		{ObjectName{Experiment: "ndt", Datatype: "pcap", Date: date, Sealed: time.Date(2024, 1, 2, 23, 0, 0, 0, time.FixedZone("x", -3600)), Node: "mlab1-lga03"},
			"ndt/pcap/2024/01/02/20240103T000000.000000Z-pcap-mlab1-lga03-ndt.tgz", true},
	}
	for _, tt := range tests {
		got := tt.n.String()
		if got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
			continue
		}
		if ETLAccepts(got) != tt.etl {
			t.Errorf("ETLAccepts(%q) = %v, want %v", got, !tt.etl, tt.etl)
		}
		p, err := ParseObjectName(got)
		if err != nil {
			t.Errorf("ParseObjectName(%q): %v", got, err)
			continue
		}
		if p.String() != got {
			t.Errorf("round trip of %q gives %q", got, p.String())
		}
		if !p.Sealed.Equal(tt.n.Sealed.Truncate(time.Microsecond)) || !p.Date.Equal(date) {
			t.Errorf("ParseObjectName(%q) = %+v", got, p)
		}
	}
}

func TestParseObjectNameRejects(t *testing.T) {
	for _, name := range []string{
		"",
		"ndt/pcap/2024/01/02/20240103T040506Z-pcap-mlab1-lga03-ndt.tgz",           // no microseconds
		"ndt/pcap/2024/01/02/20240103T040506.789012Z-tcpinfo-mlab1-lga03-ndt.tgz", // datatype differs
		"ndt/pcap/2024/01/02/20240103T040506.789012Z-pcap-mlab1-lga03-wehe.tgz",   // experiment differs
		"ndt/pcap/2024/13/02/20240103T040506.789012Z-pcap-mlab1-lga03-ndt.tgz",    // month 13
		"ndt/pcap/2024/01/02/20241303T040506.789012Z-pcap-mlab1-lga03-ndt.tgz",    // bad timestamp
		"ndt/pcap/2024/01/02/20240103T040506.789012Z-pcap-lga03-ndt.tgz",          // no mlabN
		"ndt/pcap/2024/01/02/20240103T040506.789012Z-pcap-mlab1-lga03-ndt.tar.gz", // not ours
		"/ndt/pcap/2024/01/02/20240103T040506.789012Z-pcap-mlab1-lga03-ndt.tgz",   // empty prefix segment
	} {
		if _, err := ParseObjectName(name); err == nil {
			t.Errorf("ParseObjectName(%q) succeeded", name)
		}
	}
}

func TestETLAccepts(t *testing.T) {
	for _, tt := range []struct {
		name string
		want bool
	}{
		{"ndt/pcap/2024/01/02/20240103T040506.789012Z-pcap-mlab1-lga03-ndt.tgz", true},
		{"gs://pusher-mlab-staging/ndt/pcap/2024/01/02/20240103T040506.789012Z-pcap-mlab1-lga03-ndt.tgz", true},
		{"ndt/pcap/2024/01/02/20240103T040506Z-mlab1-lga03-ndt.tgz", true},    // no fraction, no datatype
		{"ndt/pcap/2024/01/02/20240103T040506Z-mlab1-lga0t-ndt.tar.gz", true}, // site ending in t
		{"ndt/pcap/2024/01/02/20240103T040506Z-third-party-ndt.tar", true},
		{"ndt/pcap/2024/01/02/20240103T040506.789012Z-pcap-mlab1-lga03-ndt.tar.zst", false},
		{"ndt/pcap/2024/01/02/20240103T040506.7890Z-pcap-mlab1-lga03-ndt.tgz", false}, // 4 fraction digits
		{"ndt/pcap/2024/01/02/20240103T040506Z-pcap-mlab1-lga3-ndt.tgz", false},
		{"ndt/pcap/2024/01/02/20240103T040506Z-pcap-mlab1-LGA03-ndt.tgz", false},
		{"ndt/pcap/2024/01/02/20240103T040506Z-pcap-somehost-ndt.tgz", false},
		{"ndt/pcap/2024/01/02/20240103T040506Z-pcap-mlab1-lga03-NDT.tgz", false},
		{"pre/fix/ndt/pcap/2024/01/02/20240103T040506Z-pcap-mlab1-lga03-ndt.tgz", false},
		{"ndt/pcap/2024/1/02/20240103T040506Z-pcap-mlab1-lga03-ndt.tgz", false},
		{"ndt/pcap/2024/01/02/index.json", false},
	} {
		if got := ETLAccepts(tt.name); got != tt.want {
			t.Errorf("ETLAccepts(%q) = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestNormalizeNode(t *testing.T) {
	for _, tt := range []struct {
		in, want string
		ok       bool
	}{
		{"mlab1-lga03", "mlab1-lga03", true},
		{"mlab4-abc0t", "mlab4-abc0t", true},
		{"mlab1.lga03.measurement-lab.org", "mlab1-lga03", true},
		{"mlab1-lga03.mlab-oti.measurement-lab.org", "mlab1-lga03", true},
		{"MLAB1-LGA03.", "mlab1-lga03", true},
		{"third-party", "third-party", true},
		{"mlab1-lga3", "", false},
		{"mlab10-lga03", "", false},
		{"mlab1.lga03", "", false},
		{"mlab1-lga03x", "", false},
		{"laptop", "", false},
		{"", "", false},
	} {
		got, ok := NormalizeNode(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("NormalizeNode(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestDefaultNode(t *testing.T) {
	defer func(h func() (string, error)) { hostname = h }(hostname)
	for _, tt := range []struct {
		host string
		err  error
		want string
	}{
		{"mlab2-nuq07.mlab-oti.measurement-lab.org", nil, "mlab2-nuq07"},
		{"mlab1.lga03.measurement-lab.org", nil, "mlab1-lga03"},
		{"build-server-17", nil, "third-party"},
		{"", errors.New("no host name"), "third-party"},
	} {
		hostname = func() (string, error) { return tt.host, tt.err }
		c := Config{DataDir: "/d", Experiment: "ndt"}.withDefaults()
		if c.Node != tt.want {
			t.Errorf("host %q: Node = %q, want %q", tt.host, c.Node, tt.want)
		}
		if err := c.validate(); err != nil {
			t.Errorf("host %q: %v", tt.host, err)
		}
	}
}

func TestValidate(t *testing.T) {
	ok := Config{DataDir: "/data", Experiment: "ndt", Node: "mlab1-lga03"}
	for _, tt := range []struct {
		name   string
		change func(*Config)
		want   string // substring of the error; "" means valid
	}{
		{"ok", func(*Config) {}, ""},
		{"fqdn node", func(c *Config) { c.Node = "mlab1.lga03.measurement-lab.org" }, ""},
		{"third-party", func(c *Config) { c.Node = "third-party" }, ""},
		{"zstd", func(c *Config) { c.Compression = "zstd" }, ""},
		{"prefix", func(c *Config) { c.Prefix = "a/b-c" }, ""},
		{"spool elsewhere", func(c *Config) { c.SpoolDir = "/spool" }, ""},
		{"spool dot-dir", func(c *Config) { c.SpoolDir = "/data/.spool" }, ""},
		{"no data dir", func(c *Config) { c.DataDir = "" }, "DataDir is required"},
		{"no experiment", func(c *Config) { c.Experiment = "" }, "Experiment"},
		{"experiment digits", func(c *Config) { c.Experiment = "ndt7" }, "Experiment"},
		{"datatype dash", func(c *Config) { c.Datatype = "pcap-x" }, "Datatype"},
		{"bad node", func(c *Config) { c.Node = "laptop" }, `Node "laptop" is not of the M-Lab form`},
		{"bad node site", func(c *Config) { c.Node = "mlab1-lga3" }, "third-party"},
		{"prefix slash", func(c *Config) { c.Prefix = "/a" }, "Prefix"},
		{"prefix trailing", func(c *Config) { c.Prefix = "a/" }, "Prefix"},
		{"prefix dotdot", func(c *Config) { c.Prefix = "a/../b" }, "Prefix"},
		{"compression", func(c *Config) { c.Compression = "bzip2" }, "Compression"},
		{"max size", func(c *Config) { c.MaxSize = -1 }, "MaxSize"},
		{"max age", func(c *Config) { c.MaxAge = -1 }, "MaxAge"},
		{"min file age", func(c *Config) { c.MinFileAge = -1 }, "MinFileAge"},
		{"retry", func(c *Config) { c.RetryMin, c.RetryMax = time.Minute, time.Second }, "RetryMin"},
		{"spool in data dir", func(c *Config) { c.SpoolDir = "/data/spool" }, "dot-dir"},
		{"spool is data dir", func(c *Config) { c.SpoolDir = "/data" }, "dot-dir"},
	} {
		c := ok
		tt.change(&c)
		err := c.Validate()
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case tt.want != "" && err == nil:
			t.Errorf("%s: valid, want error containing %q", tt.name, tt.want)
		case tt.want != "" && !strings.Contains(err.Error(), tt.want):
			t.Errorf("%s: %v, want error containing %q", tt.name, err, tt.want)
		}
	}
}

func TestDefaults(t *testing.T) {
	c := Config{DataDir: "/data/", Experiment: "ndt", Node: "third-party"}.withDefaults()
	if c.SpoolDir != "/data/.archive" || c.Datatype != "pcap" || c.MaxSize != 20<<20 || c.MaxAge != time.Hour ||
		c.Compression != "gzip" || c.ScanInterval != time.Minute || c.UploadConcurrency != 2 ||
		c.ShutdownGrace != time.Second || c.MinFileAge != 0 || c.Clock == nil || c.Logger == nil {
		t.Errorf("defaults: %+v", c)
	}
}

func TestNamerDistinct(t *testing.T) {
	fixed := time.Date(2024, 1, 2, 3, 4, 5, 6007, time.UTC)
	n := namer{clock: func() time.Time { return fixed }}
	prev := n.next()
	if !prev.Equal(fixed.Truncate(time.Microsecond)) {
		t.Fatalf("first = %v", prev)
	}
	for range 100 {
		ts := n.next()
		if ts.Sub(prev) != time.Microsecond {
			t.Fatalf("next = %v after %v", ts, prev)
		}
		prev = ts
	}
	n.observe(fixed.Add(time.Hour))
	if ts := n.next(); !ts.Equal(fixed.Add(time.Hour).Truncate(time.Microsecond).Add(time.Microsecond)) {
		t.Errorf("after observe: %v", ts)
	}
}

func TestParseMember(t *testing.T) {
	long := strings.Repeat("a", 247)
	for _, tt := range []struct {
		rel  string
		date string
	}{
		{"2024/01/02/host_1700000000_0000000000000001.pcap.gz", "2024/01/02"},
		{"2024/02/29/a.b-c_D.pcap.gz", "2024/02/29"},
		{"2024/01/02/" + long + ".pcap.gz", "2024/01/02"},
		{"2024/01/02/" + long + "a.pcap.gz", ""},
		{"2023/02/29/x.pcap.gz", ""},
		{"2024/01/02/.x.pcap.gz", ""},
		{"2024/01/02/.x.pcap.gz.tmp", ""},
		{"2024/01/02/x.pcap", ""},
		{"2024/01/02/x y.pcap.gz", ""},
		{"2024/01/02/../x.pcap.gz", ""},
		{"2024/01/02/sub/x.pcap.gz", ""},
		{"2024/1/02/x.pcap.gz", ""},
		{"x.pcap.gz", ""},
	} {
		d, err := parseMember(tt.rel)
		if d != tt.date || (err == nil) != (tt.date != "") {
			t.Errorf("parseMember(%q) = %q, %v; want %q", tt.rel, d, err, tt.date)
		}
	}
}

func FuzzParseMember(f *testing.F) {
	f.Add("2024/01/02/uuid.pcap.gz")
	f.Add("2024/01/02/../../etc/passwd.pcap.gz")
	f.Fuzz(func(t *testing.T, rel string) {
		date, err := parseMember(rel)
		if err != nil {
			return
		}
		// Anything accepted is a plain name inside its date folder.
		if !strings.HasPrefix(rel, date+"/") || path.Clean(rel) != rel || path.IsAbs(rel) ||
			strings.Count(rel, "/") != 3 || strings.HasPrefix(rel[11:], ".") || len(rel[11:]) > 255 {
			t.Fatalf("parseMember accepted %q (date %q)", rel, date)
		}
	})
}

func FuzzParseObjectName(f *testing.F) {
	f.Add("ndt/pcap/2024/01/02/20240103T040506.789012Z-pcap-mlab1-lga03-ndt.tgz")
	f.Add("p/ndt/pcap/2024/01/02/20240103T040506.789012Z-pcap-third-party-ndt.tar.zst")
	f.Fuzz(func(t *testing.T, name string) {
		n, err := ParseObjectName(name)
		if err != nil {
			return
		}
		if got := n.String(); got != name {
			t.Fatalf("ParseObjectName(%q).String() = %q", name, got)
		}
		if n.Prefix == "" && n.Compression == "gzip" && !ETLAccepts(name) {
			t.Fatalf("ETL rejects our name %q", name)
		}
	})
}
