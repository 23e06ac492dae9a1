package features

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Dedup drops redelivered events: it remembers event_id hashes, each with a
// hash of the event's content, for a bounded horizon of event time and a
// bounded count, in two generations. An id is remembered for at least the
// horizon (and at most twice it) of event time after it was seen, unless
// more than capacity ids arrive within a horizon, in which case the oldest
// are forgotten first. Memory is bounded by 2·capacity entries (16 bytes
// each, in tables at most half full: 32 to 64 bytes per remembered id).
//
// A duplicate is an id seen before with the same content (a redelivery or a
// producer's retry: the same bytes). The same id with other content is a
// conflict: someone reused the id, and dropping the event as a duplicate
// would let whoever knows real ids make events vanish. The content hash 0
// means unknown (ids restored from a snapshot written before content hashes
// existed, or recorded by Seen) and matches any content.
//
// A 64-bit hash stands for the id: two distinct ids collide with probability
// about n²/2⁶⁵ for n remembered ids (≈10⁻⁸ at a million), which would report
// one real event as a duplicate or a conflict; that is accepted and
// documented. The content hashes are not cryptographic either: a writer who
// reads a real event and crafts other content with the same hash passes as
// a duplicate. Only verified signatures rule that out.
//
// Dedup is not safe for concurrent use.
type Dedup struct {
	cur, prev idSet
	genStart  int64
	gen       uint64 // number of the current generation (rotations so far)
	horizon   int64
	cap       int
	// Journal (Journal): the (id, content) hash pairs added to the current
	// and to the previous generation since the last TakeJournal, for
	// incremental snapshots.
	journal          bool
	added, addedPrev []uint64
}

// Verdict is what Dedup.Check makes of an event.
type Verdict uint8

// Verdicts.
const (
	// Unseen: the id is not remembered; now it is, with the content.
	Unseen Verdict = iota
	// Duplicate: the id is remembered with the same content (or either
	// content is unknown): drop the event.
	Duplicate
	// Conflict: the id is remembered with different content. Dedup keeps
	// what it remembered (the first content wins) and records nothing.
	Conflict
)

func (v Verdict) String() string {
	switch v {
	case Unseen:
		return "unseen"
	case Duplicate:
		return "duplicate"
	case Conflict:
		return "conflict"
	}
	return fmt.Sprintf("Verdict(%d)", uint8(v))
}

// NewDedup returns a filter remembering ids for at least horizon nanoseconds
// of event time, and at most capacity ids per generation.
func NewDedup(horizon int64, capacity int) *Dedup {
	if capacity < 16 {
		capacity = 16
	}
	return &Dedup{horizon: horizon, cap: capacity}
}

// idSet is an open-addressing map from non-zero 64-bit id hashes to content
// hashes with linear probing, at most half full: it grows by doubling and
// keeps its size when cleared, so a generation costs one allocation per
// doubling and none in steady state. Lookups of absent keys (the common
// case) stop at the first empty slot.
type idSet struct {
	slots []idEntry
	n     int
}

type idEntry struct{ id, content uint64 }

// key maps the hash 0, which marks an empty slot, to 1.
func key(h uint64) uint64 { return h | uint64(bool2int(h == 0)) }

func bool2int(b bool) int {
	if b {
		return 1
	}
	return 0
}

// get returns the content of h, and whether h is in s.
func (s *idSet) get(h uint64) (content uint64, ok bool) {
	if s.n == 0 {
		return 0, false
	}
	mask := uint64(len(s.slots) - 1)
	for i := h & mask; ; i = (i + 1) & mask {
		switch e := &s.slots[i]; e.id {
		case h:
			return e.content, true
		case 0:
			return 0, false
		}
	}
}

func (s *idSet) has(h uint64) bool {
	_, ok := s.get(h)
	return ok
}

// add inserts h with content c; h must not be in s.
func (s *idSet) add(h, c uint64) {
	if 2*(s.n+1) > len(s.slots) {
		s.grow()
	}
	mask := uint64(len(s.slots) - 1)
	i := h & mask
	for s.slots[i].id != 0 {
		i = (i + 1) & mask
	}
	s.slots[i] = idEntry{h, c}
	s.n++
}

