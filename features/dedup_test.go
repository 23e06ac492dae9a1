package features

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"
)

func idOf(i int) []byte { return strconv.AppendInt([]byte("evt-"), int64(i), 10) }

// remembered reports whether d holds id, without recording it.
func remembered(d *Dedup, id []byte) bool {
	h := key(Hash64(id, 0x5eed))
	return d.cur.has(h) || d.prev.has(h)
}

var t0 = time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC).UnixNano()

func TestDedupImmediateDuplicate(t *testing.T) {
	d := NewDedup(int64(10*time.Minute), 1000)
	if d.Seen([]byte("a"), t0) {
		t.Fatal("first sighting reported as duplicate")
	}
	if !d.Seen([]byte("a"), t0) {
		t.Fatal("immediate redelivery not caught")
	}
	if d.Seen([]byte("b"), t0) {
		t.Fatal("another id reported as duplicate")
	}
	if !d.Seen([]byte("a"), t0-int64(time.Hour)) {
		t.Fatal("redelivery with an older ts not caught")
	}
	if d.Len() != 2 {
		t.Errorf("Len() = %d, want 2", d.Len())
	}
}

// TestDedupWithinHalfHorizon: in a steady stream (one new event per second),
// every redelivery up to horizon/2 later is caught — the guarantee Dedup
// documents.
func TestDedupWithinHalfHorizon(t *testing.T) {
	const h = 10 * time.Minute
	d := NewDedup(int64(h), 1<<16)
	sec := int64(time.Second)
	for i := range 3 * 3600 {
		now := t0 + int64(i)*sec
		if d.Seen(idOf(i), now) {
			t.Fatalf("event %d: new id reported as a duplicate", i)
		}
		for _, back := range []int{0, 1, 59, 60, 200, 299, 300} {
			if j := i - back; j >= 0 && !d.Seen(idOf(j), now) {
				t.Fatalf("event %d seen at +%ds: redelivery %ds later (< horizon/2 = %s) not caught", j, j, back, h/2)
			}
		}
	}
}

// TestDedupForgetsAfterHorizon: in a steady stream an id is forgotten at most
// one horizon (plus a step) after it was seen, and memory stays bounded.
func TestDedupForgetsAfterHorizon(t *testing.T) {
	const h = 10 * time.Minute
	d := NewDedup(int64(h), 1<<16)
	sec := int64(time.Second)
	step := 2*int(h/time.Second) + 2
	for i := range 3 * 3600 {
		now := t0 + int64(i)*sec
		d.Seen(idOf(i), now)
		if j := i - step; j >= 0 && remembered(d, idOf(j)) {
			t.Fatalf("id seen at +%ds still remembered at +%ds, more than twice the %s horizon later", j, i, h)
		}
		if d.Len() > 2*int(h/time.Second)+2 {
			t.Fatalf("at +%ds: %d ids remembered, more than two horizons' worth", i, d.Len())
		}
	}
}

// TestDedupRetention measures, in a steady stream, how long after its first
// sighting each id stays remembered: between the horizon and twice it.
func TestDedupRetention(t *testing.T) {
	const h = 10 * time.Minute
	const n = 2 * 3600
	d := NewDedup(int64(h), 1<<16)
	last := make([]int, n) // last second at which id i was still remembered
	for i := range n {
		d.Seen(idOf(i), t0+int64(i)*int64(time.Second))
		for j := max(0, i-2*int(h/time.Second)-5); j <= i; j++ {
			if remembered(d, idOf(j)) {
				last[j] = i
			}
		}
	}
	lo, hi := n, 0
	for i := range n - 2*int(h/time.Second) - 5 {
		r := last[i] - i
		lo, hi = min(lo, r), max(hi, r)
	}
	t.Logf("retention with a %s horizon: %ds to %ds", h, lo, hi)
	if time.Duration(lo)*time.Second < h {
		t.Errorf("some id remembered only %ds, less than the horizon", lo)
	}
	if time.Duration(hi)*time.Second > 2*h+time.Second {
		t.Errorf("some id remembered %ds, more than twice the horizon", hi)
	}
}

