package models

import (
	"fmt"
	"math"
	"sort"
	"time"

	"gonum.org/v1/gonum/mathext"
	"gonum.org/v1/gonum/stat/distuv"

	"github.com/vigil-sec/vigil/features"
)

// Config holds the learning and scoring parameters. The zero value is not
// usable; start from DefaultConfig.
type Config struct {
	// WindowSize is the feature window length; rates below are per window.
	WindowSize time.Duration `yaml:"window_size"`
	// FastHalfLife is how quickly a baseline follows legitimate change.
	FastHalfLife time.Duration `yaml:"fast_half_life"`
	// SlowHalfLife is the anchor baseline's memory; a change slower than this
	// still shows against it.
	SlowHalfLife time.Duration `yaml:"slow_half_life"`
	// WarmWindows is how many windows an agent needs before its first-seen
	// features are scored against itself, and the weight (in windows) its own
	// baseline gets against its peer group's while it is young.
	WarmWindows int `yaml:"warm_windows"`
	// PeerMinWindows is how many windows a peer group needs before a young
	// agent can be scored against it. An agent that is young in a cold group is
	// not scored at all (cold-start gating).
	PeerMinWindows int `yaml:"peer_min_windows"`
	// LearnBelow is the score under which a window is learned at full weight;
	// weight falls linearly to MinLearnWeight at LearnAbove. Anomalous windows
	// barely teach the baseline, so a slow attacker cannot train it.
	LearnBelow     float64 `yaml:"learn_below"`
	LearnAbove     float64 `yaml:"learn_above"`
	MinLearnWeight float64 `yaml:"min_learn_weight"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		WindowSize:     5 * time.Minute,
		FastHalfLife:   2 * 24 * time.Hour,
		SlowHalfLife:   21 * 24 * time.Hour,
		WarmWindows:    12,
		PeerMinWindows: 30,
		LearnBelow:     40,
		LearnAbove:     60,
		MinLearnWeight: 0.05,
	}
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	switch {
	case c.WindowSize < time.Second || c.WindowSize > 24*time.Hour:
		return fmt.Errorf("window_size %v: want between 1s and 24h", c.WindowSize)
	case c.FastHalfLife < c.WindowSize:
		return fmt.Errorf("fast_half_life %v: want at least window_size", c.FastHalfLife)
	case c.SlowHalfLife < c.FastHalfLife:
		return fmt.Errorf("slow_half_life %v: want at least fast_half_life", c.SlowHalfLife)
	case c.WarmWindows < 1:
		return fmt.Errorf("warm_windows %d: want ≥ 1", c.WarmWindows)
	case c.PeerMinWindows < 1:
		return fmt.Errorf("peer_min_windows %d: want ≥ 1", c.PeerMinWindows)
	case c.LearnBelow >= c.LearnAbove:
		return fmt.Errorf("learn_below %v: want below learn_above %v", c.LearnBelow, c.LearnAbove)
	case c.MinLearnWeight < 0 || c.MinLearnWeight > 1:
		return fmt.Errorf("min_learn_weight %v: want within [0, 1]", c.MinLearnWeight)
	}
	return nil
}

// Model scores feature vectors against baselines and updates baselines. It
// holds only configuration: all state is in Baselines, so one Model serves any
// number of agents. Its methods are safe for concurrent use on distinct
// Baselines.
type Model struct {
	cfg                   Config
	alphaFast, alphaSlow  float64
	alphaSlot, alphaPeerS float64
	windowsPerHour        float64
	recentDecay           float64 // one window's decay of the recent sums (see Sustain)
	chi2, chi2Sustained   distuv.ChiSquared
}

// New returns a Model for cfg, which must be valid.
func New(cfg Config) (*Model, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	perHalf := func(d time.Duration) float64 {
		return 1 - math.Exp(-math.Ln2*float64(cfg.WindowSize)/float64(d))
	}
	wph := float64(time.Hour) / float64(cfg.WindowSize)
	// A seasonal slot is updated about windowsPerHour times a day (weekdays).
	slotAlpha := 1 - math.Exp(-math.Ln2/(wph*cfg.FastHalfLife.Hours()/24))
	return &Model{
		cfg: cfg, alphaFast: perHalf(cfg.FastHalfLife), alphaSlow: perHalf(cfg.SlowHalfLife),
		alphaSlot: slotAlpha, alphaPeerS: slotAlpha / 10, windowsPerHour: wph,
		recentDecay:   math.Exp(-1 / (recentHours * float64(max(int64(wph), 1)))),
		chi2:          distuv.ChiSquared{K: float64(features.NumFeatures)},
		chi2Sustained: distuv.ChiSquared{K: float64(len(sustainedFeatures))},
	}, nil
}

// Config returns the model's configuration.
func (m *Model) Config() Config { return m.cfg }

// Source of the expectation a window was scored against.
const (
	SourceAgent     = "agent"
	SourcePeerGroup = "peer_group"
)

// Result is the scoring of one window. Z holds normal-equivalent upper-tail
// z-scores (0 for features not scored or below expectation); callers may lower
// entries (e.g. when the whole peer group moved together) before Finish.
type Result struct {
	Z        [features.NumFeatures]float64
	Value    [features.NumFeatures]float64 // the observed value, in readable units
	Expected [features.NumFeatures]float64 // what the baseline expected, same units
	Scored   [features.NumFeatures]bool
	Score    float64           // 0–100, set by Finish
	P        float64           // combined tail probability, set by Finish
	Cold     bool              // not scored: neither the agent nor its peer group is warm
	gz       [numGauss]float64 // raw Gaussian z of the Gaussian features, for tail learning
	anchor   [numRare]float64  // first-seen items expected at the slower of the two rates
	mixJS    float64           // mixDistance of the window, for Learn
	mixPeer  bool              // whether mixJS was computed with a warm peer group
	// Sustained is the feature whose sustained deviation over consecutive
	// windows (see Sustain) made the score, or -1; SustainedReason explains it.
	Sustained       features.Feature
	SustainedReason Reason
	Source          string // SourceAgent or SourcePeerGroup
	Windows         int    // windows behind the baseline used
}

// Reason explains one feature's part in a score.
type Reason struct {
	Feature      string  `json:"feature"`
	Value        float64 `json:"value"`
	Expected     float64 `json:"expected"`
	Z            float64 `json:"z"`
	Contribution float64 `json:"contribution"`
}

// effectiveTests is the multiple-testing factor for the most extreme feature.
// Bonferroni over all 16 features would be needlessly strict: the features are
// correlated (new targets, new-to-peers and distinct targets move together)
// and the discrete ones sit at their floor (p = 1) in almost every normal
// window, so about four independent chances to be extreme remain.
const effectiveTests = 4

// zMax caps z-scores: beyond it tail probabilities underflow and mean nothing.
const zMax = 37

// zFromP converts an upper-tail probability to a normal-equivalent z ≥ 0.
func zFromP(p float64) float64 {
	if p >= 0.5 {
		return 0
	}
	if p <= 1e-300 {
		return zMax
	}
	return math.Min(zMax, -distuv.UnitNormal.Quantile(p))
}

// spikeTail is the upper tail of a Gaussian feature's z: normal up to 3σ,
// exponential beyond, continuing the normal tail's slope there (Huber's
// least-favourable shape). Sizes, latencies and amounts are not Gaussian far
// out: a download thirty times the usual, once in a few weeks of a peer
// group's windows, is rare, not a one-in-ten-billion event (z = 6.5 is
// p ≈ 3·10⁻⁸ here, 4·10⁻¹¹ for a normal). The spike tails each agent learns
// (Baseline.tail) take over once it or its peers have shown such spikes.
func spikeTail(z float64) float64 {
	const knee = 3
	if z <= knee {
		return pFromZ(z)
	}
	return pFromZ(knee) * math.Exp(-knee*(z-knee))
}

// pFromZ is the upper normal tail.
func pFromZ(z float64) float64 { return 0.5 * math.Erfc(z/math.Sqrt2) }

// Variance floors for the Gaussian features, in their transformed units:
// a change smaller than this is never significant however steady the agent.
var gaussFloor = [numGauss]float64{0.03, 0.1, 0.1, 0.15, 0.1}

// Prior variances of the Gaussian features (see priorBlend): a factor of e in
// bytes, latency or amount, a third of the range of the mix distance.
var gaussPrior = [numGauss]float64{0.1, 1, 1, 1, 1}

// gaussN is the number of events behind a Gaussian feature's window value.
func gaussN(v *features.Vector, i int) float64 {
	if f := gaussFeatures[i]; f != features.ActionMix {
		return v.Trials[f]
	}
	return v.Value[features.EventCount]
}

// gaussValue transforms a feature value for its Gaussian model; ok is false
// when the window does not carry the feature.
func gaussValue(v *features.Vector, i int, mixJS float64) (float64, bool) {
	switch f := gaussFeatures[i]; f {
	case features.ActionMix:
		return mixJS, mixJS >= 0
	default:
		if v.Trials[f] == 0 {
			return 0, false
		}
		return math.Log1p(v.Value[f]), true
	}
}

// Evaluate scores v against the agent's baseline a, falling back on and
// blending with its peer group's baseline p (which may be nil). It fills res
// except Score and P; call Finish after any adjustment of res.Z.
func (m *Model) Evaluate(v *features.Vector, a, p *Baseline, res *Result) {
	*res = Result{}
	warmAgent := int(a.Windows) >= m.cfg.WarmWindows
	warmPeer := p != nil && int(p.Windows) >= m.cfg.PeerMinWindows
	if !warmAgent && !warmPeer {
		res.Cold = true
		res.Windows = int(a.Windows)
		return
	}
	// Weight of the agent's own baseline against its peers'.
	w := float64(a.Windows) / float64(a.Windows+uint32(m.cfg.WarmWindows))
	if !warmPeer {
		w = 1
	}
	res.Source, res.Windows = SourceAgent, int(a.Windows)
	if !warmAgent {
		res.Source, res.Windows = SourcePeerGroup, int(p.Windows)
	}
	blend := func(x, y float64) float64 {
		if !warmPeer {
			return x
		}
		return w*x + (1-w)*y
	}

	// Event count against the seasonal expectation for this hour, once the
	// agent or its warm peer group has a day of history: before that, the
	// hours it has not seen are guesses (a brand-new group's nightly batch
	// at 01:00 is not a runaway).
	if m.seasoned(a, warmAgent) || m.seasoned(p, warmPeer) {
		m.evaluateCount(v, a, p, warmPeer, res)
	}

	// Gaussian features, against the fast and (discounted) slow baselines.
	js := m.mixDistance(v, a, p, warmPeer)
	res.mixJS, res.mixPeer = js, warmPeer
	for i := range numGauss {
		y, ok := gaussValue(v, i, js)
		if !ok {
			continue
		}
		f := gaussFeatures[i]
		ga := &a.gauss[i]
		mean, vr := float64(ga.mean), float64(ga.vr)
		smean, svr := float64(ga.slowMean), float64(ga.slowVr)
		n := float64(ga.n)
		if warmPeer {
			gp := &p.gauss[i]
			w := n / (n + float64(m.cfg.WarmWindows))
			pm, pv := float64(gp.mean), float64(gp.vr)
			d := mean - pm
			mean, vr = w*mean+(1-w)*pm, w*vr+(1-w)*pv+w*(1-w)*d*d
			d = smean - float64(gp.slowMean)
			smean, svr = w*smean+(1-w)*float64(gp.slowMean), w*svr+(1-w)*float64(gp.slowVr)+w*(1-w)*d*d
			n = math.Max(n, float64(gp.n))
		} else if ga.n < 2 {
			continue // nothing to compare with yet
		}
		floor := gaussFloor[i] * gaussFloor[i]
		h := sampling(gaussN(v, i))
		vr, svr = h*priorBlend(vr, n, gaussPrior[i]), h*priorBlend(svr, n, gaussPrior[i])
		z := (y - mean) / math.Sqrt(vr+floor)
		val, exp := v.Value[f], math.Expm1(mean)
		if f == features.ActionMix {
			val, exp = y, mean
		}
		res.gz[i] = z
		// A spike away from the fast baseline that this agent or its peers
		// have shown before is less surprising than the Gaussian says: the
		// observed share of windows that spiked this far bounds the tail
		// probability from below. A drift away from the slow anchor without
		// such a spike (a slow ramp) gets no such allowance.
		zs := 0.8 * (y - smean) / math.Sqrt(svr+floor)
		if b := tailBucket(z); b >= 0 {
			pt := math.Max(spikeTail(math.Max(z, zs)), float64(a.tail[i][b]))
			if warmPeer {
				pt = math.Max(pt, float64(p.tail[i][b]))
			}
			z = zFromP(pt)
		} else if zs > z {
			z = zs
		}
		if f == features.ActionMix && p != nil && v.Index <= p.fleetUntil {
			// The peer group has just moved to new targets or actions
			// together (a deployment): an agent's mix moving with it is
			// explained, and is learned as it goes.
			z, res.gz[i] = math.Min(z, fleetZ), math.Min(res.gz[i], fleetZ)
		}
		res.set(f, val, exp, z)
	}

	// First-seen counts. An agent's own novelty is meaningless while it is
	// still discovering its normal targets, so it is gated until warm; novelty
	// to the whole peer group, and denied calls to what the agent was never
	// allowed, are scored from the first window (against the peers' rate).
	for i := range numRare {
		f := rareFeatures[i]
		peerScored := f == features.NewToPeers || f == features.DeniedUnfamiliar
		if !peerScored && !warmAgent {
			continue
		}
		q, size := float64(a.rare[i].q), float64(a.rare[i].size)
		if peerScored && warmPeer {
			q, size = blend(q, float64(p.rare[i].q)), blend(size, float64(p.rare[i].size))
		}
		q = math.Max(q, rareFloor(f))
		size = math.Max(size, 1.5)
		kk := v.Value[f]
		pt := 1.0
		g := math.Min(1-1/size, 0.85)
		if kk > 0 {
			pt = q * math.Pow(g, kk-1)
		}
		z := zFromP(pt)
		res.anchor[i] = q * size
		// Against the slow anchor too (discounted, as for the Gaussian
		// features): a stream of new targets whose rate the fast q has
		// followed within hours still shows.
		if sq := math.Max(float64(a.rare[i].slowQ), rareFloor(f)); warmAgent && a.rare[i].slowQ > 0 && sq < q {
			res.anchor[i] = sq * size
			if zs := 0.8 * zFromP(sq*math.Pow(g, kk-1)); kk > 0 && zs > z {
				z, q = zs, sq
			}
		}
		res.set(f, kk, q*size, z)
	}

	// Shares (deny, error, restricted, weak auth, new origins): binomial with the agent's
	// rate, a peer-group prior, and overdispersion.
	for i := range numShare {
		f := shareFeatures[i]
		n := v.Trials[f]
		if n == 0 {
			continue
		}
		prior := 0.02
		if warmPeer {
			prior = (float64(p.share[i].k) + 0.2) / (float64(p.share[i].n) + 10)
		}
		sh := &a.share[i]
		rate := (float64(sh.k) + 20*prior) / (float64(sh.n) + 20)
		rate = math.Min(0.98, math.Max(shareFloor(f), rate))
		kk := v.Value[f]
		z := zFromP(binomTail(kk, n, rate))
		// Against the slow anchor too, discounted as for the Gaussian
		// features: a rate that has crept up over days, which the fast
		// rate has followed, still shows.
		if sh.slowN >= 0.5*sh.n && kk > 0 {
			srate := (float64(sh.slowK) + 20*prior) / (float64(sh.slowN) + 20)
			srate = math.Min(0.98, math.Max(shareFloor(f), srate))
			if srate < rate {
				if zs := 0.8 * zFromP(binomTail(kk, n, srate)); zs > z {
					z, rate = zs, srate
				}
			}
		}
		res.set(f, kk/n, rate, z)
	}
}

// seasoned reports whether baseline b (warm: scored at all) has a day of
// history behind it, which the seasonal count model needs.
func (m *Model) seasoned(b *Baseline, warm bool) bool {
	return warm && float64(b.LastIndex-b.firstIdx) >= m.windowsPerDay()
}

// evaluateCount scores the window's event count against the seasonal
// expectation (see Evaluate).
func (m *Model) evaluateCount(v *features.Vector, a, p *Baseline, warmPeer bool, res *Result) {
	s := slotOf(v.HourOfWeek)
	mu, disp := m.expectedCount(a, p, s, warmPeer)
	k := v.Value[features.EventCount]
	if quiet(mu) > 0 {
		disp = a.quietDispersion()
		if warmPeer {
			disp = math.Max(disp, p.quietDispersion())
		}
	}
	pc := countTail(k, mu, disp)
	if k > mu {
		// An agent that has often been this far above its expectation
		// (bursts) is not surprising, whatever the negative binomial says.
		// A young agent has not had time to burst: its peers' bursts stand
		// in for its own until its histogram holds about a day of windows.
		t, mass := a.ratioTail(k, mu)
		if warmPeer {
			pt, _ := p.ratioTail(k, mu)
			w := mass / (mass + m.alphaFast*m.windowsPerHour*24)
			t = w*t + (1-w)*pt
		}
		pc = math.Max(pc, t)
		// Far beyond anything the agent has had: a bursty agent's spread
		// says little about a window many times its largest burst.
		pc = math.Min(pc, a.record(k, m.windowsPerDay()))
	}
	res.set(features.EventCount, k, mu, zFromP(pc))
}

// shareFloor is the least per-call rate of a share feature. Denials, errors
// and repeated targets have a background in any agent's traffic, so their
// rates are not trusted below 0.2 %; restricted data and weak or unattested
// authentication, and calls from new origins (see features.Origins), are
// properties an agent and its peers may never show, and
// an agent with none in thousands of calls is credited down to 0.02 %.
func shareFloor(f features.Feature) float64 {
	if f == features.WeakAuthShare || f == features.RestrictedShare || f == features.NewOriginShare {
		return 2e-4
	}
	return 0.002
}

// rareFloor is the least per-window probability of a first-seen feature. An
// agent's ordinary novelty (a new target, a new address) is bounded at 1e-3:
// about once in four days of windows, the most a few days of history can
// tell apart. A denied call to something the agent was never allowed is
// bounded at 1e-4, about what its slow-rate estimate resolves (a 21-day
// half-life); neither an agent nor its peers do that in normal operation, so
// a lone probe scores about 30 and two in an hour about 45 on their own.
func rareFloor(f features.Feature) float64 {
	if f == features.DeniedUnfamiliar {
		return 1e-4
	}
	return 1e-3
}

func (r *Result) set(f features.Feature, value, expected, z float64) {
	if z < 0 || math.IsNaN(z) {
		z = 0
	}
	r.Z[f], r.Value[f], r.Expected[f], r.Scored[f] = math.Min(z, zMax), value, expected, true
}

// expectedCount returns the seasonal mean of the event count and the
// negative-binomial dispersion, young baselines pulled toward a wide prior so
// that a few quiet windows do not make every burst look alarming.
func (m *Model) expectedCount(a, p *Baseline, s int, warmPeer bool) (mean, disp float64) {
	mean = a.slotMean(s)
	disp = a.dispersion()
	if warmPeer {
		w := float64(a.slotN[s]) / (float64(a.slotN[s]) + 4)
		pm := p.slotMean(s)
		pd := p.dispersion()
		d := mean - pm
		mean = w*mean + (1-w)*pm
		// The disagreement between agent and peers widens the spread.
		disp = w*disp + (1-w)*pd + w*(1-w)*d*d/(mean*mean+1)
	}
	return mean, disp
}

// countTail is P(X ≥ k) for a negative binomial with mean mu and dispersion
// phi (variance mu + phi·mu²), Poisson when phi is negligible.
func countTail(k, mu, phi float64) float64 {
	if k <= mu || k < 1 {
		return 1
	}
	mu = math.Max(mu, 1e-4)
	if phi < 1e-4 {
		return mathext.GammaIncReg(k, mu)
	}
	r := 1 / phi
	return mathext.RegIncBeta(k, r, mu/(r+mu))
}

// Priors that keep a young baseline wide: each counts as priorWindows windows
// of evidence, so it fades as the baseline learns.
const (
	priorWindows = 10
	dispPrior    = 1
)

// priorBlend mixes a learned variance-like statistic x (from n windows) with
// its prior.
func priorBlend(x, n, prior float64) float64 {
	return (n*x + priorWindows*prior) / (n + priorWindows)
}

// ExpectedCount returns the events the agent is expected to produce in a
// window starting at hourOfWeek, and a count well above it (mean + 4 standard
// deviations), for early decisions.
func (m *Model) ExpectedCount(a, p *Baseline, hourOfWeek int) (mean, high float64) {
	warmPeer := p != nil && int(p.Windows) >= m.cfg.PeerMinWindows
	mean, disp := m.expectedCount(a, p, slotOf(hourOfWeek), warmPeer)
	return mean, mean + 4*math.Sqrt(mean+disp*mean*mean+1)
}

// mixDistance is the Jensen–Shannon distance (square root of the divergence,
// base 2, in [0, 1]) between the window's action mix and the agent's usual
// mix (or its peers' while it has none). It is -1 when there is no usual mix.
func (m *Model) mixDistance(v *features.Vector, a, p *Baseline, warmPeer bool) float64 {
	ref := &a.mix
	if a.mixN == 0 {
		if !warmPeer || p.mixN == 0 {
			return -1
		}
		ref = &p.mix
	}
	var tot float64
	for _, c := range v.Actions {
		tot += float64(c)
	}
	if tot == 0 {
		return -1
	}
	var js float64
	for i, c := range v.Actions {
		x, y := float64(c)/tot, float64(ref[i])
		mid := (x + y) / 2
		if x > 0 {
			js += x * math.Log2(x/mid)
		}
		if y > 0 {
			js += y * math.Log2(y/mid)
		}
	}
	return math.Sqrt(math.Max(0, js/2))
}

// binomTail is P(X ≥ k) for X ~ Binomial(n, p), with overdispersion: trials
// within a window are correlated, so n is shrunk to an effective size.
func binomTail(k, n, p float64) float64 {
	if k <= 0 {
		return 1
	}
	const rho = 0.02
	ne := n / (1 + (n-1)*rho)
	ke := k * ne / n
	if ke <= ne*p {
		return 0.5
	}
	if ne > 60 { // normal approximation with continuity correction
		return pFromZ((ke - 0.5 - ne*p) / math.Sqrt(ne*p*(1-p)))
	}
	ni, ki := math.Round(ne), math.Round(ke)
	if ki < 1 {
		ki = 1
	}
	if ki > ni {
		ni = ki
	}
	lg := func(x float64) float64 { v, _ := math.Lgamma(x); return v }
	logTerm := lg(ni+1) - lg(ki+1) - lg(ni-ki+1) + ki*math.Log(p) + (ni-ki)*math.Log1p(-p)
	term := math.Exp(logTerm)
	sum := term
	for j := ki; j < ni && term > sum*1e-12; j++ {
		term *= (ni - j) / (j + 1) * p / (1 - p)
		sum += term
	}
	return math.Min(1, sum)
}

// Finish combines res.Z into the tail probability and the 0–100 score.
//
// Two tests are combined with a Bonferroni correction: the most extreme single
// feature (its tail probability times effectiveTests) and the joint
// deviation Σz² of all features against a χ² distribution (several moderate
// deviations together). Score = 10·(−log10 p), capped at 100: 60 means a
// window this unusual is expected once in a million windows of a normal agent.
// Scores are comparable across agents because they are probabilities.
func (m *Model) Finish(res *Result) {
	res.Sustained = -1
	if res.Cold {
		res.Score, res.P = 0, 1
		return
	}
	var zmax, d2 float64
	for _, z := range res.Z {
		zmax = math.Max(zmax, z)
		d2 += z * z
	}
	p := math.Min(1, effectiveTests*pFromZ(zmax))
	if d2 > float64(features.NumFeatures) {
		p = math.Min(p, m.chi2.Survival(d2))
	}
	p = math.Min(1, 2*p)
	res.P = p
	res.Score = 0
	if p < 1 {
		res.Score = math.Min(100, math.Max(0, -10*math.Log10(math.Max(p, 1e-300))))
	}
}

// cusumK is the reference of the per-feature CUSUMs, in σ: windows whose z is
// below it drain the sum, so only a deviation sustained above it accumulates.
const cusumK = 1.5

// countK is the reference of the event count's own CUSUM, in σ. Load comes
// in bursts that span windows, so only a count far in the agent's tail
// accumulates (a runaway many times its largest burst, see
// Baseline.record), and only once the agent has a day of windows behind
// it: a young agent's first bursts are not yet in its record.
const countK = 3

// windowsPerDay is a day of windows, the history the count's record needs.
func (m *Model) windowsPerDay() float64 { return 24 * m.windowsPerHour }

// sustainedFeatures are accumulated across windows by CUSUM: first-seen items
// and the shares of denied, failed, restricted and weak-auth calls are rare
// events whose per-window deviations are close to independent in normal
// traffic, and bytes out and money per call are what exfiltration and fraud
// push up for as long as they last. Volume, bytes in, latency and the action
// mix move with load, which comes in bursts that span windows, so they are
// accumulated differently (event count, hour by hour) or not at all.
var sustainedFeatures = [...]features.Feature{
	features.NewTargets, features.NewActions, features.NewCredentials, features.NewSources, features.NewToPeers,
	features.DenyRate, features.ErrorRate, features.RestrictedShare, features.WeakAuthShare,
	features.BytesOut, features.Amount, features.DeniedUnfamiliar, features.NewOriginShare,
}

// minHours is how many complete hours an agent needs before its hour-level
// count is scored.
const minHours = 24

// Sustain looks for deviations sustained over consecutive windows, which a
// window alone scores too low: a slow lateral movement of one or two new
// targets per window, a probe drawing a few denials at a time, an agent
// running at five times its usual rate at an hour when it is usually quiet.
// It raises res.Score when such a deviation is more significant than the
// window alone, and sets res.Sustained.
//
//   - The features in sustainedFeatures feed one-sided CUSUMs (Page's test
//     on z with reference cusumK; windows without events count as z = 0),
//     whose tail is Wald's approximation for a Gaussian CUSUM, exp(−2·k·C).
//   - The event count is summed over the hour so far and compared with the
//     seasonal expectation for the whole hour under a negative binomial whose
//     dispersion is learned from the agent's own complete hours, so an agent
//     whose bursts span many windows does not alert for them.
//
// A sustained deviation only scores in a window that adds to it, so alerts
// stop when the behaviour does. Call once per closed window, in window order,
// after Finish and before Learn; never for a partial window.
func (m *Model) Sustain(a *Baseline, v *features.Vector, res *Result) {
	if res.Cold {
		return
	}
	idx := v.Index
	drain, gap := 0.0, int64(1)
	if a.cusumIdx != 0 && idx > a.cusumIdx+1 {
		drain = cusumK * float64(idx-a.cusumIdx-1)
		gap = idx - a.cusumIdx
	}
	a.cusumIdx = idx
	windowScore := res.Score
	best, bf := 0.0, features.Feature(-1)
	var d2, topZ float64
	top := features.Feature(-1)
	hod := v.HourOfWeek % 24
	for i, f := range sustainedFeatures {
		z := res.Z[f]
		if j := hodIndex[i]; j >= 0 && z > 0 {
			// Only what exceeds this hour's routine accumulates.
			z = math.Max(0, z-float64(a.hodBias[hod][j])/hodUnit)
		}
		c := math.Max(0, float64(a.cusum[i])-drain+z-cusumK)
		a.cusum[i] = float32(c)
		if c > best && z > cusumK {
			best, bf = c, f
		}
		d2 += z * z
		if top < 0 || z > topZ {
			top, topZ = f, z
		}
	}
	// One more CUSUM on the joint deviation of those features (χ² of their
	// z-scores as a normal z), for a probe spread over several of them: one new
	// action here, a denial and a restricted read there.
	zj := 0.0
	if d2 > float64(len(sustainedFeatures)) {
		zj = zFromP(m.chi2Sustained.Survival(d2))
	}
	cj := math.Max(0, float64(a.cusumJoint)-drain+zj-cusumK)
	a.cusumJoint = float32(cj)
	if cj > best && zj > cusumK {
		best, bf = cj, top
	}
	p := 1.0
	if bf >= 0 {
		p = math.Min(1, 2*effectiveTests*math.Exp(-2*cusumK*best))
	}
	if float64(a.Windows) >= m.windowsPerDay() {
		z := res.Z[features.EventCount]
		cc := math.Max(0, float64(a.cusumCount)-drain*countK/cusumK+z-countK)
		a.cusumCount = float32(cc)
		if z > countK {
			if pc := math.Min(1, 2*effectiveTests*math.Exp(-2*countK*cc)); pc < p {
				p, best, bf = pc, cc, features.EventCount
			}
		}
	}

	// The hour so far.
	wph := int64(m.windowsPerHour)
	if wph < 2 {
		wph = 1
	}
	hour := floorDiv(idx, wph)
	if hour != a.hourIdx {
		if a.hourIdx != 0 && hour > a.hourIdx { // the previous hour is complete
			mu := float64(a.hourM)
			x := float64(a.hourX)
			decay := 1 - ewma(uint32(a.hourN), m.alphaFast*float64(wph))
			a.hourNum = float32(decay*float64(a.hourNum) + (x-mu)*(x-mu) - mu)
			a.hourDen = float32(decay*float64(a.hourDen) + mu*mu)
			if a.hourN < math.MaxUint16 {
				a.hourN++
			}
			m.learnHourBytes(a, wph)
			m.learnHourOfDay(a, wph)
		}
		clear(a.hodZ[:])
		clear(a.hodN[:])
		a.hodHour = uint8(hod)
		a.hourBytes, a.hourBytesN = 0, 0
		a.hourIdx, a.hourX = hour, 0
		clear(a.hourNew[:])
		clear(a.hourNewExp[:])
		a.clearHourShares()
		a.hourFirst = 0
		s := slotOf(v.HourOfWeek)
		if int(a.slotN[s])-int(idx-hour*wph) < int(wph) && a.dispersion() < 0.5 {
			a.hourFirst = float32(math.Max(1e-6, float64(wph)*a.slotMean(s)))
		}
	}
	// The whole hour's expectation: the count so far can only grow, so its
	// tail under the whole hour's distribution bounds the final p-value from
	// above, and a burst early in the hour is not held against a partial
	// expectation. A slot that has not had an hour of history yet (the
	// first Saturday) is judged for the whole hour by what it expected when
	// the hour began: it would otherwise learn an off-hours burst within
	// minutes from the hour's own windows and judge the rest of the hour by
	// it.
	if windowScore < m.cfg.LearnAbove {
		for j, f := range hodFeatures {
			if res.Scored[f] && a.hodN[j] < math.MaxUint8 {
				z := math.Max(-hodMax, math.Min(hodMax, res.Z[f]))
				a.hodZ[j] += float32(z)
				a.hodN[j]++
			}
		}
	}
	mu := float64(wph) * a.slotMean(slotOf(v.HourOfWeek))
	a.hourM = float32(mu)
	borrowed := a.hourFirst > 0 && float64(a.hourFirst) < mu
	if borrowed {
		mu = float64(a.hourFirst)
	}
	a.hourX += float32(v.Value[features.EventCount])
	hourly := ""
	var hourVal, hourExp float64
	// The day that just ended (and any silent days since) against the slow
	// record of days of its kind.
	if pd, x, mu := m.dayRollover(a, v); pd < p {
		p, bf, hourly, hourVal, hourExp = pd, features.EventCount, "event_count_day", x, mu
	}
	if a.hourN >= minHours && res.Z[features.EventCount] >= 1 {
		// For its first three days, an agent's bursts are taken to last the
		// hour (the window dispersion, not a twelfth of it).
		spread := a.dispersion() / float64(wph)
		if int(a.dayN[0])+int(a.dayN[1]) < 3 {
			spread = a.dispersion()
		}
		phi := math.Max(math.Max(0, float64(a.hourNum))/math.Max(float64(a.hourDen), 1e-9), spread)
		if borrowed {
			// What a slot borrows from the other kind of day is known
			// to within a factor of e or so (weekend load is not weekday
			// load), not to the spread of the agent's own hours.
			phi = math.Max(phi, 1)
		}
		if ph := math.Min(1, effectiveTests*countTail(float64(a.hourX), mu, phi)); ph < p {
			p, bf, hourly, hourVal, hourExp = ph, features.EventCount, "event_count_this_hour", float64(a.hourX), mu
		}
	}
	// First-seen items over the hour so far against the sum of the windows'
	// expectations, under a mildly overdispersed negative binomial (φ = 0.25;
	// the per-window compound model already allows for novelty coming in
	// clumps): a lateral movement that touches two or three new targets per
	// window adds up to more than any one window shows.
	// Each hour sum this window adds to is tested alone and joins the joint
	// test below.
	var hd2, hTopZ float64
	hk := 0
	hTop := features.Feature(-1)
	hourTest := func(f features.Feature, raw, val, exp float64) {
		hz := zFromP(raw)
		hd2, hk = hd2+hz*hz, hk+1
		if hz > hTopZ {
			hTop, hTopZ = f, hz
		}
		if ph := math.Min(1, effectiveTests*raw); ph < p {
			p, bf, hourly, hourVal, hourExp = ph, f, f.String()+"_this_hour", val, exp
		}
	}
	for i, f := range hourNovelty {
		if !res.Scored[f] {
			continue
		}
		a.hourNew[i] += float32(res.Value[f])
		a.hourNewExp[i] += float32(res.Expected[f])
		if res.Value[f] == 0 {
			continue
		}
		x, lam := float64(a.hourNew[i]), float64(a.hourNewExp[i])
		hourTest(f, countTail(x, lam, 0.25), x, lam)
	}
	// First-seen items over the last hours, as sums decaying with a
	// recentHours time constant instead of restarting each hour: a steady
	// trickle of new targets, two or three an hour where the agent sees one
	// a day, is plain over an afternoon and never in any one hour.
	lam := m.recentDecay
	if gap != 1 {
		lam = math.Exp(-float64(gap) / (recentHours * float64(wph)))
	}
	for i, f := range hourNovelty {
		a.recentNew[i] *= float32(lam)
		a.recentExp[i] *= float32(lam)
		if !res.Scored[f] {
			continue
		}
		a.recentNew[i] += float32(res.Value[f])
		a.recentExp[i] += float32(res.anchor[hourNoveltyRare[i]])
		if res.Value[f] == 0 {
			continue
		}
		x, e := float64(a.recentNew[i]), float64(a.recentExp[i])
		if pr := math.Min(1, effectiveTests*countTail(x, e, 0.25)); pr < p {
			p, bf, hourly, hourVal, hourExp = pr, f, f.String()+"_recent", x, e
		}
	}
	// Denied, restricted and weak-auth calls over the hour so far against
	// the agent's rate, with the per-window overdispersion: for an agent of
	// a few calls a window, one such call in three for half an hour is
	// plain in the hour's sum and lost in any window's.
	for i, f := range hourShares {
		if !res.Scored[f] {
			continue
		}
		n := v.Trials[f]
		a.hourShareK[i] += float32(v.Value[f])
		a.hourShareN[i] += float32(n)
		a.hourShareExp[i] += float32(res.Expected[f] * n)
		if v.Value[f] == 0 {
			continue
		}
		k, nn, e := float64(a.hourShareK[i]), float64(a.hourShareN[i]), float64(a.hourShareExp[i])
		hourTest(f, binomTail(k, nn, e/nn), k, e)
	}
	// Bytes out per call over the hour so far against complete hours: an
	// agent whose payloads vary a hundredfold call to call has windows too
	// noisy to show a fivefold exfiltration, and hours that do.
	// A window's mean is capped at 3σ above the agent's usual window, so
	// one huge call (a report, a backup) weighs as one odd window, not as
	// an hour of them.
	if n := v.Trials[features.BytesOut]; n > 0 {
		x := v.Value[features.BytesOut]
		if z := res.gz[1]; z > 3 { // bytes out in gaussFeatures
			mean := float64(a.gauss[1].mean)
			x = math.Expm1(mean + (math.Log1p(x)-mean)*3/z)
		}
		a.hourBytes += float32(x * n)
		a.hourBytesN += float32(n)
		// Only a window that adds to it tests the hour.
		if res.Z[features.BytesOut] >= 1 {
			if z, ok := m.hourBytesZ(a); ok {
				hourTest(features.BytesOut, spikeTail(z), float64(a.hourBytes/a.hourBytesN), math.Expm1(float64(a.hourBytesOut.mean)))
			}
		}
	}
	// The hour's sums together: Σz² of the hour sums this window adds to,
	// against χ² (as Finish does for a window's features), for a probe
	// whose two denials, three targets new to the group and restricted reads
	// are each short of alarming on their own.
	if hk >= 2 && hd2 > float64(hk) && hTop >= 0 {
		if pj := math.Min(1, 2*distuv.ChiSquared{K: float64(hk)}.Survival(hd2)); pj < p {
			p, bf, hourly, hourVal, hourExp = pj, hTop, "joint_this_hour", hd2, float64(hk)
		}
	}
	if bf < 0 {
		return
	}
	if s := -10 * math.Log10(math.Max(p, 1e-300)); s > res.Score {
		res.Score, res.P, res.Sustained = math.Min(100, s), p, bf
		r := &res.SustainedReason
		if hourly != "" {
			*r = Reason{Feature: hourly, Value: round(hourVal), Expected: round(hourExp)}
		} else {
			*r = Reason{Feature: bf.String() + "_sustained", Value: round(best), Expected: 0}
		}
		r.Z = round(zFromP(p / effectiveTests))
	}
}

// hodFeatures are the sustained features whose routine deviation is learned
// per hour of the day: a reconciliation job that ships twenty times its
// daytime payloads every night, or meets more errors, deviates from its
// all-day baseline every night by about as much, which a CUSUM would sum
// into an alert night after night. The window itself is still scored
// against the all-day baseline; only the sums discount the routine.
var hodFeatures = [...]features.Feature{
	features.DenyRate, features.ErrorRate, features.RestrictedShare, features.WeakAuthShare,
	features.BytesOut, features.Amount,
}

// hodIndex maps an index of sustainedFeatures to one of hodFeatures, or -1.
var hodIndex = func() (idx [len(sustainedFeatures)]int) {
	for i, f := range sustainedFeatures {
		idx[i] = -1
		for j, g := range hodFeatures {
			if f == g {
				idx[i] = j
			}
		}
	}
	return idx
}()

const (
	hodUnit  = 32 // Baseline.hodBias counts 1/32 of a z
	hodMax   = 4  // a window's z counts up to this much, a routine's too
	hodAlpha = 1.0 / 3
	// hodDayHours is the time constant, in hours, of the level an hour is
	// compared with.
	hodDayHours = 24
	// hodMargin is how many standard errors of its mean an hour must stand
	// above the level to count as routine at all.
	hodMargin = 2
	// hodMinWindows is how many of its windows an hour needs to teach the
	// routine (fewer when windows are longer than 5 minutes).
	hodMinWindows = 3
)

// learnHourOfDay learns the hour that just closed into the routine of its
// hour of the day. Each feature's excess is the mean z of the hour's windows
// that carried it and did not alert, less the level of the hours before it;
// an excess under hodMargin standard errors of that mean (a mean of n
// windows' z) is noise and counts as none. The hour's bias moves a third of
// the way toward it, once a day whatever happens within the hour, so an
// incident of an hour or two shifts the next days' sums by at most a third
// of its deviation, and a nightly routine is learned within three nights.
//
// The level is the hours' mean z smoothed twice (Brown's double exponential
// smoothing, 2S₁ − S₂, which does not lag behind a linear trend): a ramp
// that lifts every hour alike, a deny rate creeping up over days, sets no
// hour apart and is not learned as routine.
func (m *Model) learnHourOfDay(a *Baseline, wph int64) {
	need := uint8(min(hodMinWindows, max(1, wph/4)))
	for j := range hodFeatures {
		if a.hodN[j] < need {
			continue
		}
		n := float64(a.hodN[j])
		mean := float64(a.hodZ[j]) / n
		d := &a.hodDay[j]
		z := mean - float64(2*d[0]-d[1])
		if z < hodMargin/math.Sqrt(n) {
			z = 0 // not clearly set apart: noise
		}
		z = math.Min(hodMax, z)
		const r = 1.0 / hodDayHours
		d[0] += float32((mean - float64(d[0])) * r)
		d[1] += float32((float64(d[0]) - float64(d[1])) * r)
		b := &a.hodBias[a.hodHour][j]
		old := float64(*b) / hodUnit
		nb := math.Max(0, math.Min(hodMax, old+hodAlpha*(z-old))) * hodUnit
		if z < old {
			nb = math.Floor(nb) // down to zero, not stuck a unit above it
		}
		*b = uint8(math.Round(nb))
	}
}

// minBytesHours is how many complete hours with bytes out an agent needs
// before its hour so far is scored on them.
const minBytesHours = 24

// hourBytesZ is the z of the mean bytes out per call over the hour so far
// against the agent's complete hours (log scale, their variance scaled by
// the calls behind each mean as for windows, see sampling). ok is false
// while the agent has too few hours, or the hour too few calls (under 5, or
// under a third of the calls the hour is expected to have: a partial hour's
// mean of heavy-tailed payloads is noisier than the scaling allows).
func (m *Model) hourBytesZ(a *Baseline) (z float64, ok bool) {
	g := &a.hourBytesOut
	n := float64(a.hourBytesN)
	if g.n < minBytesHours || n < 5 || n < float64(a.hourM)/3 {
		return 0, false
	}
	y := math.Log1p(float64(a.hourBytes) / n)
	const i = 1 // bytes out in gaussFeatures
	floor := gaussFloor[i] * gaussFloor[i]
	h := sampling(n)
	z = (y - float64(g.mean)) / math.Sqrt(h*priorBlend(float64(g.vr), float64(g.n), gaussPrior[i])+floor)
	zs := 0.8 * (y - float64(g.slowMean)) / math.Sqrt(h*priorBlend(float64(g.slowVr), float64(g.n), gaussPrior[i])+floor)
	return math.Max(z, zs), true
}

// learnHourBytes learns the hour that just closed into the agent's hourly
// bytes-out baseline, at a weight that falls with the hour's own score so
// that an exfiltration does not teach it.
func (m *Model) learnHourBytes(a *Baseline, wph int64) {
	n := float64(a.hourBytesN)
	if n == 0 {
		return
	}
	w := 1.0
	if z, ok := m.hourBytesZ(a); ok && z > 0 {
		w = m.LearnWeight(-10 * math.Log10(math.Max(effectiveTests*spikeTail(z), 1e-300)))
	}
	fast, slow := m.alphaFast*float64(wph), m.alphaSlow*float64(wph)
	if acc := float64(a.accept); acc > 0 { // an accepted change, see Accept
		w = math.Max(w, acc)
		r := acc * float64(wph) / m.acceptWindows()
		fast, slow = math.Max(fast, r), math.Max(slow, r)
	}
	a.hourBytesOut.update(math.Log1p(float64(a.hourBytes)/n), n, fast, slow, w)
}

// dayAlpha is the learning rate of the day record: a 21-day half-life in days.
var dayAlpha = 1 - math.Exp(-math.Ln2/21)

// minDays is how many days of a kind (weekday, weekend day) the day record
// needs before a day of that kind is scored.
const minDays = 3

// dayRollover closes the agent's day when v starts a new one: the day's
// event count is scored against the slow mean of days of its kind (weekday
// or weekend) under a negative binomial whose day-to-day dispersion is also
// learned slowly (at least 0.05: days differ by ±22 % however regular the
// agent), then learned at a weight that falls with its own score, so that a
// volume ramp over days — which the window model follows, its slots and
// spread adapting within a couple of days — stands out against days learned
// before it. Silent days in between count as days of zero events. The day's
// count is what Learn accepted, each window's events at the weight it was
// learned at; a day whose windows already alerted for volume is neither
// scored again nor learned at full weight. It returns the day's tail probability (1 when not
// scored), count and expectation.
func (m *Model) dayRollover(a *Baseline, v *features.Vector) (p, x, mu float64) {
	p = 1
	const day = int64(24 * time.Hour)
	d := floorDiv(v.Start, day)
	if a.dayIdx == 0 {
		a.dayIdx = d
	}
	if d > a.dayIdx {
		x = float64(a.dayX)
		for k := a.dayIdx; k < d && k < a.dayIdx+8; k++ {
			cnt := x
			if k != a.dayIdx {
				cnt = 0
			}
			kind := 0
			if slotOf(features.HourOfWeek(k*day)) >= 24 {
				kind = 1
			}
			mk := float64(a.dayMean[kind])
			w := 1.0
			if k == a.dayIdx && a.dayVolumeAlerted {
				// Its windows have already said it: not again, and not
				// into the record either.
				w = m.cfg.MinLearnWeight
			} else if a.dayN[kind] >= minDays {
				phi := a.dayDispersion()
				pk := 1.0
				if cnt > mk {
					pk = math.Min(1, effectiveTests*countTail(cnt, mk, phi))
				}
				// A drift over days: the day's log ratio to the mean of
				// its kind, in σ (day-to-day spread and Poisson noise),
				// summed by a CUSUM, so that a ramp of a fifth more each
				// day adds up before the mean has followed it.
				z := math.Log((cnt+1)/(mk+1)) / math.Sqrt(math.Log(1+phi+1/(mk+1)))
				c := math.Max(0, float64(a.dayCusum)+z-cusumK)
				a.dayCusum = float32(c)
				if z > cusumK {
					pk = math.Min(pk, math.Min(1, 2*effectiveTests*math.Exp(-2*cusumK*c)))
				}
				if pk < p {
					p, x, mu = pk, cnt, mk
				}
				score := -10 * math.Log10(math.Max(pk, 1e-300))
				w = m.LearnWeight(score)
				if score >= m.cfg.LearnAbove {
					a.dayCusum = 0 // said; what follows accumulates anew
				}
			}
			if a.dayN[kind] >= 1 {
				// The residual is winsorised at 3σ of the spread learned so
				// far, so that a ramp's first days cannot widen the spread
				// that its next days are judged by.
				r := math.Min(math.Abs(cnt-mk), 3*math.Sqrt(mk+a.dayDispersion()*mk*mk))
				a.dayNum = float32((1-dayAlpha*w)*float64(a.dayNum) + w*dayAlpha*(r*r-mk))
				a.dayDen = float32((1-dayAlpha*w)*float64(a.dayDen) + w*dayAlpha*mk*mk)
			}
			a.dayMean[kind] += float32(math.Max(dayAlpha, 1/float64(a.dayN[kind]+1)) * w * (cnt - mk))
			if a.dayN[kind] < math.MaxUint8 {
				a.dayN[kind]++
			}
		}
		a.dayIdx, a.dayX, a.dayVolumeAlerted = d, 0, false
	}
	return p, x, mu
}

// dayDispersion is the day-to-day φ of the agent's day counts, at least
// 0.05: days differ by ±22 % however regular the agent.
func (b *Baseline) dayDispersion() float64 {
	phi := math.Max(0, float64(b.dayNum)) / math.Max(float64(b.dayDen), 1e-9)
	n := float64(b.dayN[0]) + float64(b.dayN[1])
	prior := dayPrior * math.Min(1, b.dispersion())
	phi = (n*phi + dayPriorDays*prior) / (n + dayPriorDays)
	return math.Max(0.05, phi)
}

// A young day record's spread is pulled toward dayPrior (days differ by
// ±70 %) with the weight of dayPriorDays days, in proportion to how bursty
// the agent's windows are (φ up to 1): a week of quiet days says little
// about how busy a bursty agent's busy day can be, while a steady agent's
// days are as steady as its windows.
const (
	dayPrior     = 0.5
	dayPriorDays = 3
)

// hourShares are the shares also summed hour by hour.
var hourShares = [...]features.Feature{features.DenyRate, features.RestrictedShare, features.WeakAuthShare, features.NewOriginShare}

// recentHours is the time constant, in hours, of the decaying sums of
// first-seen items (see Sustain).
const recentHours = 6

// hourNovelty are the first-seen counts also summed hour by hour.
var hourNovelty = [...]features.Feature{features.NewTargets, features.NewActions, features.NewToPeers, features.DeniedUnfamiliar}

// hourNoveltyRare is the index in rareFeatures of each of hourNovelty.
var hourNoveltyRare = func() (r [len(hourNovelty)]int) {
	for i, f := range hourNovelty {
		for j, g := range rareFeatures {
			if f == g {
				r[i] = j
			}
		}
	}
	return r
}()

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// ClearSustained restarts the agent's sustained-deviation sums, as after a
// CUSUM signals: the alert has been raised, and what follows must accumulate
// anew, so one odd window after an incident does not re-alert.
func (b *Baseline) ClearSustained() {
	clear(b.cusum[:])
	b.cusumJoint = 0
	b.cusumCount = 0
	b.hourX = 0
	clear(b.hourNew[:])
	clear(b.hourNewExp[:])
	clear(b.recentNew[:])
	clear(b.recentExp[:])
	b.clearHourShares()
}

func (b *Baseline) clearHourShares() {
	clear(b.hourShareK[:])
	clear(b.hourShareN[:])
	clear(b.hourShareExp[:])
}

// Top returns the feature that explains res best: the sustained one if any,
// else the one with the largest z.
func (res *Result) Top() features.Feature {
	if res.Sustained >= 0 {
		return res.Sustained
	}
	top := features.Feature(0)
	for f, z := range res.Z {
		if z > res.Z[top] {
			top = features.Feature(f)
		}
	}
	return top
}

// Reasons appends the features behind res, most important first, up to max:
// the sustained deviation if it made the score, then the window's features
// with z ≥ 1. Contribution is each one's share of Σz².
func (res *Result) Reasons(dst []Reason, max int) []Reason {
	var d2 float64
	for _, z := range res.Z {
		d2 += z * z
	}
	start := len(dst)
	if res.Sustained >= 0 {
		sr := res.SustainedReason
		d2 += sr.Z * sr.Z
		sr.Contribution = round(sr.Z * sr.Z / d2)
		dst = append(dst, sr)
	}
	from := len(dst)
	for f, z := range res.Z {
		if z < 1 || !res.Scored[f] {
			continue
		}
		dst = append(dst, Reason{
			Feature: features.Feature(f).String(), Value: round(res.Value[f]), Expected: round(res.Expected[f]),
			Z: round(z), Contribution: round(z * z / d2),
		})
	}
	out := dst[from:]
	sort.SliceStable(out, func(i, j int) bool { return out[i].Contribution > out[j].Contribution })
	if len(dst)-start > max {
		dst = dst[:start+max]
	}
	return dst
}

// round keeps 4 significant digits: reasons are for people.
func round(x float64) float64 {
	if x == 0 || math.IsInf(x, 0) || math.IsNaN(x) {
		return 0
	}
	mag := math.Pow(10, 3-math.Floor(math.Log10(math.Abs(x))))
	return math.Round(x*mag) / mag
}

// fleetZ caps the z of what a fleet-wide change explains (see
// MarkFleetChange and the detector's corroboration).
const fleetZ = 1.5

// MarkFleetChange records in the peer group's baseline p that a quarter or
// more of the group showed the same first-seen behaviour in window idx (a
// deployment moving every agent to a new service): for the next two fast
// half-lives, while the agents' own baselines learn it, an agent's action
// mix moving away from its usual one is not scored above fleetZ.
func (m *Model) MarkFleetChange(p *Baseline, idx int64) {
	p.fleetUntil = max(p.fleetUntil, idx+int64(2*m.cfg.FastHalfLife/m.cfg.WindowSize))
}

// acceptHours is how quickly an accepted change is learned: its anchors
// follow it within about this many hours (see learn).
const acceptHours = 6

func (m *Model) acceptWindows() float64 { return acceptHours * m.windowsPerHour }

// Accept records the score of the agent's window idx and returns how far a
// persistent change is accepted (0–1): the weight the window is learned at
// whatever its score, and how much faster than usual (see learn). It counts
// the hours in which the agent alerted, decaying over a day: an incident
// alerts in one hour or a few; a change that is still alerting in its fifth
// hour, and keeps alerting hour after hour, has been reported, and alerting
// on it for days more, until the slow anchors follow, would bury everything
// else. Acceptance starts after four such hours and is full after eight. A
// slow attacker gains nothing: acceptance follows hours of alerts.
func (m *Model) Accept(a *Baseline, idx int64, score float64) float64 {
	if a.alertHours == 0 && score < m.cfg.LearnAbove {
		a.runIdx = idx // nothing to decay, nothing to count
		return 0
	}
	wph := math.Max(1, math.Round(m.windowsPerHour))
	hours := float64(a.alertHours)
	if a.runIdx != 0 && idx > a.runIdx {
		hours *= math.Exp(-float64(idx-a.runIdx) / (24 * wph))
	}
	a.runIdx = idx
	if h := floorDiv(idx, int64(wph)); score >= m.cfg.LearnAbove && h != a.alertHour {
		hours++
		a.alertHour = h
	}
	if hours < 0.01 {
		hours = 0 // long quiet: back to the fast path
	}
	a.alertHours = float32(hours)
	a.accept = float32(math.Min(1, math.Max(0, (hours-4)/4)))
	return float64(a.accept)
}

// LearnWeight is the weight a window with the given score is learned at.
func (m *Model) LearnWeight(score float64) float64 {
	c := m.cfg
	switch {
	case score <= c.LearnBelow:
		return 1
	case score >= c.LearnAbove:
		return c.MinLearnWeight
	}
	t := (score - c.LearnBelow) / (c.LearnAbove - c.LearnBelow)
	return 1 - t*(1-c.MinLearnWeight)
}

// CatchUp learns the agent's empty windows before window idx (at most a
// week of them) as zero events, for the agent and for its peer group (a
// group's seasonal profile is the mean count per agent, silence included).
// Call it before scoring window idx, so that the silence that preceded it
// counts: an agent silent all Saturday afternoon is judged on Sunday
// afternoon by a slot that knows it. Learn calls it too; it does nothing
// when the agent is caught up.
func (m *Model) CatchUp(idx int64, a, p *Baseline) {
	if a.Windows == 0 || idx <= a.LastIndex+1 {
		return
	}
	from := max(a.LastIndex+1, idx-int64(168*m.windowsPerHour))
	size := int64(m.cfg.WindowSize)
	for i := from; i < idx; i++ {
		s := slotOf(features.HourOfWeek(i * size))
		a.learnCount(s, 0, m.alphaSlot, m.alphaFast, m.alphaSlow, 1)
		if p != nil {
			p.learnCount(s, 0, m.alphaPeerS, m.alphaFast, m.alphaSlow, 1)
		}
	}
	a.LastIndex = idx - 1
}

// Learn updates the agent's baseline a with window v (scored as res, which
// may be nil) at the given weight
// (0–1, from LearnWeight), and the peer group's p (may be nil). Windows must be
// learned in increasing order per baseline; windows between the last learned
// one and v count as empty for the seasonal model.
func (m *Model) Learn(v *features.Vector, res *Result, a, p *Baseline, weight float64) {
	if weight <= 0 {
		return
	}
	// Tails learn even from alerting windows (at a quarter of the weight, at
	// the slow rate): after a rare-but-normal deviation has paged once, the
	// agent and its peers are known to do it.
	if res != nil && !res.Cold {
		tw := math.Max(weight, 0.25) * m.alphaSlow
		for i := range numGauss {
			if !res.Scored[gaussFeatures[i]] {
				continue
			}
			bk := tailBucket(res.gz[i])
			a.learnTail(i, bk, tw)
			if p != nil {
				p.learnTail(i, bk, tw)
			}
		}
	}
	if res != nil && !res.Cold && floorDiv(v.Start, int64(24*time.Hour)) == a.dayIdx {
		a.dayX += float32(v.Value[features.EventCount])
		if res.Score >= m.cfg.LearnAbove && res.Top() == features.EventCount {
			a.dayVolumeAlerted = true
		}
	}
	m.CatchUp(v.Index, a, p)
	var js float64
	if res != nil && !res.Cold && res.mixPeer == (p != nil && p.Windows > 0) {
		js = res.mixJS // as scored: the mix is learned below
	} else {
		js = m.mixDistance(v, a, p, p != nil && p.Windows > 0)
	}
	var ys gaussValues
	for i := range numGauss {
		ys.y[i], ys.ok[i] = gaussValue(v, i, js)
	}
	m.learn(v, a, weight, &ys, m.alphaSlot)
	if p != nil {
		m.learn(v, p, weight, &ys, m.alphaPeerS)
	}
}

// gaussValues are a window's transformed Gaussian feature values (see
// gaussValue), computed once for the agent and its peer group.
type gaussValues struct {
	y  [numGauss]float64
	ok [numGauss]bool
}

func (m *Model) learn(v *features.Vector, b *Baseline, weight float64, ys *gaussValues, slotAlpha float64) {
	if v.Index > b.LastIndex || b.Windows == 0 {
		b.LastIndex = v.Index
	}
	if b.Windows == 0 {
		b.firstIdx = v.Index
	}
	n := b.Windows
	fast, slow := m.alphaFast, m.alphaSlow
	if b.accept > 0 {
		// An accepted change (see Accept) is learned within hours, its
		// anchors included.
		r := float64(b.accept) / m.acceptWindows()
		fast, slow, slotAlpha = math.Max(fast, r), math.Max(slow, r), math.Max(slotAlpha, r)
	}
	a := ewma(n, fast) * weight

	b.learnCount(slotOf(v.HourOfWeek), v.Value[features.EventCount], slotAlpha, fast, slow, weight)
	for i := range numGauss {
		if ys.ok[i] {
			b.gauss[i].update(ys.y[i], gaussN(v, i), fast, slow, weight)
		}
	}
	for i := range numRare {
		r := &b.rare[i]
		k := v.Value[rareFeatures[i]]
		hit := 0.0
		if k > 0 {
			hit = 1
			if r.size == 0 || n == 0 {
				r.size = float32(k)
			} else {
				r.size += float32(a * (k - float64(r.size)))
			}
		}
		aq, as := a, ewma(n, slow)*weight
		if rareFeatures[i] == features.DeniedUnfamiliar {
			// Probing is learned at the slow rate: one probe must not make
			// the next one ten times less surprising for days.
			aq = as
		}
		r.q += float32(aq * (hit - float64(r.q)))
		if r.slowQ == 0 && n > 0 {
			r.slowQ = r.q // an older snapshot's: start the anchor where q is
		}
		r.slowQ += float32(as * (hit - float64(r.slowQ)))
	}
	decay, slowDecay := 1-a, 1-ewma(n, slow)*weight
	for i := range numShare {
		f := shareFeatures[i]
		sh := &b.share[i]
		sh.k = float32(decay*float64(sh.k) + weight*v.Value[f])
		sh.n = float32(decay*float64(sh.n) + weight*v.Trials[f])
		sh.slowK = float32(slowDecay*float64(sh.slowK) + weight*v.Value[f])
		sh.slowN = float32(slowDecay*float64(sh.slowN) + weight*v.Trials[f])
	}
	var tot float64
	for _, c := range v.Actions {
		tot += float64(c)
	}
	if tot > 0 {
		am := ewma(uint32(b.mixN), fast) * weight
		for i, c := range v.Actions {
			b.mix[i] += float32(am * (float64(c)/tot - float64(b.mix[i])))
		}
		if b.mixN < 1e6 {
			b.mixN++
		}
	}
	if b.Windows < math.MaxUint32 {
		b.Windows++
	}
}
