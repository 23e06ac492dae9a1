package sim

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"time"
)

// plan is everything decided before the first event: the fleet, each agent's
// profile, and the incidents and benign changes with their effects.
type plan struct {
	cfg              Config
	rng              *rand.Rand
	salt             uint64
	start, warm, end float64 // ms
	classes          []*classSpec
	byClass          map[string][]*agent // fleet and new agents, per class
	fleet            []*agent            // the initial fleet (incident candidates)
	agents           []*agent            // every agent, in index order
	nums             map[string]map[int]bool
	used             map[*agent]bool // agents already carrying a change or incident
	cut              map[string]float64
	truth            []Incident
}

func newPlan(cfg Config) (*plan, error) {
	start := float64(cfg.Start.UnixMilli())
	p := &plan{
		cfg:     cfg,
		rng:     newRand(cfg.Seed, 0x9a1a),
		salt:    mix64(uint64(cfg.Seed) ^ 0x5a17),
		start:   start,
		warm:    start + float64(cfg.WarmupDays)*msDay,
		end:     start + float64(cfg.Days)*msDay,
		classes: classSpecs(),
		byClass: map[string][]*agent{},
		nums:    map[string]map[int]bool{},
		used:    map[*agent]bool{},
		cut:     map[string]float64{},
	}
	for i, n := range p.split(cfg.Agents) {
		for k := 1; k <= n; k++ {
			p.fleet = append(p.fleet, p.skeleton(p.classes[i], k))
		}
	}
	for _, a := range p.fleet {
		p.byClass[a.class] = append(p.byClass[a.class], a)
	}
	for _, a := range p.fleet {
		p.equip(a)
	}
	if p.end > p.warm {
		p.planBenign()
	}
	kinds := make([]string, cfg.Incidents)
	mk := MaliciousKinds()
	for i := range kinds {
		kinds[i] = mk[i%len(mk)]
	}
	p.rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	for _, k := range kinds {
		if err := p.placeIncident(k); err != nil {
			return nil, err
		}
	}
	sort.SliceStable(p.truth, func(i, j int) bool {
		a, b := p.truth[i], p.truth[j]
		if !a.Start.Equal(b.Start) {
			return a.Start.Before(b.Start)
		}
		return a.AgentID < b.AgentID
	})
	nm, nb := 0, 0
	for i := range p.truth {
		if p.truth[i].Benign {
			nb++
			p.truth[i].ID = fmt.Sprintf("ben-%03d", nb)
		} else {
			nm++
			p.truth[i].ID = fmt.Sprintf("inc-%03d", nm)
		}
	}
	return p, nil
}

// split divides n agents over the classes: one each, the rest by share (largest
// remainder).
func (p *plan) split(n int) []int {
	counts := make([]int, len(p.classes))
	total := 0
	for _, c := range p.classes {
		total += c.share
	}
	rest := n - len(p.classes)
	type rem struct {
		i int
		f float64
	}
	rems := make([]rem, len(p.classes))
	left := rest
	for i, c := range p.classes {
		x := float64(rest) * float64(c.share) / float64(total)
		counts[i] = 1 + int(x)
		left -= int(x)
		rems[i] = rem{i, x - math.Floor(x)}
	}
	sort.SliceStable(rems, func(a, b int) bool { return rems[a].f > rems[b].f })
	for k := 0; k < left; k++ {
		counts[rems[k%len(rems)].i]++
	}
	return counts
}

// skeleton creates and registers an agent with its identity only.
func (p *plan) skeleton(spec *classSpec, num int) *agent {
	idx := len(p.agents)
	a := &agent{
		idx:       idx,
		id:        fmt.Sprintf("spiffe://bank.example/agent/%s-%02d", spec.name, num),
		class:     spec.name,
		spec:      spec,
		rng:       newRand(p.cfg.Seed, 0xa6e17000+uint64(idx)),
		idBase:    uint64(idx)<<40 ^ p.salt,
		lifeStart: p.start,
		lifeEnd:   p.end,
		cutover:   math.Inf(1),
		rotateAt:  math.Inf(1),
	}
	if p.nums[spec.name] == nil {
		p.nums[spec.name] = map[int]bool{}
	}
	p.nums[spec.name][num] = true
	p.agents = append(p.agents, a)
	return a
}

