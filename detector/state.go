package detector

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/vigil-sec/vigil/features"
	"github.com/vigil-sec/vigil/models"
)

// ErrState is wrapped by errors restoring state that is not a snapshot this
// version can read.
var ErrState = errors.New("bad state snapshot")

// Agent state snapshot: 'A', a version byte, then the agent id and class
// (uvarint length + bytes), persistence (uvarint), last scored window
// (int64), a byte of open-window flags, each open window, the first-seen set
// and the baseline. Version 2 appends, for each open window, its
// early-decision triggers and its place in the close order (uvarints), so
// that a restored pipeline rechecks and decides exactly when the original
// would have. Version 3 appends, for each open window, its count of denied
// calls to unfamiliar targets or actions (uvarint), then the agent's probed
// items (four little-endian uint32). Version 4 appends, for each open
// window, its calls carrying a source address, those from new origins and
// those from known ones (three uvarints), then the agent's new origins (four
// little-endian uint64). Fields are only appended in later versions.
const (
	agentMagic   = 'A'
	agentVersion = 4
)

// AppendAgentState appends the snapshot of agent id to dst, or returns dst and
// false when the pipeline does not hold that agent. The snapshot is what the
// streaming runtime writes to the compacted state topic, keyed by agent id.
func (p *Pipeline) AppendAgentState(dst []byte, id string) ([]byte, bool) {
	a, ok := p.agents[id]
	if !ok {
		if p.store != nil {
			// An evicted agent: its snapshot is as it was written.
			if out, ok, err := p.store.Append(dst, id); err == nil && ok {
				return out, true
			}
		}
		return dst, false
	}
	dst = append(dst, agentMagic, agentVersion)
	dst = appendString(dst, a.id)
	dst = appendString(dst, a.class.name)
	dst = binary.AppendUvarint(dst, uint64(a.persist))
	dst = binary.LittleEndian.AppendUint64(dst, uint64(a.lastIdx))
	var open byte
	for s := range 2 {
		if a.open[s] {
			open |= 1 << s
		}
	}
	dst = append(dst, open)
	for s := range 2 {
		if a.open[s] {
			dst = a.win[s].AppendBinary(dst)
		}
	}
	dst = a.seen.AppendBinary(dst)
	dst, _ = a.base.AppendBinary(dst)
	for s := range 2 {
		if a.open[s] {
			for _, v := range [...]uint64{uint64(a.nextN[s]), uint64(a.nextNew[s]), uint64(a.nextBad[s]), a.order[s]} {
				dst = binary.AppendUvarint(dst, v)
			}
		}
	}
	for s := range 2 {
		if a.open[s] {
			dst = binary.AppendUvarint(dst, uint64(a.win[s].Unfamiliar))
		}
	}
	for _, v := range a.probes {
		dst = binary.LittleEndian.AppendUint32(dst, v)
	}
	for s := range 2 {
		if a.open[s] {
			for _, v := range [...]uint32{a.win[s].OriginN, a.win[s].Origin, a.win[s].Known} {
				dst = binary.AppendUvarint(dst, uint64(v))
			}
		}
	}
	for _, v := range a.origins {
		dst = binary.LittleEndian.AppendUint64(dst, v)
	}
	return dst, true
}

