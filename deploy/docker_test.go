package deploy

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// dockerInstr is one instruction of a Dockerfile, continuation lines joined.
type dockerInstr struct {
	cmd  string // upper case
	args string
	line int
}

type dockerStage struct {
	name, from string
	base       *dockerStage // the stage FROM names, if it is one
	instrs     []dockerInstr
}

type dockerfile struct {
	stages []*dockerStage
}

var fromRE = regexp.MustCompile(`(?i)^(?:--\S+\s+)*(\S+)(?:\s+as\s+(\S+))?$`)

// parseDockerfile reads the repository's Dockerfile: enough of the syntax
// for the checks below (no heredocs, no parser directives but syntax).
func parseDockerfile(t testing.TB) *dockerfile {
	t.Helper()
	var instrs []dockerInstr
	var cur strings.Builder
	start := 0
	for i, l := range strings.Split(readFile(t, "Dockerfile"), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue // comments may also sit between continuation lines
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if s, ok := strings.CutSuffix(l, `\`); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(l)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		instrs = append(instrs, dockerInstr{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args), line: start})
		cur.Reset()
	}
	if cur.Len() > 0 {
		t.Fatal("Dockerfile ends in a continuation line")
	}
	df := &dockerfile{}
	globalArgs := make(map[string]string)
	for _, in := range instrs {
		switch {
		case in.cmd == "FROM":
			m := fromRE.FindStringSubmatch(in.args)
			if m == nil {
				t.Fatalf("Dockerfile:%d: cannot read FROM %s", in.line, in.args)
			}
			s := &dockerStage{name: m[2], from: expandArgs(m[1], globalArgs)}
			for _, prev := range df.stages {
				if prev.name != "" && prev.name == s.from {
					s.base = prev
				}
			}
			df.stages = append(df.stages, s)
		case len(df.stages) == 0 && in.cmd == "ARG":
			k, v, _ := strings.Cut(in.args, "=")
			globalArgs[k] = v
		case len(df.stages) == 0:
			t.Fatalf("Dockerfile:%d: %s before the first FROM", in.line, in.cmd)
		default:
			s := df.stages[len(df.stages)-1]
			s.instrs = append(s.instrs, in)
		}
	}
	if len(df.stages) == 0 {
		t.Fatal("Dockerfile has no FROM")
	}
	return df
}

// expandArgs replaces ${NAME} and $NAME by the values in args.
func expandArgs(s string, args map[string]string) string {
	return os.Expand(s, func(k string) string { return args[k] })
}

// defaultTarget is the stage docker build builds without --target.
func (df *dockerfile) defaultTarget() string { return df.stages[len(df.stages)-1].name }

func (df *dockerfile) stage(name string) *dockerStage {
	for _, s := range df.stages {
		if s.name == name {
			return s
		}
	}
	return nil
}

func (s *dockerStage) all(cmd string) []dockerInstr {
	var out []dockerInstr
	if s.base != nil {
		out = s.base.all(cmd)
	}
	for _, in := range s.instrs {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

// args returns the stage's ARG defaults.
func (s *dockerStage) args() map[string]string {
	args := make(map[string]string)
	for _, in := range s.all("ARG") {
		k, v, _ := strings.Cut(in.args, "=")
		args[k] = v
	}
	return args
}

// env returns the variables the stage's ENV instructions set.
func (s *dockerStage) env() map[string]string {
	env := make(map[string]string)
	for _, in := range s.all("ENV") {
		if !strings.Contains(strings.Fields(in.args)[0], "=") { // legacy ENV NAME value
			k, v, _ := strings.Cut(in.args, " ")
			env[k] = strings.TrimSpace(v)
			continue
		}
		for _, kv := range strings.Fields(in.args) {
			k, v, _ := strings.Cut(kv, "=")
			env[k] = strings.Trim(v, `"`)
		}
	}
	return env
}

// execForm returns the JSON array of the last cmd instruction (ENTRYPOINT,
// CMD), nil if there is none.
func (s *dockerStage) execForm(t testing.TB, cmd string) []string {
	t.Helper()
	ins := s.all(cmd)
	if len(ins) == 0 {
		return nil
	}
	var v []string
	if err := json.Unmarshal([]byte(ins[len(ins)-1].args), &v); err != nil {
		t.Fatalf("Dockerfile:%d: %s is not in exec form (a JSON array): %v", ins[len(ins)-1].line, cmd, err)
	}
	return v
}

// user returns the stage's USER, "" if none.
func (s *dockerStage) user() string {
	ins := s.all("USER")
	if len(ins) == 0 {
		return ""
	}
	return ins[len(ins)-1].args
}