func (p *plan) uniform(lo, hi float64) float64 { return lo + (hi-lo)*p.rng.Float64() }

func (p *plan) logUniform(lo, hi float64) float64 {
	return math.Exp(p.uniform(math.Log(lo), math.Log(hi)))
}

func (p *plan) hex(n int) string {
	const digits = "0123456789abcdef"
	b := make([]byte, n)
	for i := range b {
		b[i] = digits[p.rng.IntN(16)]
	}
	return string(b)
}

// resolve turns an opSpec into an op for agent self: an "@class" target becomes a
// random agent of that class other than self. ok is false if there is none.
func (p *plan) resolve(s opSpec, self *agent) (op, bool) {
	o := op{opSpec: s}
	if cls, isAgent := strings.CutPrefix(s.target, "@"); isAgent {
		var peers []*agent
		for _, a := range p.byClass[cls] {
			if a != self {
				peers = append(peers, a)
			}
		}
		if len(peers) == 0 {
			return o, false
		}
		o.target = peers[p.rng.IntN(len(peers))].id
	}
	return o, true
}

// equip gives a normal agent its behaviour profile.
func (p *plan) equip(a *agent) {
	s, r := a.spec, p.rng
	a.scale = lognormal(r, math.Exp(-0.08), 0.4) * p.cfg.Rate // mean ≈ 1
	keep := make([]bool, len(s.ops))
	n := 0
	for i := range keep {
		keep[i] = r.Float64() < 0.8
		if keep[i] {
			n++
		}
	}
	for i := 0; n < 3 && i < len(keep); i++ {
		if !keep[i] {
			keep[i] = true
			n++
		}
	}
	cum := 0.0
	for i, spec := range s.ops {
		if !keep[i] {
			continue
		}
		o, ok := p.resolve(spec, a)
		if !ok {
			continue
		}
		p.migrate(&o, s)
		cum += spec.w * lognormal(r, 1, 0.5)
		a.ops = append(a.ops, o)
		a.opCum = append(a.opCum, cum)
	}
	for _, spec := range s.rare {
		if o, ok := p.resolve(spec, a); ok {
			p.migrate(&o, s)
			a.rare = append(a.rare, o)
		}
	}
	a.rareP = p.uniform(0.004, 0.02)
	total := 0.0
	for _, aw := range s.auth {
		total += aw.w
	}
	cw := 0.0
	for _, aw := range s.auth {
		cw += aw.w / total
		a.creds = append(a.creds, cred{id: p.credID(aw.auth), auth: aw.auth, w: cw})
	}
	a.creds[len(a.creds)-1].w = 1
	for range 1 + r.IntN(3) {
		a.ips = append(a.ips, fmt.Sprintf("10.%d.%d.%d", s.net, r.IntN(16), 2+r.IntN(252)))
	}
	a.attestP = s.attested
	a.denyP = s.deny * lognormal(r, 1, 0.3)
	a.errP = s.errRate * lognormal(r, 1, 0.3)
	a.toP = s.timeout
	a.amtMed = lognormal(r, max(s.amountMed, 100), 0.5)
	a.custLo = 100_000 + r.Int64N(900_000)
	a.custN = 5_000 + r.Int64N(200_000)
	a.burstRate = p.uniform(150, 350)
	if c, ok := p.cut[s.name]; ok {
		a.cutover = max(c, a.lifeStart) + r.Float64()*30*msMinute
	}
}

// migrate records o's successor if the class's fleet deployment moves its target.
func (p *plan) migrate(o *op, s *classSpec) {
	if s.mig.from == "" || o.target != s.mig.from {
		return
	}
	o.migTarget, o.migAction = s.mig.to, o.action
	if na, ok := s.mig.actions[o.action]; ok {
		o.migAction = na
	}
}

