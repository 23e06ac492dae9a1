package sim

import (
	"math"
	"math/rand/v2"
)

// segMs is the length of the grid on which an agent's event rate is held constant.
// Within a segment events are a homogeneous Poisson process; by memorylessness the
// process restarts exactly at every segment boundary.
const segMs = 15 * msMinute

// op is an opSpec resolved for one agent: concrete target, and its fleet-deployment
// successor if any.
type op struct {
	opSpec
	migTarget, migAction string // "" if the op is not affected by a deployment
}

// cred is one credential an agent authenticates with.
type cred struct {
	id, auth string
	w        float64 // cumulative weight
}

// effect is a malicious incident acting on an agent during [start, end).
type effect struct {
	kind       string
	start, end float64
	rateMul    float64 // multiplier on the agent's rate (with a floor, see segment)
	absRate    float64 // off_hours: the rate (events/hour) of the out-of-hours activity
	frac       float64 // probability an event in the window is altered
	bytesMul   float64 // exfiltration: bytes_out multiplier
	newTarget  float64 // exfiltration: probability an altered event goes to a new destination
	denyP      float64 // probability an altered event is denied
	pool       []op    // calls used by altered events (lateral, probing, exfiltration)
	cred       cred    // credential_misuse: the foreign credential
	srcIP      string  // credential_misuse: the foreign source address
	restricted dcMix   // data-class mix of altered events
}

// agent generates the event stream of one agent_id. Its methods are called from one
// goroutine only.
type agent struct {
	idx     int
	id      string
	class   string
	spec    *classSpec
	rng     *rand.Rand
	idBase  uint64 // event ids are mix64(idBase ^ seq): agent index in the top 24 bits, salted by the seed
	seq     uint64
	scale   float64 // per-agent rate multiplier (includes Config.Rate)
	ops     []op
	opCum   []float64
	rare    []op
	rareP   float64
	creds   []cred
	ips     []string
	attestP float64
	denyP   float64
	errP    float64
	toP     float64
	amtMed  float64
	custLo  int64
	custN   int64

	lifeStart, lifeEnd float64
	constRate          float64 // > 0: a constant rate replaces the class schedule
	effects            []*effect
	cutover            float64 // fleet deployment time for this agent (+Inf if none)
	rotateAt           float64 // credential rotation time (+Inf if none)
	rotateIdx          int     // which credential rotates
	rotatedID          string

	burstRate, burstStart, burstEnd float64

	// Poisson state.
	t, segEnd, rate float64
	cur             *effect
	ev              event
}

// start resets the generator to the beginning of the agent's life.
func (a *agent) start() {
	a.t, a.segEnd = a.lifeStart, a.lifeStart
	a.burstStart, a.burstEnd = a.lifeStart, a.lifeStart
	a.ev.agentID = a.id
}

// advance moves to the agent's next event and fills a.ev; it returns false when the
// agent has no more events.
func (a *agent) advance() bool {
	for {
		if a.t >= a.segEnd {
			if a.t >= a.lifeEnd {
				return false
			}
			a.segment()
		}
		if a.rate <= 0 {
			a.t = a.segEnd
			continue
		}
		next := a.t + a.rng.ExpFloat64()/a.rate*msHour
		if next >= a.segEnd {
			a.t = a.segEnd
			continue
		}
		a.t = next
		a.fill()
		return true
	}
}

// segment computes the constant-rate segment starting at a.t.
func (a *agent) segment() {
	t := a.t
	end := (math.Floor(t/segMs) + 1) * segMs
	end = min(end, a.lifeEnd)
	for _, e := range a.effects {
		if e.start > t {
			end = min(end, e.start)
		}
		if e.end > t {
			end = min(end, e.end)
		}
	}
	bursty := a.spec.sched == schedBursty && a.constRate == 0
	if bursty {
		for a.burstEnd <= t {
			a.nextBurst()
		}
		if a.burstStart > t {
			end = min(end, a.burstStart)
		}
		end = min(end, a.burstEnd)
	}
	mid := (t + end) / 2
	var rate float64
	if a.constRate > 0 {
		rate = a.constRate
	} else {
		rate = a.spec.activity(mid)
		if bursty && mid >= a.burstStart {
			rate += a.burstRate
		}
		rate *= a.scale
	}
	a.cur = nil
	for _, e := range a.effects {
		if e.start <= mid && mid < e.end {
			a.cur = e
			// An incident is at least minIncidentRate calls an hour: an agent
			// that exfiltrates or probes with one call an hour does not show
			// the behaviour its label claims, whatever its usual rate.
			if e.kind == KindOffHours {
				rate = max(rate, e.absRate, minIncidentRate)
			} else {
				base := max(rate, 0.3*a.spec.peak*a.scale, minIncidentRate/e.rateMul)
				if e.kind == KindRunawayVolume && a.burstRate > 0 {
					// A bursty agent's usual volume includes its bursts: it
					// runs away when it exceeds them, not its idle trickle.
					base = max(base, a.burstRate*a.scale)
				}
				rate = base * e.rateMul
			}
			break
		}
	}
	a.segEnd, a.rate = end, rate
}