func (s *idSet) grow() {
	old := s.slots
	s.slots = make([]idEntry, max(64, 2*len(old)))
	s.n = 0
	for _, e := range old {
		if e.id != 0 {
			s.add(e.id, e.content)
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
	if s.n == 0 {
		return dst
	}
	dst = appendSnapshotHeader(dst)
	for _, e := range s.slots {
		if e.id != 0 {
			dst = binary.LittleEndian.AppendUint64(dst, e.id)
			dst = binary.LittleEndian.AppendUint64(dst, e.content)
		}
	}
	return dst
}

// Check looks id up: Unseen if it is not remembered (it is then, with
// content), Duplicate if it is with the same content, Conflict if it is with
// another. content is the event's content hash (ContentHash of its encoded
// bytes); 0 means unknown and matches any. ts is the event's time: it
// advances the generations. A conflicting event changes nothing.
func (d *Dedup) Check(id []byte, content uint64, ts int64) Verdict {
	h := key(Hash64(id, 0x5eed))
	c, ok := d.cur.get(h)
	if !ok {
		c, ok = d.prev.get(h)
	}
	if ok {
		if c == content || c == 0 || content == 0 {
			return Duplicate
		}
		return Conflict
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
	d.cur.add(h, content)
	if d.journal {
		d.added = append(d.added, h, content)
	}
	return Unseen
}

// Seen reports whether id (hashed) was seen within the horizon, and records
// it with unknown content: Check(id, 0, ts) != Unseen.
func (d *Dedup) Seen(id []byte, ts int64) bool { return d.Check(id, 0, ts) != Unseen }

// Len returns the number of ids remembered.
func (d *Dedup) Len() int { return d.cur.n + d.prev.n }

// Generation returns the number of the current generation (how many times
// the generations have rotated) and the event time it started at. The
// previous generation is number gen-1.
func (d *Dedup) Generation() (gen uint64, start int64) { return d.gen, d.genStart }

// Journal makes d record the ids it adds, for TakeJournal: an incremental
// snapshot then writes only them. The journal holds at most the two
// generations' ids (16 bytes each) between two TakeJournal calls.
func (d *Dedup) Journal() { d.journal = true }

// TakeJournal returns what was added to the current generation (gen) and to
// the previous one (gen-1) since the last call, and forgets it: (id hash,
// content hash) pairs, two values an id, for AppendHashes. The slices are
// valid until the next Check or Seen. Generations older than gen-1 are gone:
// a snapshot drops them.
func (d *Dedup) TakeJournal() (gen uint64, cur, prev []uint64) {
	cur, prev = d.added, d.addedPrev
	d.added, d.addedPrev = d.added[:0], d.addedPrev[:0]
	return d.gen, cur, prev
}

// Snapshot encoding. Version 1 (before content hashes) is the id hashes, 8
// bytes each (little endian); none is 0. Version 2 starts with a header of
// two words, 0 (which no version 1 hash is) and the version, 2, followed by
// the entries, 16 bytes each: the id hash and the content hash (0: unknown).
// The caller may cut what AppendGeneration or AppendHashes wrote into pieces
// at multiples of 16 bytes (the checkpoint's are 512 KiB); only the first
// piece has the header. Nothing (no piece) is written for no ids.
const (
	dedupV2     = 2
	dedupHeader = 16
	dedupEntry  = 16
)

func appendSnapshotHeader(dst []byte) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, 0)
	return binary.LittleEndian.AppendUint64(dst, dedupV2)
}

// AppendGeneration appends the entries of the current generation, or of the
// previous one when previous is set, in no particular order (version 2, see
// Restore): nothing if it is empty.
func (d *Dedup) AppendGeneration(dst []byte, previous bool) []byte {
	if previous {
		return d.prev.appendTo(dst)
	}
	return d.cur.appendTo(dst)
}

// AppendHashes appends the (id, content) pairs TakeJournal returned in the
// format of AppendGeneration: nothing if there are none. It panics if
// pairs has an odd length.
func AppendHashes(dst []byte, pairs []uint64) []byte {
	if len(pairs)%2 != 0 {
		panic("features: AppendHashes: odd number of hashes, want (id, content) pairs from TakeJournal")
	}
	if len(pairs) == 0 {
		return dst
	}
	dst = appendSnapshotHeader(dst)
	for _, h := range pairs {
		dst = binary.LittleEndian.AppendUint64(dst, h)
	}
	return dst
}

// ErrDedupSnapshot is wrapped by Dedup.Restore's errors.
var ErrDedupSnapshot = errors.New("bad dedup snapshot")

// Restore replaces what d remembers: generation number gen, started at event
// time start, holding the entries in cur (pieces written by AppendGeneration
// or AppendHashes, in the order written), after generation gen-1 holding
// those in prev. d keeps its own horizon and capacity; generations holding
// more ids than the capacity are kept whole (the next generation rotates at
// once). The journal is emptied.
//
// Pieces of version 1 (8-byte id hashes, from before content hashes) are
// read with unknown content. The pieces of one Restore come from one writer,
// so they are all of one version: version 2 if any piece starts with the
// header (a piece cut from the middle of a version 2 write has none).
func (d *Dedup) Restore(gen uint64, start int64, cur, prev [][]byte) error {
	v2 := false
	for _, pieces := range [2][][]byte{cur, prev} {
		for _, p := range pieces {
			if len(p) >= 8 && binary.LittleEndian.Uint64(p) == 0 {
				v2 = true
			}
		}
	}
	le := binary.LittleEndian
	var gens [2]idSet
	for i, pieces := range [2][][]byte{cur, prev} {
		g := &gens[i]
		for _, p := range pieces {
			size := 8
			if v2 {
				if len(p) >= 8 && le.Uint64(p) == 0 {
					if len(p) < dedupHeader {
						return fmt.Errorf("%w: truncated header", ErrDedupSnapshot)
					}
					if v := le.Uint64(p[8:]); v != dedupV2 {
						return fmt.Errorf("%w: version %d, want 1 or 2 (written by a newer vigil?)", ErrDedupSnapshot, v)
					}
					p = p[dedupHeader:]
				}
				size = dedupEntry
			}
			if len(p)%size != 0 {
				return fmt.Errorf("%w: %d bytes is not a number of %d-byte entries", ErrDedupSnapshot, len(p), size)
			}
			for off := 0; off < len(p); off += size {
				var c uint64 // version 1: unknown
				if v2 {
					c = le.Uint64(p[off+8:])
				}
				if h := key(le.Uint64(p[off:])); !g.has(h) {
					g.add(h, c)
				}
			}
		}
	}
	d.cur, d.prev, d.gen, d.genStart = gens[0], gens[1], gen, start
	d.added, d.addedPrev = d.added[:0], d.addedPrev[:0]
	return nil
}
