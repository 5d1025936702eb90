package deploy

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// ourBinaries are the programs of this repository that deployments configure
// through the environment.
var ourBinaries = []string{"packet-headers", "pcap-archiver"}

// demoBinaries are the other programs of this repository the deployment
// files run; they read no environment variables.
var demoBinaries = []string{"trafficgen"}

// thirdPartyEnv reports whether name is read by a library the binaries use
// (the GCS and AWS SDKs) rather than by a flag. Only these may be set next to
// the binaries' own variables.
func thirdPartyEnv(name string) bool {
	switch name {
	case "STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS":
		return true
	}
	return strings.HasPrefix(name, "AWS_")
}

var (
	rootOnce sync.Once
	rootDir  string
	rootErr  error
)

// moduleRoot is the directory of the go.mod above the working directory.
func moduleRoot(t testing.TB) string {
	t.Helper()
	rootOnce.Do(func() {
		dir, err := os.Getwd()
		if err != nil {
			rootErr = err
			return
		}
		for {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				rootDir = dir
				return
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				rootErr = fmt.Errorf("no go.mod above the working directory")
				return
			}
			dir = parent
		}
	})
	if rootErr != nil {
		t.Fatal(rootErr)
	}
	return rootDir
}

// readFile reads a file given relative to the module root.
func readFile(t testing.TB, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(moduleRoot(t), filepath.FromSlash(rel)))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// envVar is one environment variable of a binary, from its -help.
type envVar struct {
	flag       string
	def        string // the flag's default as -help prints it, unquoted
	hasDefault bool   // -help printed a default (it omits zero values)
}

// binary is one of our programs, built for the test.
type binary struct {
	name string
	path string
	env  map[string]envVar // nil for demoBinaries
}

