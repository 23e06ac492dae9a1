package models

import (
	"math"

	"github.com/vigil-sec/vigil/features"
)

// Which features use which sub-model.
var (
	gaussFeatures = [...]features.Feature{features.ActionMix, features.BytesOut, features.BytesIn, features.Latency, features.Amount}
	rareFeatures  = [...]features.Feature{features.NewTargets, features.NewActions, features.NewCredentials, features.NewSources, features.NewToPeers, features.DeniedUnfamiliar}
	shareFeatures = [...]features.Feature{features.DistinctTargets, features.DenyRate, features.ErrorRate, features.RestrictedShare, features.WeakAuthShare, features.NewOriginShare}
)

const (
	numGauss = len(gaussFeatures)
	numRare  = len(rareFeatures)
	numShare = len(shareFeatures)
	// Slots of the seasonal count model: 24 UTC hours × {weekday, weekend}.
	numSlots = 48
)

// gauss is a robust, exponentially decaying mean and variance on two time
// scales. The fast one follows legitimate change; the slow one is the anchor
// that a slow poisoning ramp cannot drag along quickly.
type gauss struct {
	mean, vr         float32 // fast
	slowMean, slowVr float32 // slow
	n                uint32  // windows that carried the feature (saturating)
}

// rare models a count of first-seen items per window as a compound process:
// a window has any novelty with probability q, and given novelty the number of
// new items is geometric with mean size.
type rare struct {
	q, size float32
	slowQ   float32 // q at the slow rate: the anchor
}

// share is a decaying binomial rate: k successes in n trials, both decayed,
// at the fast rate and (the anchor) at the slow one.
type share struct {
	k, n         float32
	slowK, slowN float32
}

// slot is the seasonal event-count model for one hour-of-week slot: the
// decaying mean count per window (empty windows count as 0). The spread around
// it is the agent's negative-binomial dispersion (Baseline.disp), shared by all
// slots so that a bursty agent need not have burst in every hour of the week
// to be known as bursty.
type slot struct {
	mean float32
}