// RestoreAgent loads an agent snapshot, replacing any state the pipeline
// holds for that agent. Open windows rejoin the close schedule; a window
// that the pipeline's watermark has already passed closes at the next
// advance. Call it before processing the partition's events (after a
// rebalance or a restart).
func (p *Pipeline) RestoreAgent(data []byte) error {
	if len(data) < 2 || data[0] != agentMagic || data[1] == 0 {
		return fmt.Errorf("%w: no agent header", ErrState)
	}
	off := 2
	id, n, err := readString(data[off:])
	if err != nil {
		return err
	}
	off += n
	className, n, err := readString(data[off:])
	if err != nil {
		return err
	}
	off += n
	persist, n := binary.Uvarint(data[off:])
	if n <= 0 || off+n+9 > len(data) {
		return fmt.Errorf("%w: agent %q: truncated", ErrState, id)
	}
	off += n
	lastIdx := int64(binary.LittleEndian.Uint64(data[off:]))
	off += 8
	open := data[off]
	off++
	var wins [2]features.Window
	for s := range 2 {
		if open&(1<<s) != 0 {
			n, err := wins[s].DecodeFrom(data[off:])
			if err != nil {
				return fmt.Errorf("%w: agent %q: %v", ErrState, id, err)
			}
			off += n
		}
	}
	seen := features.SeenSet{}
	n, err = seen.DecodeFrom(data[off:], p.cfg.AgentSeenSlots)
	if err != nil {
		return fmt.Errorf("%w: agent %q: %v", ErrState, id, err)
	}
	off += n
	var base models.Baseline
	n, err = base.DecodeFrom(data[off:])
	if err != nil {
		return fmt.Errorf("%w: agent %q: %v", ErrState, id, err)
	}
	off += n
	// Version 2: triggers and close order of the open windows.
	var trig [2][4]uint64
	hasTrig := data[1] >= 2
	for s := range 2 {
		if !hasTrig || open&(1<<s) == 0 {
			continue
		}
		for i := range trig[s] {
			v, n := binary.Uvarint(data[off:])
			if n <= 0 || (i < 3 && v > 1<<32-1) {
				return fmt.Errorf("%w: agent %q: bad window triggers", ErrState, id)
			}
			trig[s][i] = v
			off += n
		}
	}
	// Version 3: denied calls to unfamiliar items, and the probed items.
	var probes features.Probes
	if data[1] >= 3 {
		for s := range 2 {
			if open&(1<<s) == 0 {
				continue
			}
			v, n := binary.Uvarint(data[off:])
			if n <= 0 || v > math.MaxUint16 {
				return fmt.Errorf("%w: agent %q: bad unfamiliar count", ErrState, id)
			}
			wins[s].Unfamiliar = uint16(v)
			off += n
		}
		if off+4*len(probes) > len(data) {
			return fmt.Errorf("%w: agent %q: truncated probes", ErrState, id)
		}
		for i := range probes {
			probes[i] = binary.LittleEndian.Uint32(data[off:])
			off += 4
		}
	}
	// Version 4: calls from new and known origins, and the origins.
	var origins features.Origins
	if data[1] >= 4 {
		for s := range 2 {
			if open&(1<<s) == 0 {
				continue
			}
			var c [3]uint64
			for i := range c {
				v, n := binary.Uvarint(data[off:])
				if n <= 0 || v > math.MaxUint32 {
					return fmt.Errorf("%w: agent %q: bad origin counts", ErrState, id)
				}
				c[i] = v
				off += n
			}
			wins[s].OriginN, wins[s].Origin, wins[s].Known = uint32(c[0]), uint32(c[1]), uint32(c[2])
		}
		if off+8*len(origins) > len(data) {
			return fmt.Errorf("%w: agent %q: truncated origins", ErrState, id)
		}
		for i := range origins {
			origins[i] = binary.LittleEndian.Uint64(data[off:])
			off += 8
		}
	}

	c := p.lookupClass(className)
	if c == nil {
		c = &class{name: className, seen: features.NewSeenSet(p.cfg.PeerSeenSlots)}
		p.classes[className] = c
	}
	a, ok := p.agents[id]
	if !ok {
		a = &agent{id: id}
		p.agents[id] = a
		if int(base.Windows) < p.cfg.Model.WarmWindows {
			p.ids.newAgents++
		}
	}
	if a.class != c {
		if a.class != nil {
			a.class.members--
		}
		c.members++
	}
	a.class, a.seen, a.base, a.probes, a.origins = c, seen, base, probes, origins
	a.persist, a.lastIdx = int32(min(persist, math.MaxInt32)), lastIdx
	if lastIdx >= 0 {
		a.clock = max(a.clock, lastIdx*p.size) // it had an event in that window
	}
	a.open = [2]bool{}
	for s := range 2 {
		if open&(1<<s) == 0 {
			continue
		}
		w := &wins[s]
		if a.win == nil {
			a.win = new([2]features.Window)
		}
		a.win[s] = *w
		a.open[s] = true
		if !p.started {
			p.started = true
			p.closed = w.Index - 1
			p.stats.FirstTS, p.stats.MaxTS = w.First, w.Last
		}
		if w.Index <= p.closed { // the watermark has passed it: close it now
			p.closeOne(a, s)
			continue
		}
		order := p.order
		p.schedule(a, w.Index)
		if hasTrig {
			a.nextN[s], a.nextNew[s], a.nextBad[s] = uint32(trig[s][0]), uint32(trig[s][1]), uint32(trig[s][2])
			a.order[s] = trig[s][3]
			p.order = max(order, trig[s][3]+1)
		} else {
			p.arm(a, s)
		}
		p.stats.FirstTS = min(p.stats.FirstTS, w.First)
		p.stats.MaxTS = max(p.stats.MaxTS, w.Last)
		a.clock = max(a.clock, w.Last)
	}
	p.clocks.observe(a.id, a.clock) // quorum sizes: as checkpointed
	if int(a.base.Windows) >= p.cfg.Model.WarmWindows {
		p.warm.observe(a.id, a.clock)
	}
	p.advance(p.watermark())
	p.release(a)
	return nil
}

