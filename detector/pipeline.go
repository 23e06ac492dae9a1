package detector

import (
	"bytes"
	"errors"
	"time"

	"github.com/vigil-sec/vigil/features"
	"github.com/vigil-sec/vigil/models"
)

// ErrLate is returned by Process for an event whose window has already
// closed (it arrived later than the allowed lateness). It is counted, and the
// caller routes it like any rejected event.
var ErrLate = errors.New("event later than the allowed lateness")

// ReasonLate is the rejection reason of a late event.
const ReasonLate features.Reason = "late"

// Stats counts what a Pipeline did. All counts are cumulative.
type Stats struct {
	Events         int64                     // accepted into a window
	Duplicates     int64                     // dropped as redelivered (same event_id)
	Late           int64                     // rejected: window already closed
	Future         int64                     // rejected: stamped ahead of the trusted time (ErrFuture)
	KeyMismatch    int64                     // rejected: Kafka key is not the agent_id (ErrKeyMismatch)
	IdentityLimit  int64                     // rejected: a new identity while MaxNewAgents are held (ErrIdentityLimit)
	Folded         int64                     // alerts on identities without a baseline folded into identity_flood alerts
	Ahead          int64                     // windows far ahead of the partition's watermark, scored but not learned (see dropAhead)
	Invalid        map[features.Reason]int64 // rejected by the decoder, by reason
	Windows        int64                     // agent windows closed
	ColdWindows    int64                     // closed but not scored (cold start)
	Alerts         map[Severity]int64        // alerts emitted, by severity
	Early          int64                     // alerts emitted before their window closed
	Agents         int                       // agents known (in memory and evicted)
	Evicted        int                       // agents evicted from memory (see Evict)
	Reloads        int64                     // evicted agents reloaded by their next event
	ReloadErrs     int64                     // evicted agents that could not be reloaded (they start cold)
	Classes        int                       // peer groups known (in memory and evicted)
	EvictedClasses int                       // peer groups evicted from memory (see Evict)
	FirstTS        int64                     // earliest event time seen
	MaxTS          int64                     // newest event time seen (not the watermark: see Watermark)
	Watermark      int64                     // the quorum's event time: windows up to it less the allowed lateness are closed
}

// agent is the state of one agent. It is owned by one Pipeline.
type agent struct {
	id      string
	class   *class
	seen    features.SeenSet
	probes  features.Probes
	origins features.Origins
	base    models.Baseline
	win     *[2]features.Window // windows i and i+1 may be open at once; nil while idle
	// open, changed and persist share a word: with an allocation's header,
	// an agent of more than 1528 bytes takes 1792.
	open    [2]bool
	changed bool  // listed in Pipeline.changedAgents
	persist int32 // consecutive windows at warning or above
	lastIdx int64 // last window scored
	clock   int64 // the agent's own event time: its newest event's
	// Early-decision triggers for the open windows: recheck when crossed.
	nextN, nextNew, nextBad [2]uint32
	// order[s] is when window s was scheduled (Pipeline.order): windows that
	// close together are decided in this order, also after a restore.
	order [2]uint64
	// creds are the credentials the agent presented recently (for
	// revocation requests); not checkpointed, so empty after a restore
	// until the agent's next events (a credential its first-seen set knows
	// is its own at once).
	creds *credList
}

// class is the state of one peer group.
type class struct {
	name string
	seen features.SeenSet
	base models.Baseline
	// Per-close scratch: agents closing now, and how many show each novelty.
	closing int
	novel   [features.NumFeatures]int
	// Agents that began to see new targets and new actions within about the
	// last hour (kept in base, see models.Baseline.Onset): a deployment
	// rolls out over half an hour, not in one window.
	onsets  [2]float64
	changed bool  // listed in Pipeline.changedClasses
	members int32 // agents in memory in the group (eviction: see Evict)
}

// closing is one window being closed.
type closing struct {
	a   *agent
	v   features.Vector
	res models.Result
}

