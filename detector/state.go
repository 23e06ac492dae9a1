package detector

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/vigil-sec/vigil/features"
	"github.com/vigil-sec/vigil/models"
)

// ErrState is wrapped by errors restoring state that is not a snapshot this
// version can read.
var ErrState = errors.New("bad state snapshot")

// Agent state snapshot: 'A', a version byte, then the agent id and class
// (uvarint length + bytes), persistence (uvarint), last scored window
// (int64), a byte of open-window flags, each open window, the first-seen set
// and the baseline. Fields are only appended in later versions.
const (
	agentMagic   = 'A'
	agentVersion = 1
)

// AppendAgentState appends the snapshot of agent id to dst, or returns dst and
// false when the pipeline does not hold that agent. The snapshot is what the
// streaming runtime writes to the compacted state topic, keyed by agent id.
func (p *Pipeline) AppendAgentState(dst []byte, id string) ([]byte, bool) {
	a, ok := p.agents[id]
	if !ok {
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
	if _, err := base.DecodeFrom(data[off:]); err != nil {
		return fmt.Errorf("%w: agent %q: %v", ErrState, id, err)
	}

	c, ok := p.classes[className]
	if !ok {
		c = &class{name: className, seen: features.NewSeenSet(p.cfg.PeerSeenSlots)}
		p.classes[className] = c
	}
	a, ok := p.agents[id]
	if !ok {
		a = &agent{id: id}
		p.agents[id] = a
	}
	a.class, a.seen, a.base = c, seen, base
	a.persist, a.lastIdx = int(persist), lastIdx
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
		p.schedule(a, w.Index)
		p.arm(a, s)
		p.stats.FirstTS = min(p.stats.FirstTS, w.First)
		p.stats.MaxTS = max(p.stats.MaxTS, w.Last)
	}
	p.advance(p.stats.MaxTS)
	p.release(a)
	return nil
}

// AgentIDs appends the ids of the agents the pipeline holds.
func (p *Pipeline) AgentIDs(dst []string) []string {
	for id := range p.agents {
		dst = append(dst, id)
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

// ClassNames appends the names of the peer groups the pipeline holds.
func (p *Pipeline) ClassNames(dst []string) []string {
	for name := range p.classes {
		dst = append(dst, name)
	}
	return dst
}