func (p *plan) credID(auth string) string {
	switch auth {
	case "mtls":
		return "x509:" + p.hex(16)
	case "jwt":
		return "kid:" + p.hex(16)
	case "apikey":
		return "key:" + p.hex(16)
	}
	return "anon:" + p.hex(8)
}

// pickTime returns a random time (whole seconds) in [warm, end-dur] satisfying ok,
// or false after many tries.
func (p *plan) pickTime(dur float64, ok func(float64) bool) (float64, bool) {
	span := p.end - p.warm - dur
	if span <= 0 {
		return 0, false
	}
	for range 2000 {
		t := math.Floor((p.warm+p.rng.Float64()*span)/1000) * 1000
		if ok == nil || ok(t) {
			return t, true
		}
	}
	return 0, false
}

func (p *plan) ms(t float64) time.Time { return time.UnixMilli(int64(t)).UTC() }

func (p *plan) record(kind string, a *agent, class string, start, end float64, benign bool, desc string) {
	id := "*"
	if a != nil {
		id = a.id
	}
	p.truth = append(p.truth, Incident{Kind: kind, AgentID: id, AgentClass: class,
		Start: p.ms(start), End: p.ms(end), Benign: benign, Description: desc})
}

// pickUnused returns a random fleet agent not yet carrying a change, among those
// accepted by ok; with none left, any accepted fleet agent.
func (p *plan) pickUnused(ok func(*agent) bool) *agent {
	var free, all []*agent
	for _, a := range p.fleet {
		if ok != nil && !ok(a) {
			continue
		}
		all = append(all, a)
		if !p.used[a] {
			free = append(free, a)
		}
	}
	if len(free) > 0 {
		return free[p.rng.IntN(len(free))]
	}
	if len(all) > 0 {
		return all[p.rng.IntN(len(all))]
	}
	return nil
}

// pickEarly is pickTime preferring times at least 30 hours before the end, so that a
// lasting change is visible in the data (a nightly batch runs at least once after it).
func (p *plan) pickEarly(dur float64, ok func(float64) bool) (float64, bool) {
	late := p.end - 30*msHour
	if t, found := p.pickTime(dur, func(t float64) bool { return t <= late && (ok == nil || ok(t)) }); found {
		return t, true
	}
	return p.pickTime(dur, ok)
}

// planBenign schedules the benign changes: one fleet deployment (two on long runs),
// credential rotations and new agents.
func (p *plan) planBenign() {
	post := (p.end - p.warm) / msDay
	nDeploy := 1
	if post >= 10 {
		nDeploy = 2
	}
	for i := 0; i < nDeploy && i < len(p.classes); i++ {
		var s *classSpec
		for s == nil || p.hasCut(s.name) {
			s = p.classes[p.rng.IntN(len(p.classes))]
		}
		business := func(t float64) bool {
			wd, h := clock(t)
			return wd >= 1 && wd <= 5 && h >= 9 && h < 16
		}
		t, ok := p.pickEarly(6*msHour, business)
		if !ok {
			if t, ok = p.pickTime(0, nil); !ok {
				return
			}
		}
		p.cut[s.name] = t
		for _, a := range p.byClass[s.name] {
			a.cutover = t + p.rng.Float64()*30*msMinute
		}
		var renames []string
		for _, o := range append(append([]opSpec(nil), s.ops...), s.rare...) {
			if na, ok := s.mig.actions[o.action]; ok && o.target == s.mig.from {
				renames = append(renames, o.action+"→"+na)
			}
		}
		desc := fmt.Sprintf("every %s moves from %s to %s within 30 min and stays", s.name, s.mig.from, s.mig.to)
		if len(renames) > 0 {
			desc += "; actions renamed " + strings.Join(renames, ", ")
		}
		p.record(KindFleetDeployment, nil, s.name, t, p.end, true, desc)
	}

	for range max(1, p.cfg.Agents/20) {
		a := p.pickUnused(nil)
		t, ok := p.pickEarly(0, nil)
		if !ok {
			break
		}
		p.used[a] = true
		a.rotateAt, a.rotateIdx = t, 0
		old := a.creds[0]
		a.rotatedID = p.credID(old.auth)
		p.record(KindCredentialRotation, a, a.class, t, p.end, true,
			fmt.Sprintf("credential %s rotated to %s (same auth %s, attestation and source addresses)", old.id, a.rotatedID, old.auth))
	}

	total := 0
	for _, c := range p.classes {
		total += c.share
	}
	for range max(1, p.cfg.Agents/40) {
		u := p.rng.IntN(total)
		s := p.classes[0]
		for _, c := range p.classes {
			if u < c.share {
				s = c
				break
			}
			u -= c.share
		}
		t, ok := p.pickEarly(0, s.active)
		if !ok {
			break
		}
		a := p.skeleton(s, p.freshNum(s.name, 1))
		a.lifeStart = t
		p.equip(a)
		p.byClass[s.name] = append(p.byClass[s.name], a)
		p.used[a] = true
		p.record(KindNewAgent, a, s.name, t, p.end, true,
			fmt.Sprintf("new %s instance joins the fleet and behaves like its peers", s.name))
	}
}