// copied returns the paths the stage's COPY instructions create, with their
// --chown value.
func (s *dockerStage) copied() map[string]string {
	files := make(map[string]string)
	for _, in := range s.all("COPY") {
		var chown string
		var rest []string
		for _, f := range strings.Fields(in.args) {
			if v, ok := strings.CutPrefix(f, "--chown="); ok {
				chown = v
			} else if !strings.HasPrefix(f, "--") {
				rest = append(rest, f)
			}
		}
		if len(rest) < 2 {
			continue
		}
		srcs, dst := rest[:len(rest)-1], rest[len(rest)-1]
		for _, src := range srcs {
			p := dst
			if strings.HasSuffix(dst, "/") || len(srcs) > 1 {
				p = path.Join(dst, path.Base(src))
			}
			files[path.Clean(p)] = chown
		}
	}
	return files
}

// nonRootUser reports whether a USER value names a user other than root.
func nonRootUser(u string) bool {
	name, _, _ := strings.Cut(u, ":")
	return name != "" && name != "0" && name != "root"
}

func TestDockerfile(t *testing.T) {
	df := parseDockerfile(t)
	root := moduleRoot(t)
	if first, _, _ := strings.Cut(readFile(t, "Dockerfile"), "\n"); first != "# syntax=docker/dockerfile:1" {
		t.Errorf("Dockerfile must start with # syntax=docker/dockerfile:1 (BuildKit: cache mounts, COPY keeps the capability xattr), starts with %q", first)
	}

	build := df.stage("build")
	if build == nil {
		t.Fatal("no build stage")
	}
	if !strings.HasPrefix(build.from, "golang:") || !strings.Contains(build.from, "bookworm") {
		t.Errorf("build stage FROM %s, want golang:*-bookworm", build.from)
	}
	var built []string
	for _, in := range build.all("RUN") {
		if !strings.Contains(in.args, "go build") {
			continue
		}
		for _, want := range []string{"-trimpath", "-ldflags='-s -w'"} {
			if !strings.Contains(in.args, want) {
				t.Errorf("Dockerfile:%d: go build without %s", in.line, want)
			}
		}
		if build.env()["CGO_ENABLED"] != "0" && !strings.Contains(in.args, "CGO_ENABLED=0") {
			t.Errorf("Dockerfile:%d: go build without CGO_ENABLED=0", in.line)
		}
		for _, f := range strings.Fields(in.args) {
			if pkg, ok := strings.CutPrefix(f, "./cmd/"); ok {
				built = append(built, pkg)
				if _, err := os.Stat(filepath.Join(root, "cmd", pkg, "main.go")); err != nil {
					t.Errorf("Dockerfile:%d: builds ./cmd/%s: %v", in.line, pkg, err)
				}
			}
		}
	}
	for _, want := range append(slices.Clone(ourBinaries), "trafficgen") {
		if !slices.Contains(built, want) {
			t.Errorf("the build stage does not build ./cmd/%s", want)
		}
	}
	setcap := false
	for _, in := range build.all("RUN") {
		if !strings.Contains(in.args, "setcap") {
			continue
		}
		setcap = true
		cmd := expandArgs(in.args, build.args())
		if !strings.Contains(cmd, "/out/packet-headers") || !regexp.MustCompile(`cap_net_raw[a-z_,]*[=+]ep`).MatchString(cmd) {
			t.Errorf("Dockerfile:%d: want setcap cap_net_raw(...)=ep on packet-headers, got %s", in.line, cmd)
		}
	}
	if !setcap {
		t.Error("the build stage sets no file capability on packet-headers")
	}

	// The runtime stages: every stage but the build.
	for _, s := range df.stages {
		if s == build {
			continue
		}
		if !nonRootUser(s.user()) {
			t.Errorf("stage %s runs as %q, want a non-root USER", s.name, s.user())
		}
		if s.from != "scratch" && !strings.HasPrefix(s.from, "gcr.io/distroless/static") {
			t.Errorf("stage %s FROM %s, want distroless static or scratch", s.name, s.from)
		}
		ep := s.execForm(t, "ENTRYPOINT")
		if len(ep) == 0 {
			t.Errorf("stage %s has no ENTRYPOINT", s.name)
			continue
		}
		if _, ok := s.copied()[ep[0]]; !ok {
			t.Errorf("stage %s: ENTRYPOINT %s is not a file the stage copies (%v)", s.name, ep[0], sortedKeys(s.copied()))
		}
	}

	final := df.stage(df.defaultTarget())
	if ep := final.execForm(t, "ENTRYPOINT"); len(ep) != 1 || path.Base(ep[0]) != "packet-headers" {
		t.Errorf("default image ENTRYPOINT %v, want packet-headers alone (configured by the environment)", ep)
	}
	files := final.copied()
	for _, b := range ourBinaries {
		if _, ok := files["/usr/local/bin/"+b]; !ok {
			t.Errorf("default image lacks /usr/local/bin/%s", b)
		}
	}
	if final.env()["DATADIR"] != "/data" {
		t.Errorf("default image ENV DATADIR=%q, want /data", final.env()["DATADIR"])
	}
	if !slices.ContainsFunc(final.all("VOLUME"), func(in dockerInstr) bool { return strings.Contains(in.args, `"/data"`) }) {
		t.Error("default image has no VOLUME /data")
	}
	if owner, ok := files["/data"]; !ok || !nonRootUser(owner) || owner != final.user() {
		t.Errorf("default image: /data must be copied --chown to the USER %s (a fresh volume takes its owner), got %q", final.user(), owner)
	}
	if !slices.ContainsFunc(final.all("EXPOSE"), func(in dockerInstr) bool { return slices.Contains(strings.Fields(in.args), "9990") }) {
		t.Error("default image does not EXPOSE 9990")
	}
}

