package features

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
	horizon   int64
	cap       int
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
	}
	d.cur[h] = struct{}{}
	return false
}

// Len returns the number of ids remembered.
func (d *Dedup) Len() int { return len(d.cur) + len(d.prev) }
