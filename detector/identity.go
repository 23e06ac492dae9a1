package detector

import (
	"fmt"
	"time"
	"unsafe"

	"github.com/vigil-sec/vigil/features"
	"github.com/vigil-sec/vigil/models"
)

// Identities are the attacker's too: a made-up agent id, or a made-up peer
// group, costs nothing. Four rules keep them from blinding or flooding
// vigil:
//
//   - A new identity whose own baseline and peer group are both cold is
//     scored against the fleet's prior (every warm agent of the partition,
//     learned as one average agent) instead of not at all.
//   - A never-seen identity in a partition that already knows warm agents
//     raises a new_identity notice (severity info).
//   - Alerts on identities without a baseline of their own (new_identity,
//     and windows scored against a peer group or the fleet) are limited to
//     identityBurst an hour per partition; beyond it they are folded into
//     one identity_flood alert for the hour that names how many, re-sent
//     as the count doubles.
//   - New identities held at once (agents without an hour of history) and
//     peer groups are bounded (MaxNewAgents, MaxClasses): beyond, a new
//     agent's events are dead letters "identity_limit", and an unknown
//     group's new agents join the overflow group.

// Alert kinds about identities rather than behaviour.
const (
	KindNewIdentity   = "new_identity"
	KindIdentityFlood = "identity_flood"
)

// SourceFleet is the alert baseline source of a window scored against the
// fleet's prior.
const SourceFleet = "fleet"

// fleetClass and overflowClass are internal peer-group names; a claimed
// agent_class cannot hold a NUL.
const (
	fleetClass    = "\x00fleet"
	overflowClass = "\x00overflow"
)

// identityBurst is how many alerts on identities without a baseline of
// their own a partition emits one by one in an hour.
const identityBurst = 20

// FloodAgentID is the agent_id of an identity_flood alert.
const FloodAgentID = "*"

// ErrIdentityLimit is returned by Process for an event of a new identity
// while the partition holds MaxNewAgents of them.
var ErrIdentityLimit = fmt.Errorf("too many new identities at once")

// ReasonIdentityLimit is the rejection reason of ErrIdentityLimit.
const ReasonIdentityLimit features.Reason = "identity_limit"

// identities is a partition's identity bookkeeping.
type identities struct {
	newAgents int   // agents in memory without an hour of history
	hour      int64 // the hour (Unix ns / hour) the counts below are for
	emitted   int   // identity alerts emitted one by one this hour
	folded    int   // identity alerts folded into the flood alert this hour
	reported  int   // folded count the flood alert last reported
}

// group returns the baseline agent a's window is compared with: its peer
// group's, or the fleet's prior when neither it nor its group is warm.
func (p *Pipeline) group(a *agent) (*models.Baseline, bool) {
	m := &p.cfg.Model
	if int(a.base.Windows) >= m.WarmWindows || int(a.class.base.Windows) >= m.PeerMinWindows {
		return &a.class.base, false
	}
	if f := p.classes[fleetClass]; f != nil && int(f.base.Windows) >= m.PeerMinWindows && p.mature() {
		return &f.base, true
	}
	return &a.class.base, false
}

// evaluate scores c's window of agent a against its baselines.
func (p *Pipeline) evaluate(c *closing) {
	a := c.a
	g, fleet := p.group(a)
	p.model.Evaluate(&c.v, &a.base, g, &c.res)
	if fleet && c.res.Source == models.SourcePeerGroup {
		c.res.Source = SourceFleet
	}
}

// fleetSample: the fleet's prior learns one warm agent window in this
// many (an average needs no more, and each is a whole Learn).
const fleetSample = 8

// learnFleet teaches the fleet's prior a sample of warm agents' windows
// (chosen by agent and window, so that replays and restores agree).
func (p *Pipeline) learnFleet(a *agent, v *features.Vector, w float64) {
	if int(a.base.Windows) < p.cfg.Model.WarmWindows {
		return
	}
	if (features.Hash64(unsafe.Slice(unsafe.StringData(a.id), len(a.id)), 0)+uint64(v.Index))%fleetSample != 0 {
		return
	}
	f := p.classes[fleetClass]
	if f == nil {
		f = &class{name: fleetClass, seen: features.NewSeenSet(p.cfg.PeerSeenSlots)}
		p.classes[fleetClass] = f
	}
	p.model.Learn(v, nil, &f.base, nil, w)
	if p.track && !f.changed {
		f.changed = true
		p.changedClasses = append(p.changedClasses, f)
	}
}

