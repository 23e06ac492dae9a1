package features

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
