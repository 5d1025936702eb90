// Command trafficgen generates TCP traffic of known shapes between two
// network namespaces, for end-to-end tests and the local demo. It only ever
// talks to documentation addresses (192.0.2.0/24, 198.51.100.0/24,
// 2001:db8::/32) and, for `metrics`, loopback.
//
//	trafficgen serve -listen 192.0.2.1:8080,[2001:db8::1]:8080 [-cookies accepted.jsonl]
//	trafficgen client -connect 192.0.2.1:8080,[2001:db8::1]:8080 -conns 300 \
//	    -parallel 16 -mix short=70,long=10,bulk=10,reuse=10 -duration-long 3s \
//	    -seed 1 -out conns.jsonl
//	trafficgen metrics http://127.0.0.1:9990/metrics
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"sort"
	"syscall"
	"time"

	"github.com/headercap/headercap/internal/trafficgen"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			log.Printf("trafficgen: %v", err)
		}
		os.Exit(1)
	}
}

const usage = `usage: trafficgen serve|client|metrics [flags]

  serve    answer trafficgen clients until SIGINT/SIGTERM
  client   make connections, write one JSON line per connection
  metrics  GET a URL (loopback or documentation address) and print the body

Run "trafficgen COMMAND -h" for the flags of a command.`

func run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, usage)
		return flag.ErrHelp
	}
	switch args[0] {
	case "serve":
		return serve(ctx, args[1:])
	case "client":
		return client(ctx, args[1:])
	case "metrics":
		return metrics(ctx, args[1:])
	case "-h", "-help", "--help", "help":
		fmt.Fprintln(os.Stderr, usage)
		return nil
	}
	fmt.Fprintln(os.Stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

func serve(ctx context.Context, args []string) (err error) {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	listen := fs.String("listen", "", "comma-separated IP:port list to listen on (documentation or loopback addresses)")
	cookies := fs.String("cookies", "", "file for one JSON line per accepted connection, written when it ends: 4-tuple, accept and close time, the socket's cookie (SO_COOKIE, Linux)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	addrs, err := trafficgen.ParseAddrPorts(*listen)
	if err != nil {
		return fmt.Errorf("-listen: %w", err)
	}
	cfg := trafficgen.ServerConfig{
		Listen: addrs,
		Log:    log.New(os.Stderr, "trafficgen serve: ", log.LstdFlags|log.Lmicroseconds),
	}
	var bw *bufio.Writer
	if *cookies != "" {
		f, err := os.Create(*cookies)
		if err != nil {
			return err
		}
		defer func() {
			if cerr := f.Close(); cerr != nil && err == nil {
				err = cerr
			}
		}()
		bw = bufio.NewWriter(f)
		cfg.Accepted = bw
	}
	srv, err := trafficgen.NewServer(cfg)
	if err != nil {
		return err
	}
	runErr := srv.Run(ctx)
	if bw != nil {
		if err := bw.Flush(); err != nil {
			return errors.Join(runErr, fmt.Errorf("write %s: %w", *cookies, err))
		}
	}
	return runErr
}

func client(ctx context.Context, args []string) (err error) {
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	connect := fs.String("connect", "", "comma-separated server IP:port list (documentation addresses only)")
	conns := fs.Int("conns", 0, "stop after this many connections (0: no limit; set this or -for)")
	dur := fs.Duration("for", 0, "stop starting connections after this long (0: no limit)")
	parallel := fs.Int("parallel", 8, "jobs running at once")
	mix := fs.String("mix", trafficgen.DefaultMix.String(), "shape weights: short, long, bulk, reuse, abort")
	long := fs.Duration("duration-long", 3*time.Second, "longest long-lived connection (they last half of it to all of it)")
	bulk := fs.Int64("bulk-size", 4<<20, "largest bulk transfer in bytes")
	holdMax := fs.Duration("hold-max", 0, "longest a server holds a short (0..it) or reuse (a quarter of it..it) connection before replying (0: 60ms for short, 30ms..120ms for reuse)")
	seed := fs.Uint64("seed", 1, "seed of the deterministic plan")
	out := fs.String("out", "-", "file for the JSON lines, one per connection (- for stdout)")
	maxErrors := fs.Int("max-errors", 0, "exit 1 if more connections than this failed unexpectedly (-1: never)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	addrs, err := trafficgen.ParseAddrPorts(*connect)
	if err != nil {
		return fmt.Errorf("-connect: %w", err)
	}
	m, err := trafficgen.ParseMix(*mix)
	if err != nil {
		return fmt.Errorf("-mix: %w", err)
	}
	var w io.Writer = os.Stdout
	if *out != "-" {
		f, err := os.Create(*out)
		if err != nil {
			return err
		}
		defer func() {
			if cerr := f.Close(); cerr != nil && err == nil {
				err = cerr
			}
		}()
		w = f
	}
	bw := bufio.NewWriter(w)
	c, err := trafficgen.NewClient(trafficgen.ClientConfig{
		Connect:      addrs,
		Conns:        *conns,
		For:          *dur,
		Parallel:     *parallel,
		Mix:          m,
		LongDuration: *long,
		BulkSize:     *bulk,
		HoldMax:      *holdMax,
		Seed:         *seed,
		Out:          bw,
		Log:          log.New(os.Stderr, "trafficgen client: ", log.LstdFlags|log.Lmicroseconds),
	})
	if err != nil {
		return err
	}
	start := time.Now()
	runErr := c.Run(ctx)
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write %s: %w", *out, err)
	}
	s := c.Summary()
	shapes := make([]string, 0, len(s.ByShape))
	for k := range s.ByShape {
		shapes = append(shapes, string(k))
	}
	sort.Strings(shapes)
	fmt.Fprintf(os.Stderr, "trafficgen client: %d connections in %v (", s.Conns, time.Since(start).Round(time.Millisecond))
	for i, k := range shapes {
		if i > 0 {
			fmt.Fprint(os.Stderr, " ")
		}
		fmt.Fprintf(os.Stderr, "%s=%d", k, s.ByShape[trafficgen.Shape(k)])
	}
	fmt.Fprintf(os.Stderr, "), %d errors, %d bytes sent, %d received\n", s.Errors, s.Sent, s.Received)
	if runErr != nil {
		return runErr
	}
	if *maxErrors >= 0 && s.Errors > *maxErrors {
		return fmt.Errorf("%d connections failed (more than -max-errors=%d)", s.Errors, *maxErrors)
	}
	return nil
}

func metrics(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("metrics", flag.ContinueOnError)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("usage: trafficgen metrics URL")
	}
	bw := bufio.NewWriter(os.Stdout)
	if err := trafficgen.Fetch(ctx, fs.Arg(0), bw); err != nil {
		return err
	}
	return bw.Flush()
}
