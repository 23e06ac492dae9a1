package detector

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/vigil-sec/vigil/features"
)

// Event time is the attacker's until checked: every event's timestamp is
// written by whoever wrote the event. Two rules keep one source's clock from
// closing other agents' windows:
//
//   - The partition's watermark is not the newest event time but the
//     newest time that a quorum of distinct agents has reached (the
//     quorum-th largest of the agents' own clocks), and once the partition
//     knows enough agents with an hour of history, only theirs count: a
//     made-up identity has no say. One forged event, forged events in
//     made-up names, or one producer whose clock runs fast, move only
//     their own agents' clocks; windows close when the quorum's do.
//   - Where vigil knows a trusted time for an event (the broker's timestamp,
//     bounded by the wall clock), an event stamped more than MaxClockSkew
//     ahead of it is rejected (ErrFuture), and alert and request times are
//     bounded by it.

// ErrFuture is returned by Process for an event stamped further ahead of
// the trusted time than the allowed clock skew.
var ErrFuture = errors.New("event time ahead of the trusted time")

// ReasonFuture is the rejection reason of an event stamped in the future.
const ReasonFuture features.Reason = "future"

// watermarkQuorum is how many distinct agents must have reached an event
// time before the partition's watermark does.
const watermarkQuorum = 3

// clockEntry is one of the agents with the newest clocks.
type clockEntry struct {
	id    string
	clock int64
}

// clocks tracks the quorum agents with the newest clocks: their
// smallest clock is the watermark.
type clocks struct {
	n      int
	agents int                         // agents the partition knows (set by the Pipeline)
	top    [watermarkQuorum]clockEntry // newest first
}

// observe records that agent id's clock reached ts and reports whether the
// watermark moved.
func (c *clocks) observe(id string, ts int64) bool {
	if c.n == len(c.top) && ts <= c.top[c.n-1].clock {
		return false
	}
	old := c.watermark()
	i := 0
	for i < c.n && c.top[i].id != id {
		i++
	}
	switch {
	case i < c.n:
		c.top[i].clock = max(c.top[i].clock, ts)
	case c.n < len(c.top):
		c.top[c.n] = clockEntry{id: id, clock: ts}
		c.n++
	default:
		i = c.n - 1
		c.top[i] = clockEntry{id: id, clock: ts}
	}
	// Only entry i moved, and only up: bubble it into place.
	for ; i > 0 && c.top[i].clock > c.top[i-1].clock; i-- {
		c.top[i], c.top[i-1] = c.top[i-1], c.top[i]
	}
	return c.watermark() != old
}

// watermark is the newest time the quorum of agents has reached: the
// quorum is watermarkQuorum agents, or half of the agents a small
// partition knows (a quorum of two would stall whenever one of two agents
// is quiet).
func (c *clocks) watermark() int64 {
	if c.n == 0 {
		return 0
	}
	q := min(c.n, max(1, c.agents/2))
	return c.top[q-1].clock
}

// ProcessAt is Process for an event whose trusted time is known: trusted
// (Unix ns) is the broker's timestamp bounded by the wall clock, 0 when
// unknown. An event stamped more than MaxClockSkew after it is rejected
// with ErrFuture; alert times are bounded by it.
func (p *Pipeline) ProcessAt(raw []byte, trusted int64) error {
	p.trusted = trusted
	return p.Process(raw)
}

// ProcessMessage is ProcessAt for a Kafka message: its key must be the
// event's agent_id (else ErrKeyMismatch): an agent's events produced under
// another key would land on other partitions and split its baseline.
func (p *Pipeline) ProcessMessage(raw, key []byte, trusted int64) error {
	p.trusted, p.key, p.checkKey = trusted, key, true
	err := p.Process(raw)
	p.key, p.checkKey = nil, false
	return err
}

// ErrKeyMismatch is returned by ProcessMessage for a message whose Kafka
// key is not its event's agent_id.
var ErrKeyMismatch = errors.New("Kafka key is not the event's agent_id")

// ReasonKeyMismatch is the rejection reason of ErrKeyMismatch.
const ReasonKeyMismatch features.Reason = "key_mismatch"