// Pipeline runs decode → dedup → window → score → policy for one stream of
// events in event-time order (one Kafka partition, or a replayed file). It is
// synchronous and not safe for concurrent use: the streaming runtime gives
// each partition its own Pipeline, owned by one goroutine.
type Pipeline struct {
	cfg     Config
	size    int64
	late    int64
	model   *models.Model
	dec     features.Decoder
	ev      features.Event
	dedup   *features.Dedup
	agents  map[string]*agent
	classes map[string]*class
	// Windows are aligned to a global grid; buckets[i] lists the agents
	// with window i open. Every window up to closed is closed. The
	// watermark is the quorum's clock (clocks), never one agent's.
	closed      int64
	buckets     map[int64][]*agent
	freeBuckets [][]*agent
	clocks      clocks // every agent's
	warm        clocks // agents with an hour of history (WarmWindows): see watermark
	// The quorum's watermark when it last moved, and the trusted time
	// then: event time may run ahead of the quorum as fast as trusted time
	// passes (see trustedWatermark).
	anchorWM, anchorT int64
	trusted           int64  // the current event's trusted time (ProcessAt); 0: none
	skew              int64  // allowed clock skew ahead of the trusted time
	key               []byte // the current message's Kafka key (ProcessMessage)
	checkKey          bool
	ids               identities
	keys              *Keys            // emitters' keyring (SetKeys)
	inv               *Inventory       // agent inventory (SetInventory); nil: none
	rv                *Revoker         // the partition's revocation policy, told of uses (SetRevoker)
	claims            map[string]int64 // agent → last window its class claim was alerted (inventory)
	sigBuf            []byte           // scratch for the signed bytes
	evictedClasses    int              // peer groups in store
	batch             []closing
	freeWins          []*[2]features.Window
	classBuf          []byte
	reasons           []models.Reason
	stats             Stats
	onAlert           func(*Alert)
	onWindow          func(*WindowScore)
	started           bool
	order             uint64 // windows scheduled so far (agent.order)
	// Change tracking for checkpoints (TrackChanges): the agents and peer
	// groups changed since the last TakeChanges, and whether the pipeline's
	// own state (watermark, duplicate filter) changed.
	track          bool
	changed        bool
	changedAgents  []*agent
	changedClasses []*class
	// Eviction (SetStore): snapshots of idle agents live in store.
	store    AgentStore
	spillBuf []byte
}

// NewPipeline returns a pipeline that calls onAlert for every alert, in the
// goroutine that calls Process or Flush. The Alert is the callee's to keep.
func NewPipeline(cfg Config, onAlert func(*Alert)) (*Pipeline, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m, err := models.New(cfg.Model)
	if err != nil {
		return nil, err
	}
	return &Pipeline{
		cfg: cfg, size: int64(cfg.Model.WindowSize), late: int64(cfg.AllowedLateness), model: m,
		skew:    int64(cfg.MaxClockSkew),
		buckets: make(map[int64][]*agent),
		dedup:   features.NewDedup(int64(cfg.DedupHorizon), cfg.DedupCapacity),
		agents:  make(map[string]*agent),
		classes: make(map[string]*class),
		stats:   Stats{Invalid: make(map[features.Reason]int64), Alerts: make(map[Severity]int64)},
		onAlert: onAlert,
	}, nil
}

// WindowScore is the outcome of one closed agent window: its features and
// scoring, for analysts (ClickHouse) and for explaining decisions. The
// pointers are valid only during the callback.
type WindowScore struct {
	AgentID    string
	AgentClass string
	Vector     *features.Vector
	Result     *models.Result
	Severity   Severity
}

// OnWindow sets a callback for every closed window (nil: none). Call before
// the first Process.
func (p *Pipeline) OnWindow(f func(*WindowScore)) { p.onWindow = f }

// Stats returns a copy of the counters.
func (p *Pipeline) Stats() Stats {
	s := p.stats
	s.Invalid = make(map[features.Reason]int64, len(p.stats.Invalid))
	for k, v := range p.stats.Invalid {
		s.Invalid[k] = v
	}
	s.Alerts = make(map[Severity]int64, len(p.stats.Alerts))
	for k, v := range p.stats.Alerts {
		s.Alerts[k] = v
	}
	s.Agents, s.Classes = p.NumAgents(), len(p.classes)+p.evictedClasses
	s.EvictedClasses = p.evictedClasses
	s.Watermark = p.watermark()
	if p.store != nil {
		s.Evicted = p.store.Len() - p.evictedClasses
	}
	return s
}