// Baseline is the learned state of one agent, or of one peer group (every
// agent of an agent_class). Its size is fixed, about 1.3 KB, whatever the
// traffic: it holds no per-target or per-event data.
//
// A Baseline is not safe for concurrent use; the detector gives each one a
// single owner.
type Baseline struct {
	Windows   uint32   // windows learned from (saturating)
	hourN     uint16   // complete hours learned (see hourNum)
	dayN      [2]uint8 // days learned by kind (see dayMean)
	LastIndex int64    // last window number learned; gaps are empty windows
	firstIdx  int64    // first window number learned
	gauss     [numGauss]gauss
	rare      [numRare]rare
	share     [numShare]share
	slots     [numSlots]slot
	slotN     [numSlots]uint8 // updates per slot, saturating at 255
	// Negative-binomial dispersion φ (variance = μ + φμ²; 0 for Poisson
	// traffic) as a ratio of decayed sums: Σ((x−μ)² − μ) / Σμ².
	dispNum, dispDen float32
	// The same sums over quiet slots only (under one event per window
	// expected), where a regular agent is close to Poisson whatever its busy
	// hours do.
	quietNum, quietDen float32
	// Decayed shares of windows by how far their count was above the
	// seasonal expectation, for busy and quiet slots (see quiet): bucket i
	// holds (x+1)/(μ+1) in [2^i, 2^(i+1)).
	ratio      [3][8]float32
	tail       [numGauss][2]float32 // decayed shares of windows with z ≥ 4 and z ≥ 6
	mix        [features.ActionBuckets]float32
	mixN       float32
	cusum      [len(sustainedFeatures)]float32 // sustained-deviation sums (agents only)
	cusumJoint float32                         // sum on their joint deviation
	cusumIdx   int64                           // window of the last Sustain
	// The current hour's event count so far and its expectation, and the
	// dispersion of complete hours (decayed sums, as for windows).
	hourIdx      int64
	hourX, hourM float32
	// First-seen items this hour and their expectation.
	hourNew, hourNewExp [len(hourNovelty)]float32
	// The same over the last hours, decaying (see recentHours).
	recentNew, recentExp [len(hourNovelty)]float32
	hourNum, hourDen     float32
	// Calls, calls of each kind in hourShares and their expectation, this hour.
	hourShareK, hourShareN, hourShareExp [len(hourShares)]float32
	// The largest window the agent has had (decaying at the slow rate), and
	// how many windows that record covers (saturating at the slow memory).
	maxCount, maxN float32
	cusumCount     float32
	// The current UTC day's event count, the slow mean of complete days'
	// counts by kind (weekday, weekend day), their dispersion sums and how
	// many days of each kind were learned (see Model.dayRollover).
	dayIdx         int64
	dayX           float32
	dayMean        [2]float32
	dayNum, dayDen float32
	dayCusum       float32 // CUSUM of days' z above the mean of their kind
	// The decayed number of recent hours in which the agent alerted, the
	// window it was last updated at, the last hour counted, and the
	// acceptance it implies (see Model.Accept).
	alertHours float32
	accept     float32
	runIdx     int64
	alertHour  int64
	// Peer groups only: the last window of the fleet-wide change recorded
	// by Model.MarkFleetChange; the agents that began to see new targets and
	// new actions within about the last hour, decaying, and the window they
	// were decayed to (see Onset).
	fleetUntil int64
	onsets     [2]float32
	onsetIdx   int64
	// Agents only: the last window with a new target or action.
	novelIdx int64
	// The current hour's expectation when it began, for a slot with less
	// than an hour of history (0 otherwise).
	hourFirst float32
	// Bytes out this hour so far and the calls that carried them, and the
	// log mean bytes out per call of complete hours (see Model.hourBytesZ).
	hourBytes, hourBytesN float32
	hourBytesOut          gauss
	// Agents only: how far above zero the z of each feature in hodFeatures
	// usually is in each UTC hour of the day, in units of 1/hodUnit (see
	// Model.learnHourOfDay), and the current hour's sums of z over the
	// windows that carried the feature.
	hodBias [24][len(hodFeatures)]uint8
	hodZ    [len(hodFeatures)]float32
	hodN    [len(hodFeatures)]uint8
	hodHour uint8
	// Whether a window of the current day already alerted for volume.
	dayVolumeAlerted bool
	// Their mean z over about half a day, smoothed twice (see
	// Model.learnHourOfDay).
	hodDay [len(hodFeatures)][2]float32
}

func slotOf(hourOfWeek int) int {
	day, hour := hourOfWeek/24, hourOfWeek%24
	if day >= 5 {
		return 24 + hour
	}
	return hour
}

// ewma returns the update weight: a running mean for the first updates, then
// a constant rate alpha.
func ewma(n uint32, alpha float64) float64 {
	return math.Max(alpha, 1/float64(n+1))
}

// sampling is the variance factor of a window mean over n events: 1/n for the
// events' own noise plus betweenWindows for what a whole window shares (events
// in one window are not independent). Variances are learned per unit of it, so
// a window of two events is judged more leniently than one of two hundred.
func sampling(n float64) float64 {
	const betweenWindows = 0.1
	return 1/math.Max(n, 1) + betweenWindows
}

// update moves g toward the window mean y of n events with weight (0–1). The
// residual is winsorised at 3σ once the baseline has some history, so one
// huge value cannot drag it.
func (g *gauss) update(y, n, alphaFast, alphaSlow, weight float64) {
	cnt := g.n
	a, b := ewma(cnt, alphaFast)*weight, ewma(cnt, alphaSlow)*weight
	if g.n < math.MaxUint32 {
		g.n++
	}
	h := sampling(n)
	g.mean, g.vr = step(float64(g.mean), float64(g.vr), y, h, a, cnt)
	if cnt == 0 {
		g.slowMean = float32(y)
	}
	g.slowMean, g.slowVr = step(float64(g.slowMean), float64(g.slowVr), y, h, b, cnt)
}

