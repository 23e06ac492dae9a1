package features

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Dedup drops redelivered events: it remembers event_id hashes for a bounded
// horizon of event time and a bounded count, in two generations. An id is
// remembered for at least the horizon (and at most twice it) of event time
// after it was seen, unless more than capacity ids arrive within a horizon, in
// which case the oldest are forgotten first. Memory is bounded by 2·capacity
// entries.
//
// A 64-bit hash stands for the id: two distinct ids collide with probability
// about n²/2⁶⁵ for n remembered ids (≈10⁻⁸ at a million), which would drop
// one real event; that is accepted and documented.
//
// Dedup is not safe for concurrent use.
type Dedup struct {
	cur, prev map[uint64]struct{}
	genStart  int64
	gen       uint64 // number of the current generation (rotations so far)
	horizon   int64
	cap       int
	// Journal (Journal): the ids added to the current and to the previous
	// generation since the last TakeJournal, for incremental snapshots.
	journal          bool
	added, addedPrev []uint64
}

// NewDedup returns a filter remembering ids for at least horizon nanoseconds
// of event time, and at most capacity ids per generation.
func NewDedup(horizon int64, capacity int) *Dedup {
	if capacity < 16 {
		capacity = 16
	}
	return &Dedup{
		cur:     make(map[uint64]struct{}, capacity/4),
		prev:    make(map[uint64]struct{}, capacity/4),
		horizon: horizon,
		cap:     capacity,
	}
}

// Seen reports whether id (hashed) was seen within the horizon, and records it.
func (d *Dedup) Seen(id []byte, ts int64) bool {
	h := Hash64(id, 0x5eed)
	if _, ok := d.cur[h]; ok {
		return true
	}
	if _, ok := d.prev[h]; ok {
		return true
	}
	if len(d.cur) >= d.cap || ts-d.genStart > d.horizon {
		d.prev, d.cur = d.cur, d.prev
		clear(d.cur)
		d.genStart = ts
		d.gen++
		if d.journal {
			d.addedPrev, d.added = d.added, d.addedPrev[:0]
		}
	}
	d.cur[h] = struct{}{}
	if d.journal {
		d.added = append(d.added, h)
	}
	return false
}

// Len returns the number of ids remembered.
func (d *Dedup) Len() int { return len(d.cur) + len(d.prev) }

// Generation returns the number of the current generation (how many times
// the generations have rotated) and the event time it started at. The
// previous generation is number gen-1.
func (d *Dedup) Generation() (gen uint64, start int64) { return d.gen, d.genStart }

// Journal makes d record the ids it adds, for TakeJournal: an incremental
// snapshot then writes only them. The journal holds at most the two
// generations' ids (8 bytes each) between two TakeJournal calls.
func (d *Dedup) Journal() { d.journal = true }

// TakeJournal returns the hashes added to the current generation (gen) and
// to the previous one (gen-1) since the last call, and forgets them. The
// slices are valid until the next Seen. Generations older than gen-1 are
// gone: a snapshot drops them.
func (d *Dedup) TakeJournal() (gen uint64, cur, prev []uint64) {
	cur, prev = d.added, d.addedPrev
	d.added, d.addedPrev = d.added[:0], d.addedPrev[:0]
	return d.gen, cur, prev
}

// AppendGeneration appends the hashes of the current generation, or of the
// previous one when previous is set, 8 bytes each (little endian), in no
// particular order.
func (d *Dedup) AppendGeneration(dst []byte, previous bool) []byte {
	g := d.cur
	if previous {
		g = d.prev
	}
	for h := range g {
		dst = binary.LittleEndian.AppendUint64(dst, h)
	}
	return dst
}

// AppendHashes appends hashes to dst as AppendGeneration does.
func AppendHashes(dst []byte, hashes []uint64) []byte {
	for _, h := range hashes {
		dst = binary.LittleEndian.AppendUint64(dst, h)
	}
	return dst
}

// ErrDedupSnapshot is wrapped by Dedup.Restore's errors.
var ErrDedupSnapshot = errors.New("bad dedup snapshot")

// Restore replaces what d remembers: generation number gen, started at event
// time start, holding the hashes in cur (pieces written by AppendGeneration
// or AppendHashes), after generation gen-1 holding those in prev. d keeps its
// own horizon and capacity; generations holding more ids than the capacity
// are kept whole (the next generation rotates at once). The journal is
// emptied.
func (d *Dedup) Restore(gen uint64, start int64, cur, prev [][]byte) error {
	var gens [2]map[uint64]struct{}
	for i, pieces := range [2][][]byte{cur, prev} {
		n := 0
		for _, p := range pieces {
			if len(p)%8 != 0 {
				return fmt.Errorf("%w: %d bytes is not a number of hashes", ErrDedupSnapshot, len(p))
			}
			n += len(p) / 8
		}
		g := make(map[uint64]struct{}, max(n, d.cap/4))
		for _, p := range pieces {
			for off := 0; off < len(p); off += 8 {
				g[binary.LittleEndian.Uint64(p[off:])] = struct{}{}
			}
		}
		gens[i] = g
	}
	d.cur, d.prev, d.gen, d.genStart = gens[0], gens[1], gen, start
	d.added, d.addedPrev = d.added[:0], d.addedPrev[:0]
	return nil
}