// Process handles one encoded event. It returns an error wrapping
// features.ErrInvalidEvent for input that breaks the contract, ErrLate or
// ErrFuture; all are counted. Duplicates are counted and return nil.
func (p *Pipeline) Process(raw []byte) error {
	e := &p.ev
	if err := p.dec.Decode(raw, e); err != nil {
		var fe *features.FieldError
		if errors.As(err, &fe) {
			p.stats.Invalid[fe.Reason]++
		}
		return err
	}
	if err := p.checkFuture(e.TS); err != nil {
		return err
	}
	if p.checkKey && !bytes.Equal(p.key, e.AgentID) {
		p.stats.KeyMismatch++
		return ErrKeyMismatch
	}
	// Before the duplicate filter: a forged event must not take a real
	// one's id.
	verified, err := p.verify(e, raw)
	if err != nil {
		return err
	}
	switch p.dedup.Check(e.EventID, features.ContentHash(raw), e.TS) {
	case features.Duplicate:
		p.stats.Duplicates++
		return nil
	case features.Conflict:
		// The same event_id with other content is not a redelivery: a
		// reused id must not make a real event vanish.
		p.stats.Invalid[features.ReasonConflict]++
		return &features.FieldError{Field: "event_id", Reason: features.ReasonConflict, Msg: "event_id already seen with different content"}
	}
	p.changed = true
	idx := features.WindowIndex(e.TS, p.size)
	if p.started && idx <= p.closed {
		p.stats.Late++
		return ErrLate
	}
	a, err := p.agent(e)
	if err != nil {
		return err
	}
	if p.inv != nil && len(e.AgentClass) > 0 && string(e.AgentClass) != a.class.name {
		p.checkClaim(a, e, idx)
	}
	s := int(idx & 1)
	if a.win != nil && a.open[s] && a.win[s].Index > idx && p.ahead(a.win[s].Index) {
		p.dropAhead(a, s) // one event far ahead of the partition must not blind its agent
	}
	if idx <= a.lastIdx || a.win != nil && a.open[s] && a.win[s].Index > idx {
		// The agent's own clock has moved past this window (it was
		// decided, or its slot holds a later window).
		p.stats.Late++
		return ErrLate
	}
	if !p.started {
		p.started = true
		p.closed = idx - 1
		p.stats.FirstTS, p.stats.MaxTS = e.TS, e.TS
	}
	p.stats.FirstTS = min(p.stats.FirstTS, e.TS)
	p.stats.MaxTS = max(p.stats.MaxTS, e.TS)
	if e.TS > a.clock {
		a.clock = e.TS
		p.clocks.agents = p.NumAgents()
		moved := p.clocks.observe(a.id, e.TS)
		if int(a.base.Windows) >= p.cfg.Model.WarmWindows && p.warm.observe(a.id, e.TS) {
			moved = true
		}
		if moved {
			p.anchorWM, p.anchorT = p.watermark(), p.trusted
			p.advance(p.anchorWM)
		}
	}
	if p.trusted > 0 {
		p.advance(p.trustedWatermark())
	}
	p.touch(a)
	if a.open[s] && a.win[s].Index != idx { // an older window: the agent's own clock passed it
		p.closeOne(a, s)
	}
	if a.win == nil {
		if n := len(p.freeWins); n > 0 {
			a.win, p.freeWins = p.freeWins[n-1], p.freeWins[:n-1]
		} else {
			a.win = new([2]features.Window)
		}
	}
	w := &a.win[s]
	if !a.open[s] {
		p.openWindow(a, s, idx)
	}
	if len(e.CredentialID) > 0 {
		p.noteCred(a, e.CredentialID, idx)
	}
	// An agent's first day is all new credentials, addresses and networks:
	// new origins mean something only once it has a day of its own.
	var origins *features.Origins
	if a.base.Span()*p.size >= int64(24*time.Hour) {
		origins = &a.origins
	}
	flags, bucket := features.Observe(e, &a.seen, &a.class.seen, &a.probes, origins)
	if flags&(features.NewPeerItem|features.NewPeerAccess) == features.NewPeerItem && int(a.base.Windows) < p.cfg.Model.WarmWindows {
		// A young agent's own credentials and addresses are new to its
		// peers by necessity; the targets and actions it reaches are not.
		flags &^= features.NewPeerItem
	}
	w.Add(e, flags, bucket)
	if !verified {
		w.Flags |= flagUnverified
	}
	if p.rv.Watching() { // the closed loop: is what was revoked still allowed?
		p.rv.Used(e.AgentID, e.CredentialID, e.Decision == features.Allow, p.trustedAt(e.TS))
	}
	p.stats.Events++
	if p.cfg.Policy.EarlyDecisions {
		p.early(a, s, e.TS)
	}
	return nil
}