// TestDedupFullHorizon (bug dedup-horizon): NewDedup's comment and
// detector.Config.DedupHorizon ("how long (event time) an event_id is
// remembered") promise the whole horizon, but the two generations of
// horizon/2 only guarantee horizon/2: an id first seen just before a
// generation turns over is forgotten about horizon/2 later, so a redelivery
// at 0.75·horizon passes as a new event.
func TestDedupFullHorizon(t *testing.T) {
	const h = 10 * time.Minute
	d := NewDedup(int64(h), 1<<16)
	sec := int64(time.Second)
	lag := int(h/time.Second) * 3 / 4
	for i := range 3600 {
		now := t0 + int64(i)*sec
		d.Seen(idOf(i), now)
		if j := i - lag; j >= 0 && !remembered(d, idOf(j)) {
			t.Fatalf("id seen at +%ds forgotten at +%ds, %s later (horizon %s)", j, i, time.Duration(lag)*time.Second, h)
		}
	}
}

// TestDedupCapacity: with more ids than the capacity inside one horizon, the
// oldest are forgotten first, the newest capacity ids are always remembered,
// and no more than 2·capacity are ever held.
func TestDedupCapacity(t *testing.T) {
	const capacity = 100
	d := NewDedup(int64(time.Hour), capacity)
	for i := range 10000 {
		if d.Seen(idOf(i), t0) { // all at one instant: only the capacity rotates
			t.Fatalf("id %d: new id reported as a duplicate", i)
		}
		if d.Len() > 2*capacity {
			t.Fatalf("after %d ids: Len() = %d > 2·capacity", i+1, d.Len())
		}
		for j := max(0, i-capacity+1); j <= i; j += 7 {
			if !remembered(d, idOf(j)) {
				t.Fatalf("after %d ids: id %d, among the newest %d, forgotten", i+1, j, capacity)
			}
		}
		if j := i - 2*capacity; j >= 0 && remembered(d, idOf(j)) {
			t.Fatalf("after %d ids: id %d, older than 2·capacity ids, still remembered", i+1, j)
		}
	}
	t.Run("minimum capacity 16", func(t *testing.T) {
		d := NewDedup(int64(time.Hour), 1)
		for i := range 100 {
			d.Seen(idOf(i), t0)
		}
		if d.Len() > 32 || d.Len() < 16 {
			t.Errorf("Len() = %d with capacity 1 (raised to 16)", d.Len())
		}
		for j := 100 - 16; j < 100; j++ {
			if !d.Seen(idOf(j), t0) {
				t.Errorf("id %d of the newest 16 forgotten", j)
			}
		}
	})
}

// TestDedupOutOfOrder: late events (older ts) neither start a generation nor
// evade detection.
func TestDedupOutOfOrder(t *testing.T) {
	const h = 10 * time.Minute
	d := NewDedup(int64(h), 1000)
	d.Seen([]byte("now"), t0)
	for i := range 200 {
		if d.Seen(idOf(i), t0-int64(i)*int64(time.Minute)) {
			t.Fatalf("late id %d reported as a duplicate", i)
		}
	}
	for i := range 200 {
		if !d.Seen(idOf(i), t0) {
			t.Errorf("late id %d forgotten", i)
		}
	}
}

func TestDedupAllocs(t *testing.T) {
	const capacity = 1024
	d := NewDedup(int64(time.Hour), capacity)
	i := 0
	for ; i < 8*capacity; i++ { // both generations reach full size
		d.Seen(idOf(i), t0)
	}
	buf := make([]byte, 0, 32)
	allocs := testing.AllocsPerRun(4*capacity, func() {
		buf = strconv.AppendInt(append(buf[:0], "evt-"...), int64(i), 10)
		d.Seen(buf, t0)
		i++
	})
	if allocs != 0 {
		t.Errorf("Dedup.Seen allocates %v times per new id in steady state", allocs)
	}
}

