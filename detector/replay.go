package detector

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/vigil-sec/vigil/features"
)

// Replay feeds every line of r (JSONL events in event-time order) to p, then
// flushes p's open windows. A line that is rejected (invalid or late) is
// reported to onBad with its 1-based line number and skipped; blank lines
// are ignored. Replay stops early only when ctx ends or r fails to read.
// progress, if not nil, is called every 1<<16 lines.
func Replay(ctx context.Context, r io.Reader, p *Pipeline, onBad func(line int64, err error), progress func(lines int64)) error {
	br := bufio.NewReaderSize(r, 1<<20)
	var line int64
	var long []byte
	for {
		b, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A line longer than the buffer: gather it (it will be rejected as
			// too large, but it must still be counted as one line).
			long = append(long[:0], b...)
			for errors.Is(err, bufio.ErrBufferFull) {
				b, err = br.ReadSlice('\n')
				if len(long) <= features.MaxEventSize {
					long = append(long, b...)
				}
			}
			b = long
		}
		if len(b) > 0 {
			line++
			if line&0xffff == 0 {
				if progress != nil {
					progress(line)
				}
				if ctx.Err() != nil {
					return ctx.Err()
				}
			}
			if !blank(b) {
				if perr := p.Process(trimEOL(b)); perr != nil && onBad != nil {
					onBad(line, perr)
				}
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read line %d: %w", line+1, err)
		}
	}
	p.Flush()
	return nil
}

func trimEOL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

func blank(b []byte) bool {
	for _, c := range b {
		if c != ' ' && c != '\t' && c != '\r' && c != '\n' {
			return false
		}
	}
	return true
}