func (p *Pipeline) agent(e *features.Event) (*agent, error) {
	if a, ok := p.agents[string(e.AgentID)]; ok {
		return a, nil
	}
	if p.store != nil && p.store.Len() > 0 {
		if a := p.reload(string(e.AgentID)); a != nil {
			return a, nil
		}
	}
	if p.ids.newAgents >= p.cfg.MaxNewAgents {
		p.stats.IdentityLimit++
		p.fold(time.Unix(0, p.trustedAt(e.TS)))
		return nil, ErrIdentityLimit
	}
	name := e.AgentClass
	listed := false
	if c, ok := p.inventoryClass(e.AgentID); ok {
		name, listed = []byte(c), true // the inventory's class wins over the claim
	} else if len(name) == 0 {
		p.classBuf = features.DeriveClass(p.classBuf[:0], e.AgentID)
		name = p.classBuf
	}
	c := p.lookupClass(string(name))
	ok := c != nil
	if !ok {
		if len(p.classes) >= p.cfg.MaxClasses {
			c = p.lookupClass(overflowClass)
		}
		if c == nil {
			if len(p.classes) >= p.cfg.MaxClasses {
				name = []byte(overflowClass)
			}
			c = &class{name: string(name), seen: features.NewSeenSet(p.cfg.PeerSeenSlots)}
			p.classes[c.name] = c
		}
	}
	c.members++
	a := &agent{id: string(e.AgentID), class: c, seen: features.NewSeenSet(p.cfg.AgentSeenSlots), lastIdx: -1 << 62}
	p.agents[a.id] = a
	p.ids.newAgents++
	switch {
	case p.inv == nil:
		p.newIdentity(a, e, !ok)
	case !listed:
		p.unknownAgent(a, e)
	}
	return a, nil
}

// SetStore enables eviction (see Evict) with s holding the evicted agents.
// Call before the first Process.
func (p *Pipeline) SetStore(s AgentStore) { p.store = s }

// Evict moves the agents whose last window ended before event time before
// (Unix ns), and that have no open window and no change since the last
// TakeChanges (their state is checkpointed), from memory to the store, and
// returns how many it moved. An evicted agent is reloaded, exactly as it
// was, when its next event arrives; full checkpoints read it from the
// store. On a store error the agent stays in memory.
func (p *Pipeline) Evict(before int64) (int, error) {
	if p.store == nil {
		return 0, nil
	}
	n := 0
	for id, a := range p.agents {
		if a.win != nil || a.changed || (a.lastIdx+1)*p.size > before {
			continue
		}
		p.spillBuf, _ = p.AppendAgentState(p.spillBuf[:0], id)
		if err := p.store.Put(id, p.spillBuf); err != nil {
			return n, err
		}
		delete(p.agents, id)
		a.class.members--
		if int(a.base.Windows) < p.cfg.Model.WarmWindows {
			p.ids.newAgents--
		}
		n++
	}
	// Peer groups none of whose agents are in memory follow them.
	for name, c := range p.classes {
		if c.members > 0 || c.changed || name == fleetClass {
			continue
		}
		p.spillBuf, _ = p.AppendClassState(p.spillBuf[:0], name)
		if err := p.store.Put(classKeyPrefix+name, p.spillBuf); err != nil {
			return n, err
		}
		delete(p.classes, name)
		p.evictedClasses++
	}
	return n, nil
}

