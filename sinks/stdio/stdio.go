// Package stdio is the simplest sink: alerts (contract v1) as JSONL on one
// writer, dead letters as one line each on another. A batch is durable once
// written to the file descriptors.
package stdio

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"syscall"

	"github.com/vigil-sec/vigil/detector"
)

// Sink writes alerts to Out and dead letters to Err (nil: not written).
type Sink struct {
	mu  sync.Mutex
	out io.Writer
	err io.Writer
	buf bytes.Buffer
}

var _ detector.Sink = (*Sink)(nil)

// New returns a Sink writing alerts to out and dead letters to errw.
func New(out, errw io.Writer) *Sink { return &Sink{out: out, err: errw} }

// Name is "stdio".
func (s *Sink) Name() string { return "stdio" }

// Write is safe for concurrent use; partitions' batches do not interleave.
func (s *Sink) Write(_ context.Context, b detector.Batch) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(b.DeadLetters) > 0 && s.err != nil {
		s.buf.Reset()
		for _, d := range b.DeadLetters {
			// Bounded: the detector cuts a dead letter's key and detail
			// (detector.NewDeadLetter); the value is not printed.
			size, sum := d.ValueDigest()
			fmt.Fprintf(&s.buf, "dead-letter topic=%s partition=%d offset=%d reason=%s key=%s value_size=%d value_sha256=%x",
				d.Topic, d.Partition, d.Offset, d.Reason, strconv.Quote(string(d.Key)), size, sum)
			if d.Truncated() {
				s.buf.WriteString(" truncated=true")
			}
			fmt.Fprintf(&s.buf, " detail=%s\n", strconv.Quote(d.Detail))
		}
		if _, err := s.err.Write(s.buf.Bytes()); err != nil {
			return writeErr("dead letters", err)
		}
	}
	if len(b.Alerts) > 0 && s.out != nil {
		s.buf.Reset()
		enc := json.NewEncoder(&s.buf)
		for _, a := range b.Alerts {
			if err := enc.Encode(a); err != nil {
				return fmt.Errorf("stdio: encode alert %s: %w", a.AlertID, errors.Join(err, detector.ErrPermanent))
			}
		}
		if _, err := s.out.Write(s.buf.Bytes()); err != nil {
			return writeErr("alerts", err)
		}
	}
	return nil
}

// writeErr marks a closed pipe or file as permanent: retrying cannot help.
func writeErr(what string, err error) error {
	if errors.Is(err, syscall.EPIPE) || errors.Is(err, os.ErrClosed) {
		err = errors.Join(err, detector.ErrPermanent)
	}
	return fmt.Errorf("stdio: write %s: %w", what, err)
}
