// Package cli turns a binary's flags and environment into its configuration,
// the same way for every binary of the project: each field of a config
// struct is a flag (its `flag` tag) and an environment variable (its
// `envconfig` tag, the flag's name upper-cased with '.' and '-' as '_'),
// read with envconfig; the command line wins over the environment, which
// wins over the defaults. Only cmd/ packages use it.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/kelseyhightower/envconfig"
)

// EnvName is the environment variable of a flag.
func EnvName(flagName string) string {
	return strings.NewReplacer(".", "_", "-", "_").Replace(strings.ToUpper(flagName))
}

// fields calls fn for every flag field of the struct v points to, looking
// into embedded structs.
func fields(v reflect.Value, fn func(f reflect.StructField, p any)) {
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Anonymous && f.Type.Kind() == reflect.Struct {
			fields(v.Field(i), fn)
			continue
		}
		if f.Tag.Get("flag") == "" {
			continue
		}
		fn(f, v.Field(i).Addr().Interface())
	}
}

// NewFlagSet binds a flag to every tagged field of cfg, a pointer to a
// struct; each flag's help names its environment variable.
func NewFlagSet(name, usage string, cfg any, output io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(output)
	fields(reflect.ValueOf(cfg).Elem(), func(f reflect.StructField, p any) {
		name := f.Tag.Get("flag")
		help := f.Tag.Get("help") + " (env " + EnvName(name) + ")"
		switch p := p.(type) {
		case *time.Duration:
			fs.DurationVar(p, name, *p, help)
		case *string:
			fs.StringVar(p, name, *p, help)
		case *int:
			fs.IntVar(p, name, *p, help)
		case *bool:
			fs.BoolVar(p, name, *p, help)
		case flag.Value:
			fs.Var(p, name, help)
		default:
			panic(fmt.Sprintf("config field %s has no flag type", f.Name)) // a programming error, caught by the tests
		}
	})
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: %s [flags]\n\n%s\n\n", name, strings.TrimSpace(usage))
		fs.PrintDefaults()
	}
	return fs
}

// Parse fills cfg (a pointer to a struct holding its defaults) from the
// environment with envconfig, then from args. Errors are returned, not
// printed; -help prints the usage to output and returns flag.ErrHelp.
func Parse(name, usage string, cfg any, args []string, output io.Writer) error {
	if err := envconfig.Process("", cfg); err != nil {
		return fmt.Errorf("environment: %w", err)
	}
	fields(reflect.ValueOf(cfg).Elem(), func(_ reflect.StructField, p any) {
		if l, ok := p.(*StringList); ok {
			l.fromEnv = len(l.Values) > 0
		}
	})
	fs := NewFlagSet(name, usage, cfg, io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(output)
			fs.Usage()
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	return nil
}

// EnvNames lists the environment variables of cfg's fields, sorted.
func EnvNames(cfg any) []string {
	var names []string
	fields(reflect.ValueOf(cfg).Elem(), func(f reflect.StructField, _ any) {
		names = append(names, f.Tag.Get("envconfig"))
	})
	sort.Strings(names)
	return names
}

// StringList is a repeatable flag. Values from the environment (comma
// separated) are replaced, not extended, by the first value on the command
// line.
type StringList struct {
	Values  []string
	fromEnv bool
}

func (s *StringList) String() string { return strings.Join(s.Values, ",") }

// Set implements flag.Value.
func (s *StringList) Set(v string) error {
	if s.fromEnv {
		s.Values, s.fromEnv = nil, false
	}
	if v == "" {
		return errors.New("empty value")
	}
	s.Values = append(s.Values, v)
	return nil
}

// Decode implements envconfig.Decoder.
func (s *StringList) Decode(v string) error {
	s.Values = nil
	for _, x := range strings.Split(v, ",") {
		if x = strings.TrimSpace(x); x != "" {
			s.Values = append(s.Values, x)
		}
	}
	return nil
}

// ByteSize is a size in bytes written like m-lab/go/bytecount: 256, 64KB,
// 3GB (decimal units), also 8GiB-style binary units.
type ByteSize int64

// Decimal units, as m-lab/go/bytecount has them.
const (
	Kilobyte ByteSize = 1000
	Megabyte          = 1000 * Kilobyte
	Gigabyte          = 1000 * Megabyte
)

var sizeRE = regexp.MustCompile(`^([0-9]+)\s*([KMGT]?)(i?)(B?)$`)

// Set implements flag.Value.
func (b *ByteSize) Set(s string) error {
	m := sizeRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil || (m[3] == "i" && m[2] == "") {
		return fmt.Errorf("invalid size %q (want e.g. 256, 64KB, 3GB or 8GiB)", s)
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return fmt.Errorf("invalid size %q: %w", s, err)
	}
	unit := int64(1)
	base := int64(1000)
	if m[3] == "i" {
		base = 1024
	}
	if m[2] != "" {
		for range strings.Index("KMGT", m[2]) + 1 {
			unit *= base
		}
	}
	if m[2] != "" && n > (1<<62)/unit {
		return fmt.Errorf("size %q is too large", s)
	}
	*b = ByteSize(n * unit)
	return nil
}

// Decode implements envconfig.Decoder.
func (b *ByteSize) Decode(s string) error { return b.Set(s) }

func (b ByteSize) String() string {
	for _, u := range []struct {
		v    ByteSize
		name string
	}{{Gigabyte, "GB"}, {Megabyte, "MB"}, {Kilobyte, "KB"}, {1 << 30, "GiB"}, {1 << 20, "MiB"}, {1 << 10, "KiB"}} {
		if b != 0 && b%u.v == 0 {
			return fmt.Sprintf("%d%s", b/u.v, u.name)
		}
	}
	return strconv.FormatInt(int64(b), 10)
}
