// Command bucketls lists the objects of an archive destination, the
// -archive.url of packet-headers and pcap-archiver, with their sizes; with
// -get it copies one object to a local file. local-dev/run.sh uses it to
// show what the archiver uploaded. It reads the bucket through the
// project's upload package, so it takes the same URLs and the same
// environment as the daemon (STORAGE_EMULATOR_HOST for fake-gcs-server,
// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for an S3 server):
//
//	bucketls file:///abs/dir
//	bucketls -get ndt/pcap/2026/11/25/...-ndt.tgz -o sample.tgz gs://bucket
//
// The listing is one line per object, "SIZE<TAB>NAME", sorted by name; with
// -members, "SIZE<TAB>MEMBERS<TAB>NAME", where MEMBERS counts the files in
// the tarball (each object is read for it).
package main

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/headercap/headercap/upload"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("bucketls: ")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		log.Print(err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("bucketls", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: bucketls [-get NAME -o FILE] URL")
		fs.PrintDefaults()
	}
	get := fs.String("get", "", "copy this object (name relative to the URL) to -o instead of listing")
	out := fs.String("o", "", "with -get: the local file to write")
	prefix := fs.String("prefix", "", "list only the objects whose names start with this")
	members := fs.Bool("members", false, "also count the files in each tarball (reads every object)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 || (*get != "") != (*out != "") {
		fs.Usage()
		return flag.ErrHelp
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	store, err := upload.Open(ctx, fs.Arg(0))
	if err != nil {
		return err
	}
	if *get != "" {
		err = copyObject(ctx, store, *get, *out)
	} else {
		err = list(ctx, store, *prefix, *members, stdout)
	}
	if cerr := store.Close(); err == nil {
		err = cerr
	}
	return err
}

func list(ctx context.Context, store upload.Store, prefix string, members bool, w io.Writer) error {
	objs, err := store.List(ctx, prefix)
	if err != nil {
		return fmt.Errorf("list %s: %w", store, err)
	}
	for _, o := range objs {
		if !members {
			_, err = fmt.Fprintf(w, "%d\t%s\n", o.Size, o.Name)
		} else {
			var n int
			if n, err = countMembers(ctx, store, o.Name); err != nil {
				return err
			}
			_, err = fmt.Fprintf(w, "%d\t%d\t%s\n", o.Size, n, o.Name)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// countMembers reads a .tgz object and counts its files.
func countMembers(ctx context.Context, store upload.Store, name string) (int, error) {
	r, err := store.Get(ctx, name)
	if err != nil {
		return 0, fmt.Errorf("get %s from %s: %w", name, store, err)
	}
	defer r.Close()
	zr, err := gzip.NewReader(r)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	tr := tar.NewReader(zr)
	n := 0
	for {
		_, err := tr.Next()
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, fmt.Errorf("%s: %w", name, err)
		}
		n++
	}
}

func copyObject(ctx context.Context, store upload.Store, name, path string) error {
	r, err := store.Get(ctx, name)
	if err != nil {
		return fmt.Errorf("get %s from %s: %w", name, store, err)
	}
	defer r.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return fmt.Errorf("get %s: %w", name, err)
	}
	return f.Close()
}