// A Dedup restored from incremental snapshots — at each cut the journal's
// hashes appended to their generation's pieces, the pieces of generations
// that rotated away dropped — catches the same redeliveries and rotates its
// generations at the same times as the original.
func TestDedupIncrementalRestore(t *testing.T) {
	const h = 10 * time.Minute
	sec := int64(time.Second)
	a := NewDedup(int64(h), 256)
	a.Journal()
	pieces := map[uint64][][]byte{} // generation → pieces
	var b *Dedup
	cut := func() {
		gen, cur, prev := a.TakeJournal()
		if len(prev) > 0 {
			pieces[gen-1] = append(pieces[gen-1], AppendHashes(nil, prev))
		}
		if len(cur) > 0 {
			pieces[gen] = append(pieces[gen], AppendHashes(nil, cur))
		}
		for g := range pieces {
			if g+1 < gen {
				delete(pieces, g)
			}
		}
		_, start := a.Generation()
		b = NewDedup(int64(h), 256)
		if err := b.Restore(gen, start, pieces[gen], pieces[gen-1]); err != nil {
			t.Fatal(err)
		}
		if b.Len() != a.Len() {
			t.Fatalf("restored %d ids, want %d", b.Len(), a.Len())
		}
	}
	for i := range 3000 {
		ts := t0 + int64(i)*sec
		for _, id := range [][]byte{idOf(i), idOf(i - 300), idOf(i - 700)} {
			x := a.Seen(id, ts)
			if b != nil {
				if y := b.Seen(id, ts); x != y {
					t.Fatalf("event %d, id %s: original says %v, restored %v", i, id, x, y)
				}
			}
		}
		if i%97 == 0 || i%1000 == 999 {
			cut() // b continues from the snapshot, compared with a
		}
	}
	if a.gen < 5 {
		t.Fatalf("%d rotations: the test did not exercise rotation", a.gen)
	}
	if err := NewDedup(int64(h), 256).Restore(1, 0, [][]byte{make([]byte, 7)}, nil); !errors.Is(err, ErrDedupSnapshot) {
		t.Errorf("7 bytes: %v, want ErrDedupSnapshot", err)
	}
}

// The set behind each generation: every added hash is found, absent ones
// are not, the hash 0 is a key like any other, growth and clearing keep it
// exact.
func TestIDSet(t *testing.T) {
	var s idSet
	if s.has(key(42)) {
		t.Fatal("empty set has 42")
	}
	for round := range 3 {
		want := map[uint64]bool{}
		for i := range 5000 {
			h := key(Hash64(idOf(i*7+round), 1))
			if i == 17 {
				h = key(0)
			}
			if !s.has(h) {
				s.add(h, uint64(i))
			}
			want[h] = true
		}
		if s.n != len(want) || 2*s.n > len(s.slots) {
			t.Fatalf("round %d: %d held in %d slots, want %d at most half full", round, s.n, len(s.slots), len(want))
		}
		for h := range want {
			if !s.has(h) {
				t.Fatalf("round %d: %x lost", round, h)
			}
		}
		if s.has(key(Hash64([]byte("never added"), 1))) {
			t.Fatalf("round %d: found a hash never added", round)
		}
		size := len(s.slots)
		s.clear()
		if s.n != 0 || len(s.slots) != size || s.has(key(0)) {
			t.Fatalf("round %d: clear left %d, resized to %d", round, s.n, len(s.slots))
		}
	}
}