func (p *plan) hasCut(class string) bool { _, ok := p.cut[class]; return ok }

// freshNum returns an unused agent number for class: the next one after the fleet
// (new agents) or, with gap > 1, a random one further away (unknown identities).
func (p *plan) freshNum(class string, gap int) int {
	n := len(p.nums[class]) + 1
	if gap > 1 {
		n += gap + p.rng.IntN(40)
	}
	for p.nums[class][n] {
		n++
	}
	return n
}

// placeIncident chooses an agent and a window for one malicious incident of kind and
// attaches its effect.
func (p *plan) placeIncident(kind string) error {
	if kind == KindUnknownIdentity {
		return p.placeUnknown()
	}
	var filter func(*agent) bool
	if kind == KindOffHours {
		filter = func(a *agent) bool {
			switch a.spec.sched {
			case schedBusiness, schedKYC, schedNightly:
				return true
			}
			return false
		}
	}
	for attempt := range 3000 {
		var a *agent
		if attempt < 1500 {
			a = p.pickUnused(filter)
		} else {
			a = p.fleet[p.rng.IntN(len(p.fleet))]
			if filter != nil && !filter(a) {
				continue
			}
		}
		if a == nil {
			break
		}
		dur := math.Round(p.logUniform(20*msMinute, 3*msHour)/1000) * 1000
		st, ok := p.pickTime(dur, nil)
		if !ok {
			break
		}
		s := a.spec
		if kind == KindOffHours {
			// Silent for an hour either side too: activity just before a
			// shift starts is not "off hours".
			if !s.idle(st-msHour) || !s.idle(st) || !s.idle(st+dur/2) || !s.idle(st+dur-1) || !s.idle(st+dur+msHour) {
				continue
			}
		} else if !s.active(st) || !s.active(st+min(dur/2, 30*msMinute)) {
			continue
		}
		if p.overlaps(a, st, st+dur) || (kind == KindCredentialMisuse && math.Abs(st-a.rotateAt) < msDay) {
			continue
		}
		e, desc := p.effect(kind, a, st, st+dur)
		a.effects = append(a.effects, e)
		p.used[a] = true
		p.record(kind, a, a.class, st, st+dur, false, desc)
		return nil
	}
	return fmt.Errorf("sim: %w: cannot place a %s incident: too many incidents (%d) for %d agents and %d days after warmup",
		ErrInvalidConfig, kind, p.cfg.Incidents, p.cfg.Agents, p.cfg.Days-p.cfg.WarmupDays)
}

// overlaps reports whether [st, en) is within two hours of an incident of a.
func (p *plan) overlaps(a *agent, st, en float64) bool {
	for _, e := range a.effects {
		if st < e.end+2*msHour && e.start < en+2*msHour {
			return true
		}
	}
	return false
}

