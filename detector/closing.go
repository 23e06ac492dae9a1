package detector

import (
	"cmp"
	"slices"
	"time"

	"github.com/vigil-sec/vigil/features"
)

// Closing windows: every agent's windows are scheduled by index, closed
// together when the partition's watermark passes them (so that an agent is
// compared with its peers in the same window), and decided one by one.

// schedule lists agent a among those whose window idx closes together.
func (p *Pipeline) schedule(a *agent, idx int64) {
	l, ok := p.buckets[idx]
	if !ok {
		if n := len(p.freeBuckets); n > 0 {
			l, p.freeBuckets = p.freeBuckets[n-1], p.freeBuckets[:n-1]
		}
	}
	a.order[idx&1] = p.order
	p.order++
	p.buckets[idx] = append(l, a)
}

// advance closes every window that ends at or before the watermark wm
// minus the allowed lateness.
func (p *Pipeline) advance(wm int64) {
	upTo := features.WindowIndex(wm-p.late, p.size) - 1
	for p.closed < upTo {
		// The next window to close is the smallest open one (time may jump).
		next := upTo
		for i := range p.buckets {
			if i > p.closed && i < next {
				next = i
			}
		}
		p.closeIndex(next)
		p.closed = next
		p.changed = true
	}
}

// Flush closes every open window, as at the end of a replay.
func (p *Pipeline) Flush() {
	if !p.started {
		return
	}
	p.advance(max(p.stats.MaxTS, p.watermark()) + p.late + 2*p.size)
}

// closeIndex closes all agents' windows with index idx, as one batch so that
// each agent can be compared with its peers in the same window.
func (p *Pipeline) closeIndex(idx int64) {
	agents, ok := p.buckets[idx]
	if !ok {
		return
	}
	delete(p.buckets, idx)
	// Agents are decided in the order their windows opened: each one's
	// learning moves the peer-group baseline the next one is compared with.
	// Restored agents join the bucket in whatever order they are restored.
	s := int(idx & 1)
	byOrder := func(x, y *agent) int { return cmp.Compare(x.order[s], y.order[s]) }
	if !slices.IsSortedFunc(agents, byOrder) {
		slices.SortStableFunc(agents, byOrder)
	}
	p.batch = p.batch[:0]
	for _, a := range agents {
		if !a.open[s] || a.win[s].Index != idx {
			continue
		}
		c := p.scratch(len(p.batch) + 1)
		c.a, c.v = a, a.win[s].Vector(p.size)
		p.model.CatchUp(c.v.Index, &a.base, &a.class.base)
		p.evaluate(c)
		a.open[s] = false
	}
	p.corroborate(p.batch)
	for i := range p.batch {
		p.decide(&p.batch[i], idx)
		p.release(p.batch[i].a)
	}
	clear(agents)
	if len(p.freeBuckets) < 8 {
		p.freeBuckets = append(p.freeBuckets, agents[:0])
	}
}

// maxFreeWins bounds the free list of window pairs (432 bytes each): enough
// to open windows without allocating in steady state, without keeping a
// pair for every agent after a fleet-wide burst.
const maxFreeWins = 4096

// release returns an agent's window pair to the free list once neither window
// is open, so an idle agent holds only its baselines and first-seen set.
func (p *Pipeline) release(a *agent) {
	if a.open[0] || a.open[1] || a.win == nil {
		return
	}
	if len(p.freeWins) < maxFreeWins {
		*a.win = [2]features.Window{}
		p.freeWins = append(p.freeWins, a.win)
	}
	a.win = nil
}

func (p *Pipeline) closeOne(a *agent, s int) {
	c := p.scratch(1)
	c.a, c.v = a, a.win[s].Vector(p.size)
	p.model.CatchUp(c.v.Index, &a.base, &a.class.base)
	p.evaluate(c)
	a.open[s] = false
	p.decide(c, c.v.Index)
	p.release(a)
}

// corroborate discounts first-seen features that a good part of a peer group
// shows together: a fleet-wide deployment moves every agent of a class to a
// new service within minutes, a compromised agent moves alone. A feature is
// corroborated when at least 3 agents and a quarter of the group's agents
// closing now show it in this window, or — for new targets and actions, as
// a deployment rolls out over half an hour — began to show it within about
// the last hour; its z is then capped at 1.5 for the whole group, and a
// rollout is recorded on the group's baseline so that the agents' action
// mixes moving with it are explained while they learn it
// (models.MarkFleetChange). (An attacker controlling a quarter of a class at
// once escapes this one signal, not the others.)
func (p *Pipeline) corroborate(batch []closing) {
	for i := range batch {
		c := batch[i].a.class
		c.closing = 0
		clear(c.novel[:])
	}
	hour := max(int64(time.Hour)/p.size, 1)
	for i := range batch {
		a, v := batch[i].a, &batch[i].v
		c := a.class
		c.closing++
		for _, f := range novelFeatures {
			if v.Value[f] > 0 {
				c.novel[f]++
			}
		}
		if v.Value[features.NewOriginShare] > 0 {
			c.novel[features.NewOriginShare]++
		}
		c.onsets = c.base.Onset(&a.base, v.Index, hour, v.Value[features.NewTargets] > 0, v.Value[features.NewActions] > 0)
	}
	for i := range batch {
		c := batch[i].a.class
		res := &batch[i].res
		for _, f := range novelFeatures {
			n := float64(c.novel[f])
			if k := slices.Index(onsetFeatures[:], f); k >= 0 && c.onsets[k] >= 3 && 4*c.onsets[k] >= float64(c.closing) {
				p.model.MarkFleetChange(&c.base, batch[i].v.Index)
				res.Z[features.ActionMix] = min(res.Z[features.ActionMix], 1.5)
				n = max(n, c.onsets[k])
			}
			if n < 3 || 4*n < float64(c.closing) {
				continue
			}
			if res.Z[f] > 1.5 {
				res.Z[f] = 1.5
				if f != features.NewToPeers && res.Z[features.NewToPeers] > 1.5 {
					res.Z[features.NewToPeers] = 1.5
				}
			}
		}
		// New origins stay new for a day: agents showing them now moved
		// any time that day, so a group moving to new hosts, networks and
		// credentials over hours is seen whole. The share is then the
		// group's, in this window and in the hour's sums.
		if n := float64(c.novel[features.NewOriginShare]); n >= 3 && 4*n >= float64(c.closing) {
			res.Z[features.NewOriginShare] = min(res.Z[features.NewOriginShare], 1.5)
			res.Scored[features.NewOriginShare] = false
		}
	}
}

// onsetFeatures are the first-seen features whose onsets corroborate counts
// across windows.
var onsetFeatures = [...]features.Feature{features.NewTargets, features.NewActions}

var novelFeatures = [...]features.Feature{features.NewTargets, features.NewActions, features.NewCredentials, features.NewSources, features.NewToPeers}
