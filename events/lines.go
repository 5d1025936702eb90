package events

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// DefaultMaxLineBytes is the line limit used when ClientConfig.MaxLineBytes
// is 0, and by ReadFile. A tcp-info event line is about 300 bytes.
const DefaultMaxLineBytes = 64 << 10

// maxMaxLineBytes bounds ClientConfig.MaxLineBytes: the line buffer is
// allocated up front.
const maxMaxLineBytes = 16 << 20

// lineReader splits a stream into lines of at most max bytes before the
// "\n" (a trailing "\r" is removed but counts), in a buffer of max+1 bytes.
// A longer line is discarded up to and including its newline and reported as
// ErrTooLong, so memory stays bounded and reading resynchronises at the next
// line. A final line without a newline is returned as a line. Not safe for
// concurrent use.
type lineReader struct {
	br  *bufio.Reader
	max int
	// err is a read error seen while returning a line (or while skipping a
	// long one), returned by the next call.
	err error
}

func newLineReader(r io.Reader, maxBytes int) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(r, maxBytes+1), max: maxBytes}
}

// next returns the next line, without its terminator. The slice is valid
// only until the next call. The error is ErrTooLong for a skipped line (call
// next again), or the reader's error (io.EOF at the end), after which every
// call returns the same error.
func (r *lineReader) next() ([]byte, error) {
	if r.err != nil {
		return nil, r.err
	}
	line, err := r.br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		for errors.Is(err, bufio.ErrBufferFull) {
			_, err = r.br.ReadSlice('\n')
		}
		r.err = err // nil if the long line ended in a newline
		return nil, ErrTooLong
	}
	if err != nil {
		r.err = err
		if len(line) == 0 {
			return nil, err
		}
		// A last line without a newline: return it now, the error next time.
	}
	line = bytes.TrimSuffix(line, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	if len(line) > r.max {
		// Only reachable when max+1 is below bufio's minimum buffer size.
		return nil, ErrTooLong
	}
	return line, nil
}
