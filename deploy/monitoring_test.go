package deploy

import (
	"encoding/json"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"
	"sigs.k8s.io/yaml"
)

var (
	promStringRE   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	promVarRE      = regexp.MustCompile(`\$\{[^}]*\}|\$\w+`)
	promBracesRE   = regexp.MustCompile(`\{[^{}]*\}`)
	promRangeRE    = regexp.MustCompile(`\[[^\]]*\]`)
	promGroupingRE = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promIdentRE    = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
	promKeywords   = map[string]bool{
		"and": true, "or": true, "unless": true, "bool": true, "offset": true,
		"by": true, "without": true, "on": true, "ignoring": true,
		"group_left": true, "group_right": true, "inf": true, "nan": true, "atan2": true,
	}
)

// promqlMetrics returns the metric names a PromQL expression selects (with
// Grafana's $variables): the identifiers left once strings, label matchers,
// ranges, grouping clauses, function calls and keywords are taken out.
func promqlMetrics(expr string) []string {
	s := promStringRE.ReplaceAllString(expr, `""`)
	s = promVarRE.ReplaceAllString(s, "0")
	s = promBracesRE.ReplaceAllString(s, " ")
	s = promRangeRE.ReplaceAllString(s, " ")
	s = promGroupingRE.ReplaceAllString(s, " ")
	var names []string
	for _, loc := range promIdentRE.FindAllStringIndex(s, -1) {
		name := s[loc[0]:loc[1]]
		if loc[0] > 0 && strings.ContainsRune("0123456789.", rune(s[loc[0]-1])) {
			continue // an exponent or unit: 1e3, 5m
		}
		if rest := strings.TrimLeft(s[loc[1]:], " \t\n"); strings.HasPrefix(rest, "(") {
			continue // a function or aggregation
		}
		if promKeywords[strings.ToLower(name)] {
			continue
		}
		names = append(names, name)
	}
	return names
}

func TestPromqlMetrics(t *testing.T) {
	for expr, want := range map[string][]string{
		`sum by (le) (rate(pcap_uuid_wait_seconds_bucket{instance=~"$host:.*"}[$__rate_interval]))`: {"pcap_uuid_wait_seconds_bucket"},
		`histogram_quantile(0.99, sum without (x) (rate(a_bucket[5m])))`:                            {"a_bucket"},
		`time() - max(pcap_archive_last_success_timestamp_seconds > 0)`:                             {"pcap_archive_last_success_timestamp_seconds"},
		`a / on(job) group_left(node) b unless c offset 5m`:                                         {"a", "b", "c"},
		`up{job=~"a|b"} == bool 1e3`:                                                                {"up"},
		`sum(rate(x{l="sum(y)"}[${__rate_interval}]))`:                                              {"x"},
	} {
		if got := promqlMetrics(expr); !slices.Equal(got, want) {
			t.Errorf("promqlMetrics(%q) = %q, want %q", expr, got, want)
		}
	}
}

// registry is what the project's non-test Go files register: every quoted
// lower-case identifier (the metric names are among them), and the names
// given to HistogramOpts and SummaryOpts literals.
type registry struct {
	names, histograms, summaries map[string]bool
}

var (
	quotedRE    = regexp.MustCompile(`"([a-z_:][a-z0-9_:]*)"`)
	histogramRE = regexp.MustCompile(`(?s)HistogramOpts\{.{0,300}?Name:\s*"([a-z_:][a-z0-9_:]*)"`)
	summaryRE   = regexp.MustCompile(`(?s)SummaryOpts\{.{0,300}?Name:\s*"([a-z_:][a-z0-9_:]*)"`)
)