// lookupClass returns peer group name, reloading it if it was evicted, or
// nil if the pipeline does not know it.
func (p *Pipeline) lookupClass(name string) *class {
	if c, ok := p.classes[name]; ok {
		return c
	}
	if p.store == nil || p.evictedClasses == 0 {
		return nil
	}
	key := classKeyPrefix + name
	buf, ok, err := p.store.Append(p.spillBuf[:0], key)
	p.spillBuf = buf
	if !ok {
		if err != nil {
			p.store.Delete(key)
			p.evictedClasses--
			p.stats.ReloadErrs++
		}
		return nil
	}
	p.store.Delete(key)
	p.evictedClasses--
	if err := p.RestoreClass(buf); err != nil {
		p.stats.ReloadErrs++
		delete(p.classes, name)
		return nil
	}
	return p.classes[name]
}

// reload brings agent id back from the store, or returns nil if the store
// does not hold it (or cannot give it back: it then starts cold).
func (p *Pipeline) reload(id string) *agent {
	buf, ok, err := p.store.Append(p.spillBuf[:0], id)
	p.spillBuf = buf
	if !ok {
		if err != nil {
			p.store.Delete(id)
			p.stats.ReloadErrs++
		}
		return nil
	}
	p.store.Delete(id)
	if err := p.RestoreAgent(buf); err != nil {
		p.stats.ReloadErrs++
		delete(p.agents, id)
		return nil
	}
	p.stats.Reloads++
	return p.agents[id]
}

// NumAgents is the number of agents known: in memory and evicted.
func (p *Pipeline) NumAgents() int {
	n := len(p.agents)
	if p.store != nil {
		n += p.store.Len() - p.evictedClasses
	}
	return n
}

// touch records that a and its peer group change (see TrackChanges).
func (p *Pipeline) touch(a *agent) {
	if !p.track {
		return
	}
	if !a.changed {
		a.changed = true
		p.changedAgents = append(p.changedAgents, a)
	}
	if c := a.class; !c.changed {
		c.changed = true
		p.changedClasses = append(p.changedClasses, c)
	}
}

func (p *Pipeline) openWindow(a *agent, s int, idx int64) {
	a.win[s].Reset(idx)
	a.open[s] = true
	p.schedule(a, idx)
	p.arm(a, s)
}

// arm sets the early-decision triggers of a's window s: well above the
// expected count, or a few new items or denials, and doubling past what the
// window already holds.
func (p *Pipeline) arm(a *agent, s int) {
	w := &a.win[s]
	_, high := p.model.ExpectedCount(&a.base, &a.class.base, features.HourOfWeek(w.Index*p.size))
	a.nextN[s] = uint32(max(high, 4)) + 1
	a.nextNew[s], a.nextBad[s] = 3, 4
	for w.N >= a.nextN[s] {
		a.nextN[s] *= 2
	}
}

// early rechecks an open window when one of its monotone counters crosses its
// trigger, and fires a critical alert at once if the partial window already
// scores critical. Each trigger doubles after a check, so a window is
// rechecked O(log n) times.
func (p *Pipeline) early(a *agent, s int, ts int64) {
	w := &a.win[s]
	var novel uint32
	for _, n := range w.New[:4] {
		novel += uint32(n)
	}
	bad := w.Deny + w.Weak
	if w.N < a.nextN[s] && novel < a.nextNew[s] && bad < a.nextBad[s] {
		return
	}
	for w.N >= a.nextN[s] {
		a.nextN[s] *= 2
	}
	for novel >= a.nextNew[s] {
		a.nextNew[s] *= 2
	}
	for bad >= a.nextBad[s] {
		a.nextBad[s] *= 2
	}
	c := p.scratch(1)
	c.a, c.v = a, w.Vector(p.size)
	p.evaluate(c)
	p.model.Finish(&c.res)
	if c.res.Score < p.cfg.Policy.CriticalScore {
		return
	}
	p.alert(c, SeverityCritical, p.trustedAt(ts), true)
}