// minIncidentRate is the least activity (events/hour) of an agent during a
// malicious incident.
const minIncidentRate = 30

// nextBurst schedules the next burst of a bursty agent: mostly in the daytime, every
// five hours on average, 15–60 minutes long.
func (a *agent) nextBurst() {
	s := a.burstEnd
	for {
		s += a.rng.ExpFloat64() * 5 * msHour
		if _, h := clock(s); (h >= 7 && h < 20) || a.rng.Float64() < 0.2 {
			break
		}
	}
	a.burstStart = s
	a.burstEnd = s + (15+45*a.rng.Float64())*msMinute
}

func lognormal(r *rand.Rand, median, sigma float64) float64 {
	return median * math.Exp(sigma*r.NormFloat64())
}

func sampleDC(r *rand.Rand, m *dcMix) string {
	u := r.Float64()
	for i := range 3 {
		if u < m[i] {
			return dataClassName(i)
		}
	}
	return "restricted"
}

// newRand returns the random stream number stream of seed. Both are hashed first:
// PCG streams from adjacent raw seeds start out correlated.
func newRand(seed int64, stream uint64) *rand.Rand {
	return rand.New(rand.NewPCG(mix64(uint64(seed)), mix64(stream^0x51a7e)))
}

// mix64 is the SplitMix64 finaliser, a bijection on uint64: distinct inputs give
// distinct event ids.
func mix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

func (a *agent) pickOp() *op {
	r := a.rng
	if len(a.rare) > 0 && r.Float64() < a.rareP {
		return &a.rare[r.IntN(len(a.rare))]
	}
	u := r.Float64() * a.opCum[len(a.opCum)-1]
	for i, c := range a.opCum {
		if u < c {
			return &a.ops[i]
		}
	}
	return &a.ops[len(a.ops)-1]
}

// fill generates the event at a.t into a.ev.
func (a *agent) fill() {
	r := a.rng
	e := &a.ev
	e.ts = int64(a.t)
	a.seq++
	e.id = mix64(a.idBase ^ a.seq)

	o := a.pickOp()
	eff := a.cur
	altered := eff != nil && eff.frac > 0 && r.Float64() < eff.frac
	if altered && len(eff.pool) > 0 && (eff.kind != KindExfiltration || r.Float64() < eff.newTarget) {
		o = &eff.pool[r.IntN(len(eff.pool))]
	}
	e.target, e.action = o.target, o.action
	if o.migTarget != "" && a.t >= a.cutover {
		e.target, e.action = o.migTarget, o.migAction
	}
	e.class = a.class
	if r.Float64() < 0.05 {
		e.class = ""
	}
	e.resPrefix = o.res
	if o.res != "" {
		e.resNum = a.custLo + r.Int64N(a.custN)
	}
	e.dataClass = sampleDC(r, &o.dc)

	denyP := a.denyP
	if altered && eff.denyP > 0 {
		denyP = eff.denyP
	}
	e.amount = -1
	if r.Float64() < denyP {
		e.decision, e.status = "deny", "denied"
		e.bytesIn = int64(lognormal(r, 180, 0.3))
		e.bytesOut = int64(lognormal(r, 250, 0.5))
		e.latency = lognormal(r, 3, 0.4)
	} else {
		e.decision = "allow"
		errP, toP := a.errP, a.toP
		if altered {
			switch eff.kind {
			case KindPrivilegeProbing:
				errP = 0.25
			case KindRunawayVolume:
				toP = 0.04
			}
		}
		switch u := r.Float64(); {
		case u < errP:
			e.status = "error"
		case u < errP+toP:
			e.status = "timeout"
		default:
			e.status = "ok"
		}
		e.bytesIn = int64(lognormal(r, o.in, o.sd))
		e.bytesOut = int64(lognormal(r, o.out, o.sd))
		e.latency = lognormal(r, o.lat, 0.5)
		switch e.status {
		case "timeout":
			e.latency = 30000 + 5000*r.Float64()
			e.bytesIn = 0
		case "error":
			e.bytesIn = int64(lognormal(r, 250, 0.4))
		}
		if o.money && e.status == "ok" {
			e.amount = math.Round(lognormal(r, a.amtMed, 1.3)*100) / 100
		}
	}

	c := &a.creds[0]
	if len(a.creds) > 1 {
		u := r.Float64()
		for i := range a.creds {
			if u < a.creds[i].w {
				c = &a.creds[i]
				break
			}
		}
	}
	e.credID, e.auth = c.id, c.auth
	if a.t >= a.rotateAt && c == &a.creds[a.rotateIdx] {
		e.credID = a.rotatedID
	}
	e.attested = r.Float64() < a.attestP
	e.srcIP = a.ips[0]
	if len(a.ips) > 1 {
		e.srcIP = a.ips[r.IntN(len(a.ips))]
	}

	if altered {
		switch eff.kind {
		case KindExfiltration:
			e.bytesOut = int64(float64(e.bytesOut) * eff.bytesMul)
			e.dataClass = sampleDC(r, &eff.restricted)
		case KindCredentialMisuse:
			e.credID, e.auth, e.attested, e.srcIP = eff.cred.id, eff.cred.auth, false, eff.srcIP
		}
	}
}
