package capture

import (
	"bytes"
	"time"
)

// recorder is a Handler that keeps copies of what it is given.
type recorder struct {
	frames []Frame
	ticks  []time.Time
}

func (r *recorder) HandleFrame(f *Frame) {
	c := *f
	c.Data = bytes.Clone(f.Data)
	r.frames = append(r.frames, c)
}

func (r *recorder) Tick(now time.Time) { r.ticks = append(r.ticks, now) }

// nopHandler counts frames.
type nopHandler struct{ n, bytes int }

func (h *nopHandler) HandleFrame(f *Frame) { h.n++; h.bytes += len(f.Data) }
func (h *nopHandler) Tick(time.Time)       {}
