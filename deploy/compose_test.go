package deploy

import (
	"context"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

// loadCompose loads docker-compose.yml as docker compose would, with env as
// the only outside environment (plus envFile, if given, like --env-file),
// and the given profiles, or if nil those COMPOSE_PROFILES selects.
func loadCompose(t testing.TB, env map[string]string, envFile string, profiles []string) *types.Project {
	t.Helper()
	root := moduleRoot(t)
	var envList []string
	for k, v := range env {
		envList = append(envList, k+"="+v)
	}
	opts := []cli.ProjectOptionsFn{cli.WithWorkingDirectory(root), cli.WithEnv(envList)}
	if envFile != "" {
		opts = append(opts, cli.WithEnvFiles(filepath.Join(root, filepath.FromSlash(envFile))), cli.WithDotEnv)
	}
	if profiles != nil {
		opts = append(opts, cli.WithProfiles(profiles))
	} else {
		opts = append(opts, cli.WithDefaultProfiles())
	}
	o, err := cli.NewProjectOptions([]string{filepath.Join(root, "docker-compose.yml")}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	p, err := o.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("docker-compose.yml (env %v, env file %q, profiles %v): %v", env, envFile, profiles, err)
	}
	return p
}

// composeEnv returns a service's environment; a variable passed through
// from the host (no value) counts as set to "".
func composeEnv(s types.ServiceConfig) map[string]string {
	env := make(map[string]string)
	for k, v := range s.Environment {
		env[k] = ""
		if v != nil {
			env[k] = *v
		}
	}
	return env
}

// composeProgram names the program a service runs from an image built from
// our Dockerfile ("" for other images): its entrypoint, or the target stage's.
func composeProgram(t testing.TB, df *dockerfile, s types.ServiceConfig) string {
	t.Helper()
	if s.Build == nil {
		return ""
	}
	target := s.Build.Target
	if target == "" {
		target = df.defaultTarget()
	}
	st := df.stage(target)
	if st == nil {
		t.Errorf("service %s builds target %q, which the Dockerfile does not have", s.Name, target)
		return ""
	}
	ep := []string(s.Entrypoint)
	if len(ep) == 0 {
		ep = st.execForm(t, "ENTRYPOINT")
	}
	if len(ep) == 0 {
		t.Errorf("service %s has no entrypoint", s.Name)
		return ""
	}
	if _, ok := st.copied()[ep[0]]; !ok {
		t.Errorf("service %s runs %s, which the image (target %s) does not have", s.Name, ep[0], target)
	}
	return path.Base(ep[0])
}

// namespaceOf names the service whose network namespace s lives in.
func namespaceOf(s types.ServiceConfig) string {
	if owner, ok := strings.CutPrefix(s.NetworkMode, "service:"); ok {
		return owner
	}
	return s.Name
}

// listeners maps "namespace-owner:port" to the service listening there, for
// the services whose ports the stack relies on (our binaries, tcp-info, the
// traffic server). Two services on one port of one namespace are an error.
func listeners(t testing.TB, p *types.Project, df *dockerfile) map[string]string {
	t.Helper()
	ls := make(map[string]string)
	add := func(s types.ServiceConfig, addr string) {
		port, err := listenPort(addr)
		if err != nil {
			t.Errorf("service %s: %v", s.Name, err)
			return
		}
		key := namespaceOf(s) + ":" + port
		if other, dup := ls[key]; dup {
			t.Errorf("services %s and %s both listen on port %s of %s's network namespace", other, s.Name, port, namespaceOf(s))
		}
		ls[key] = s.Name
	}
	for _, name := range sortedKeys(p.Services) {
		s := p.Services[name]
		switch prog := composeProgram(t, df, s); {
		case slices.Contains(ourBinaries, prog):
			addr, ok := composeEnv(s)["PROMETHEUSX_LISTEN_ADDRESS"]
			if !ok {
				t.Errorf("service %s must set PROMETHEUSX_LISTEN_ADDRESS (the binaries all default to :9990)", name)
				continue
			}
			add(s, addr)
		case prog == "trafficgen":
			if len(s.Command) > 0 && s.Command[0] == "serve" {
				addrs, _ := flagValue(s.Command, "listen")
				for _, a := range strings.Split(addrs, ",") {
					add(s, a)
				}
			}
		case strings.HasPrefix(s.Image, "measurementlab/tcp-info:"):
			addr, ok := flagValue(s.Command, "prometheusx.listen-address")
			if !ok {
				addr = ":9990"
			}
			add(s, addr)
		}
	}
	return ls
}

// volumeAt returns the volume (or bind source) of s mounted at p or above it,
// and p's path inside it.
func volumeAt(s types.ServiceConfig, p string) (source, rel string, ok bool) {
	best := -1
	for _, v := range s.Volumes {
		r, err := filepath.Rel(v.Target, p)
		if err != nil || strings.HasPrefix(r, "..") || len(v.Target) <= best {
			continue
		}
		best, source, rel, ok = len(v.Target), v.Source, r, true
	}
	return source, rel, ok
}

// sameFile checks that services a and b see one file of one volume at paths
// pa and pb.
func sameFile(t *testing.T, what string, a types.ServiceConfig, pa string, b types.ServiceConfig, pb string) {
	t.Helper()
	va, ra, okA := volumeAt(a, pa)
	vb, rb, okB := volumeAt(b, pb)
	switch {
	case !okA:
		t.Errorf("%s: %s of service %s is on no volume", what, pa, a.Name)
	case !okB:
		t.Errorf("%s: %s of service %s is on no volume", what, pb, b.Name)
	case va != vb || ra != rb:
		t.Errorf("%s: service %s has %s (%s in volume %s), service %s has %s (%s in volume %s): not the same file",
			what, a.Name, pa, ra, va, b.Name, pb, rb, vb)
	}
}

func service(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, ok := p.Services[name]
	if !ok {
		t.Fatalf("docker-compose.yml has no service %s", name)
	}
	return s
}

// oneShots are the services that run once, at start.
var oneShots = []string{"init", "gcs-bucket", "s3-bucket"}

// wantProfiles are the services that need a profile, and which.
var wantProfiles = map[string][]string{
	"pcap-archiver": {"sidecar"},
	"versitygw":     {"s3"},
	"s3-bucket":     {"s3"},
}

// TestComposeFile loads docker-compose.yml with every profile enabled and
// checks its services one by one and how they fit together.
func TestComposeFile(t *testing.T) {
	p := loadCompose(t, nil, "", []string{"*"})
	df := parseDockerfile(t)
	root := moduleRoot(t)

	for _, name := range sortedKeys(p.Services) {
		s := p.Services[name]
		prog := composeProgram(t, df, s)
		// Image or build; images from elsewhere pinned to a version.
		switch {
		case s.Build != nil:
			if ctx := filepath.Clean(s.Build.Context); ctx != root {
				t.Errorf("service %s builds in %s, want the repository root", name, ctx)
			}
			if s.Build.Dockerfile != "" && s.Build.Dockerfile != "Dockerfile" {
				t.Errorf("service %s builds %s, want Dockerfile", name, s.Build.Dockerfile)
			}
		case s.Image == "":
			t.Errorf("service %s has neither image nor build", name)
		default:
			ref := s.Image[strings.LastIndex(s.Image, "/")+1:]
			if _, tag, ok := strings.Cut(ref, ":"); !ok || tag == "latest" {
				t.Errorf("service %s: image %s is not pinned to a version", name, s.Image)
			}
		}
		// Restart policy: one-shots retry failures, the rest keep running.
		for dep, d := range s.DependsOn {
			if d.Condition == types.ServiceConditionCompletedSuccessfully && !slices.Contains(oneShots, dep) {
				t.Errorf("service %s waits for %s to complete, which is not a one-shot", name, dep)
			}
		}
		switch {
		case slices.Contains(oneShots, name):
			if s.Restart != types.RestartPolicyOnFailure && !strings.HasPrefix(s.Restart, types.RestartPolicyOnFailure+":") {
				t.Errorf("one-shot service %s: restart %q, want on-failure", name, s.Restart)
			}
		case s.Restart != types.RestartPolicyUnlessStopped && s.Restart != types.RestartPolicyAlways:
			t.Errorf("service %s: restart %q, want unless-stopped", name, s.Restart)
		}
		// Profiles.
		if want := wantProfiles[name]; !slices.Equal(s.Profiles, want) {
			t.Errorf("service %s: profiles %v, want %v", name, s.Profiles, want)
		}
		// Volumes: named ones declared, bind sources present.
		for _, v := range s.Volumes {
			switch v.Type {
			case types.VolumeTypeVolume:
				if _, ok := p.Volumes[v.Source]; !ok {
					t.Errorf("service %s mounts undeclared volume %q", name, v.Source)
				}
			case types.VolumeTypeBind:
				if !strings.HasPrefix(v.Source, root+string(filepath.Separator)) {
					t.Errorf("service %s binds %s, outside the repository", name, v.Source)
				} else if !exists(v.Source) {
					t.Errorf("service %s binds %s, which does not exist", name, v.Source)
				}
			default:
				t.Errorf("service %s: volume of type %s", name, v.Type)
			}
		}
		// Ports on loopback only.
		for _, port := range s.Ports {
			if port.HostIP != "127.0.0.1" {
				t.Errorf("service %s publishes port %d on %q, want 127.0.0.1 only", name, port.Target, port.HostIP)
			}
		}
		// Health checks that parse and that the image can run.
		if hc := s.HealthCheck; hc != nil && !hc.Disable {
			if len(hc.Test) < 2 || (hc.Test[0] != "CMD" && hc.Test[0] != "CMD-SHELL") {
				t.Errorf("service %s: health check test %q, want [CMD ...] or [CMD-SHELL ...]", name, hc.Test)
			}
			for what, d := range map[string]*types.Duration{"interval": hc.Interval, "timeout": hc.Timeout} {
				if d == nil || *d <= 0 {
					t.Errorf("service %s: health check without %s", name, what)
				}
			}
			if hc.Retries == nil || *hc.Retries == 0 {
				t.Errorf("service %s: health check without retries", name)
			}
			if s.Build != nil {
				t.Errorf("service %s: our images have no shell or HTTP client for a health check", name)
			}
		}
		// Our binaries: no setting they could not take.
		if prog != "" && !s.ReadOnly {
			t.Errorf("service %s runs %s: set read_only: true", name, prog)
		}
		if slices.ContainsFunc(s.SecurityOpt, func(o string) bool { return strings.HasPrefix(o, "no-new-privileges") }) && len(s.CapAdd) > 0 {
			t.Errorf("service %s adds capabilities and sets no-new-privileges: the kernel then ignores file capabilities", name)
		}
	}

	// tcp-info owns the captured namespace; packet-headers shares it and the
	// eventsocket and prefix file.
	ti := service(t, p, "tcp-info")
	ph := service(t, p, "packet-headers")
	if ph.NetworkMode != "service:tcp-info" {
		t.Errorf("packet-headers: network_mode %q, want service:tcp-info", ph.NetworkMode)
	}
	if d, ok := ph.DependsOn["tcp-info"]; !ok || d.Condition != types.ServiceConditionStarted {
		t.Errorf("packet-headers must depend on tcp-info with condition service_started (its client reconnects), got %+v", ph.DependsOn)
	}
	for _, c := range []string{"NET_RAW"} {
		if !slices.Contains(ph.CapAdd, c) {
			t.Errorf("packet-headers: cap_add %v lacks %s, a file capability of the binary (exec fails without it)", ph.CapAdd, c)
		}
	}
	phEnv := composeEnv(ph)
	sock, ok := flagValue(ti.Command, "tcpinfo.eventsocket")
	if !ok {
		t.Error("tcp-info has no -tcpinfo.eventsocket")
	} else if phEnv["TCPINFO_EVENTSOCKET"] != sock {
		t.Errorf("packet-headers TCPINFO_EVENTSOCKET=%q, tcp-info serves %q", phEnv["TCPINFO_EVENTSOCKET"], sock)
	} else {
		sameFile(t, "eventsocket", ti, sock, ph, phEnv["TCPINFO_EVENTSOCKET"])
	}
	if ti.HealthCheck == nil || !strings.Contains(strings.Join(ti.HealthCheck.Test, " "), sock) {
		t.Errorf("tcp-info's health check must test its eventsocket %s", sock)
	}
	prefix, ok := flagValue(ti.Command, "uuid-prefix-file")
	if !ok {
		t.Error("tcp-info has no -uuid-prefix-file")
	} else {
		sameFile(t, "uuid prefix file", ti, prefix, ph, phEnv["UUID_PREFIX_FILE"])
		initSvc := service(t, p, "init")
		sameFile(t, "uuid prefix file", initSvc, prefix, ti, prefix)
		if !strings.Contains(strings.Join(initSvc.Command, " "), prefix) {
			t.Errorf("init does not write %s", prefix)
		}
	}
	arch := service(t, p, "pcap-archiver")
	sameFile(t, "data dir", ph, phEnv["DATADIR"], arch, composeEnv(arch)["DATADIR"])

	// The ports inside the shared namespace differ (listeners checks), and
	// tcp-info publishes ports someone listens on there.
	ls := listeners(t, p, df)
	for _, port := range ti.Ports {
		if _, ok := ls[fmt.Sprintf("tcp-info:%d", port.Target)]; !ok {
			t.Errorf("tcp-info publishes port %d, on which nothing in its namespace listens", port.Target)
		}
	}

	// Traffic stays inside the stack: the client connects to the traffic
	// server's address in tcp-info's namespace, a documentation address on
	// a documentation network.
	for _, n := range p.Networks {
		for _, pool := range n.Ipam.Config {
			if pfx, err := netip.ParsePrefix(pool.Subnet); err != nil || !documentation(pfx.Addr()) {
				t.Errorf("network %s: subnet %q, want a documentation prefix", n.Name, pool.Subnet)
			}
		}
	}
	var tiAddr string
	for _, n := range ti.Networks {
		if n != nil && n.Ipv4Address != "" {
			tiAddr = n.Ipv4Address
		}
	}
	client := service(t, p, "trafficgen")
	if composeProgram(t, df, client) != "trafficgen" || len(client.Command) == 0 || client.Command[0] != "client" {
		t.Fatalf("service trafficgen runs %v, want trafficgen client", client.Command)
	}
	connect, _ := flagValue(client.Command, "connect")
	for _, a := range strings.Split(connect, ",") {
		ap, err := netip.ParseAddrPort(a)
		switch {
		case err != nil:
			t.Errorf("trafficgen -connect %q: %v", a, err)
		case ap.Addr().String() != tiAddr:
			t.Errorf("trafficgen connects to %v, not to tcp-info's address %s (the captured namespace)", ap, tiAddr)
		case ls[fmt.Sprintf("tcp-info:%d", ap.Port())] != "trafficgen-server":
			t.Errorf("trafficgen connects to port %d, on which the traffic server does not listen", ap.Port())
		}
	}
	if ns := namespaceOf(service(t, p, "trafficgen-server")); ns != "tcp-info" {
		t.Errorf("trafficgen-server runs in %s's namespace, want tcp-info's", ns)
	}

	// Stop grace periods cover SIGTERMWAIT: packet-headers captures for
	// it, then writes (and uploads for as long again).
	for name, factor := range map[string]time.Duration{"packet-headers": 2, "pcap-archiver": 1} {
		s := service(t, p, name)
		wait, err := time.ParseDuration(composeEnv(s)["SIGTERMWAIT"])
		if err != nil {
			t.Errorf("service %s: SIGTERMWAIT: %v", name, err)
			continue
		}
		if s.StopGracePeriod == nil || time.Duration(*s.StopGracePeriod) < factor*wait+5*time.Second {
			t.Errorf("service %s: stop_grace_period %v, want at least %v for SIGTERMWAIT=%v", name, s.StopGracePeriod, factor*wait+5*time.Second, wait)
		}
	}

	// The storage the archivers use exists in the stack, and the bucket in
	// ARCHIVE_URL is the one the init services create.
	emu := composeEnv(ph)["STORAGE_EMULATOR_HOST"]
	if u, err := url.Parse(emu); err != nil || u.Port() == "" {
		t.Errorf("STORAGE_EMULATOR_HOST=%q, want http://service:port", emu)
	} else if gcs, ok := p.Services[u.Hostname()]; !ok {
		t.Errorf("STORAGE_EMULATOR_HOST names %s, not a service", u.Hostname())
	} else if port, _ := flagValue(gcs.Command, "port"); port != u.Port() {
		t.Errorf("STORAGE_EMULATOR_HOST port %s, %s listens on %q", u.Port(), u.Hostname(), port)
	}
	u, err := url.Parse(composeEnv(ph)["ARCHIVE_URL"])
	if err != nil || u.Scheme != "gs" {
		t.Fatalf("packet-headers ARCHIVE_URL=%q, want gs:// by default", composeEnv(ph)["ARCHIVE_URL"])
	}
	if !strings.Contains(strings.Join(service(t, p, "gcs-bucket").Command, " "), `"name":"`+u.Host+`"`) {
		t.Errorf("gcs-bucket does not create bucket %s", u.Host)
	}
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// documentation reports whether a is in a documentation prefix (RFC 5737,
// RFC 3849), the only addresses the traffic generator talks to.
func documentation(a netip.Addr) bool {
	for _, p := range []string{"192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"} {
		if netip.MustParsePrefix(p).Contains(a.Unmap()) {
			return true
		}
	}
	return false
}

// TestComposeVariants loads the stack as the README runs it: by default, and
// with each env file of deploy/compose. In each exactly one archiver
// archives the data dir, to storage that runs in the stack.
func TestComposeVariants(t *testing.T) {
	for _, tc := range []struct {
		envFile  string
		enabled  []string // services that must run
		disabled []string // services that must not
		archiver string   // the one with an ARCHIVE_URL
		scheme   string
	}{
		{"", []string{"packet-headers", "tcp-info", "fake-gcs", "gcs-bucket", "trafficgen", "prometheus", "grafana"}, []string{"pcap-archiver", "versitygw"}, "packet-headers", "gs"},
		{"deploy/compose/sidecar.env", []string{"packet-headers", "pcap-archiver", "fake-gcs"}, []string{"versitygw"}, "pcap-archiver", "gs"},
		{"deploy/compose/s3.env", []string{"packet-headers", "versitygw", "s3-bucket"}, []string{"pcap-archiver"}, "packet-headers", "s3"},
	} {
		name := "default"
		if tc.envFile != "" {
			name = strings.TrimSuffix(path.Base(tc.envFile), ".env")
		}
		t.Run(name, func(t *testing.T) {
			p := loadCompose(t, nil, tc.envFile, nil)
			df := parseDockerfile(t)
			for _, name := range tc.enabled {
				if _, ok := p.Services[name]; !ok {
					t.Errorf("service %s is not enabled", name)
				}
			}
			for _, name := range tc.disabled {
				if _, ok := p.Services[name]; ok {
					t.Errorf("service %s is enabled", name)
				}
			}
			var archivers []string
			for _, name := range sortedKeys(p.Services) {
				s := p.Services[name]
				if !slices.Contains(ourBinaries, composeProgram(t, df, s)) {
					continue
				}
				raw := composeEnv(s)["ARCHIVE_URL"]
				if raw == "" {
					continue
				}
				archivers = append(archivers, name)
				u, err := url.Parse(raw)
				if err != nil {
					t.Errorf("service %s: ARCHIVE_URL %q: %v", name, raw, err)
					continue
				}
				if u.Scheme != tc.scheme {
					t.Errorf("service %s archives to %s, want %s://", name, raw, tc.scheme)
				}
				if ep := u.Query().Get("endpoint"); ep != "" {
					e, err := url.Parse(ep)
					if err != nil {
						t.Errorf("service %s: ARCHIVE_URL endpoint %q: %v", name, ep, err)
						continue
					}
					vgw, ok := p.Services[e.Hostname()]
					if !ok {
						t.Errorf("service %s: ARCHIVE_URL endpoint %s is not an enabled service", name, ep)
						continue
					}
					if port, _ := listenPort(composeEnv(vgw)["VGW_PORT"]); port != e.Port() {
						t.Errorf("ARCHIVE_URL endpoint port %s, %s listens on %q", e.Port(), e.Hostname(), composeEnv(vgw)["VGW_PORT"])
					}
					bucket := service(t, p, "s3-bucket")
					if !strings.Contains(strings.Join(bucket.Command, " "), ep+"/"+u.Host) {
						t.Errorf("s3-bucket does not create %s/%s", ep, u.Host)
					}
				}
			}
			if !slices.Equal(archivers, []string{tc.archiver}) {
				t.Errorf("archivers %v, want exactly [%s]", archivers, tc.archiver)
			}
		})
	}
}

// TestComposeInterpolation: every variable docker-compose.yml uses has a
// default, so the stack runs without an env file.
func TestComposeInterpolation(t *testing.T) {
	bare := regexp.MustCompile(`\$\{[A-Za-z_][A-Za-z0-9_]*\}|\$[A-Za-z_][A-Za-z0-9_]*`)
	text := strings.ReplaceAll(readFile(t, "docker-compose.yml"), "$$", "")
	for i, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "#") {
			continue
		}
		if m := bare.FindString(l); m != "" {
			t.Errorf("docker-compose.yml:%d: %s has no default (write ${NAME:-default})", i+1, m)
		}
	}
}
