package capture

import (
	"errors"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// loopbackName returns the name of a loopback interface of this host.
func loopbackName(t *testing.T) string {
	t.Helper()
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagLoopback != 0 {
			return ifc.Name
		}
	}
	t.Skip("no loopback interface")
	return ""
}

func TestConfigDefaults(t *testing.T) {
	c := Config{Interfaces: []string{"x"}}.withDefaults()
	if c.Workers != min(runtime.NumCPU(), MaxWorkers) || c.SnapLen != 256 || c.BlockSize != 1<<20 ||
		c.NumBlocks != 16 || c.BlockTimeout != 2*time.Millisecond || c.TickInterval != 50*time.Millisecond ||
		c.FanoutGroup == 0 {
		t.Errorf("defaults: %+v", c)
	}
	if err := c.validateSizes(); err != nil {
		t.Errorf("defaults invalid: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	lo := loopbackName(t)
	page := os.Getpagesize()
	tests := []struct {
		name string
		cfg  Config
		want string // "" = valid
	}{
		{"defaults", Config{Interfaces: []string{lo}}, ""},
		{"all set", Config{Interfaces: []string{lo}, Workers: 3, SnapLen: 1500, BlockSize: 4 * page, NumBlocks: 2,
			BlockTimeout: time.Millisecond, TickInterval: time.Second, FanoutGroup: 7}, ""},
		{"no interfaces", Config{}, "no interface configured"},
		{"empty name", Config{Interfaces: []string{""}}, "empty interface name"},
		{"twice", Config{Interfaces: []string{lo, lo}}, "listed twice"},
		{"missing", Config{Interfaces: []string{"eth7-hc-none"}}, "interface eth7-hc-none: no such interface"},
		{"negative workers", Config{Interfaces: []string{lo}, Workers: -1}, "workers"},
		{"too many workers", Config{Interfaces: []string{lo}, Workers: MaxWorkers + 1}, "workers"},
		{"snaplen small", Config{Interfaces: []string{lo}, SnapLen: 20}, "snaplen"},
		{"snaplen big", Config{Interfaces: []string{lo}, SnapLen: 1 << 20}, "snaplen"},
		{"block not page multiple", Config{Interfaces: []string{lo}, BlockSize: page + 1}, "page size"},
		{"block too small for snaplen", Config{Interfaces: []string{lo}, BlockSize: page, SnapLen: MaxSnapLen}, "cannot hold"},
		{"negative blocks", Config{Interfaces: []string{lo}, NumBlocks: -1}, "blocks"},
		{"ring too big", Config{Interfaces: []string{lo}, BlockSize: 1 << 30, NumBlocks: 8}, "too large"},
		{"block timeout sub-ms", Config{Interfaces: []string{lo}, BlockTimeout: time.Microsecond}, "block timeout"},
		{"tick negative", Config{Interfaces: []string{lo}, TickInterval: -time.Second}, "tick interval"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Validate = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	err := Config{Interfaces: []string{"eth7-hc-none"}}.Validate()
	if !errors.Is(err, ErrNoSuchInterface) {
		t.Errorf("missing interface error %v is not ErrNoSuchInterface", err)
	}
}

func TestDefaultInterfaces(t *testing.T) {
	names, err := DefaultInterfaces()
	if err != nil {
		t.Logf("DefaultInterfaces: %v", err) // a host with only loopback up
		return
	}
	for _, n := range names {
		ifc, err := net.InterfaceByName(n)
		if err != nil {
			t.Fatal(err)
		}
		if ifc.Flags&net.FlagLoopback != 0 || ifc.Flags&net.FlagUp == 0 {
			t.Errorf("%s: flags %v", n, ifc.Flags)
		}
	}
}