func (p *Pipeline) scratch(n int) *closing {
	if cap(p.batch) < n {
		p.batch = append(p.batch[:cap(p.batch)], make([]closing, n-cap(p.batch)+n)...)
	}
	p.batch = p.batch[:n]
	return &p.batch[n-1]
}

// decide applies the policy to a closed window and learns from it.
func (p *Pipeline) decide(c *closing, idx int64) {
	a := c.a
	p.touch(a)
	p.stats.Windows++
	p.model.Finish(&c.res)
	p.model.Sustain(&a.base, &c.v, &c.res)
	if c.res.Cold {
		p.stats.ColdWindows++
	}
	pol := &p.cfg.Policy
	score := c.res.Score
	if score >= pol.WarningScore {
		if a.lastIdx == idx-1 {
			a.persist++
		} else {
			a.persist = 1
		}
	} else {
		a.persist = 0
	}
	a.lastIdx = idx
	sev := pol.Severity(score, int(a.persist))
	if sev >= pol.MinSeverity {
		p.alert(c, sev, p.trustedAt(max(p.watermark(), c.v.End)), false)
	}
	// A sustained deviation that has signalled (warning or above) starts
	// anew, whether or not min_severity lets its alert out: what is printed
	// must never change what is detected.
	if c.res.Sustained >= 0 && sev >= SeverityWarning {
		a.base.ClearSustained()
	}
	if p.onWindow != nil {
		p.onWindow(&WindowScore{AgentID: a.id, AgentClass: a.class.name, Vector: &c.v, Result: &c.res, Severity: sev})
	}
	w := max(p.model.LearnWeight(score), p.model.Accept(&a.base, idx, score))
	cold := int(a.base.Windows) < p.cfg.Model.WarmWindows
	p.model.Learn(&c.v, &c.res, &a.base, &a.class.base, w)
	if cold && int(a.base.Windows) >= p.cfg.Model.WarmWindows {
		p.warm.agents++ // the agent's clock counts towards the watermark from now on
		p.ids.newAgents--
	}
	p.learnFleet(a, &c.v, w)
}

// alert emits one alert for c unless one of the same kind was already emitted
// for this window (early), which keeps alert ids unique per agent+window+kind.
func (p *Pipeline) alert(c *closing, sev Severity, at int64, early bool) {
	p.reasons = c.res.Reasons(p.reasons[:0], p.cfg.Policy.MaxReasons)
	kind := kindOf(c.res.Top())
	w := &c.a.win[c.v.Index&1]
	bit := kindBit(kind)
	if w.Index == c.v.Index && w.Flags&bit != 0 {
		return
	}
	w.Flags |= bit
	al := &Alert{
		AlertID: AlertID(c.a.id, c.v.Start, kind), AgentID: c.a.id, AgentClass: c.a.class.name,
		WindowStart: time.Unix(0, c.v.Start).UTC(), WindowEnd: time.Unix(0, c.v.End).UTC(),
		DetectedAt: time.Unix(0, at).UTC(),
		Score:      float64(int(c.res.Score*10+0.5)) / 10, Severity: sev, Kind: kind,
		Reasons:  append([]models.Reason(nil), p.reasons...),
		Baseline: Baseline{Source: c.res.Source, Windows: c.res.Windows},
	}
	al.Credentials, al.OtherCredentials = p.alertCreds(c.a, c.v.Index)
	al.Verified = w.Index == c.v.Index && w.Flags&flagUnverified == 0 && p.cfg.Signatures.Mode != SigOff
	al.Observe = p.observeOnly(c.a.id)
	// An identity without a baseline of its own is judged by its group's
	// or the fleet's: a burst of them (made-up ids) is one flood alert.
	if c.res.Source != models.SourceAgent && !p.identityAlert(al) {
		return
	}
	if early {
		p.stats.Early++
	}
	p.stats.Alerts[sev]++
	if p.onAlert != nil {
		p.onAlert(al)
	}
}
