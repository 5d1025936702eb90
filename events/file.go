package events

import (
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
)

// Stats counts what ReadFile read.
type Stats struct {
	// Lines is the number of non-blank lines, valid or not.
	Lines int
	// Opens and Closes count the valid events delivered.
	Opens, Closes int
	// Bad counts skipped lines by Reason ("malformed", "too_long", ...); nil
	// when there were none.
	Bad map[string]int
}

// Skipped returns the number of lines that were counted in Bad.
func (s Stats) Skipped() int {
	n := 0
	for _, v := range s.Bad {
		n += v
	}
	return n
}

// ReadFile reads a recorded eventsocket stream (the JSON lines tcp-info
// serves, as saved by `socat UNIX-CONNECT:SOCKET -`), gzip-compressed or not
// (detected by the gzip magic number), and calls handle for every valid
// event in file order. Lines longer than DefaultMaxLineBytes and invalid
// lines are counted in Stats.Bad and skipped; blank lines are ignored.
//
// The error is non-nil if the file cannot be opened or read (including a
// corrupt or truncated gzip stream) or if ctx is done; the Stats then cover
// the lines handled so far.
func ReadFile(ctx context.Context, path string, handle func(Event)) (Stats, error) {
	var st Stats
	f, err := os.Open(path)
	if err != nil {
		return st, fmt.Errorf("open event file: %w", err)
	}
	defer f.Close() // Read-only.

	br := bufio.NewReader(f)
	var r io.Reader = br
	if magic, err := br.Peek(2); err == nil && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return st, fmt.Errorf("event file %s: gzip: %w", path, err)
		}
		defer zr.Close() // Read-only; errors are reported by Read.
		r = zr
	}

	lr := newLineReader(r, DefaultMaxLineBytes)
	for {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		line, err := lr.next()
		if errors.Is(err, io.EOF) {
			return st, nil
		}
		if err != nil && !errors.Is(err, ErrTooLong) {
			return st, fmt.Errorf("read event file %s: %w", path, err)
		}
		if err == nil && blank(line) {
			continue
		}
		st.Lines++
		var ev Event
		if err == nil {
			ev, err = ParseLine(line)
		}
		if err != nil {
			if st.Bad == nil {
				st.Bad = make(map[string]int)
			}
			st.Bad[Reason(err)]++
			continue
		}
		if ev.Kind == Open {
			st.Opens++
		} else {
			st.Closes++
		}
		handle(ev)
	}
}