// TestDedupCheck (issue 17 item 4): the same id with the same content is a
// duplicate; with other content it is a conflict, which changes nothing —
// the first content stays, the conflicting one is not remembered, the
// journal does not grow. Unknown content (0) matches any.
func TestDedupCheck(t *testing.T) {
	a, b := ContentHash([]byte(`{"event_id":"e-1","amount":1}`)), ContentHash([]byte(`{"event_id":"e-1","amount":20000}`))
	d := NewDedup(int64(10*time.Minute), 1000)
	d.Journal()
	steps := []struct {
		id      string
		content uint64
		want    Verdict
	}{
		{"e-1", a, Unseen},
		{"e-1", a, Duplicate},
		{"e-1", b, Conflict},
		{"e-1", b, Conflict}, // the conflicting content was not remembered
		{"e-1", a, Duplicate},
		{"e-1", 0, Duplicate}, // unknown content
		{"e-2", 0, Unseen},
		{"e-2", b, Duplicate},
		{"e-2", a, Duplicate},
	}
	for i, s := range steps {
		if got := d.Check([]byte(s.id), s.content, t0); got != s.want {
			t.Fatalf("step %d: Check(%s, %x) = %v, want %v", i, s.id, s.content, got, s.want)
		}
	}
	if d.Len() != 2 {
		t.Errorf("Len() = %d, want 2", d.Len())
	}
	if _, cur, _ := d.TakeJournal(); len(cur) != 4 {
		t.Errorf("journal holds %d values, want 2 (id, content) pairs", len(cur))
	}
	if !d.Seen([]byte("e-1"), t0) || d.Seen([]byte("e-3"), t0) {
		t.Error("Seen disagrees with Check")
	}

	t.Run("in the previous generation", func(t *testing.T) {
		d := NewDedup(int64(10*time.Minute), 1000)
		d.Check([]byte("old"), a, t0)
		g0, _ := d.Generation()
		d.Check([]byte("new"), a, t0+int64(11*time.Minute)) // rotates: "old" is in prev
		if gen, _ := d.Generation(); gen != g0+1 {
			t.Fatalf("generation %d, want %d", gen, g0+1)
		}
		if got := d.Check([]byte("old"), b, t0+int64(12*time.Minute)); got != Conflict {
			t.Errorf("conflict with the previous generation: %v", got)
		}
		if got := d.Check([]byte("old"), a, t0+int64(12*time.Minute)); got != Duplicate {
			t.Errorf("duplicate of the previous generation: %v", got)
		}
		if d.cur.has(key(Hash64([]byte("old"), 0x5eed))) {
			t.Error("an id of the previous generation moved to the current one")
		}
	})
	t.Run("ContentHash is never 0", func(t *testing.T) {
		if ContentHash(nil) == 0 || ContentHash(typicalEvent) == 0 || ContentHash(typicalEvent) == Hash64(typicalEvent, 0x5eed) {
			t.Error("ContentHash is 0 or the id hash")
		}
	})
}

// TestDedupFloodOfConflicts: an attacker replaying known ids with new content
// gets a Conflict for every one, and neither the ids' contents nor the
// generations change, so the real redeliveries are still duplicates.
func TestDedupFloodOfConflicts(t *testing.T) {
	d := NewDedup(int64(time.Hour), 256)
	content := func(i, v int) uint64 { return ContentHash(strconv.AppendInt(idOf(i), int64(v), 10)) }
	for i := range 24 {
		if d.Check(idOf(i), content(i, 0), t0) != Unseen {
			t.Fatal("new id not Unseen")
		}
	}
	g0, _ := d.Generation()
	for v := 1; v <= 20000; v++ {
		if got := d.Check(idOf(v%24), content(v%24, v), t0); got != Conflict {
			t.Fatalf("replay %d: %v, want Conflict", v, got)
		}
	}
	if gen, _ := d.Generation(); gen != g0 || d.Len() != 24 {
		t.Fatalf("after the flood: generation %d, %d ids", gen, d.Len())
	}
	for i := range 24 {
		if got := d.Check(idOf(i), content(i, 0), t0); got != Duplicate {
			t.Fatalf("redelivery of %d: %v, want Duplicate", i, got)
		}
	}
}

// cutPieces cuts a snapshot stream as the checkpoint does, into pieces of at
// most n bytes.
func cutPieces(b []byte, n int) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		k := min(len(b), n)
		out = append(out, b[:k])
		b = b[k:]
	}
	return out
}

// sameVerdicts checks that a and b give the same verdicts for ids 0..n-1
// with content c(i), another content and unknown content.
func sameVerdicts(t *testing.T, a, b *Dedup, n int, c func(int) uint64) {
	t.Helper()
	for i := range n {
		for _, content := range []uint64{c(i), c(i) + 1, 0} {
			x, y := a.Check(idOf(i), content, t0), b.Check(idOf(i), content, t0)
			if x != y {
				t.Fatalf("id %d content %x: original %v, restored %v", i, content, x, y)
			}
		}
	}
}