// buildBinaries builds ourBinaries and demoBinaries into a temporary
// directory and reads the environment variables each of ourBinaries lists in
// its -help.
func buildBinaries(t *testing.T) map[string]*binary {
	t.Helper()
	root := moduleRoot(t)
	all := append(slices.Clone(ourBinaries), demoBinaries...)
	for _, name := range all {
		if _, err := os.Stat(filepath.Join(root, "cmd", name)); err != nil {
			t.Fatalf("cmd/%s: %v; the deployment files run it", name, err)
		}
	}
	dir := t.TempDir()
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	for _, name := range all {
		args = append(args, "./cmd/"+name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	bins := make(map[string]*binary)
	for _, name := range ourBinaries {
		b := &binary{name: name, path: filepath.Join(dir, name)}
		out, err := b.help(nil)
		if err != nil {
			t.Fatalf("%s -help: %v\n%s", name, err, out)
		}
		if b.env, err = parseHelp(out); err != nil {
			t.Fatalf("%s -help: %v\n%s", name, err, out)
		}
		bins[name] = b
	}
	for _, name := range demoBinaries {
		bins[name] = &binary{name: name, path: filepath.Join(dir, name)}
	}
	return bins
}

// help runs the binary with -help and exactly env as its environment. The
// binaries read the environment before the flags, so a value that does not
// parse makes -help fail.
func (b *binary) help(env map[string]string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.path, "-help")
	cmd.Env = []string{} // not nil: nothing inherited
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// checkEnv returns one error per variable of env that b does not read and
// that is not a third-party one, then runs b -help with env to see that the
// values parse.
func (b *binary) checkEnv(env map[string]string) []error {
	var errs []error
	for _, name := range sortedKeys(env) {
		if _, ok := b.env[name]; !ok && !thirdPartyEnv(name) {
			errs = append(errs, fmt.Errorf("%s does not read %s (its variables: %s)", b.name, name, strings.Join(sortedKeys(b.env), " ")))
		}
	}
	if len(errs) > 0 {
		return errs
	}
	if out, err := b.help(env); err != nil {
		errs = append(errs, fmt.Errorf("%s refuses the environment %v: %v\n%s", b.name, env, err, out))
	}
	return errs
}

var (
	helpFlagRE = regexp.MustCompile(`^  -(\S+)`)
	helpEnvRE  = regexp.MustCompile(`\(env ([A-Z][A-Z0-9_]*)\)(?: \(default (.*)\))?$`)
)

// parseHelp reads flag.PrintDefaults output in which every flag's help ends
// with "(env NAME)", followed by "(default X)" unless the default is a zero
// value.
func parseHelp(out string) (map[string]envVar, error) {
	env := make(map[string]envVar)
	var name string
	var help []string
	flush := func() error {
		if name == "" {
			return nil
		}
		text := strings.Join(help, " ")
		m := helpEnvRE.FindStringSubmatchIndex(text)
		if m == nil {
			return fmt.Errorf("flag -%s names no environment variable: %q", name, text)
		}
		v := envVar{flag: name}
		envName := text[m[2]:m[3]]
		if m[4] >= 0 {
			v.hasDefault = true
			v.def = text[m[4]:m[5]]
			if s, err := strconv.Unquote(v.def); err == nil {
				v.def = s
			}
		}
		if _, dup := env[envName]; dup {
			return fmt.Errorf("%s is the variable of two flags", envName)
		}
		env[envName] = v
		return nil
	}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if m := helpFlagRE.FindStringSubmatch(line); m != nil {
			if err := flush(); err != nil {
				return nil, err
			}
			name, help = m[1], nil
			continue
		}
		if name != "" && strings.HasPrefix(line, "    \t") {
			help = append(help, strings.TrimSpace(line))
		}
	}
	if err := flush(); err != nil {
		return nil, err
	}
	if len(env) == 0 {
		return nil, fmt.Errorf("no flag with an (env NAME) in the output")
	}
	return env, nil
}

// defaultMatches reports whether value, written in a deployment file as a
// variable's default, is the default -help prints.
func defaultMatches(value string, v envVar) bool {
	if !v.hasDefault {
		// -help omits zero values; these are their spellings.
		switch value {
		case "", "0", "false", "none":
			return true
		}
		return false
	}
	if value == v.def {
		return true
	}
	a, errA := time.ParseDuration(value)
	b, errB := time.ParseDuration(v.def)
	return errA == nil && errB == nil && a == b
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// listenPort returns the port of a listen address such as ":9990".
func listenPort(addr string) (string, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("listen address %q: %w", addr, err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return "", fmt.Errorf("listen address %q: bad port", addr)
	}
	return port, nil
}

// flagValue returns the value of -name (or --name) in args, written
// -name=value or -name value.
func flagValue(args []string, name string) (string, bool) {
	for i, a := range args {
		if !strings.HasPrefix(a, "-") {
			continue
		}
		a = strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-")
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v, true
		}
		if a == name && i+1 < len(args) {
			return args[i+1], true
		}
	}
	return "", false
}

// TestSettingsAgainstBinaries checks what the deployment files give our
// binaries against the binaries themselves: every environment variable (the
// binary reads it, its value parses) and the traffic generator's commands.
func TestSettingsAgainstBinaries(t *testing.T) {
	bins := buildBinaries(t)

	t.Run("compose", func(t *testing.T) {
		p := loadCompose(t, nil, "", []string{"*"})
		img := parseDockerfile(t)
		checked := 0
		for _, name := range sortedKeys(p.Services) {
			s := p.Services[name]
			prog := composeProgram(t, img, s)
			env := composeEnv(s)
			switch {
			case prog == "":
				continue
			case bins[prog] == nil:
				t.Errorf("service %s runs %s, which is not a command of this repository", name, prog)
				continue
			case bins[prog].env == nil:
				if len(env) > 0 {
					t.Errorf("service %s runs %s, which reads no environment variables, but sets %v", name, prog, sortedKeys(env))
				}
				continue
			}
			checked++
			for _, err := range bins[prog].checkEnv(env) {
				t.Errorf("service %s: %v", name, err)
			}
		}
		if checked < len(ourBinaries) {
			t.Errorf("only %d compose services run our binaries, want at least %d", checked, len(ourBinaries))
		}
	})

	t.Run("env-file", func(t *testing.T) {
		checkEnvFile(t, bins, "deploy/packet-headers.env", "packet-headers")
	})

	t.Run("k8s", func(t *testing.T) {
		m := loadManifests(t)
		img := parseDockerfile(t)
		for _, c := range m.ourContainers(t, img) {
			env := make(map[string]string)
			values := make(map[string]string)
			for _, e := range c.c.Env {
				env[e.Name] = e.Value
				if len(e.ValueFrom) == 0 {
					values[e.Name] = e.Value
				}
			}
			for _, err := range bins[c.program].checkEnv(env) {
				t.Errorf("container %s: %v", c.c.Name, err)
			}
			if out, err := bins[c.program].help(values); err != nil {
				t.Errorf("container %s: %s refuses its environment: %v\n%s", c.c.Name, c.program, err, out)
			}
		}
	})

	t.Run("trafficgen", func(t *testing.T) {
		// Its flags parse: the flag package reads them all before -h.
		p := loadCompose(t, nil, "", []string{"*"})
		img := parseDockerfile(t)
		n := 0
		for _, name := range sortedKeys(p.Services) {
			s := p.Services[name]
			if composeProgram(t, img, s) != "trafficgen" {
				continue
			}
			n++
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			cmd := exec.CommandContext(ctx, bins["trafficgen"].path, append(slices.Clone([]string(s.Command)), "-h")...)
			cmd.Env = []string{}
			out, _ := cmd.CombinedOutput()
			cancel()
			if !strings.Contains(string(out), "Usage of") || strings.Contains(string(out), "not defined") || strings.Contains(string(out), "invalid") {
				t.Errorf("service %s: trafficgen %s does not parse:\n%s", name, strings.Join(s.Command, " "), out)
			}
		}
		if n < 2 {
			t.Errorf("%d services run trafficgen, want a server and a client", n)
		}
	})

	t.Run("Dockerfile", func(t *testing.T) {
		// Both binaries run in the default image: its ENV must suit both.
		img := parseDockerfile(t)
		env := img.stage(img.defaultTarget()).env()
		for _, prog := range ourBinaries {
			for _, err := range bins[prog].checkEnv(env) {
				t.Errorf("Dockerfile ENV: %v", err)
			}
		}
	})
}

// envLine is a variable line of an env file.
type envLine struct {
	name, value string
	set         bool     // NAME=value, not #NAME=value
	doc         []string // the comment lines above it
	line        int
}

var (
	envSetRE       = regexp.MustCompile(`^([A-Z][A-Z0-9_]*)=(.*)$`)
	envCommentedRE = regexp.MustCompile(`^#([A-Z][A-Z0-9_]*)=(.*)$`)
	envDefaultRE   = regexp.MustCompile(`Default: (\S+)`)
)

// parseEnvFile reads the format deploy/packet-headers.env describes.
func parseEnvFile(text string) ([]envLine, error) {
	var lines []envLine
	var doc []string
	for i, l := range strings.Split(text, "\n") {
		switch {
		case strings.TrimSpace(l) == "":
			doc = nil
		case envCommentedRE.MatchString(l):
			m := envCommentedRE.FindStringSubmatch(l)
			lines = append(lines, envLine{name: m[1], value: m[2], doc: doc, line: i + 1})
		case envSetRE.MatchString(l):
			m := envSetRE.FindStringSubmatch(l)
			lines = append(lines, envLine{name: m[1], value: m[2], set: true, doc: doc, line: i + 1})
		case l == "#" || strings.HasPrefix(l, "# "):
			doc = append(doc, l)
		default:
			return nil, fmt.Errorf("line %d: %q is neither a comment (\"# ...\") nor a variable (NAME=value, #NAME=value)", i+1, l)
		}
	}
	return lines, nil
}

// checkEnvFile checks an env file for the program prog: it documents every
// variable of every binary once, sets only variables prog reads, and shows
// the right defaults.
func checkEnvFile(t *testing.T, bins map[string]*binary, rel, prog string) {
	lines, err := parseEnvFile(readFile(t, rel))
	if err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
	// The variable of each name, from prog if it reads it.
	known := make(map[string]envVar)
	for _, b := range bins {
		for name, v := range b.env {
			if _, ok := known[name]; !ok || b.name == prog {
				known[name] = v
			}
		}
	}
	seen := make(map[string]bool)
	set := make(map[string]string)
	for _, l := range lines {
		where := fmt.Sprintf("%s:%d: %s", rel, l.line, l.name)
		if seen[l.name] {
			t.Errorf("%s appears twice", where)
		}
		seen[l.name] = true
		v, ok := known[l.name]
		if !ok && !thirdPartyEnv(l.name) {
			t.Errorf("%s: no binary reads it", where)
			continue
		}
		if l.set {
			set[l.name] = l.value
		}
		if !ok {
			continue // third party: no default to compare
		}
		if len(l.doc) == 0 || !strings.Contains(strings.Join(l.doc, " "), "-"+v.flag) {
			t.Errorf("%s: its comment must name its flag -%s", where, v.flag)
		}
		if !l.set {
			if !defaultMatches(l.value, v) {
				t.Errorf("%s: commented value %q is not the default %q", where, l.value, v.def)
			}
			continue
		}
		m := envDefaultRE.FindStringSubmatch(strings.Join(l.doc, " "))
		switch {
		case m == nil:
			t.Errorf("%s is set: its comment must say \"Default: X\" (or \"Default: unset\")", where)
		case m[1] == "unset" && v.hasDefault:
			t.Errorf("%s: comment says no default, the binary's is %q", where, v.def)
		case m[1] != "unset" && !defaultMatches(strings.TrimRight(m[1], ",;"), v):
			t.Errorf("%s: comment says default %q, the binary's is %q", where, m[1], v.def)
		}
	}
	for _, name := range sortedKeys(known) {
		if !seen[name] {
			t.Errorf("%s does not document %s (-%s)", rel, name, known[name].flag)
		}
	}
	for _, err := range bins[prog].checkEnv(set) {
		t.Errorf("%s: %v", rel, err)
	}
	// Every documented value parses, for every binary that reads it.
	for _, b := range bins {
		env := make(map[string]string)
		for _, l := range lines {
			if _, ok := b.env[l.name]; ok && l.value != "" {
				env[l.name] = l.value
			}
		}
		if out, err := b.help(env); err != nil {
			t.Errorf("%s: %s refuses the documented values: %v\n%s", rel, b.name, err, out)
		}
	}
}

func TestParseHelp(t *testing.T) {
	out := `Usage: x [flags]

  -archive.size value
    	Seal a tarball when it reaches this. (env ARCHIVE_SIZE) (default 20MB)
  -datadir string
    	Directory. (env DATADIR) (default ".")
  -maxflows int
    	Refuse new flows; 0 means no limit. (env MAXFLOWS)
  -stream
    	Accepted for compatibility. (env STREAM)
`
	got, err := parseHelp(out)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]envVar{
		"ARCHIVE_SIZE": {flag: "archive.size", def: "20MB", hasDefault: true},
		"DATADIR":      {flag: "datadir", def: ".", hasDefault: true},
		"MAXFLOWS":     {flag: "maxflows"},
		"STREAM":       {flag: "stream"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("parseHelp:\n got %v\nwant %v", got, want)
	}
	if _, err := parseHelp("  -x string\n    \tno variable here\n"); err == nil {
		t.Error("parseHelp accepted a flag without (env NAME)")
	}
}

// TestCheckEnvRejects shows that a variable no binary reads fails the checks.
func TestCheckEnvRejects(t *testing.T) {
	b := &binary{name: "packet-headers", env: map[string]envVar{"DATADIR": {flag: "datadir"}}}
	errs := b.checkEnv(map[string]string{"DATADIR": "/data", "DATA_DIR": "/data", "AWS_REGION": "x", "STORAGE_EMULATOR_HOST": "h"})
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "DATA_DIR") {
		t.Errorf("checkEnv = %v, want exactly one error, for DATA_DIR", errs)
	}
}

