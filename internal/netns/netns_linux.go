//go:build linux

package netns

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// seq makes names unique among the pairs of one process.
var seq atomic.Uint64

var prefixRE = regexp.MustCompile(`^[a-z0-9-]{1,16}$`)

// Pair is two namespaces joined by a veth pair. Create it with New and
// release it with Close. Its methods are safe for concurrent use.
type Pair struct {
	// Server holds 192.0.2.1 and 2001:db8::1 on ServerVeth.
	Server Namespace
	// Client holds 192.0.2.2 and 2001:db8::2 on ClientVeth.
	Client Namespace

	ip string

	closeOnce sync.Once
	closeErr  error
}

// New creates the two namespaces, the veth pair between them, the addresses
// and brings all links (loopback included) up. The veth ends carry only the
// documentation addresses (no IPv6 link-local address). IPv6 addresses use
// nodad, so they are usable at once. New waits until both veth ends report carrier.
//
// Before creating anything, New deletes namespaces left behind by earlier
// processes with the same prefix that no longer run (a test binary killed
// before its cleanup). On error everything created so far is removed.
func New(ctx context.Context, cfg Config) (*Pair, error) {
	prefix := cfg.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !prefixRE.MatchString(prefix) {
		return nil, fmt.Errorf("netns: invalid prefix %q (want [a-z0-9-]{1,16})", prefix)
	}
	ip := cfg.IPPath
	if ip == "" {
		ip = "ip"
	}
	ip, err := exec.LookPath(ip)
	if err != nil {
		return nil, fmt.Errorf("netns: find ip(8): %w", err)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("netns: creating network namespaces needs root")
	}
	sweepStale(ctx, ip, prefix)

	base := fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), seq.Add(1))
	p := &Pair{
		Server: Namespace{Name: base + "-srv", Veth: ServerVeth, IPv4: ServerIPv4, IPv6: ServerIPv6},
		Client: Namespace{Name: base + "-cli", Veth: ClientVeth, IPv4: ClientIPv4, IPv6: ClientIPv6},
		ip:     ip,
	}
	if err := p.setup(ctx); err != nil {
		if cerr := p.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		return nil, err
	}
	return p, nil
}

func (p *Pair) setup(ctx context.Context) error {
	s, c := p.Server, p.Client
	steps := [][]string{
		{"netns", "add", s.Name},
		{"netns", "add", c.Name},
		// Create both ends directly inside their namespaces, so nothing ever
		// appears in the caller's namespace.
		{"link", "add", s.Veth, "netns", s.Name, "type", "veth", "peer", "name", c.Veth, "netns", c.Name},
	}
	for _, n := range []Namespace{s, c} {
		steps = append(steps,
			[]string{"-n", n.Name, "link", "set", "lo", "up"},
			// No IPv6 link-local address (nor router solicitations and
			// MLD reports from one): only documentation addresses.
			[]string{"-n", n.Name, "link", "set", n.Veth, "addrgenmode", "none"},
			[]string{"-n", n.Name, "addr", "add", n.IPv4.String() + "/24", "dev", n.Veth},
			[]string{"-n", n.Name, "addr", "add", n.IPv6.String() + "/64", "dev", n.Veth, "nodad"},
			[]string{"-n", n.Name, "link", "set", n.Veth, "up"},
		)
	}
	for _, args := range steps {
		if _, err := runIP(ctx, p.ip, args...); err != nil {
			return err
		}
	}
	for _, n := range []Namespace{s, c} {
		if err := waitUp(ctx, p.ip, n, 5*time.Second); err != nil {
			return err
		}
	}
	return nil
}