// A snapshot of both generations, whole or cut into pieces (only the first
// of which has the header), restores the ids with their contents.
func TestDedupSnapshotRoundTrip(t *testing.T) {
	const h = time.Minute
	c := func(i int) uint64 { return ContentHash(idOf(i * 3)) }
	build := func() *Dedup {
		a := NewDedup(int64(h), 1000)
		for i := range 300 {
			a.Check(idOf(i), c(i), t0+int64(i)*int64(time.Second))
		}
		return a
	}
	a := build()
	gen, start := a.Generation()
	if a.prev.n == 0 {
		t.Fatal("the previous generation is empty: not exercised")
	}
	cur, prev := a.AppendGeneration(nil, false), a.AppendGeneration(nil, true)
	if len(cur) != dedupHeader+dedupEntry*a.cur.n || len(prev) != dedupHeader+dedupEntry*a.prev.n {
		t.Fatalf("%d and %d bytes for %d and %d ids", len(cur), len(prev), a.cur.n, a.prev.n)
	}
	for _, n := range []int{len(cur) + len(prev), 16 * 7, 16} {
		t.Run(fmt.Sprintf("pieces of %d bytes", n), func(t *testing.T) {
			b := NewDedup(int64(h), 1000)
			if err := b.Restore(gen, start, cutPieces(cur, n), cutPieces(prev, n)); err != nil {
				t.Fatal(err)
			}
			a := build() // sameVerdicts changes both
			if b.Len() != a.Len() {
				t.Fatalf("restored %d ids, want %d", b.Len(), a.Len())
			}
			sameVerdicts(t, a, b, 310, c)
		})
	}
	t.Run("empty", func(t *testing.T) {
		e := NewDedup(int64(h), 1000)
		if b := e.AppendGeneration(nil, false); len(b) != 0 {
			t.Errorf("empty generation: %d bytes", len(b))
		}
		if b := AppendHashes(nil, nil); len(b) != 0 {
			t.Errorf("empty journal: %d bytes", len(b))
		}
	})
}

// appendV1 writes ids as a Dedup before content hashes did: 8-byte id hashes.
func appendV1(dst []byte, ids ...[]byte) []byte {
	for _, id := range ids {
		dst = binary.LittleEndian.AppendUint64(dst, key(Hash64(id, 0x5eed)))
	}
	return dst
}

// A snapshot written before content hashes (version 1) restores its ids with
// unknown content: a later event with the same id is a duplicate whatever
// its content, as it was before.
func TestDedupRestoreVersion1(t *testing.T) {
	var cur, prev []byte
	for i := range 100 {
		if i < 40 {
			prev = appendV1(prev, idOf(i))
		} else {
			cur = appendV1(cur, idOf(i))
		}
	}
	d := NewDedup(int64(time.Hour), 1000)
	if err := d.Restore(7, t0, cutPieces(cur, 8*16), cutPieces(prev, 8*16)); err != nil {
		t.Fatal(err)
	}
	if gen, start := d.Generation(); gen != 7 || start != t0 || d.Len() != 100 || d.prev.n != 40 {
		t.Fatalf("generation %d start %d, %d ids (%d previous)", gen, start, d.Len(), d.prev.n)
	}
	for i := range 100 {
		if got := d.Check(idOf(i), ContentHash(idOf(i)), t0); got != Duplicate {
			t.Fatalf("id %d: %v, want Duplicate", i, got)
		}
	}
	if got := d.Check(idOf(100), 5, t0); got != Unseen {
		t.Fatalf("a new id: %v", got)
	}
	// The next snapshot is version 2 and keeps the unknown contents.
	d2 := NewDedup(int64(time.Hour), 1000)
	if err := d2.Restore(7, t0, [][]byte{d.AppendGeneration(nil, false)}, [][]byte{d.AppendGeneration(nil, true)}); err != nil {
		t.Fatal(err)
	}
	if got := d2.Check(idOf(3), 99, t0); got != Duplicate {
		t.Errorf("version 1 id after a version 2 round trip: %v", got)
	}
	if got := d2.Check(idOf(100), 6, t0); got != Conflict {
		t.Errorf("version 2 id after a round trip: %v", got)
	}
}

