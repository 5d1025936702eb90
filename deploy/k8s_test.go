package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/headercap/headercap/internal/cli"
)

// k8sDoc is one document of a manifest file.
type k8sDoc struct {
	file      string
	raw       []byte
	obj       map[string]any
	kind      string
	name      string
	namespace string
}

type manifests struct {
	docs []k8sDoc
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// loadManifests parses every document of deploy/k8s/*.yaml.
func loadManifests(t testing.TB) *manifests {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(moduleRoot(t), "deploy", "k8s", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no deploy/k8s/*.yaml (%v)", err)
	}
	m := &manifests{}
	for _, f := range files {
		rel := "deploy/k8s/" + filepath.Base(f)
		for i, part := range docSeparator.Split(readFile(t, rel), -1) {
			if onlyComments(part) {
				continue
			}
			var obj map[string]any
			if err := yaml.Unmarshal([]byte(part), &obj); err != nil {
				t.Fatalf("%s, document %d: %v", rel, i+1, err)
			}
			d := k8sDoc{file: rel, raw: []byte(part), obj: obj}
			d.kind, _ = obj["kind"].(string)
			md, _ := obj["metadata"].(map[string]any)
			d.name, _ = md["name"].(string)
			d.namespace, _ = md["namespace"].(string)
			if api, _ := obj["apiVersion"].(string); api == "" || d.kind == "" || d.name == "" {
				t.Fatalf("%s, document %d: apiVersion, kind and metadata.name are required", rel, i+1)
			}
			m.docs = append(m.docs, d)
		}
	}
	return m
}

func onlyComments(s string) bool {
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			return false
		}
	}
	return true
}

func (m *manifests) find(kind, name string) *k8sDoc {
	for i := range m.docs {
		if m.docs[i].kind == kind && (name == "" || m.docs[i].name == name) {
			return &m.docs[i]
		}
	}
	return nil
}

// decodeStrict decodes a document into v, refusing fields v does not have:
// without the API server, that is what catches a misspelt field.
func decodeStrict(d *k8sDoc, v any) error {
	j, err := yaml.YAMLToJSON(d.raw)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s %s %s: %w", d.file, d.kind, d.name, err)
	}
	return nil
}

// The subset of the Kubernetes API the manifests may use.
type (
	objectMeta struct {
		Name        string            `json:"name"`
		Namespace   string            `json:"namespace"`
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
	}
	daemonSet struct {
		APIVersion string     `json:"apiVersion"`
		Kind       string     `json:"kind"`
		Metadata   objectMeta `json:"metadata"`
		Spec       struct {
			Selector struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"selector"`
			UpdateStrategy       json.RawMessage `json:"updateStrategy"`
			MinReadySeconds      int             `json:"minReadySeconds"`
			RevisionHistoryLimit *int            `json:"revisionHistoryLimit"`
			Template             struct {
				Metadata objectMeta `json:"metadata"`
				Spec     podSpec    `json:"spec"`
			} `json:"template"`
		} `json:"spec"`
	}
	podSpec struct {
		ServiceAccountName            string            `json:"serviceAccountName"`
		AutomountServiceAccountToken  *bool             `json:"automountServiceAccountToken"`
		HostNetwork                   bool              `json:"hostNetwork"`
		HostPID                       bool              `json:"hostPID"`
		DNSPolicy                     string            `json:"dnsPolicy"`
		TerminationGracePeriodSeconds *int64            `json:"terminationGracePeriodSeconds"`
		SecurityContext               *securityContext  `json:"securityContext"`
		InitContainers                []container       `json:"initContainers"`
		Containers                    []container       `json:"containers"`
		Volumes                       []volume          `json:"volumes"`
		Tolerations                   []json.RawMessage `json:"tolerations"`
		NodeSelector                  map[string]string `json:"nodeSelector"`
		Affinity                      json.RawMessage   `json:"affinity"`
		PriorityClassName             string            `json:"priorityClassName"`
		ImagePullSecrets              []json.RawMessage `json:"imagePullSecrets"`
	}
	securityContext struct {
		RunAsUser                *int64 `json:"runAsUser"`
		RunAsGroup               *int64 `json:"runAsGroup"`
		RunAsNonRoot             *bool  `json:"runAsNonRoot"`
		FSGroup                  *int64 `json:"fsGroup"`
		AllowPrivilegeEscalation *bool  `json:"allowPrivilegeEscalation"`
		ReadOnlyRootFilesystem   *bool  `json:"readOnlyRootFilesystem"`
		Privileged               *bool  `json:"privileged"`
		Capabilities             *struct {
			Add  []string `json:"add"`
			Drop []string `json:"drop"`
		} `json:"capabilities"`
		SeccompProfile *struct {
			Type             string `json:"type"`
			LocalhostProfile string `json:"localhostProfile"`
		} `json:"seccompProfile"`
	}
	container struct {
		Name            string   `json:"name"`
		Image           string   `json:"image"`
		ImagePullPolicy string   `json:"imagePullPolicy"`
		Command         []string `json:"command"`
		Args            []string `json:"args"`
		WorkingDir      string   `json:"workingDir"`
		Env             []struct {
			Name      string          `json:"name"`
			Value     string          `json:"value"`
			ValueFrom json.RawMessage `json:"valueFrom"`
		} `json:"env"`
		EnvFrom []json.RawMessage `json:"envFrom"`
		Ports   []struct {
			Name          string `json:"name"`
			ContainerPort int    `json:"containerPort"`
			HostPort      int    `json:"hostPort"`
			Protocol      string `json:"protocol"`
		} `json:"ports"`
		Resources struct {
			Requests map[string]string `json:"requests"`
			Limits   map[string]string `json:"limits"`
		} `json:"resources"`
		VolumeMounts []struct {
			Name      string `json:"name"`
			MountPath string `json:"mountPath"`
			ReadOnly  bool   `json:"readOnly"`
			SubPath   string `json:"subPath"`
		} `json:"volumeMounts"`
		LivenessProbe            *probe           `json:"livenessProbe"`
		ReadinessProbe           *probe           `json:"readinessProbe"`
		StartupProbe             *probe           `json:"startupProbe"`
		Lifecycle                json.RawMessage  `json:"lifecycle"`
		SecurityContext          *securityContext `json:"securityContext"`
		TerminationMessagePolicy string           `json:"terminationMessagePolicy"`
	}
	probe struct {
		HTTPGet *struct {
			Path   string          `json:"path"`
			Port   json.RawMessage `json:"port"`
			Scheme string          `json:"scheme"`
		} `json:"httpGet"`
		TCPSocket           json.RawMessage `json:"tcpSocket"`
		Exec                json.RawMessage `json:"exec"`
		InitialDelaySeconds int             `json:"initialDelaySeconds"`
		PeriodSeconds       int             `json:"periodSeconds"`
		TimeoutSeconds      int             `json:"timeoutSeconds"`
		FailureThreshold    int             `json:"failureThreshold"`
		SuccessThreshold    int             `json:"successThreshold"`
	}
	volume struct {
		Name     string `json:"name"`
		HostPath *struct {
			Path string `json:"path"`
			Type string `json:"type"`
		} `json:"hostPath"`
		EmptyDir *struct {
			Medium    string `json:"medium"`
			SizeLimit string `json:"sizeLimit"`
		} `json:"emptyDir"`
		Secret *struct {
			SecretName string `json:"secretName"`
			Items      []struct {
				Key  string `json:"key"`
				Path string `json:"path"`
			} `json:"items"`
			DefaultMode *int  `json:"defaultMode"`
			Optional    *bool `json:"optional"`
		} `json:"secret"`
		ConfigMap   json.RawMessage `json:"configMap"`
		DownwardAPI json.RawMessage `json:"downwardAPI"`
		Projected   json.RawMessage `json:"projected"`
	}
)

func (c *container) env(name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

// volumeAt returns the volume mounted at p or above it, and p's path in it.
func (c *container) volumeAt(p string) (vol, rel string, ok bool) {
	best := -1
	for _, m := range c.VolumeMounts {
		r, err := filepath.Rel(m.MountPath, p)
		if err != nil || strings.HasPrefix(r, "..") || len(m.MountPath) <= best {
			continue
		}
		best, vol, rel, ok = len(m.MountPath), m.Name, r, true
	}
	return vol, rel, ok
}

// ourContainer is a container that runs one of our binaries.
type ourContainer struct {
	c       *container
	program string
}

// daemonSet decodes the one DaemonSet of the manifests.
func (m *manifests) daemonSet(t testing.TB) *daemonSet {
	t.Helper()
	var n int
	for _, d := range m.docs {
		if d.kind == "DaemonSet" {
			n++
		}
	}
	d := m.find("DaemonSet", "")
	if n != 1 {
		t.Fatalf("want exactly one DaemonSet in deploy/k8s, found %d", n)
	}
	var ds daemonSet
	if err := decodeStrict(d, &ds); err != nil {
		t.Fatal(err)
	}
	return &ds
}

// ourContainers returns the containers whose image is packet-headers' image,
// with the program each runs: its command, or the image's entrypoint.
func (m *manifests) ourContainers(t testing.TB, df *dockerfile) []ourContainer {
	t.Helper()
	pod := &m.daemonSet(t).Spec.Template.Spec
	var repo string
	for _, c := range pod.Containers {
		if c.Name == "packet-headers" {
			repo, _, _ = strings.Cut(c.Image, ":")
		}
	}
	if repo == "" {
		t.Fatal("the DaemonSet has no packet-headers container")
	}
	final := df.stage(df.defaultTarget())
	var out []ourContainer
	for i := range pod.Containers {
		c := &pod.Containers[i]
		if r, _, _ := strings.Cut(c.Image, ":"); r != repo {
			continue
		}
		cmd := c.Command
		if len(cmd) == 0 {
			cmd = final.execForm(t, "ENTRYPOINT")
		}
		if _, ok := final.copied()[cmd[0]]; !ok {
			t.Errorf("container %s runs %s, which the image does not have", c.Name, cmd[0])
		}
		prog := path.Base(cmd[0])
		if !slices.Contains(ourBinaries, prog) {
			t.Errorf("container %s runs %s from our image", c.Name, prog)
			continue
		}
		out = append(out, ourContainer{c: c, program: prog})
	}
	return out
}

// parseQuantity reads a Kubernetes memory quantity (512Mi, 1Gi, 2G, 1000).
func parseQuantity(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   float64
	}{
		{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40},
		{"k", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12},
	}
	mult := 1.0
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = n, u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("bad quantity %q", s)
	}
	return int64(math.Round(f * mult)), nil
}

func TestParseQuantity(t *testing.T) {
	for s, want := range map[string]int64{"3Gi": 3 << 30, "512Mi": 512 << 20, "2G": 2e9, "1000": 1000, "1.5Gi": 3 << 29} {
		if got, err := parseQuantity(s); err != nil || got != want {
			t.Errorf("parseQuantity(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
}

// TestKubernetesManifests checks the structure of deploy/k8s: the DaemonSet
// with host networking, tcp-info, packet-headers and the archiver sidecar,
// which share what they must and nothing else.
func TestKubernetesManifests(t *testing.T) {
	m := loadManifests(t)
	df := parseDockerfile(t)
	ds := m.daemonSet(t)
	pod := &ds.Spec.Template.Spec

	for _, d := range m.docs {
		if d.kind != "Namespace" && d.namespace != ds.Metadata.Namespace {
			t.Errorf("%s: %s %s in namespace %q, the DaemonSet in %q", d.file, d.kind, d.name, d.namespace, ds.Metadata.Namespace)
		}
	}
	for k, v := range ds.Spec.Selector.MatchLabels {
		if ds.Spec.Template.Metadata.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the pod template's labels", k, v)
		}
	}
	if !pod.HostNetwork {
		t.Error("hostNetwork must be true: packet-headers captures the node's interfaces, tcp-info names the node's sockets")
	}
	if pod.DNSPolicy != "ClusterFirstWithHostNet" {
		t.Errorf("dnsPolicy %q, want ClusterFirstWithHostNet with hostNetwork", pod.DNSPolicy)
	}
	if pod.ServiceAccountName == "" || m.find("ServiceAccount", pod.ServiceAccountName) == nil {
		t.Errorf("serviceAccountName %q is not a ServiceAccount of deploy/k8s", pod.ServiceAccountName)
	}
	if psc := pod.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Fatal("the pod's securityContext must set runAsNonRoot: true and a non-root runAsUser")
	}

	containers := make(map[string]*container)
	for i := range pod.Containers {
		containers[pod.Containers[i].Name] = &pod.Containers[i]
	}
	for _, name := range []string{"tcp-info", "packet-headers", "pcap-archiver"} {
		if containers[name] == nil {
			t.Fatalf("the DaemonSet has no %s container", name)
		}
	}
	ti, ph, arch := containers["tcp-info"], containers["packet-headers"], containers["pcap-archiver"]
	if !strings.HasPrefix(ti.Image, "measurementlab/tcp-info:") {
		t.Errorf("tcp-info image %s, want measurementlab/tcp-info", ti.Image)
	}

	volumes := make(map[string]*volume)
	for i := range pod.Volumes {
		v := &pod.Volumes[i]
		if volumes[v.Name] != nil {
			t.Errorf("volume %s declared twice", v.Name)
		}
		volumes[v.Name] = v
	}
	mounted := make(map[string]bool)
	ports := make(map[int]string)
	all := append(slices.Clone(pod.InitContainers), pod.Containers...)
	for i := range all {
		c := &all[i]
		isInit := i < len(pod.InitContainers)
		ref := c.Image[strings.LastIndex(c.Image, "/")+1:]
		if _, tag, ok := strings.Cut(ref, ":"); !ok || tag == "latest" {
			t.Errorf("container %s: image %s is not pinned to a version", c.Name, c.Image)
		}
		for _, vm := range c.VolumeMounts {
			mounted[vm.Name] = true
			if volumes[vm.Name] == nil {
				t.Errorf("container %s mounts undeclared volume %s", c.Name, vm.Name)
			}
		}
		for _, r := range []string{"cpu", "memory"} {
			if c.Resources.Requests[r] == "" {
				t.Errorf("container %s: no %s request", c.Name, r)
			}
		}
		if c.Resources.Limits["memory"] == "" {
			t.Errorf("container %s: no memory limit", c.Name)
		}

		// Security: non-root, read-only root, ALL capabilities dropped.
		sc := c.SecurityContext
		if sc == nil {
			t.Errorf("container %s has no securityContext", c.Name)
			continue
		}
		runAsUser, nonRoot := pod.SecurityContext.RunAsUser, pod.SecurityContext.RunAsNonRoot
		if sc.RunAsUser != nil {
			runAsUser = sc.RunAsUser
		}
		if sc.RunAsNonRoot != nil {
			nonRoot = sc.RunAsNonRoot
		}
		var add, drop []string
		if sc.Capabilities != nil {
			add, drop = sc.Capabilities.Add, sc.Capabilities.Drop
		}
		root := runAsUser != nil && *runAsUser == 0
		switch {
		case !root && nonRoot != nil && *nonRoot:
		case isInit && root && !slices.ContainsFunc(add, func(c string) bool { return c != "CHOWN" && c != "FOWNER" }):
			// An init container may be root, to own a hostPath, with
			// nothing but CHOWN/FOWNER.
		default:
			t.Errorf("container %s: must run as non-root (runAsNonRoot: true)", c.Name)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("container %s: readOnlyRootFilesystem must be true", c.Name)
		}
		if !slices.Contains(drop, "ALL") {
			t.Errorf("container %s: capabilities must drop ALL", c.Name)
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Errorf("container %s is privileged", c.Name)
		}
		switch {
		case c.Name == "packet-headers":
			for _, want := range []string{"NET_RAW"} {
				if !slices.Contains(add, want) {
					t.Errorf("packet-headers: capabilities.add %v lacks %s, a file capability of the binary (exec fails without it)", add, want)
				}
			}
			if sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
				t.Error("packet-headers: allowPrivilegeEscalation: false sets no_new_privs, and the kernel then ignores the binary's file capabilities")
			}
		case isInit:
		default:
			if len(add) > 0 {
				t.Errorf("container %s adds capabilities %v", c.Name, add)
			}
		}
		if c.Name != "packet-headers" && (sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation) {
			t.Errorf("container %s: allowPrivilegeEscalation must be false", c.Name)
		}

		// hostNetwork: one port space for the whole pod.
		for _, p := range c.Ports {
			if other, dup := ports[p.ContainerPort]; dup {
				t.Errorf("containers %s and %s both use port %d of the node", other, c.Name, p.ContainerPort)
			}
			ports[p.ContainerPort] = c.Name
		}
		if c.LivenessProbe != nil && c.LivenessProbe.HTTPGet != nil {
			port, _ := strconv.Atoi(string(c.LivenessProbe.HTTPGet.Port))
			if ports[port] != c.Name {
				t.Errorf("container %s: liveness probe on port %s, not one of its ports", c.Name, c.LivenessProbe.HTTPGet.Port)
			}
		}
	}
	for name := range volumes {
		if !mounted[name] {
			t.Errorf("volume %s is mounted by no container", name)
		}
	}

	// Metrics ports: each process listens where its container says.
	checkListen := func(c *container, addr string) {
		t.Helper()
		port, err := listenPort(addr)
		if err != nil {
			t.Errorf("container %s: %v", c.Name, err)
			return
		}
		n, _ := strconv.Atoi(port)
		if ports[n] != c.Name {
			t.Errorf("container %s listens on %s, which is not one of its containerPorts", c.Name, addr)
		}
	}
	tiListen, ok := flagValue(ti.Args, "prometheusx.listen-address")
	if !ok {
		tiListen = ":9990"
	}
	checkListen(ti, tiListen)
	archivers := 0
	for _, oc := range m.ourContainers(t, df) {
		addr, ok := oc.c.env("PROMETHEUSX_LISTEN_ADDRESS")
		if !ok {
			t.Errorf("container %s must set PROMETHEUSX_LISTEN_ADDRESS (with hostNetwork the default :9990 is everyone's)", oc.c.Name)
		} else {
			checkListen(oc.c, addr)
		}
		if u, _ := oc.c.env("ARCHIVE_URL"); u != "" {
			archivers++
		}
	}
	if _, ok := ph.env("ARCHIVE_URL"); ok || archivers != 1 {
		t.Errorf("exactly one archiver, the pcap-archiver sidecar, must have an ARCHIVE_URL (found %d; packet-headers must have none)", archivers)
	}

	// Shared files: the eventsocket and the UUID prefix between tcp-info
	// and packet-headers, the data dir between packet-headers and the
	// archiver.
	same := func(what string, a *container, pa string, b *container, pb string) (vol string) {
		t.Helper()
		va, ra, okA := a.volumeAt(pa)
		vb, rb, okB := b.volumeAt(pb)
		if !okA || !okB || va != vb || ra != rb {
			t.Errorf("%s: %s has %q (volume %q, %q), %s has %q (volume %q, %q): not the same file", what, a.Name, pa, va, ra, b.Name, pb, vb, rb)
		}
		return va
	}
	sock, _ := flagValue(ti.Args, "tcpinfo.eventsocket")
	phSock, _ := ph.env("TCPINFO_EVENTSOCKET")
	if v := same("eventsocket", ti, sock, ph, phSock); volumes[v] != nil && volumes[v].EmptyDir == nil {
		t.Errorf("eventsocket volume %s: want an emptyDir", v)
	}
	prefix, _ := flagValue(ti.Args, "uuid-prefix-file")
	phPrefix, _ := ph.env("UUID_PREFIX_FILE")
	prefixVol := same("uuid prefix file", ti, prefix, ph, phPrefix)
	written := false
	for _, c := range pod.InitContainers {
		if v, _, ok := c.volumeAt(prefix); ok && v == prefixVol && strings.Contains(strings.Join(c.Command, " "), path.Base(prefix)) {
			written = true
		}
	}
	if !written {
		t.Errorf("no init container writes the uuid prefix file into volume %s", prefixVol)
	}
	phData, _ := ph.env("DATADIR")
	archData, _ := arch.env("DATADIR")
	same("data dir", ph, phData, arch, archData)

	// Credentials: a file from the secret whose example is in deploy/k8s.
	creds, _ := arch.env("GOOGLE_APPLICATION_CREDENTIALS")
	vol, rel, ok := arch.volumeAt(creds)
	switch {
	case !ok || volumes[vol] == nil || volumes[vol].Secret == nil:
		t.Errorf("pcap-archiver: GOOGLE_APPLICATION_CREDENTIALS=%q is not in a secret volume", creds)
	default:
		sv := volumes[vol].Secret
		key := rel
		for _, it := range sv.Items {
			if it.Path == rel {
				key = it.Key
			}
		}
		secret := m.find("Secret", sv.SecretName)
		if secret == nil {
			t.Fatalf("secret %s: no example in deploy/k8s", sv.SecretName)
		}
		data, _ := secret.obj["data"].(map[string]any)
		stringData, _ := secret.obj["stringData"].(map[string]any)
		if _, ok := data[key]; !ok {
			if _, ok := stringData[key]; !ok {
				t.Errorf("secret %s has no key %s (GOOGLE_APPLICATION_CREDENTIALS=%s)", sv.SecretName, key, creds)
			}
		}
	}

	// tcp-info creates the eventsocket 0755: packet-headers must run as its
	// owner to connect.
	uid := func(c *container) *int64 {
		if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
			return c.SecurityContext.RunAsUser
		}
		return pod.SecurityContext.RunAsUser
	}
	if a, b := uid(ti), uid(ph); a == nil || b == nil || *a != *b {
		t.Error("tcp-info and packet-headers must run as the same user (the eventsocket is writable by its owner only)")
	}

	// Termination: packet-headers captures for SIGTERMWAIT, then writes
	// its open flows; the archiver uploads for its SIGTERMWAIT.
	if pod.TerminationGracePeriodSeconds == nil {
		t.Fatal("no terminationGracePeriodSeconds")
	}
	grace := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
	for _, x := range []struct {
		c      *container
		factor time.Duration
	}{{ph, 2}, {arch, 1}} {
		v, _ := x.c.env("SIGTERMWAIT")
		wait, err := time.ParseDuration(v)
		if err != nil {
			t.Errorf("container %s: SIGTERMWAIT=%q: %v", x.c.Name, v, err)
			continue
		}
		if need := x.factor*wait + 10*time.Second; grace < need {
			t.Errorf("terminationGracePeriodSeconds %v, want at least %v for %s's SIGTERMWAIT=%v", grace, need, x.c.Name, wait)
		}
	}

	// packet-headers refuses new flows before it is OOM-killed.
	limit, err := parseQuantity(ph.Resources.Limits["memory"])
	if err != nil {
		t.Fatalf("packet-headers memory limit: %v", err)
	}
	heap := cli.ByteSize(8 * cli.Gigabyte) // the default
	if v, ok := ph.env("MAXHEAP"); ok {
		if err := heap.Set(v); err != nil {
			t.Fatalf("packet-headers MAXHEAP: %v", err)
		}
	}
	if int64(heap) >= limit {
		t.Errorf("packet-headers MAXHEAP %v is not below its memory limit %s", heap, ph.Resources.Limits["memory"])
	}
}

// TestDecodeStrict shows that a misspelt field fails the manifest checks.
func TestDecodeStrict(t *testing.T) {
	d := &k8sDoc{file: "x.yaml", kind: "DaemonSet", name: "x", raw: []byte(`
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: x}
spec:
  template:
    spec:
      containers:
        - name: c
          volumeMount: [{name: data, mountPath: /data}]
`)}
	var ds daemonSet
	if err := decodeStrict(d, &ds); err == nil || !strings.Contains(err.Error(), "volumeMount") {
		t.Errorf("decodeStrict = %v, want an error about volumeMount", err)
	}
}