// waitUp polls until n.Veth's operstate is UP.
func waitUp(ctx context.Context, ip string, n Namespace, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		out, err := runIP(ctx, ip, "-n", n.Name, "-j", "link", "show", "dev", n.Veth)
		if err != nil {
			return err
		}
		var links []struct {
			OperState string `json:"operstate"`
		}
		if err := json.Unmarshal(out, &links); err != nil {
			return fmt.Errorf("netns: parse `ip link show` output: %w", err)
		}
		if len(links) == 1 {
			last = links[0].OperState
			if last == "UP" {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("netns: %s in %s not up after %v (operstate %q)", n.Veth, n.Name, timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Close kills every process still running in the two namespaces and deletes
// them (which also destroys the veth pair). It is safe to call more than once
// and from several goroutines; later calls return the first call's result.
func (p *Pair) Close() error {
	p.closeOnce.Do(func() {
		// Not bound to a caller's context: cleanup must run even after the
		// test's context is gone.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		p.closeErr = removeAll(ctx, p.ip, []string{p.Server.Name, p.Client.Name})
	})
	return p.closeErr
}

// removeAll kills the processes in the named namespaces and deletes them.
// Namespaces that do not exist are ignored.
func removeAll(ctx context.Context, ip string, names []string) error {
	existing := listNamespaces(ctx, ip)
	var errs []error
	for _, name := range names {
		if !existing[name] {
			continue
		}
		if err := killAll(ctx, ip, name); err != nil {
			errs = append(errs, err)
		}
	}
	for _, name := range names {
		if !existing[name] {
			continue
		}
		if _, err := runIP(ctx, ip, "netns", "del", name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// killAll sends SIGKILL to every process in namespace name and waits until
// none is left.
func killAll(ctx context.Context, ip, name string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids, err := nsPids(ctx, ip, name)
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		for _, pid := range pids {
			// ESRCH: already gone. Anything else will show up again in the
			// next listing and eventually in the timeout error.
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("netns: processes %v in %s survive SIGKILL", pids, name)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func nsPids(ctx context.Context, ip, name string) ([]int, error) {
	out, err := runIP(ctx, ip, "netns", "pids", name)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("netns: parse `ip netns pids %s` output %q: %w", name, f, err)
		}
		if pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// listNamespaces returns the names `ip netns list` knows. Errors yield an
// empty set: callers use it to skip work, never to decide what to create.
func listNamespaces(ctx context.Context, ip string) map[string]bool {
	out, err := runIP(ctx, ip, "netns", "list")
	names := map[string]bool{}
	if err != nil {
		return names
	}
	for _, line := range strings.Split(string(out), "\n") {
		// Lines look like "name" or "name (id: 3)".
		if f := strings.Fields(line); len(f) > 0 {
			names[f[0]] = true
		}
	}
	return names
}

// sweepStale deletes namespaces named by this package (with prefix) whose
// creating process is gone. Best effort: errors are ignored.
func sweepStale(ctx context.Context, ip, prefix string) {
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(prefix) + `-(\d+)-\d+-(srv|cli)$`)
	var stale []string
	for name := range listNamespaces(ctx, ip) {
		m := re.FindStringSubmatch(name)
		if m == nil {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(err, os.ErrNotExist) {
			stale = append(stale, name)
		}
	}
	if len(stale) > 0 {
		_ = removeAll(ctx, ip, stale)
	}
}

func runIP(ctx context.Context, ip string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, ip, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("netns: ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Command returns a Cmd that runs name with args inside this namespace.
func (n Namespace) Command(name string, args ...string) *exec.Cmd {
	return Command(n.Name, name, args...)
}

// CommandContext is Command with a context that kills the process.
func (n Namespace) CommandContext(ctx context.Context, name string, args ...string) *exec.Cmd {
	return CommandContext(ctx, n.Name, name, args...)
}

// Exec runs name with args inside this namespace and returns its standard
// output. On failure the error includes its standard error.
func (n Namespace) Exec(ctx context.Context, name string, args ...string) ([]byte, error) {
	return Exec(ctx, n.Name, name, args...)
}

// Command returns a Cmd that runs name with args inside network namespace ns
// (`ip netns exec ns name args...`). ip execs the program directly, so the
// Cmd's process is the program itself: signals reach it, not a wrapper.
func Command(ns, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// CommandContext is Command with a context that kills the process.
func CommandContext(ctx context.Context, ns, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// Exec runs name with args inside namespace ns and returns its standard
// output. On failure the error includes its standard error.
func Exec(ctx context.Context, ns, name string, args ...string) ([]byte, error) {
	cmd := CommandContext(ctx, ns, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("netns: exec %s in %s: %w: %s", name, ns, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Do runs fn on an OS thread switched into the named network namespace and
// returns fn's error. Sockets fn creates stay in that namespace. The
// thread is never switched back: it stays locked, so the Go runtime
// discards it when fn returns and no other goroutine ever runs in the
// namespace.
func Do(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open(filepath.Join("/run/netns", ns))
		if err != nil {
			errc <- err
			return
		}
		err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
		f.Close()
		if err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}
