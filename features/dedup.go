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
	cur, prev idSet
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
	return &Dedup{horizon: horizon, cap: capacity}
}

// idSet is an open-addressing set of non-zero 64-bit hashes with linear
// probing, at most half full: it grows by doubling and keeps its size when
// cleared, so a generation costs one allocation per doubling and none in
// steady state. Lookups of absent keys (the common case) stop at the first
// empty slot.
type idSet struct {
	slots []uint64
	n     int
}

// key maps the hash 0, which marks an empty slot, to 1.
func key(h uint64) uint64 { return h | uint64(bool2int(h == 0)) }

func bool2int(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (s *idSet) has(h uint64) bool {
	if s.n == 0 {
		return false
	}
	mask := uint64(len(s.slots) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		switch s.slots[i] {
		case h:
			return true
		case 0:
			return false
		}
	}
}

// add inserts h, which must not be in s.
func (s *idSet) add(h uint64) {
	if 2*(s.n+1) > len(s.slots) {
		s.grow()
	}
	mask := uint64(len(s.slots) - 1)
	i := h & mask
	for s.slots[i] != 0 {
		i = (i + 1) & mask
	}
	s.slots[i] = h
	s.n++
}

func (s *idSet) grow() {
	old := s.slots
	s.slots = make([]uint64, max(64, 2*len(old)))
	s.n = 0
	for _, h := range old {
		if h != 0 {
			s.add(h)
		}
	}
}

func (s *idSet) clear() {
	if s.n > 0 {
		clear(s.slots)
		s.n = 0
	}
}

func (s *idSet) appendTo(dst []byte) []byte {
	for _, h := range s.slots {
		if h != 0 {
			dst = binary.LittleEndian.AppendUint64(dst, h)
		}
	}
	return dst
}

// Seen reports whether id (hashed) was seen within the horizon, and records it.
func (d *Dedup) Seen(id []byte, ts int64) bool {
	h := key(Hash64(id, 0x5eed))
	if d.cur.has(h) || d.prev.has(h) {
		return true
	}
	if d.cur.n >= d.cap || ts-d.genStart > d.horizon {
		d.prev, d.cur = d.cur, d.prev
		d.cur.clear()
		d.genStart = ts
		d.gen++
		if d.journal {
			d.addedPrev, d.added = d.added, d.addedPrev[:0]
		}
	}
	d.cur.add(h)
	if d.journal {
		d.added = append(d.added, h)
	}
	return false
}

// Len returns the number of ids remembered.
func (d *Dedup) Len() int { return d.cur.n + d.prev.n }

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
	if previous {
		return d.prev.appendTo(dst)
	}
	return d.cur.appendTo(dst)
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
	var gens [2]idSet
	for i, pieces := range [2][][]byte{cur, prev} {
		for _, p := range pieces {
			if len(p)%8 != 0 {
				return fmt.Errorf("%w: %d bytes is not a number of hashes", ErrDedupSnapshot, len(p))
			}
		}
		g := &gens[i]
		for _, p := range pieces {
			for off := 0; off < len(p); off += 8 {
				if h := key(binary.LittleEndian.Uint64(p[off:])); !g.has(h) {
					g.add(h)
				}
			}
		}
	}
	d.cur, d.prev, d.gen, d.genStart = gens[0], gens[1], gen, start
	d.added, d.addedPrev = d.added[:0], d.addedPrev[:0]
	return nil
}