func TestParseEnvFile(t *testing.T) {
	lines, err := parseEnvFile("# -datadir: where. Default: .\nDATADIR=/data\n\n# -x: y\n#X=1s\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != 2 || !lines[0].set || lines[0].value != "/data" || len(lines[0].doc) != 1 ||
		lines[1].set || lines[1].name != "X" || lines[1].value != "1s" {
		t.Errorf("parseEnvFile = %+v", lines)
	}
	if _, err := parseEnvFile("#comment without a space\n"); err == nil {
		t.Error("parseEnvFile accepted a line of unknown form")
	}
}

func TestDefaultMatches(t *testing.T) {
	for _, tc := range []struct {
		value string
		v     envVar
		want  bool
	}{
		{"1h", envVar{def: "1h0m0s", hasDefault: true}, true},
		{"30s", envVar{def: "30s", hasDefault: true}, true},
		{"20MB", envVar{def: "20MB", hasDefault: true}, true},
		{"20MiB", envVar{def: "20MB", hasDefault: true}, false},
		{"none", envVar{}, true},
		{"", envVar{}, true},
		{"5", envVar{}, false},
		{"2s", envVar{def: "1s", hasDefault: true}, false},
	} {
		if got := defaultMatches(tc.value, tc.v); got != tc.want {
			t.Errorf("defaultMatches(%q, %+v) = %v, want %v", tc.value, tc.v, got, tc.want)
		}
	}
}