func step(m, v, y, h, a float64, cnt uint32) (float32, float32) {
	if cnt >= 4 {
		lim := 3 * math.Sqrt(v*h+1e-6)
		y = math.Max(m-lim, math.Min(m+lim, y))
	}
	d := y - m
	m += a * d
	v = (1 - a) * (v + a*d*d/h)
	return float32(m), float32(v)
}

// update moves the slot mean toward count x. Counts are not winsorised:
// bursts are what the dispersion must learn.
func (s *slot) update(x, a float64) {
	s.mean = float32(float64(s.mean) + a*(x-float64(s.mean)))
}

// learnCount updates slot s with count x at weight w and, once the slot's
// mean is established, the dispersion sums (decayed at rate a).
func (b *Baseline) learnCount(s int, x, slotAlpha, a, aSlow, w float64) {
	m := float64(b.slots[s].mean)
	if b.slotN[s] >= 3 {
		decay := 1 - a
		b.dispNum = float32(decay*float64(b.dispNum) + w*((x-m)*(x-m)-m))
		b.dispDen = float32(decay*float64(b.dispDen) + w*m*m)
		if quiet(m) > 0 {
			b.quietNum = float32(decay*float64(b.quietNum) + w*((x-m)*(x-m)-m))
			b.quietDen = float32(decay*float64(b.quietDen) + w*m*m)
		}
		h := &b.ratio[quiet(m)]
		for i := range h {
			h[i] *= float32(1 - a*w)
		}
		h[ratioBucket(x, m)] += float32(a * w)
		// The record rises by at most 5 % a window: a runaway must not
		// raise at once the bar it is judged by, while a lasting change of
		// level (or a young agent's first bursts) lifts it within hours.
		mc := float64(b.maxCount) * (1 - aSlow)
		b.maxCount = float32(math.Max(mc, math.Min(x, 1.05*mc+1)))
		b.maxN = float32(math.Min(float64(b.maxN)+w, 1/aSlow))
	}
	ws := w
	if quiet(m) == 2 && x >= 2 {
		// A burst into a silent slot teaches it slowly: activity in an hour the
		// agent has been silent must not become that hour's expectation at once
		// (an incident on the first Saturday). Bursty agents' bursts are still
		// learned in full by the ratio histograms.
		ws *= 0.1
	}
	b.slots[s].update(x, math.Max(slotAlpha, 1/float64(int(b.slotN[s])+1))*ws)
	if b.slotN[s] < 255 {
		b.slotN[s]++
	}
}

// tailBucket is the exceedance bucket of a Gaussian z: -1 below 4, 0 for
// [4, 6), 1 from 6.
func tailBucket(z float64) int {
	switch {
	case z >= 6:
		return 1
	case z >= 4:
		return 0
	}
	return -1
}

// learnTail decays feature i's exceedance shares by w and adds w to every
// bucket up to bk (a z of 7 is also a z of at least 4).
func (b *Baseline) learnTail(i, bk int, w float64) {
	for j := range b.tail[i] {
		t := float64(b.tail[i][j]) * (1 - w)
		if j <= bk {
			t += w
		}
		b.tail[i][j] = float32(t)
	}
}

// record bounds the probability of a window of x events by the agent's
// record: among n windows, the next one beats the largest with probability
// 1/(n+1) whatever the distribution, and beats it by a factor c with about
// 1/(c·n) for a tail as heavy as a Pareto of index 1. It applies from twice
// the record on, once the record covers minN windows; it is 1 otherwise.
func (b *Baseline) record(x, minN float64) float64 {
	m, n := float64(b.maxCount), float64(b.maxN)
	if n < minN || x < 2*(m+1) {
		return 1
	}
	return (m + 1) / (x * n)
}

// ratioBucket is ⌊log2((x+1)/(μ+1))⌋ clamped to the histogram.
func ratioBucket(x, mu float64) int {
	r := (x + 1) / (mu + 1)
	if r < 2 {
		return 0
	}
	return min(len(Baseline{}.ratio[0])-1, int(math.Log2(r)))
}