func TestDedupRestoreErrors(t *testing.T) {
	good := AppendHashes(nil, []uint64{key(1), 2, key(3), 4})
	for _, tc := range []struct {
		name      string
		cur, prev [][]byte
	}{
		{"version 1, 7 bytes", [][]byte{make([]byte, 7)}, nil},
		{"version 1, 12 bytes", [][]byte{appendV1(nil, idOf(1)), appendV1(nil, idOf(2))[:4]}, nil},
		{"truncated header", [][]byte{make([]byte, 8)}, nil},
		{"unknown version", [][]byte{binary.LittleEndian.AppendUint64(make([]byte, 8), 3)}, nil},
		{"version 2, half an entry", [][]byte{good[:len(good)-8]}, nil},
		{"version 2 continuation of 24 bytes", [][]byte{good, good[dedupHeader : dedupHeader+24]}, nil},
		{"version 2 header in prev", [][]byte{good[dedupHeader : dedupHeader+8]}, [][]byte{good}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := NewDedup(int64(time.Hour), 256)
			d.Check([]byte("kept"), 1, t0)
			if err := d.Restore(1, t0, tc.cur, tc.prev); !errors.Is(err, ErrDedupSnapshot) {
				t.Fatalf("Restore: %v, want ErrDedupSnapshot", err)
			}
			if d.Len() != 1 || d.Check([]byte("kept"), 1, t0) != Duplicate {
				t.Error("a failed Restore changed the filter")
			}
		})
	}
}

// TestDedupMemoryPerID logs the bytes a remembered id costs with both
// generations at capacity (tables at most half full; a journal adds 16 bytes
// an id until TakeJournal).
func TestDedupMemoryPerID(t *testing.T) {
	const capacity = 1 << 14
	d := NewDedup(int64(time.Hour), capacity)
	for i := range 4 * capacity {
		d.Check(idOf(i), uint64(i), t0)
	}
	bytes := (len(d.cur.slots) + len(d.prev.slots)) * int(unsafe.Sizeof(idEntry{}))
	perID := float64(bytes) / float64(d.Len())
	t.Logf("%d ids in %d bytes: %.1f bytes per id (8-byte slots before content hashes: %.1f)", d.Len(), bytes, perID, perID/2)
	if perID > 64 {
		t.Errorf("%.1f bytes per id", perID)
	}
}

// TestContentHash pins ContentHash (snapshots keep its values, so it must not
// change) and checks that flipping any bit of a typical event, or dropping or
// adding a byte, changes it.
func TestContentHash(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
	}{
		{"", 0x283f2f5b05b5d9e8},
		{"a", 0xe94616c007473b7},
		{strings.Repeat("x", 63), 0x315a4d26735af710},
		{strings.Repeat("x", 64), 0xf0cfea1f026e684b},
		{string(typicalEvent), 0x3c4576d60d423c94},
	} {
		if got := ContentHash([]byte(tc.in)); got != tc.want {
			t.Errorf("ContentHash(%.20q…, %d bytes) = %#x, want %#x", tc.in, len(tc.in), got, tc.want)
		}
	}
	seen := map[uint64]string{ContentHash(typicalEvent): "original"}
	add := func(b []byte, what string) {
		h := ContentHash(b)
		if other, ok := seen[h]; ok {
			t.Fatalf("%s and %s hash alike", what, other)
		}
		seen[h] = what
	}
	b := append([]byte(nil), typicalEvent...)
	for i := range b {
		for bit := range 8 {
			b[i] ^= 1 << bit
			add(b, fmt.Sprintf("bit %d of byte %d flipped", bit, i))
			b[i] ^= 1 << bit
		}
	}
	add(typicalEvent[:len(typicalEvent)-1], "the last byte dropped")
	add(append(b, ' '), "a space added")
}