// effect builds the effect of a malicious incident with randomised magnitudes and
// describes it.
func (p *plan) effect(kind string, a *agent, st, en float64) (*effect, string) {
	e := &effect{kind: kind, start: st, end: en, rateMul: 1, restricted: mix(0, 0.5, 3.5, 6)}
	r := p.rng
	switch kind {
	case KindExfiltration:
		if r.Float64() < 0.6 {
			e.bytesMul = p.uniform(3, 10)
		} else {
			e.bytesMul = p.logUniform(10, 60)
		}
		e.frac = p.uniform(0.2, 0.9)
		e.rateMul = p.uniform(1, 1.8)
		desc := fmt.Sprintf("bytes_out ×%.1f on %.0f%% of calls, restricted/confidential share up, rate ×%.1f",
			e.bytesMul, 100*e.frac, e.rateMul)
		if r.Float64() < 0.5 {
			e.newTarget = p.uniform(0.1, 0.5)
			ops := exfilOps()
			r.Shuffle(len(ops), func(i, j int) { ops[i], ops[j] = ops[j], ops[i] })
			var names []string
			for _, s := range ops[:1+r.IntN(2)] {
				o, _ := p.resolve(s, a)
				e.pool = append(e.pool, o)
				names = append(names, o.target)
			}
			desc += fmt.Sprintf(", %.0f%% of those to new destination %s", 100*e.newTarget, strings.Join(names, ", "))
		}
		return e, desc
	case KindLateralMovement:
		e.pool = p.lateralPool(a)
		e.frac = p.uniform(0.15, 0.7)
		e.rateMul = p.uniform(1, 2.5)
		e.denyP = 0.08
		return e, fmt.Sprintf("%.0f%% of calls go to %d targets it never used (other services and agents), rate ×%.1f",
			100*e.frac, len(e.pool), e.rateMul)
	case KindPrivilegeProbing:
		own := map[string]bool{}
		for _, o := range append(append([]op(nil), a.ops...), a.rare...) {
			own[o.target+" "+o.action] = true
		}
		for _, s := range probeOps() {
			if !own[s.target+" "+s.action] {
				o, _ := p.resolve(s, a)
				e.pool = append(e.pool, o)
			}
		}
		r.Shuffle(len(e.pool), func(i, j int) { e.pool[i], e.pool[j] = e.pool[j], e.pool[i] })
		e.pool = e.pool[:min(len(e.pool), 4+r.IntN(6))]
		e.frac = p.uniform(0.1, 0.5)
		e.denyP = p.uniform(0.3, 0.8)
		e.rateMul = p.uniform(1.2, 3)
		return e, fmt.Sprintf("%.0f%% of calls try %d privileged actions it never used, %.0f%% of them denied, more errors, rate ×%.1f",
			100*e.frac, len(e.pool), 100*e.denyP, e.rateMul)
	case KindRunawayVolume:
		e.rateMul = p.logUniform(5, 50)
		e.frac = 1
		return e, fmt.Sprintf("event rate ×%.1f on its usual calls, timeouts up", e.rateMul)
	case KindOffHours:
		e.absRate = a.spec.peak * a.scale * p.uniform(0.3, 1.2)
		return e, fmt.Sprintf("usual calls at %.0f events/hour at a time it is normally silent", e.absRate)
	case KindCredentialMisuse:
		auth := "apikey"
		if r.Float64() < 0.3 {
			auth = "none"
		}
		e.cred = cred{id: p.credID(auth), auth: auth}
		e.srcIP = fmt.Sprintf("10.%d.%d.%d", 200+r.IntN(40), r.IntN(256), 2+r.IntN(252))
		e.frac = p.uniform(0.3, 1)
		e.rateMul = p.uniform(1, 2)
		return e, fmt.Sprintf("%.0f%% of calls use foreign credential %s with auth %s, not attested, from %s; rate ×%.1f",
			100*e.frac, e.cred.id, auth, e.srcIP, e.rateMul)
	}
	panic("sim: unknown incident kind " + kind) // unreachable: kinds come from MaliciousKinds
}