// identityAlert reports whether alert al (on an identity without a baseline
// of its own) may be emitted one by one; if not, it is folded into the
// hour's identity_flood alert, which is emitted when the folded count
// reaches a power of two.
func (p *Pipeline) identityAlert(al *Alert) bool {
	if al.Severity < SeverityWarning && al.Kind != KindNewIdentity {
		return true // shown only at min_severity info, never limited: printing must not change detection
	}
	id := &p.ids
	id.roll(al.DetectedAt)
	if id.emitted < identityBurst {
		id.emitted++
		return true
	}
	p.fold(al.DetectedAt)
	return false
}

// fold counts one identity alert (or rejected new identity) into the
// hour's identity_flood alert, and emits that alert when the count
// reaches a power of two.
func (p *Pipeline) fold(at time.Time) {
	id := &p.ids
	id.roll(at)
	hour := id.hour
	id.folded++
	p.stats.Folded++
	if id.folded&(id.folded-1) != 0 {
		return
	}
	start := time.Unix(0, hour*int64(time.Hour)).UTC()
	flood := &Alert{
		AlertID: AlertID(FloodAgentID, start.UnixNano(), KindIdentityFlood), AgentID: FloodAgentID, AgentClass: FloodAgentID,
		WindowStart: start, WindowEnd: start.Add(time.Hour), DetectedAt: at,
		Score: p.cfg.Policy.WarningScore, Severity: SeverityWarning, Kind: KindIdentityFlood,
		Reasons:  []models.Reason{{Feature: "identity_alerts_folded", Value: float64(id.folded + id.emitted), Expected: identityBurst}},
		Baseline: Baseline{Source: SourceFleet},
	}
	p.stats.Alerts[flood.Severity]++
	if p.onAlert != nil {
		p.onAlert(flood)
	}
}

// newIdentity raises the new_identity notice for agent a, seen for the
// first time in event e, when the partition already knows warm agents.
func (p *Pipeline) newIdentity(a *agent, e *features.Event, newGroup bool) {
	if !p.mature() {
		return // a partition in its first day: everyone is new
	}
	reasons := []models.Reason{{Feature: "new_identity", Value: 1}}
	if newGroup {
		reasons = append(reasons, models.Reason{Feature: "new_peer_group", Value: 1})
	}
	p.identityEvent(a.id, a.class.name, e, KindNewIdentity, KindNewIdentity, SeverityInfo, reasons, "none")
}

// identityEvent raises an alert about an identity (not a behaviour) in
// the window of event e: kind, its alert id made with idKind, the score
// of its severity. It goes through the identity limiter, so a burst of
// them is one identity_flood alert an hour.
func (p *Pipeline) identityEvent(agentID, class string, e *features.Event, kind, idKind string, sev Severity, reasons []models.Reason, source string) {
	idx := features.WindowIndex(e.TS, p.size)
	score := p.cfg.Policy.InfoScore
	switch sev {
	case SeverityWarning:
		score = p.cfg.Policy.WarningScore
	case SeverityCritical:
		score = p.cfg.Policy.CriticalScore
	}
	al := &Alert{
		AlertID: AlertID(agentID, idx*p.size, idKind), AgentID: agentID, AgentClass: class,
		WindowStart: time.Unix(0, idx*p.size).UTC(), WindowEnd: time.Unix(0, (idx+1)*p.size).UTC(),
		DetectedAt: time.Unix(0, p.trustedAt(e.TS)).UTC(), Score: score, Severity: sev,
		Kind: kind, Reasons: reasons, Baseline: Baseline{Source: source},
	}
	if !p.identityAlert(al) {
		return
	}
	p.stats.Alerts[sev]++
	if p.onAlert != nil {
		p.onAlert(al)
	}
}

// mature reports whether the partition has a day of history behind its
// watermark: before that every identity and group is new to it.
func (p *Pipeline) mature() bool {
	return p.started && p.warm.agents > 0 && p.watermark()-p.stats.FirstTS >= int64(24*time.Hour)
}

// roll starts a new hour's counts when at is in a later hour (times from
// different windows arrive out of order: an earlier one counts in the
// current hour).
func (id *identities) roll(at time.Time) {
	if hour := at.UnixNano() / int64(time.Hour); hour > id.hour {
		*id = identities{newAgents: id.newAgents, hour: hour}
	}
}
