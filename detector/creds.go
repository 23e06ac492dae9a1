package detector

import (
	"math"
	"time"

	"github.com/vigil-sec/vigil/features"
)

// credLimit bounds the credentials remembered per agent.
const credLimit = 3

// credEstablishAfter is how long an agent must have used a credential it
// brought in new before the credential counts as the agent's own.
const credEstablishAfter = 24 * time.Hour

// credUse is one credential an agent presented.
type credUse struct {
	id string
	// first is the window in which the agent first presented it;
	// math.MinInt64 when it was already known to the agent (its first-seen
	// set) when remembered here.
	first int64
	last  int64 // the last window it was presented in
	// foreign: new to the agent but known to its peer group when first
	// presented (another agent's credential).
	foreign bool
}

// credList is the credentials an agent presented recently: revocation
// requests name the ones the agent established (see established), never a
// credential it presented for the first time in the anomalous windows — a
// forged event carrying a decoy (made up, or another agent's) must not steer
// a revocation at its owner. Established credentials are kept before new
// ones, so a flood of decoys cannot push the agent's own out.
type credList struct {
	n    uint8
	list [credLimit]credUse
}

// noteCred records that a presented credential id in window idx.
func (p *Pipeline) noteCred(a *agent, id []byte, idx int64) {
	if a.creds == nil {
		a.creds = new(credList)
	}
	l := a.creds
	for i := range l.list[:l.n] {
		if c := &l.list[i]; c.id == string(id) {
			c.last = max(c.last, idx)
			return
		}
	}
	fp := features.CredentialFingerprint(id)
	u := credUse{id: string(id), first: idx, last: idx}
	switch {
	case a.seen.Contains(fp):
		u.first = math.MinInt64
	case a.class.seen.Contains(fp):
		u.foreign = true
	}
	if int(l.n) < credLimit {
		l.list[l.n] = u
		l.n++
		return
	}
	// Replace the least recently used credential that is not established,
	// else the least recently used one.
	est := p.credEstablished(idx)
	victim := -1
	for i := range l.list {
		c := &l.list[i]
		if est(c) {
			continue
		}
		if victim < 0 || c.last < l.list[victim].last {
			victim = i
		}
	}
	if victim < 0 {
		victim = 0
		for i := range l.list {
			if l.list[i].last < l.list[victim].last {
				victim = i
			}
		}
	}
	l.list[victim] = u
}

// credEstablished returns whether a credential is the agent's own as of
// window idx: known to the agent before it was remembered, or brought in
// new (not another agent's) and used for credEstablishAfter since.
func (p *Pipeline) credEstablished(idx int64) func(*credUse) bool {
	after := max(int64(credEstablishAfter)/p.size, 1)
	return func(c *credUse) bool {
		return c.first == math.MinInt64 || !c.foreign && c.first <= idx-after
	}
}

// alertCreds splits the credentials agent a presented in window idx (or
// the window after it, still open) into those it established (what a
// revocation may name) and the others (evidence: new to the agent, or
// another agent's).
func (p *Pipeline) alertCreds(a *agent, idx int64) (own, other []string) {
	if a.creds == nil {
		return nil, nil
	}
	est := p.credEstablished(idx)
	for i := range a.creds.list[:a.creds.n] {
		c := &a.creds.list[i]
		if c.last < idx {
			continue
		}
		if est(c) {
			own = append(own, c.id)
		} else {
			other = append(other, c.id)
		}
	}
	return own, other
}