// lateralPool lists calls agent a never makes: other classes' calls and direct
// invocations of other agents.
func (p *plan) lateralPool(a *agent) []op {
	own := map[string]bool{}
	for _, o := range append(append([]op(nil), a.ops...), a.rare...) {
		own[o.target] = true
	}
	var pool []op
	for _, c := range p.classes {
		if c == a.spec {
			continue
		}
		for _, s := range append(append([]opSpec(nil), c.ops...), c.rare...) {
			if o, ok := p.resolve(s, a); ok && !own[o.target] {
				own[o.target] = true
				pool = append(pool, o)
			}
		}
	}
	for range 3 + p.rng.IntN(4) {
		peer := p.fleet[p.rng.IntN(len(p.fleet))]
		if peer == a || own[peer.id] {
			continue
		}
		own[peer.id] = true
		pool = append(pool, op{opSpec: o(peer.id, "a2a.invoke", 1, 2000, 1500, 300, mix(0, 3, 6, 1))})
	}
	p.rng.Shuffle(len(pool), func(i, j int) { pool[i], pool[j] = pool[j], pool[i] })
	return pool[:min(len(pool), 8+p.rng.IntN(23))]
}

// placeUnknown creates a never-seen agent claiming an existing class but behaving
// unlike it for its whole (short) life.
func (p *plan) placeUnknown() error {
	s := p.classes[p.rng.IntN(len(p.classes))]
	dur := math.Round(p.logUniform(20*msMinute, 3*msHour)/1000) * 1000
	st, ok := p.pickTime(dur, nil)
	if !ok {
		return fmt.Errorf("sim: %w: no room after warmup for an unknown_identity incident", ErrInvalidConfig)
	}
	a := p.skeleton(s, p.freshNum(s.name, 20))
	a.lifeStart, a.lifeEnd = st, st+dur
	r := p.rng
	restr := mix(0, 1, 4, 5)
	var specs []opSpec
	for _, c := range p.classes {
		if c != s {
			specs = append(specs, c.ops...)
		}
	}
	r.Shuffle(len(specs), func(i, j int) { specs[i], specs[j] = specs[j], specs[i] })
	specs = specs[:6+r.IntN(7)]
	probes := probeOps()
	r.Shuffle(len(probes), func(i, j int) { probes[i], probes[j] = probes[j], probes[i] })
	specs = append(specs, probes[:2+r.IntN(2)]...)
	cum := 0.0
	for _, spec := range specs {
		o, ok := p.resolve(spec, a)
		if !ok {
			continue
		}
		if r.Float64() < 0.6 {
			o.dc = restr
		}
		cum += lognormal(r, 1, 0.5)
		a.ops = append(a.ops, o)
		a.opCum = append(a.opCum, cum)
	}
	auth := "apikey"
	switch u := r.Float64(); {
	case u < 0.25:
		auth = "none"
	case u < 0.45:
		auth = "jwt"
	}
	a.creds = []cred{{id: p.credID(auth), auth: auth, w: 1}}
	a.ips = []string{fmt.Sprintf("10.%d.%d.%d", 200+r.IntN(40), r.IntN(256), 2+r.IntN(252))}
	a.attestP = 0.1
	a.denyP, a.errP, a.toP = p.uniform(0.02, 0.1), 0.03, 0.005
	a.amtMed = 5000
	a.custLo, a.custN = 100_000, 9_000_000
	a.scale = p.cfg.Rate
	a.constRate = p.uniform(30, 200) * p.cfg.Rate
	p.record(KindUnknownIdentity, a, s.name, st, st+dur, false,
		fmt.Sprintf("never-seen identity claims class %s but calls %d other classes' and privileged targets at %.0f events/hour, auth %s, not attested, restricted data",
			s.name, len(a.ops), a.constRate, auth))
	return nil
}