// AgentIDs appends the ids of the agents the pipeline holds, evicted ones
// included.
func (p *Pipeline) AgentIDs(dst []string) []string {
	for id := range p.agents {
		dst = append(dst, id)
	}
	if p.store != nil {
		n := len(dst)
		dst = p.store.IDs(dst)
		dst = append(dst[:n], filterPrefixed(dst[n:], classKeyPrefix, false)...)
	}
	return dst
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

func readString(data []byte) (string, int, error) {
	l, n := binary.Uvarint(data)
	if n <= 0 || l > 1<<16 || uint64(len(data)-n) < l {
		return "", 0, fmt.Errorf("%w: bad string", ErrState)
	}
	return string(data[n : n+int(l)]), n + int(l), nil
}

// Peer-group snapshot: 'C', a version byte, the class name, its first-seen
// set and its baseline.
const (
	classMagic   = 'C'
	classVersion = 1
)

// AppendClassState appends the snapshot of peer group name to dst, or returns
// dst and false when the pipeline does not hold it.
func (p *Pipeline) AppendClassState(dst []byte, name string) ([]byte, bool) {
	c, ok := p.classes[name]
	if !ok {
		if p.store != nil {
			// An evicted peer group: its snapshot is as it was written.
			if out, ok, err := p.store.Append(dst, classKeyPrefix+name); err == nil && ok {
				return out, true
			}
		}
		return dst, false
	}
	dst = append(dst, classMagic, classVersion)
	dst = appendString(dst, c.name)
	dst = c.seen.AppendBinary(dst)
	dst, _ = c.base.AppendBinary(dst)
	return dst, true
}

// RestoreClass loads a peer-group snapshot, replacing what the pipeline holds
// for that group (its agents keep pointing at it).
func (p *Pipeline) RestoreClass(data []byte) error {
	if len(data) < 2 || data[0] != classMagic || data[1] == 0 {
		return fmt.Errorf("%w: no peer-group header", ErrState)
	}
	off := 2
	name, n, err := readString(data[off:])
	if err != nil {
		return err
	}
	off += n
	var seen features.SeenSet
	n, err = seen.DecodeFrom(data[off:], p.cfg.PeerSeenSlots)
	if err != nil {
		return fmt.Errorf("%w: peer group %q: %v", ErrState, name, err)
	}
	off += n
	var base models.Baseline
	if _, err := base.DecodeFrom(data[off:]); err != nil {
		return fmt.Errorf("%w: peer group %q: %v", ErrState, name, err)
	}
	c, ok := p.classes[name]
	if !ok {
		c = &class{name: name}
		p.classes[name] = c
	}
	c.seen, c.base = seen, base
	return nil
}

// ClassNames appends the names of the peer groups the pipeline holds,
// evicted ones included.
func (p *Pipeline) ClassNames(dst []string) []string {
	for name := range p.classes {
		dst = append(dst, name)
	}
	if p.store != nil && p.evictedClasses > 0 {
		n := len(dst)
		dst = p.store.IDs(dst)
		dst = append(dst[:n], filterPrefixed(dst[n:], classKeyPrefix, true)...)
	}
	return dst
}

// filterPrefixed keeps the ids with prefix (trimmed of it) when keep, or
// those without it, in place.
func filterPrefixed(ids []string, prefix string, keep bool) []string {
	out := ids[:0]
	for _, id := range ids {
		if strings.HasPrefix(id, prefix) == keep {
			out = append(out, strings.TrimPrefix(id, prefix))
		}
	}
	return out
}

// Pipeline-level snapshot: 'P', a version byte, the window size and allowed
// lateness it was taken with (int64 ns), whether an event was seen (byte), the
// last closed window index, the earliest and newest event times (int64), the
// close-order counter (uvarint), and the duplicate filter's current
// generation number (uvarint) and start (int64). The filter's ids are not in
// it: they are written by generation (AppendDedupGeneration) or as they are
// added (TakeDedupChanges).
const (
	partitionMagic   = 'P'
	partitionVersion = 2 // 2 adds the quorum's clocks
)

// AppendPartitionState appends the snapshot of the pipeline's own state (not
// its agents', peer groups' or duplicate filter's ids): the watermark, the
// index of the last closed window, the event-time bounds. With the agents'
// and peer groups' snapshots and the duplicate filter taken at the same point
// it is everything a pipeline needs to continue exactly where this one is.
func (p *Pipeline) AppendPartitionState(dst []byte) []byte {
	le := binary.LittleEndian
	dst = append(dst, partitionMagic, partitionVersion)
	dst = le.AppendUint64(dst, uint64(p.size))
	dst = le.AppendUint64(dst, uint64(p.late))
	var started byte
	if p.started {
		started = 1
	}
	dst = append(dst, started)
	dst = le.AppendUint64(dst, uint64(p.closed))
	dst = le.AppendUint64(dst, uint64(p.stats.FirstTS))
	dst = le.AppendUint64(dst, uint64(p.stats.MaxTS))
	dst = binary.AppendUvarint(dst, p.order)
	gen, start := p.dedup.Generation()
	dst = binary.AppendUvarint(dst, gen)
	dst = le.AppendUint64(dst, uint64(start))
	dst = p.clocks.appendBinary(dst)
	dst = p.warm.appendBinary(dst)
	return dst
}

// RestorePartitionState loads a snapshot written by AppendPartitionState. Call
// it on a new pipeline, then RestoreDedup, before restoring its peer groups
// and agents. A snapshot taken with another window size or allowed lateness
// is refused (wrapping ErrState): its window indices and closed windows would
// not line up with this configuration.
func (p *Pipeline) RestorePartitionState(data []byte) error {
	const fixed = 2 + 8 + 8 + 1 + 8 + 8 + 8
	if len(data) < fixed || data[0] != partitionMagic || data[1] == 0 {
		return fmt.Errorf("%w: no partition header", ErrState)
	}
	le := binary.LittleEndian
	size, late := int64(le.Uint64(data[2:])), int64(le.Uint64(data[10:]))
	if size != p.size || late != p.late {
		return fmt.Errorf("%w: taken with window_size %v and allowed_lateness %v, configured %v and %v",
			ErrState, time.Duration(size), time.Duration(late), time.Duration(p.size), time.Duration(p.late))
	}
	started := data[18] != 0
	closed := int64(le.Uint64(data[19:]))
	firstTS, maxTS := int64(le.Uint64(data[27:])), int64(le.Uint64(data[35:]))
	off := fixed
	order, n := binary.Uvarint(data[off:])
	if n <= 0 {
		return fmt.Errorf("%w: partition: truncated", ErrState)
	}
	off += n
	gen, n := binary.Uvarint(data[off:])
	if n <= 0 || off+n+8 > len(data) {
		return fmt.Errorf("%w: partition: truncated", ErrState)
	}
	off += n
	start := int64(le.Uint64(data[off:]))
	off += 8
	var ck, warm clocks
	if data[1] >= 2 {
		n, err := ck.decode(data[off:])
		if err != nil {
			return err
		}
		off += n
		if _, err := warm.decode(data[off:]); err != nil {
			return err
		}
	}
	if err := p.dedup.Restore(gen, start, nil, nil); err != nil {
		return fmt.Errorf("%w: partition: %v", ErrState, err)
	}
	p.clocks, p.warm = ck, warm
	p.started, p.closed, p.order = started, closed, order
	p.stats.FirstTS, p.stats.MaxTS = firstTS, maxTS
	return nil
}

// AppendDedupGeneration appends the ids (id and content hashes) of the duplicate
// filter's current generation, or of the previous one.
func (p *Pipeline) AppendDedupGeneration(dst []byte, previous bool) []byte {
	return p.dedup.AppendGeneration(dst, previous)
}

// TakeDedupChanges returns the duplicate filter's current generation number
// and the ids it added to that generation and to the previous one since the
// last call (TrackChanges starts the record), and forgets them. The slices
// are valid until the next Process.
func (p *Pipeline) TakeDedupChanges() (gen uint64, cur, prev []uint64) {
	return p.dedup.TakeJournal()
}

// RestoreDedup loads the duplicate filter's ids: those of the generation
// RestorePartitionState named, and of the one before, each in pieces as
// AppendDedupGeneration or features.AppendHashes wrote them.
func (p *Pipeline) RestoreDedup(cur, prev [][]byte) error {
	gen, start := p.dedup.Generation()
	if err := p.dedup.Restore(gen, start, cur, prev); err != nil {
		return fmt.Errorf("%w: %v", ErrState, err)
	}
	return nil
}

// TrackChanges makes the pipeline record which agents and peer groups change
// (an event, a closed window) and whether its own state changes, for
// TakeChanges, and which ids its duplicate filter adds, for
// TakeDedupChanges. The streaming runtime calls it so that a checkpoint
// writes only what changed. Call it before the first Process.
func (p *Pipeline) TrackChanges() {
	p.track = true
	p.dedup.Journal()
}

// TakeChanges appends to agents and classes the ids of the agents and the
// names of the peer groups that changed since the last call (or since
// TrackChanges), reports whether the pipeline's own state (watermark,
// duplicate filter) changed, and forgets them all.
func (p *Pipeline) TakeChanges(agents, classes []string) ([]string, []string, bool) {
	for _, a := range p.changedAgents {
		a.changed = false
		agents = append(agents, a.id)
	}
	for _, c := range p.changedClasses {
		c.changed = false
		classes = append(classes, c.name)
	}
	clear(p.changedAgents)
	clear(p.changedClasses)
	p.changedAgents, p.changedClasses = p.changedAgents[:0], p.changedClasses[:0]
	changed := p.changed
	p.changed = false
	return agents, classes, changed
}
