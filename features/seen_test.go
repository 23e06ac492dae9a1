package features

import (
	"testing"
)

// fpOf gives well-spread fingerprints for test items.
func fpOf(i int) uint32 {
	return uint32(Hash64([]byte{byte(i), byte(i >> 8), byte(i >> 16), byte(i >> 24)}, 99) >> 32)
}

func TestSeenSetSlots(t *testing.T) {
	for _, tc := range []struct{ in, want int }{{-1, 16}, {0, 16}, {16, 16}, {17, 32}, {1000, 1024}, {1024, 1024}, {1025, 2048}} {
		s := NewSeenSet(tc.in)
		if got := s.Slots(); got != tc.want {
			t.Errorf("NewSeenSet(%d).Slots() = %d, want %d", tc.in, got, tc.want)
		}
	}
}

func TestSeenSetNewThenSeen(t *testing.T) {
	s := NewSeenSet(64)
	for i := range 40 {
		fp := fpOf(i)
		if s.Contains(fp) {
			t.Fatalf("item %d: Contains before Observe", i)
		}
		if !s.Observe(fp) {
			t.Fatalf("item %d: first Observe reported seen", i)
		}
		if s.Observe(fp) {
			t.Fatalf("item %d: second Observe reported new", i)
		}
		if !s.Contains(fp) {
			t.Fatalf("item %d: not contained after Observe", i)
		}
	}
	for i := range 40 {
		if s.Observe(fpOf(i)) {
			t.Errorf("item %d forgotten within one generation", i)
		}
	}
	t.Run("fingerprint 0 is 1", func(t *testing.T) {
		s := NewSeenSet(16)
		if !s.Observe(0) || s.Observe(1) || !s.Contains(0) {
			t.Errorf("0 and 1 are not the same item")
		}
	})
	t.Run("Contains does not record", func(t *testing.T) {
		s := NewSeenSet(16)
		s.Contains(7)
		if !s.Observe(7) {
			t.Errorf("Contains recorded the item")
		}
	})
}

// TestSeenSetRegularUseSurvives: items used at least once per generation are
// never reported new again, however much other traffic passes through.
func TestSeenSetRegularUseSurvives(t *testing.T) {
	const slots = 256
	s := NewSeenSet(slots)
	hot := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}
	for _, h := range hot {
		s.Observe(fpOf(h))
	}
	// Each round uses every hot item once and adds 20 never-seen items, so
	// a generation (3/4 of the slots) turns over every few rounds.
	next := 1000
	for round := range 500 {
		for _, h := range hot {
			if s.Observe(fpOf(h)) {
				t.Fatalf("round %d: hot item %d reported new", round, h)
			}
		}
		for range 20 {
			if !s.Observe(fpOf(next)) {
				t.Fatalf("round %d: fresh item %d reported seen (fingerprint collision?)", round, next)
			}
			next++
		}
	}
	if gens := (next - 1000) / (slots * 3 / 4); gens < 50 {
		t.Fatalf("test bug: only %d generations of churn", gens)
	}
}

// TestSeenSetForgets: an item not used for two whole generations is
// forgotten; one used within the last generation is not. A generation holds
// 3/4 of the slots.
func TestSeenSetForgets(t *testing.T) {
	const slots = 64
	const gen = slots * 3 / 4
	for _, before := range []int{0, 1, gen / 2, gen - 1, gen, gen + 7} {
		// before: how many other items went in ahead of x, so that x lands
		// at different positions within its generation.
		s := NewSeenSet(slots)
		next := 10000
		fresh := func(n int) {
			for range n {
				s.Observe(fpOf(next))
				next++
			}
		}
		fresh(before)
		x := fpOf(1)
		s.Observe(x)
		// At least a whole generation of other items: x is still known.
		fresh(gen)
		if !s.Contains(x) {
			t.Errorf("x after %d items, then %d more: forgotten within a generation", before, gen)
		}
		// Two whole generations: x is gone.
		fresh(gen)
		if s.Contains(x) {
			t.Errorf("x after %d items, then %d more: still there after two generations", before, 2*gen)
		}
		if !s.Observe(x) {
			t.Errorf("x after %d items: Observe after two generations reported seen", before)
		}
	}
}

// TestSeenSetFixedMemory: the table never grows and never holds more than
// two generations of items.
func TestSeenSetFixedMemory(t *testing.T) {
	s := NewSeenSet(128)
	n, c := len(s.tab), cap(s.tab)
	for i := range 100000 {
		s.Observe(fpOf(i))
		if i%997 == 0 {
			s.Observe(fpOf(i / 2)) // some reuse, copied forward
		}
	}
	if len(s.tab) != n || cap(s.tab) != c {
		t.Errorf("table grew from %d/%d to %d/%d", n, c, len(s.tab), cap(s.tab))
	}
	if got, limit := s.Len(), 2*s.Slots()*3/4; got > limit {
		t.Errorf("Len() = %d, more than two generations (%d)", got, limit)
	}
	if a := testing.AllocsPerRun(1000, func() { s.Observe(fpOf(12345)) }); a != 0 {
		t.Errorf("Observe allocates %v times", a)
	}
}

func TestSeenSetSnapshot(t *testing.T) {
	s := NewSeenSet(64)
	for i := range uint32(200) { // several generations
		s.Observe(i*2654435761 + 1)
	}
	data := s.AppendBinary(nil)
	var r SeenSet
	n, err := r.DecodeFrom(data, 64)
	if err != nil || n != len(data) {
		t.Fatalf("DecodeFrom: %d of %d bytes, %v", n, len(data), err)
	}
	if r.cur != s.cur || r.n != s.n || len(r.tab) != len(s.tab) {
		t.Fatalf("header not restored")
	}
	for i := range s.tab {
		if r.tab[i] != s.tab[i] {
			t.Fatalf("slot %d differs", i)
		}
	}
	// Restored into another size, what was held is still known.
	var big SeenSet
	if _, err := big.DecodeFrom(data, 512); err != nil {
		t.Fatal(err)
	}
	for _, v := range s.tab {
		if v != 0 && !big.Contains(v) {
			t.Fatalf("fingerprint %d lost when resizing", v)
		}
	}
	for _, bad := range [][]byte{nil, {0}, {64, 2, 0, 0}, {64, 0, 0, 5}} {
		if _, err := r.DecodeFrom(bad, 64); err == nil {
			t.Errorf("% x: accepted", bad)
		}
	}
}