// registeredMetrics reads the module's non-test Go files; nested modules
// (tools/) are skipped.
func registeredMetrics(t *testing.T) registry {
	t.Helper()
	root := moduleRoot(t)
	reg := registry{names: map[string]bool{}, histograms: map[string]bool{}, summaries: map[string]bool{}}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p == root {
				return nil
			}
			if strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" {
				return filepath.SkipDir
			}
			if _, err := os.Stat(filepath.Join(p, "go.mod")); err == nil {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for re, set := range map[*regexp.Regexp]map[string]bool{quotedRE: reg.names, histogramRE: reg.histograms, summaryRE: reg.summaries} {
			for _, m := range re.FindAllStringSubmatch(string(b), -1) {
				set[m[1]] = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

// has reports whether the project exports the series name: a metric
// registered by that name, a histogram's _bucket, _sum or _count, a
// summary's _sum or _count, or Prometheus' own up.
func (r registry) has(name string) bool {
	if r.names[name] || name == "up" {
		return true
	}
	if base, ok := strings.CutSuffix(name, "_bucket"); ok {
		return r.histograms[base]
	}
	for _, suffix := range []string{"_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			return r.histograms[base] || r.summaries[base]
		}
	}
	return false
}

// dashboardMetrics are the metrics the dashboard must show.
var dashboardMetrics = []string{
	"pcap_capture_kernel_packets_total", "pcap_capture_kernel_drops_total",
	"pcap_demuxer_savers_active", "pcap_saver_states", "pcap_uuid_wait_seconds_bucket",
	"pcap_missed_uuids_total", "pcap_files_written_total",
	"pcap_archive_files_archived_total", "pcap_archive_bytes_archived_total",
	"pcap_archive_uploads_total", "pcap_archive_backlog_files", "pcap_archive_backlog_bytes",
	"pcap_archive_backlog_oldest_age_seconds", "pcap_archive_last_success_timestamp_seconds",
}

// TestGrafanaDashboard checks deploy/grafana/dashboard.json: a Grafana JSON
// model whose panels query Prometheus through the datasource variable, laid
// out without overlap, selecting only metrics the project registers.
func TestGrafanaDashboard(t *testing.T) {
	raw := []byte(readFile(t, "deploy/grafana/dashboard.json"))
	var dash struct {
		UID           string           `json:"uid"`
		Title         string           `json:"title"`
		SchemaVersion int              `json:"schemaVersion"`
		Panels        []map[string]any `json:"panels"`
		Templating    struct {
			List []struct {
				Name       string          `json:"name"`
				Type       string          `json:"type"`
				Query      json.RawMessage `json:"query"`
				Datasource map[string]any  `json:"datasource"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	if dash.UID == "" || dash.Title == "" {
		t.Error("dashboard needs a uid and a title")
	}
	if dash.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d, want 36 or later (datasources by uid)", dash.SchemaVersion)
	}
	dsVar := ""
	for _, v := range dash.Templating.List {
		if v.Type == "datasource" && string(v.Query) == `"prometheus"` {
			dsVar = v.Name
		}
	}
	if dsVar == "" {
		t.Fatal("dashboard has no datasource variable of type prometheus")
	}
	usesVar := func(ds any) bool {
		m, _ := ds.(map[string]any)
		return m != nil && (m["uid"] == "${"+dsVar+"}" || m["uid"] == "$"+dsVar)
	}
	for _, v := range dash.Templating.List {
		if v.Type == "query" && !usesVar(v.Datasource) {
			t.Errorf("variable %s does not query the ${%s} datasource", v.Name, dsVar)
		}
	}

	type rect struct {
		x, y, w, h int
		title      string
	}
	var rects []rect
	ids := make(map[float64]bool)
	var exprs []string
	var walk func([]map[string]any)
	walk = func(panels []map[string]any) {
		for _, p := range panels {
			title, _ := p["title"].(string)
			typ, _ := p["type"].(string)
			id, _ := p["id"].(float64)
			if id == 0 || ids[id] {
				t.Errorf("panel %q: id %v missing or not unique", title, p["id"])
			}
			ids[id] = true
			gp, _ := p["gridPos"].(map[string]any)
			r := rect{title: title}
			for k, dst := range map[string]*int{"x": &r.x, "y": &r.y, "w": &r.w, "h": &r.h} {
				f, ok := gp[k].(float64)
				if !ok {
					t.Errorf("panel %q: gridPos.%s missing", title, k)
				}
				*dst = int(f)
			}
			if r.w <= 0 || r.h <= 0 || r.x < 0 || r.x+r.w > 24 {
				t.Errorf("panel %q: gridPos %+v outside the 24-column grid", title, gp)
			}
			rects = append(rects, r)
			if typ == "row" {
				sub, _ := p["panels"].([]any)
				var subs []map[string]any
				for _, s := range sub {
					if m, ok := s.(map[string]any); ok {
						subs = append(subs, m)
					}
				}
				walk(subs)
				continue
			}
			if !slices.Contains([]string{"timeseries", "stat", "gauge", "bargauge", "table", "heatmap", "text"}, typ) {
				t.Errorf("panel %q: unknown type %q", title, typ)
			}
			if !usesVar(p["datasource"]) {
				t.Errorf("panel %q: datasource %v, want uid ${%s}", title, p["datasource"], dsVar)
			}
			targets, _ := p["targets"].([]any)
			if len(targets) == 0 && typ != "text" {
				t.Errorf("panel %q has no query", title)
			}
			refs := make(map[string]bool)
			for _, tg := range targets {
				m, _ := tg.(map[string]any)
				ref, _ := m["refId"].(string)
				expr, _ := m["expr"].(string)
				if ref == "" || refs[ref] || expr == "" {
					t.Errorf("panel %q: target refId %q (unique, required) expr %q (required)", title, ref, expr)
				}
				refs[ref] = true
				if ds, ok := m["datasource"]; ok && !usesVar(ds) {
					t.Errorf("panel %q: target %s datasource %v, want uid ${%s}", title, ref, ds, dsVar)
				}
				if strings.Count(expr, "(") != strings.Count(expr, ")") || strings.Count(expr, "{") != strings.Count(expr, "}") {
					t.Errorf("panel %q: unbalanced expression %s", title, expr)
				}
				exprs = append(exprs, expr)
			}
		}
	}
	walk(dash.Panels)
	for i, a := range rects {
		for _, b := range rects[i+1:] {
			if a.x < b.x+b.w && b.x < a.x+a.w && a.y < b.y+b.h && b.y < a.y+a.h {
				t.Errorf("panels %q and %q overlap", a.title, b.title)
			}
		}
	}

	reg := registeredMetrics(t)
	used := make(map[string]bool)
	for _, e := range exprs {
		for _, m := range promqlMetrics(e) {
			used[m] = true
		}
	}
	for _, m := range sortedKeys(used) {
		if !reg.has(m) {
			t.Errorf("dashboard queries %s, which no non-test Go file of the project registers", m)
		}
	}
	for _, m := range dashboardMetrics {
		if !used[m] {
			t.Errorf("dashboard does not show %s", m)
		}
	}
}

// TestRegistryHas shows that a series the project does not export fails
// the dashboard check.
func TestRegistryHas(t *testing.T) {
	reg := registry{
		names:      map[string]bool{"pcap_uuid_wait_seconds": true, "pcap_files_written_total": true},
		histograms: map[string]bool{"pcap_uuid_wait_seconds": true},
		summaries:  map[string]bool{},
	}
	for name, want := range map[string]bool{
		"pcap_files_written_total":       true,
		"pcap_uuid_wait_seconds_bucket":  true,
		"pcap_uuid_wait_seconds_count":   true,
		"up":                             true,
		"pcap_files_writen_total":        false,
		"pcap_files_written_total_count": false,
	} {
		if got := reg.has(name); got != want {
			t.Errorf("has(%s) = %v, want %v", name, got, want)
		}
	}
	if real := registeredMetrics(t); !real.histograms["pcap_uuid_wait_seconds"] || !real.names["pcap_files_written_total"] {
		t.Errorf("registeredMetrics misses known metrics: %d names, histograms %v", len(real.names), sortedKeys(real.histograms))
	}
}

// TestPrometheusConfig checks deploy/prometheus/prometheus.yml against the
// compose stack: every target is a port where the job's program listens,
// and every program that serves metrics is scraped.
func TestPrometheusConfig(t *testing.T) {
	var cfg struct {
		Global        map[string]any `json:"global"`
		RuleFiles     []string       `json:"rule_files"`
		ScrapeConfigs []struct {
			JobName        string `json:"job_name"`
			ScrapeInterval string `json:"scrape_interval"`
			ScrapeTimeout  string `json:"scrape_timeout"`
			MetricsPath    string `json:"metrics_path"`
			Scheme         string `json:"scheme"`
			StaticConfigs  []struct {
				Targets []string          `json:"targets"`
				Labels  map[string]string `json:"labels"`
			} `json:"static_configs"`
		} `json:"scrape_configs"`
	}
	if err := yaml.UnmarshalStrict([]byte(readFile(t, "deploy/prometheus/prometheus.yml")), &cfg); err != nil {
		t.Fatalf("prometheus.yml: %v", err)
	}
	p := loadCompose(t, nil, "", []string{"*"})
	ls := listeners(t, p, parseDockerfile(t))
	scraped := make(map[string]string) // namespace:port -> job
	for _, sc := range cfg.ScrapeConfigs {
		if _, dup := scraped["job "+sc.JobName]; dup || sc.JobName == "" {
			t.Errorf("job name %q empty or not unique", sc.JobName)
		}
		scraped["job "+sc.JobName] = sc.JobName
		if sc.MetricsPath != "" && sc.MetricsPath != "/metrics" {
			t.Errorf("job %s scrapes %s, our programs serve /metrics", sc.JobName, sc.MetricsPath)
		}
		for _, st := range sc.StaticConfigs {
			for _, target := range st.Targets {
				host, port, err := net.SplitHostPort(target)
				if err != nil {
					t.Errorf("job %s: target %q: %v", sc.JobName, target, err)
					continue
				}
				if host == "localhost" {
					continue
				}
				if _, ok := p.Services[host]; !ok {
					t.Errorf("job %s: target %s: no compose service %s", sc.JobName, target, host)
					continue
				}
				if ls[target] != sc.JobName {
					t.Errorf("job %s: target %s is where %q listens, want %s", sc.JobName, target, ls[target], sc.JobName)
				}
				scraped[host+":"+port] = sc.JobName
			}
		}
	}
	for addr, svc := range ls {
		if svc == "trafficgen-server" {
			continue
		}
		if scraped[addr] != svc {
			t.Errorf("%s serves metrics on %s, which no job scrapes", svc, addr)
		}
	}

	// Prometheus reads this file.
	prom := service(t, p, "prometheus")
	conf, _ := flagValue(prom.Command, "config.file")
	if src, _, ok := volumeAt(prom, conf); !ok || src != filepath.Join(moduleRoot(t), "deploy", "prometheus", "prometheus.yml") {
		t.Errorf("service prometheus reads %s, which is not deploy/prometheus/prometheus.yml", conf)
	}
}

// TestGrafanaProvisioning checks that Grafana in the stack loads the
// dashboard and reaches Prometheus.
func TestGrafanaProvisioning(t *testing.T) {
	p := loadCompose(t, nil, "", []string{"*"})
	g := service(t, p, "grafana")
	root := moduleRoot(t)
	mountOf := func(rel string) string {
		for _, v := range g.Volumes {
			if v.Source == filepath.Join(root, filepath.FromSlash(rel)) {
				return v.Target
			}
		}
		t.Fatalf("service grafana does not mount %s", rel)
		return ""
	}
	if target := mountOf("deploy/grafana/provisioning"); target != "/etc/grafana/provisioning" {
		t.Errorf("provisioning mounted at %s, Grafana reads /etc/grafana/provisioning", target)
	}
	dashPath := mountOf("deploy/grafana/dashboard.json")
	if home, ok := composeEnv(g)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]; ok && home != dashPath {
		t.Errorf("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH=%s, the dashboard is at %s", home, dashPath)
	}

	var dashboards struct {
		APIVersion int `json:"apiVersion"`
		Providers  []struct {
			Name                  string `json:"name"`
			Type                  string `json:"type"`
			Folder                string `json:"folder"`
			DisableDeletion       bool   `json:"disableDeletion"`
			AllowUIUpdates        bool   `json:"allowUiUpdates"`
			UpdateIntervalSeconds int    `json:"updateIntervalSeconds"`
			Options               struct {
				Path                      string `json:"path"`
				FoldersFromFilesStructure bool   `json:"foldersFromFilesStructure"`
			} `json:"options"`
		} `json:"providers"`
	}
	if err := yaml.UnmarshalStrict([]byte(readFile(t, "deploy/grafana/provisioning/dashboards/headercap.yaml")), &dashboards); err != nil {
		t.Fatalf("dashboards provisioning: %v", err)
	}
	if dashboards.APIVersion != 1 || len(dashboards.Providers) != 1 || dashboards.Providers[0].Type != "file" ||
		dashboards.Providers[0].Options.Path != path.Dir(dashPath) {
		t.Errorf("dashboards provisioning: want apiVersion 1 and one file provider reading %s, got %+v", path.Dir(dashPath), dashboards)
	}

	var datasources struct {
		APIVersion  int `json:"apiVersion"`
		Datasources []struct {
			Name      string         `json:"name"`
			UID       string         `json:"uid"`
			Type      string         `json:"type"`
			Access    string         `json:"access"`
			URL       string         `json:"url"`
			IsDefault bool           `json:"isDefault"`
			Editable  bool           `json:"editable"`
			JSONData  map[string]any `json:"jsonData"`
		} `json:"datasources"`
	}
	if err := yaml.UnmarshalStrict([]byte(readFile(t, "deploy/grafana/provisioning/datasources/prometheus.yaml")), &datasources); err != nil {
		t.Fatalf("datasources provisioning: %v", err)
	}
	if datasources.APIVersion != 1 || len(datasources.Datasources) != 1 {
		t.Fatalf("datasources provisioning: want apiVersion 1 and one data source, got %+v", datasources)
	}
	ds := datasources.Datasources[0]
	if ds.Type != "prometheus" || !ds.IsDefault || ds.Access != "proxy" {
		t.Errorf("data source %s: want the default prometheus data source with proxy access, got %+v", ds.Name, ds)
	}
	u, err := url.Parse(ds.URL)
	if err != nil {
		t.Fatalf("data source url %q: %v", ds.URL, err)
	}
	prom, ok := p.Services[u.Hostname()]
	if !ok || !strings.HasPrefix(prom.Image, "prom/prometheus:") || u.Port() != "9090" || !shareNetwork(prom, g) {
		t.Errorf("data source url %s: want http://<prometheus service>:9090 on a network Grafana shares", ds.URL)
	}
}

// shareNetwork reports whether two services have a network in common.
func shareNetwork(a, b types.ServiceConfig) bool {
	for n := range a.Networks {
		if _, ok := b.Networks[n]; ok {
			return true
		}
	}
	return false
}