// TestDockerignore checks that the build context keeps everything the build
// needs: go.mod, go.sum and the files of every package the binaries import.
func TestDockerignore(t *testing.T) {
	root := moduleRoot(t)
	var patterns []string
	for _, l := range strings.Split(readFile(t, ".dockerignore"), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, "!") {
			t.Fatalf(".dockerignore: exceptions (%s) are not understood by this test", l)
		}
		patterns = append(patterns, l)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "list", "-deps",
		"-f", `{{if .Module}}{{if .Module.Main}}{{$d := .Dir}}{{range .GoFiles}}{{$d}}/{{.}}
{{end}}{{range .EmbedFiles}}{{$d}}/{{.}}
{{end}}{{end}}{{end}}`,
		"./cmd/packet-headers", "./cmd/pcap-archiver", "./cmd/trafficgen")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	needed := []string{"go.mod", "go.sum"}
	for _, f := range strings.Fields(string(out)) {
		rel, err := filepath.Rel(root, f)
		if err != nil {
			t.Fatal(err)
		}
		needed = append(needed, filepath.ToSlash(rel))
	}
	if len(needed) < 10 {
		t.Fatalf("go list found only %v", needed)
	}
	for _, f := range needed {
		for _, p := range patterns {
			if ignoreMatch(p, f) {
				t.Errorf(".dockerignore pattern %q excludes %s, which the build needs", p, f)
			}
		}
	}
}

// ignoreMatch reports whether a .dockerignore pattern excludes name (a
// slash-separated path relative to the context): the pattern matches name
// or one of its parent directories; "**" matches any number of directories.
func ignoreMatch(pattern, name string) bool {
	ps := strings.Split(path.Clean(strings.TrimPrefix(pattern, "/")), "/")
	ns := strings.Split(name, "/")
	for i := 1; i <= len(ns); i++ {
		if segmentsMatch(ps, ns[:i]) {
			return true
		}
	}
	return false
}

func segmentsMatch(ps, ns []string) bool {
	if len(ps) == 0 {
		return len(ns) == 0
	}
	if ps[0] == "**" {
		for i := 0; i <= len(ns); i++ {
			if segmentsMatch(ps[1:], ns[i:]) {
				return true
			}
		}
		return false
	}
	if len(ns) == 0 {
		return false
	}
	ok, err := path.Match(ps[0], ns[0])
	return err == nil && ok && segmentsMatch(ps[1:], ns[1:])
}

func TestIgnoreMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, name string
		want          bool
	}{
		{"deploy", "deploy/deploy_test.go", true},
		{"deploy", "deployment.go", false},
		{"**/testdata", "events/testdata/x.jsonl", true},
		{"**/testdata", "testdata/x", true},
		{"**/*.md", "README.md", true},
		{"**/*.md", "cmd/x/doc.go", false},
		{"local-dev/run", "local-dev/run.sh", false},
		{"local-dev/run", "local-dev/run/bin/x", true},
		{".git", ".gitignore", false},
	} {
		if got := ignoreMatch(tc.pattern, tc.name); got != tc.want {
			t.Errorf("ignoreMatch(%q, %q) = %v, want %v", tc.pattern, tc.name, got, tc.want)
		}
	}
}
