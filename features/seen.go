package features

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// SeenSet is a bounded set of 32-bit fingerprints used for first-seen
// detection ("has this agent ever called this target?"). It keeps two
// generations of an open-addressing table; when the current generation is
// three quarters full it becomes the previous one and a fresh one starts. An
// item found only in the previous generation is copied forward, so items in
// regular use are never forgotten while items unused for a whole generation
// are: the set approximates "seen recently" with memory fixed at
// 2·slots·4 bytes.
//
// A false "seen" needs a 32-bit fingerprint collision among at most 1.5·slots
// items (probability ≈ 1.5·slots/2³² per lookup); a false "new" happens only
// for items forgotten after a generation of disuse. SeenSet is not safe for
// concurrent use.
type SeenSet struct {
	tab  []uint32 // two generations of len(tab)/2 slots each
	cur  int      // 0 or 1: which half is current
	n    int      // items in the current generation
	mask uint32
}

// NewSeenSet returns a set with slotsPerGen slots per generation (rounded up to
// a power of two, at least 16).
func NewSeenSet(slotsPerGen int) SeenSet {
	n := 16
	for n < slotsPerGen {
		n <<= 1
	}
	return SeenSet{tab: make([]uint32, 2*n), mask: uint32(n - 1)}
}

// Slots returns the slots per generation.
func (s *SeenSet) Slots() int { return len(s.tab) / 2 }

func (s *SeenSet) half(g int) []uint32 {
	n := len(s.tab) / 2
	return s.tab[g*n : (g+1)*n]
}

func (s *SeenSet) find(t []uint32, fp uint32) (int, bool) {
	i := fp & s.mask
	for {
		switch t[i] {
		case fp:
			return int(i), true
		case 0:
			return int(i), false
		}
		i = (i + 1) & s.mask
	}
}

// Observe records fp and reports whether it was new (not seen in either
// generation). fp 0 is treated as 1.
func (s *SeenSet) Observe(fp uint32) bool {
	if fp == 0 {
		fp = 1
	}
	cur := s.half(s.cur)
	i, ok := s.find(cur, fp)
	if ok {
		return false
	}
	_, inPrev := s.find(s.half(1-s.cur), fp)
	if 4*(s.n+1) > 3*len(cur) {
		s.cur = 1 - s.cur
		cur = s.half(s.cur)
		clear(cur)
		s.n = 0
		i, _ = s.find(cur, fp)
	}
	cur[i] = fp
	s.n++
	return !inPrev
}

// Contains reports whether fp is in the set, without recording it.
func (s *SeenSet) Contains(fp uint32) bool {
	if fp == 0 {
		fp = 1
	}
	if _, ok := s.find(s.half(s.cur), fp); ok {
		return true
	}
	_, ok := s.find(s.half(1-s.cur), fp)
	return ok
}

// Len returns the number of distinct fingerprints held (both generations; an
// item copied forward counts twice).
func (s *SeenSet) Len() int {
	n := 0
	for _, v := range s.tab {
		if v != 0 {
			n++
		}
	}
	return n
}

// AppendBinary appends the set's state: the slots per generation as a
// uvarint, the current generation and its count, then the occupied slots of
// both generations as (index, fingerprint) pairs, so a sparse set is small.
func (s *SeenSet) AppendBinary(dst []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s.tab)/2))
	dst = append(dst, byte(s.cur))
	dst = binary.AppendUvarint(dst, uint64(s.n))
	occupied := 0
	for _, v := range s.tab {
		if v != 0 {
			occupied++
		}
	}
	dst = binary.AppendUvarint(dst, uint64(occupied))
	for i, v := range s.tab {
		if v != 0 {
			dst = binary.AppendUvarint(dst, uint64(i))
			dst = binary.LittleEndian.AppendUint32(dst, v)
		}
	}
	return dst
}

// ErrSeenSnapshot is wrapped by DecodeFrom's errors.
var ErrSeenSnapshot = errors.New("bad seen-set snapshot")

// DecodeFrom restores a set written by AppendBinary from the start of data
// and returns the bytes it used. A snapshot of a different size is rehashed
// into a set of slotsPerGen slots (restoring into a resized configuration).
func (s *SeenSet) DecodeFrom(data []byte, slotsPerGen int) (int, error) {
	off := 0
	next := func() (uint64, bool) {
		v, k := binary.Uvarint(data[off:])
		if k <= 0 {
			return 0, false
		}
		off += k
		return v, true
	}
	slots, ok := next()
	if !ok || slots == 0 || slots > 1<<24 || off >= len(data) {
		return 0, fmt.Errorf("%w: header", ErrSeenSnapshot)
	}
	cur := int(data[off])
	off++
	_, ok1 := next() // the current generation's count: recounted below
	occupied, ok2 := next()
	if !ok1 || !ok2 || cur > 1 || occupied > 2*slots {
		return 0, fmt.Errorf("%w: header", ErrSeenSnapshot)
	}
	*s = NewSeenSet(slotsPerGen)
	same := int(slots) == len(s.tab)/2
	if same {
		s.cur = cur
	}
	for range occupied {
		i, ok := next()
		if !ok || off+4 > len(data) || i >= 2*slots {
			return 0, fmt.Errorf("%w: slot", ErrSeenSnapshot)
		}
		fp := binary.LittleEndian.Uint32(data[off:])
		off += 4
		if same {
			s.tab[i] = fp
		} else if fp != 0 {
			s.Observe(fp) // rehash into the new size
		}
	}
	if same {
		// Lookups probe until an empty slot: a generation fuller than
		// Observe ever leaves one (3/4) would make them loop forever.
		for g := range 2 {
			k := 0
			for _, v := range s.half(g) {
				if v != 0 {
					k++
				}
			}
			if 4*k > 3*int(slots) {
				*s = NewSeenSet(slotsPerGen)
				return 0, fmt.Errorf("%w: generation %d holds %d of %d slots", ErrSeenSnapshot, g, k, slots)
			}
			if g == s.cur {
				s.n = k
			}
		}
	}
	return off, nil
}