// checkFuture rejects an event stamped too far ahead of the trusted time.
func (p *Pipeline) checkFuture(ts int64) error {
	if p.trusted <= 0 || ts <= p.trusted+p.skew {
		return nil
	}
	p.stats.Future++
	return fmt.Errorf("%w: %v ahead of the broker's timestamp, more than the allowed clock skew %v",
		ErrFuture, time.Duration(ts-p.trusted).Round(time.Second), time.Duration(p.skew))
}

// trustedWatermark is the watermark where a trusted time is known: the
// quorum's, or — when fewer than the quorum of agents are active (a quiet
// night) — the quorum's when it last moved plus the trusted time passed
// since, never past the newest event time. An attacker can move neither.
func (p *Pipeline) trustedWatermark() int64 {
	wm := p.watermark()
	if p.anchorT <= 0 || p.trusted <= p.anchorT {
		return wm
	}
	return max(wm, min(p.stats.MaxTS, p.anchorWM+(p.trusted-p.anchorT)))
}

// trustedAt bounds a time derived from event time (an alert's detected_at,
// and so a request's expires_at) by the trusted time, when there is one:
// nothing is detected after the moment vigil reads the event.
func (p *Pipeline) trustedAt(t int64) int64 {
	if p.trusted > 0 {
		return min(t, p.trusted)
	}
	return t
}

// Watermark is the partition's event-time watermark: the newest time that
// the quorum of distinct agents has reached (see clocks).
func (p *Pipeline) Watermark() int64 { return p.watermark() }

// watermark is the warm agents' quorum clock once the partition knows
// twice the quorum of warm agents, else every agent's.
func (p *Pipeline) watermark() int64 {
	if p.warm.agents >= 2*watermarkQuorum && p.warm.n > 0 {
		return p.warm.watermark()
	}
	return p.clocks.watermark()
}

// ahead reports whether window idx lies more than two windows ahead of the
// partition's watermark: no honest clock runs that far ahead of the
// quorum's.
func (p *Pipeline) ahead(idx int64) bool {
	return idx > features.WindowIndex(p.watermark(), p.size)+2
}

// dropAhead closes agent a's window s, which lies far ahead of the
// partition (see ahead), because the agent's events have come back to the
// present: the window is scored and alerted on like any other, since
// events stamped far ahead are themselves suspect, but it teaches the
// baselines nothing and does not move the agent's decided windows, so the
// agent's real events keep their windows.
func (p *Pipeline) dropAhead(a *agent, s int) {
	p.stats.Ahead++
	c := p.scratch(1)
	c.a, c.v = a, a.win[s].Vector(p.size)
	p.evaluate(c)
	p.model.Finish(&c.res)
	a.open[s] = false
	if sev := p.cfg.Policy.Severity(c.res.Score, 1); sev >= p.cfg.Policy.MinSeverity {
		p.alert(c, sev, p.trustedAt(p.watermark()), false)
	}
	p.release(a)
}

// appendBinary appends the tracker's state.
func (c *clocks) appendBinary(dst []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(c.agents))
	dst = append(dst, byte(c.n))
	for _, e := range c.top[:c.n] {
		dst = appendString(dst, e.id)
		dst = binary.LittleEndian.AppendUint64(dst, uint64(e.clock))
	}
	return dst
}

// decode reads what appendBinary wrote and returns the bytes it used.
func (c *clocks) decode(data []byte) (int, error) {
	bad := fmt.Errorf("%w: partition: truncated clocks", ErrState)
	agents, off := binary.Uvarint(data)
	if off <= 0 || agents > 1<<40 || off >= len(data) || int(data[off]) > len(c.top) {
		return 0, bad
	}
	*c = clocks{agents: int(agents), n: int(data[off])}
	off++
	for i := range c.top[:c.n] {
		id, n, err := readString(data[off:])
		if err != nil || off+n+8 > len(data) {
			return 0, bad
		}
		off += n
		c.top[i] = clockEntry{id: id, clock: int64(binary.LittleEndian.Uint64(data[off:]))}
		off += 8
	}
	return off, nil
}