// ratioTail is the share of the agent's windows whose count was at least as
// far above its seasonal expectation as x is above mu (by whole powers of
// two): how often this agent has done this before, whatever a parametric
// tail says. Bursty agents have a fat one; regular agents have none. mass is
// the histogram's total weight: it grows by the learning rate with every
// window, toward 1 (a young agent's shares are normalised by it).
func (b *Baseline) ratioTail(x, mu float64) (tail, mass float64) {
	h := &b.ratio[quiet(mu)]
	from := ratioBucket(x, mu)
	for i, v := range h {
		mass += float64(v)
		if i >= from {
			tail += float64(v)
		}
	}
	if mass > 0 {
		tail /= mass
	}
	return tail, mass
}

// quiet separates the ratio histograms of silent slots (under 0.1 events per
// window expected), quiet ones (under 1) and busy ones: a devops bot bursts
// out of quiet hours, a batch job swings within and at the edges of its busy
// ones, and that must not excuse activity in its silent hours.
func quiet(mu float64) int {
	switch {
	case mu < 0.1:
		return 2 // silent: a business bot at night
	case mu < 1:
		return 1 // quiet: the edges of busy hours, a bursty bot between bursts
	}
	return 0
}

// dispersion is φ with a prior worth priorWindows windows of μ² = 1 and
// excess variance dispPrior each, so young baselines stay wide.
func (b *Baseline) dispersion() float64 {
	return math.Max(0, float64(b.dispNum)+priorWindows*dispPrior) / (float64(b.dispDen) + priorWindows)
}

// quietDispersion is φ in quiet slots, with a prior worth one window of
// μ² = 1 and φ = 1: quiet windows carry little information about φ, so the
// prior fades only as evidence of the agent's quiet-hour behaviour piles up.
func (b *Baseline) quietDispersion() float64 {
	return math.Max(0, float64(b.quietNum)+0.1) / (float64(b.quietDen) + 0.1)
}

// slotMean is the expected count per window in slot s. A slot with few
// observations borrows from the same hour on the other kind of day, and that
// from the agent's overall mean: the first Saturday of a 24/7 agent is not a
// surprise, while hours observed silent stay silent. How much a slot borrows
// grows with the square of the agent's dispersion, as the variance of a slot
// mean does: a bursty agent's slot means are noise (its bursts fall in
// whichever hour they fall), a regular agent's are not.
func (b *Baseline) slotMean(s int) float64 {
	phi := b.dispersion()
	k0 := 1 + phi*phi // weight, in observations, of the fallback
	var sum, cnt float64
	for i := range numSlots {
		sum += float64(b.slotN[i]) * float64(b.slots[i].mean)
		cnt += float64(b.slotN[i])
	}
	all := 0.0
	if cnt > 0 {
		all = sum / cnt
	}
	o := (s + 24) % numSlots
	no, ns := float64(b.slotN[o]), float64(b.slotN[s])
	fb := (no*float64(b.slots[o].mean) + k0*all) / (no + k0)
	return (ns*float64(b.slots[s].mean) + k0*fb) / (ns + k0)
}

// Span is how many windows the baseline's history covers, from the first
// window it learned to the last (silent windows included).
func (b *Baseline) Span() int64 {
	if b.Windows == 0 {
		return 0
	}
	return b.LastIndex - b.firstIdx
}

// Onset records agent a's window idx, which saw new targets and/or new
// actions, in its peer group's baseline p: an agent that had seen nothing
// new for more than hour windows begins to, and counts for the group, with
// a decay of about an hour. It returns the group's decayed counts for new
// targets and new actions. Call it with neither to only read them at idx.
func (p *Baseline) Onset(a *Baseline, idx, hour int64, targets, actions bool) [2]float64 {
	if p.onsetIdx != idx {
		d := float32(math.Exp(-float64(idx-p.onsetIdx) / float64(hour)))
		p.onsets[0], p.onsets[1], p.onsetIdx = p.onsets[0]*d, p.onsets[1]*d, idx
	}
	if targets || actions {
		if idx-a.novelIdx > hour {
			if targets {
				p.onsets[0]++
			}
			if actions {
				p.onsets[1]++
			}
		}
		a.novelIdx = idx
	}
	return [2]float64{float64(p.onsets[0]), float64(p.onsets[1])}
}
