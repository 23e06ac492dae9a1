package models

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/vigil-sec/vigil/features"
)

const win = int64(5 * time.Minute)

// monday is 2026-03-02T00:00:00Z, a Monday, as a window index.
var monday = time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC).UnixNano() / win

func newModel(t testing.TB) *Model {
	t.Helper()
	m, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// vec builds a plain window: n events, all allow/ok/mtls, bytes_out per event
// given, one action bucket.
func vec(idx int64, n, bytesOut float64) features.Vector {
	v := features.Vector{Index: idx, Start: idx * win, End: (idx + 1) * win}
	v.HourOfWeek = features.HourOfWeek(v.Start)
	v.Value[features.EventCount] = n
	v.Value[features.DistinctTargets] = math.Min(n, 3)
	for _, f := range shareFeatures {
		v.Trials[f] = n
	}
	v.Value[features.BytesOut], v.Trials[features.BytesOut] = bytesOut, n
	v.Actions[0] = uint16(n)
	return v
}

func score(m *Model, v *features.Vector, a, p *Baseline) Result {
	var r Result
	m.Evaluate(v, a, p, &r)
	m.Finish(&r)
	return r
}

// A model fed log(bytes_out) ~ N(μ, σ) must score a 6σ point high and a 1σ
// point low.
func TestGaussianKnownDistribution(t *testing.T) {
	for _, tc := range []struct {
		name      string
		mu, sigma float64
	}{
		{"small", 6, 0.5},
		{"large", 12, 1},
		{"tight", 9, 0.3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newModel(t)
			rng := rand.New(rand.NewPCG(1, 2))
			var a Baseline
			idx := monday
			for range 3000 {
				y := tc.mu + tc.sigma*rng.NormFloat64()
				v := vec(idx, 20, math.Expm1(y))
				m.Learn(&v, nil, &a, nil, 1)
				idx++
			}
			at := func(k float64) Result {
				v := vec(idx, 20, math.Expm1(tc.mu+k*tc.sigma))
				return score(m, &v, &a, nil)
			}
			hi, lo := at(6), at(1)
			sd := math.Sqrt(tc.sigma*tc.sigma + gaussFloor[1]*gaussFloor[1])
			wantZ := 6 * tc.sigma / sd
			if z := hi.Z[features.BytesOut]; math.Abs(z-wantZ) > 0.25*wantZ {
				t.Errorf("6σ point: z = %.2f, want ≈ %.2f", z, wantZ)
			}
			if hi.Score < 50 {
				t.Errorf("6σ point scored %.1f, want ≥ 50", hi.Score)
			}
			if lo.Score > 10 {
				t.Errorf("1σ point scored %.1f, want ≤ 10", lo.Score)
			}
			if lo.Z[features.BytesOut] > 1.3 {
				t.Errorf("1σ point z = %.2f, want ≤ 1.3", lo.Z[features.BytesOut])
			}
		})
	}
}

// A business-hours agent (active 09–17 on weekdays, silent otherwise) learns
// that: a busy 10:00 window is normal, the same traffic at 03:00 is not.
func TestSeasonalPatternLearned(t *testing.T) {
	m := newModel(t)
	rng := rand.New(rand.NewPCG(3, 4))
	var a Baseline
	perDay := int64(24 * time.Hour / time.Duration(win))
	weeks := int64(3)
	for idx := monday; idx < monday+7*perDay*weeks; idx++ {
		how := features.HourOfWeek(idx * win)
		day, hour := how/24, how%24
		if day >= 5 || hour < 9 || hour >= 17 {
			continue // silent: no window at all
		}
		n := 30 + 5*rng.NormFloat64()
		v := vec(idx, math.Round(n), 2000)
		m.Learn(&v, nil, &a, nil, 1)
	}
	next := monday + 7*perDay*weeks // Monday again
	busy := vec(next+10*12, 30, 2000)
	night := vec(next+3*12, 30, 2000)
	weekend := vec(next+5*perDay+11*12, 30, 2000)
	rb, rn, rw := score(m, &busy, &a, nil), score(m, &night, &a, nil), score(m, &weekend, &a, nil)
	if rb.Score > 20 {
		t.Errorf("busy weekday 10:00 window scored %.1f, want low", rb.Score)
	}
	if rn.Score < 80 {
		t.Errorf("same traffic at 03:00 scored %.1f, want ≥ 80 (expected %.2f events)", rn.Score, rn.Expected[features.EventCount])
	}
	if rw.Score < 80 {
		t.Errorf("same traffic on Saturday 11:00 scored %.1f, want ≥ 80", rw.Score)
	}
	if e := rb.Expected[features.EventCount]; math.Abs(e-30) > 5 {
		t.Errorf("expected count at 10:00 = %.1f, want ≈ 30", e)
	}
}

// A nightly batch job is normal at night.
func TestNightlyBatchNormal(t *testing.T) {
	m := newModel(t)
	var a Baseline
	perDay := int64(24 * time.Hour / time.Duration(win))
	for idx := monday; idx < monday+14*perDay; idx++ {
		if h := features.HourOfWeek(idx*win) % 24; h >= 1 && h < 4 {
			v := vec(idx, 200, 5e6)
			m.Learn(&v, nil, &a, nil, 1)
		}
	}
	night := vec(monday+14*perDay+2*12, 210, 5e6)
	noon := vec(monday+14*perDay+12*12, 210, 5e6)
	if r := score(m, &night, &a, nil); r.Score > 20 {
		t.Errorf("batch at 02:00 scored %.1f, want low", r.Score)
	}
	if r := score(m, &noon, &a, nil); r.Score < 80 {
		t.Errorf("batch at 12:00 scored %.1f, want high", r.Score)
	}
}

// A new agent is scored against its warm peer group from its first window;
// an agent new in a cold group is not scored.
func TestPeerGroupAndColdStart(t *testing.T) {
	m := newModel(t)
	var peer Baseline
	var a Baseline
	rng := rand.New(rand.NewPCG(5, 6))
	for i := range int64(400) {
		v := vec(monday+i, 20, math.Expm1(8+0.3*rng.NormFloat64()))
		var scratch Baseline
		m.Learn(&v, nil, &scratch, &peer, 1)
	}
	normal := vec(monday+400, 20, math.Expm1(8))
	r := score(m, &normal, &a, &peer)
	if r.Cold || r.Source != SourcePeerGroup {
		t.Fatalf("new agent: cold=%v source=%q, want scored against peer_group", r.Cold, r.Source)
	}
	if r.Score > 20 {
		t.Errorf("new agent behaving like its peers scored %.1f", r.Score)
	}
	odd := vec(monday+400, 20, math.Expm1(12))
	if r := score(m, &odd, &a, &peer); r.Score < 60 {
		t.Errorf("new agent moving 50× its peers' bytes scored %.1f, want ≥ 60", r.Score)
	}
	var coldPeer Baseline
	if r := score(m, &odd, &a, &coldPeer); !r.Cold || r.Score != 0 {
		t.Errorf("young agent in a cold group: cold=%v score=%.1f, want not scored", r.Cold, r.Score)
	}
}

// A slow ramp learned at the rate an attacker would like still shows against
// the slow anchor, and anomalous windows are learned at a small weight.
func TestSlowRampAndLearnWeight(t *testing.T) {
	m := newModel(t)
	rng := rand.New(rand.NewPCG(7, 8))
	var a Baseline
	idx := monday
	for range 4000 {
		v := vec(idx, 20, math.Expm1(8+0.3*rng.NormFloat64()))
		m.Learn(&v, nil, &a, nil, 1)
		idx++
	}
	// Ramp log(bytes) up by 3 (20×) over 3 days, each window learned with the
	// weight the policy gives its score.
	steps := 3 * 288
	var last Result
	for i := range steps {
		y := 8 + 3*float64(i)/float64(steps) + 0.3*rng.NormFloat64()
		v := vec(idx, 20, math.Expm1(y))
		last = score(m, &v, &a, nil)
		m.Learn(&v, &last, &a, nil, m.LearnWeight(last.Score))
		idx++
	}
	end := vec(idx, 20, math.Expm1(11))
	if r := score(m, &end, &a, nil); r.Z[features.BytesOut] < 4 {
		t.Errorf("after a 3-day ramp to 20×, z = %.2f; the slow anchor should keep it ≥ 4", r.Z[features.BytesOut])
	}
	if w := m.LearnWeight(90); w > 0.1 {
		t.Errorf("LearnWeight(90) = %v, want small", w)
	}
	if w := m.LearnWeight(10); w != 1 {
		t.Errorf("LearnWeight(10) = %v, want 1", w)
	}
}

// First-seen items: a warm agent that rarely sees new targets scores ten new
// targets high and one low.
func TestRareNovelty(t *testing.T) {
	m := newModel(t)
	var a Baseline
	for i := range int64(2000) {
		v := vec(monday+i, 20, 1000)
		if i%200 == 0 {
			v.Value[features.NewTargets] = 1
		}
		m.Learn(&v, nil, &a, nil, 1)
	}
	one := vec(monday+2000, 20, 1000)
	one.Value[features.NewTargets] = 1
	ten := one
	ten.Value[features.NewTargets] = 10
	ten.Value[features.NewToPeers] = 10
	if r := score(m, &one, &a, nil); r.Score >= 40 {
		t.Errorf("one new target scored %.1f, want < 40", r.Score)
	}
	if r := score(m, &ten, &a, nil); r.Score < 60 {
		t.Errorf("ten new targets (new to peers too) scored %.1f, want ≥ 60", r.Score)
	}
}

func TestBinomTail(t *testing.T) {
	for _, tc := range []struct {
		k, n, p float64
		lo, hi  float64
	}{
		{0, 10, 0.1, 1, 1},
		{1, 10, 0.01, 0.07, 0.11},     // 1-(0.99)^10 ≈ 0.096, less with overdispersion
		{5, 10, 0.01, 1e-9, 1e-6},     // ≈ 2.4e-8, more with overdispersion
		{500, 1000, 0.01, 0, 1e-20},   // hopeless under the null
		{10, 1000, 0.01, 0.3, 0.7},    // at the mean
		{1000, 1000, 0.98, 1e-9, 0.5}, // rate near its cap
	} {
		got := binomTail(tc.k, tc.n, tc.p)
		if got < tc.lo || got > tc.hi {
			t.Errorf("binomTail(%v, %v, %v) = %g, want in [%g, %g]", tc.k, tc.n, tc.p, got, tc.lo, tc.hi)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
	}{
		{"window", func(c *Config) { c.WindowSize = 0 }},
		{"fast", func(c *Config) { c.FastHalfLife = time.Second }},
		{"slow", func(c *Config) { c.SlowHalfLife = time.Hour }},
		{"warm", func(c *Config) { c.WarmWindows = 0 }},
		{"learn", func(c *Config) { c.LearnBelow = 90 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mod(&c)
			if c.Validate() == nil {
				t.Error("invalid config accepted")
			}
		})
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkEvaluateFinish(b *testing.B) {
	m, _ := New(DefaultConfig())
	var a, p Baseline
	for i := range int64(500) {
		v := vec(monday+i, 20, 1000)
		m.Learn(&v, nil, &a, &p, 1)
	}
	v := vec(monday+500, 25, 1200)
	v.Value[features.DenyRate] = 1
	var r Result
	b.ReportAllocs()
	for b.Loop() {
		m.Evaluate(&v, &a, &p, &r)
		m.Finish(&r)
	}
}

func BenchmarkLearn(b *testing.B) {
	m, _ := New(DefaultConfig())
	var a, p Baseline
	v := vec(monday, 20, 1000)
	b.ReportAllocs()
	for b.Loop() {
		v.Index++
		m.Learn(&v, nil, &a, &p, 1)
	}
}

// A denied call to something the agent was never allowed is rarer than a new
// target: with none in 2,000 windows one scores well above one new target;
// an agent that probes every tenth window (a misconfigured retry loop) is
// not surprised by it. The rate is learned slowly: after one probe the next
// one is still about as surprising.
func TestDeniedUnfamiliar(t *testing.T) {
	m := newModel(t)
	learn := func(every int64) *Baseline {
		var a Baseline
		for i := range int64(2000) {
			v := vec(monday+i, 20, 1000)
			if every > 0 && i%every == 0 {
				v.Value[features.DeniedUnfamiliar] = 1
			}
			m.Learn(&v, nil, &a, nil, 1)
		}
		return &a
	}
	probe := vec(monday+2000, 20, 1000)
	probe.Value[features.DeniedUnfamiliar] = 1
	target := vec(monday+2000, 20, 1000)
	target.Value[features.NewTargets] = 1

	quiet := learn(0)
	rp, rt := score(m, &probe, quiet, nil), score(m, &target, quiet, nil)
	if rp.Z[features.DeniedUnfamiliar] < 3.5 || rp.Score <= rt.Score+5 {
		t.Errorf("one probe: z %.2f, score %.1f; one new target: score %.1f", rp.Z[features.DeniedUnfamiliar], rp.Score, rt.Score)
	}
	m.Learn(&probe, &rp, quiet, nil, m.LearnWeight(rp.Score))
	next := probe
	next.Index++
	if r := score(m, &next, quiet, nil); r.Z[features.DeniedUnfamiliar] < 3.2 {
		t.Errorf("the probe after a probe: z %.2f, want ≥ 3.2 (learned at the fast rate it would be about 2.7)", r.Z[features.DeniedUnfamiliar])
	}
	if r := score(m, &probe, learn(10), nil); r.Z[features.DeniedUnfamiliar] > 1.5 {
		t.Errorf("an agent that probes every tenth window: z %.2f, want ≤ 1.5", r.Z[features.DeniedUnfamiliar])
	}
}

// A young agent has not had time to burst: until its own record holds about
// a day of windows, its peers' bursts stand in for its own. A burst of the
// size its bursty peers show is not alarming; the same burst is when its
// peers never burst.
func TestYoungAgentBorrowsPeerBursts(t *testing.T) {
	m := newModel(t)
	peers := func(bursty bool) *Baseline {
		var p Baseline
		for i := range int64(4000) {
			n := 2.0
			if bursty && i%20 < 2 {
				n = 24
			}
			v := vec(monday+i/8, n, 1000) // eight agents' windows
			m.Learn(&v, nil, &p, nil, 1)
		}
		return &p
	}
	young := func(p *Baseline) *Baseline {
		var a Baseline
		for i := range int64(100) {
			v := vec(monday+i, 2, 1000)
			m.Learn(&v, nil, &a, p, 1)
		}
		return &a
	}
	burst := vec(monday+100, 24, 1000)
	bp, rp := peers(true), peers(false)
	rb := score(m, &burst, young(bp), bp)
	rr := score(m, &burst, young(rp), rp)
	// (The peers' dispersion alone brings the first to about 19; their
	// burst record to about 3.)
	if rb.Score >= 10 || rr.Score < 60 {
		t.Errorf("a young agent's burst scored %.1f among bursty peers (want < 10), %.1f among regular ones (want ≥ 60)", rb.Score, rr.Score)
	}
}

// A low-rate agent that has never authenticated weakly, and now does so for
// one call in three for half an hour, shows it in the hour's sum although no
// window alone is alarming; an agent that often uses an API key does not.
func TestHourShares(t *testing.T) {
	m := newModel(t)
	run := func(usual float64) (maxWindow, maxSustained float64) {
		var a Baseline
		rng := rand.New(rand.NewPCG(1, 2))
		idx := monday
		for range 3000 {
			v := vec(idx, 3, 1000)
			if rng.Float64() < 3*usual {
				v.Value[features.WeakAuthShare] = 1
			}
			res := score(m, &v, &a, nil)
			m.Sustain(&a, &v, &res)
			m.Learn(&v, &res, &a, nil, m.LearnWeight(res.Score))
			idx++
		}
		for idx%12 != 0 { // start at the top of an hour
			v := vec(idx, 3, 1000)
			res := score(m, &v, &a, nil)
			m.Sustain(&a, &v, &res)
			m.Learn(&v, &res, &a, nil, 1)
			idx++
		}
		for range 6 {
			v := vec(idx, 3, 1000)
			v.Value[features.WeakAuthShare] = 1
			res := score(m, &v, &a, nil)
			maxWindow = math.Max(maxWindow, res.Score)
			m.Sustain(&a, &v, &res)
			maxSustained = math.Max(maxSustained, res.Score)
			m.Learn(&v, &res, &a, nil, m.LearnWeight(res.Score))
			idx++
		}
		return maxWindow, maxSustained
	}
	if w, s := run(0); w >= 40 || s < 60 {
		t.Errorf("never weak before: windows scored up to %.1f (want < 40), the hour %.1f (want ≥ 60)", w, s)
	}
	if _, s := run(0.1); s >= 40 {
		t.Errorf("weak one call in ten before: the hour scored %.1f, want < 40", s)
	}
}

// The spike tail is the normal tail up to 3σ and continues it smoothly and
// monotonically beyond, heavier: 6.5σ is rare, not impossible.
func TestSpikeTail(t *testing.T) {
	for _, z := range []float64{0, 1, 2, 2.99} {
		if got, want := spikeTail(z), pFromZ(z); got != want {
			t.Errorf("spikeTail(%v) = %g, want the normal tail %g", z, got, want)
		}
	}
	if a, b := spikeTail(3-1e-9), spikeTail(3+1e-9); math.Abs(a-b) > 1e-7*a {
		t.Errorf("not continuous at the knee: %g vs %g", a, b)
	}
	prev := 1.0
	for z := 0.0; z < 20; z += 0.25 {
		p := spikeTail(z)
		if p > prev || p <= 0 {
			t.Fatalf("spikeTail(%v) = %g after %g: want decreasing and positive", z, p, prev)
		}
		prev = p
	}
	if p := spikeTail(6.5); p < 1e-8 || p > 1e-7 || p < 100*pFromZ(6.5) {
		t.Errorf("spikeTail(6.5) = %g, want about 3e-8, far above the normal %g", p, pFromZ(6.5))
	}
}

// The hour's sums together: two denied calls to unfamiliar items and two
// targets new to the group in one hour, each short of an alert, alert
// together.
func TestJointHour(t *testing.T) {
	m := newModel(t)
	var a Baseline
	idx := monday
	for range 3000 {
		v := vec(idx, 3, 1000)
		res := score(m, &v, &a, nil)
		m.Sustain(&a, &v, &res)
		m.Learn(&v, &res, &a, nil, 1)
		idx++
	}
	for idx%12 != 0 {
		v := vec(idx, 3, 1000)
		res := score(m, &v, &a, nil)
		m.Sustain(&a, &v, &res)
		m.Learn(&v, &res, &a, nil, 1)
		idx++
	}
	var last Result
	for range 2 {
		v := vec(idx, 3, 1000)
		v.Value[features.DeniedUnfamiliar] = 1
		v.Value[features.NewTargets] = 1
		v.Value[features.NewToPeers] = 1
		last = score(m, &v, &a, nil)
		m.Sustain(&a, &v, &last)
		m.Learn(&v, &last, &a, nil, m.LearnWeight(last.Score))
		idx++
	}
	if last.Score < 60 || last.SustainedReason.Feature != "joint_this_hour" {
		t.Errorf("second probe window: score %.1f by %q, want ≥ 60 by joint_this_hour", last.Score, last.SustainedReason.Feature)
	}
}

// A bursty agent (two events a window, bursts of twenty) is not alarmed by
// its bursts, but a runaway at four times its largest burst, sustained, is
// alerted within a few windows by the count's CUSUM on the record bound —
// and the runaway raises the record it is judged by only slowly.
func TestRunawayBeyondRecord(t *testing.T) {
	m := newModel(t)
	var a Baseline
	rng := rand.New(rand.NewPCG(3, 4))
	idx := monday
	step := func(n float64) Result {
		v := vec(idx, n, 1000)
		res := score(m, &v, &a, nil)
		m.Sustain(&a, &v, &res)
		if res.Score >= 60 {
			a.ClearSustained()
		}
		m.Learn(&v, &res, &a, nil, m.LearnWeight(res.Score))
		idx++
		return res
	}
	for i := range 3000 {
		n := float64(rng.IntN(4))
		if i%60 < 8 { // a burst of 40 minutes every 5 hours
			n = float64(15 + rng.IntN(10))
		}
		step(n)
	}
	record := float64(a.maxCount)
	burst := 0.0
	for range 8 {
		burst = math.Max(burst, step(float64(15+rng.IntN(10))).Score)
	}
	if burst >= 40 {
		t.Errorf("a burst of the usual size scored %.1f, want < 40", burst)
	}
	alerted := -1
	for i := range 12 {
		if r := step(100); r.Score >= 60 && alerted < 0 {
			alerted = i
		}
	}
	if alerted < 0 || alerted > 6 {
		t.Errorf("a runaway at 100 a window (record %.0f) alerted at window %d, want within 6", record, alerted)
	}
	bound := record
	for range 12 {
		bound = 1.05*bound + 1
	}
	if got := float64(a.maxCount); got > bound || got >= 100 {
		t.Errorf("twelve runaway windows moved the record from %.0f to %.0f, want at most %.0f (5 %% a window)", record, got, bound)
	}
}

// A volume ramp over days — which the window model follows — is caught when
// a day closes, against the slow record of days, within a week or so of its
// start even when it takes ten days to reach ten-fold; an agent whose days
// vary by a fifth either way, or whose load doubles for good, is not
// alerted.
func TestVolumeRampByDay(t *testing.T) {
	// run feeds warm days of a level varying by a fifth day to day, then
	// 16 days of mult(days since the change) times it, and returns the
	// alerts after the change, the first one's day and the last reason.
	run := func(warm int, mult func(d float64) float64) (alerts int, first float64, reason string) {
		m := newModel(t)
		rng := rand.New(rand.NewPCG(7, 8))
		var a Baseline
		idx := monday
		level := 20.0
		first = -1
		for i := range (warm + 16) * 288 {
			if i%288 == 0 {
				level = 20 * (1 + 0.2*(2*rng.Float64()-1))
			}
			l := level
			d := float64(i-warm*288) / 288
			if d >= 0 {
				l = level * mult(d)
			}
			n := math.Max(0, math.Round(l+math.Sqrt(l)*rng.NormFloat64()))
			v := vec(idx, n, 1000)
			r := score(m, &v, &a, nil)
			m.Sustain(&a, &v, &r)
			if r.Score >= 60 && d >= 0 {
				if alerts++; first < 0 {
					first = d
				}
				reason = r.SustainedReason.Feature
				a.ClearSustained()
			}
			m.Learn(&v, &r, &a, nil, m.LearnWeight(r.Score))
			idx++
		}
		return alerts, first, reason
	}
	ramp := func(days float64) func(float64) float64 {
		return func(d float64) float64 { return math.Pow(10, math.Min(1, d/days)) }
	}
	for _, c := range []struct {
		warm int
		days float64
	}{{14, 3}, {14, 7}, {28, 7}, {28, 10}, {28, 14}} {
		n, first, why := run(c.warm, ramp(c.days))
		if n == 0 || why != "event_count_day" {
			t.Errorf("a ten-fold ramp over %v days after %d days of history: %d alerts (last by %q), want one by event_count_day", c.days, c.warm, n, why)
		} else {
			t.Logf("ten-fold ramp over %v days after %d days of history: first alert after %.1f days (×%.1f)", c.days, c.warm, first, ramp(c.days)(first))
		}
	}
	if n, _, why := run(14, func(float64) float64 { return 1 }); n != 0 {
		t.Errorf("days varying by a fifth: %d alerts (last by %q), want none", n, why)
	}
	// Business growth, not an attack: the level doubles and stays there.
	if n, _, why := run(28, func(float64) float64 { return 2 }); n != 0 {
		t.Errorf("a lasting doubling: %d alerts (last by %q), want none", n, why)
	}
}

// The silence before a window counts when it is scored: a weekday agent
// silent all its first Saturday is judged on Sunday afternoon by a weekend
// slot that has seen Saturday afternoon's empty windows.
func TestCatchUpBeforeScoring(t *testing.T) {
	m := newModel(t)
	var a Baseline
	for day := range int64(5) { // Monday to Friday, 09:00–17:00, 30 events a window
		for w := int64(9 * 12); w < 17*12; w++ {
			v := vec(monday+day*288+w, 30, 1000)
			m.Learn(&v, nil, &a, nil, 1)
		}
	}
	sunday := monday + 6*288 + 14*12 // Sunday 14:00
	stale, _ := m.ExpectedCount(&a, nil, features.HourOfWeek(sunday*win))
	m.CatchUp(sunday, &a, nil)
	caught, _ := m.ExpectedCount(&a, nil, features.HourOfWeek(sunday*win))
	if !(caught < stale/2) {
		t.Errorf("Sunday 14:00 expects %.2f events a window after catching up, %.2f before: want the silent Saturday to count", caught, stale)
	}
	if a.LastIndex != sunday-1 {
		t.Errorf("caught up to window %d, want %d", a.LastIndex, sunday-1)
	}
}

// A regular weekday agent busy at 07:00 on its first Saturday (it has never
// been busy at 07:00): the weekend slot has no history, and the hour is
// judged by what it expected when it began, not by its own first windows.
func TestOffHoursOnFirstWeekend(t *testing.T) {
	m := newModel(t)
	rng := rand.New(rand.NewPCG(3, 4))
	var a Baseline
	busy := func(w int64) float64 { // 08:00–18:00 on weekdays
		h := (w % 288) / 12
		if (w-monday)/288 < 5 && h >= 8 && h < 18 {
			return 7
		}
		return 0.02
	}
	poisson := func(l float64) float64 {
		k, p := 0.0, math.Exp(-l)
		for u := rng.Float64(); u > p; k++ {
			u *= rng.Float64()
		}
		return k
	}
	saturday7 := monday + 5*288 + 7*12
	best := 0.0
	for w := monday; w < saturday7+12; w++ {
		n := poisson(busy(w))
		if w >= saturday7 {
			n = poisson(6) // off hours: usual calls at ~70 an hour
		}
		v := vec(w, n, 1000)
		m.CatchUp(w, &a, nil)
		if n == 0 {
			continue
		}
		r := score(m, &v, &a, nil)
		m.Sustain(&a, &v, &r)
		if w >= saturday7 {
			best = math.Max(best, r.Score)
		}
		m.Learn(&v, &r, &a, nil, m.LearnWeight(r.Score))
	}
	if best < 60 {
		t.Errorf("an hour of calls at 07:00 on the first Saturday scored %.1f at most, want ≥ 60", best)
	}
}

// An agent whose payloads vary a hundredfold from call to call (most a few
// hundred bytes, a third a few hundred kilobytes) exfiltrating: three calls
// in four send 5.6 times more for two hours. No window shows it; the hour's
// mean bytes out per call does. One enormous call may alert in its own
// window, but does not make the rest of its hour alert.
func TestHourBytesOut(t *testing.T) {
	run := func(attack, huge bool) float64 {
		m := newModel(t)
		rng := rand.New(rand.NewPCG(5, 6))
		var a Baseline
		const start = 6 * 288
		best := 0.0
		feed(m, &a, start+24, func(w int) features.Vector {
			n := 4 + rng.IntN(3)
			sum := 0.0
			for i := range n {
				b := 300 * math.Exp(0.8*rng.NormFloat64())
				if rng.Float64() < 0.3 {
					b = 2e5 * math.Exp(0.8*rng.NormFloat64())
				}
				if attack && w >= start && rng.Float64() < 0.77 {
					b *= 5.6
				}
				if huge && w == start+3 && i == 0 {
					b = 1e8
				}
				sum += b
			}
			return vec(monday+int64(w), float64(n), sum/float64(n))
		}, func(w int, r *Result) {
			if w >= start && (attack || w > start+3) {
				best = math.Max(best, r.Score)
			}
		})
		return best
	}
	if s := run(true, false); s < 60 {
		t.Errorf("two hours of 5.6× payloads on 77%% of calls: best alert score %.1f (0: no alert), want ≥ 60", s)
	}
	if s := run(false, true); s >= 60 {
		t.Errorf("the windows after one 100 MB call alerted (score %.1f), want no alert", s)
	}
}

// feed drives an agent through n windows from monday as the pipeline does:
// score, sustained sums, their restart after an alert (score ≥ 60), learning
// at the weight the score and acceptance give. window builds window i;
// alerted sees every alerting window.
func feed(m *Model, a *Baseline, n int, window func(i int) features.Vector, alerted func(i int, r *Result)) {
	for i := range n {
		v := window(i)
		r := score(m, &v, a, nil)
		m.Sustain(a, &v, &r)
		if r.Score >= 60 {
			alerted(i, &r)
			a.ClearSustained()
		}
		m.Learn(&v, &r, a, nil, math.Max(m.LearnWeight(r.Score), m.Accept(a, v.Index, r.Score)))
	}
}

// A lasting change (a new version that sends three times the bytes) is
// alerted, and once it has alerted hour after hour it is accepted: the
// baseline follows it within hours instead of alerting for days until the
// slow anchor does. An incident of an hour or two is not accepted while it
// lasts.
func TestPersistentChangeAccepted(t *testing.T) {
	run := func(hours float64) (alerts int, last float64) {
		m := newModel(t)
		rng := rand.New(rand.NewPCG(7, 8))
		var a Baseline
		const warm = 28 * 288
		feed(m, &a, warm+7*288, func(i int) features.Vector {
			d := float64(i-warm) / 288
			k := 1.0
			if d >= 0 && d*24 < hours {
				k = 3
			}
			n := 15 + rng.IntN(10)
			sum := 0.0
			for range n {
				sum += 1000 * k * math.Exp(0.5*rng.NormFloat64())
			}
			return vec(monday+int64(i), float64(n), sum/float64(n))
		}, func(i int, _ *Result) {
			if d := float64(i-warm) / 288; d >= 0 {
				alerts, last = alerts+1, d
			}
		})
		return alerts, last
	}
	if n, last := run(7 * 24); n == 0 || last > 1 {
		t.Errorf("a lasting ×3: %d alerts, the last after %.1f days; want some, none after the first day", n, last)
	}
	if n, last := run(2); n < 5 || last*24 < 1.5 {
		t.Errorf("a two-hour ×3: %d alerts, the last after %.1f hours; want them to go on to its end (it is not accepted)", n, last*24)
	}
}

// A deny rate creeping from 1 % to 15 % over three days, which the fast rate
// follows, shows against the slow anchor before the ramp ends.
func TestShareSlowAnchor(t *testing.T) {
	m := newModel(t)
	rng := rand.New(rand.NewPCG(7, 8))
	var a Baseline
	const warm = 28 * 288
	first := -1.0
	feed(m, &a, warm+4*288, func(i int) features.Vector {
		rate := 0.01
		if d := float64(i-warm) / 288; d >= 0 {
			rate = 0.01 * math.Pow(15, math.Min(1, d/3))
		}
		n := 15 + rng.IntN(10)
		k := 0
		for range n {
			if rng.Float64() < rate {
				k++
			}
		}
		v := vec(monday+int64(i), float64(n), 1000)
		v.Value[features.DenyRate] = float64(k)
		return v
	}, func(i int, _ *Result) {
		if d := float64(i-warm) / 288; d >= 0 && first < 0 {
			first = d
		}
	})
	if first < 0 || first > 3 {
		t.Errorf("deny rate ramp over three days: first alert at day %.2f, want within the ramp", first)
	}
}

// A steady trickle of new targets — one every twenty minutes where the agent
// sees one a day — is alerted within the day (no single hour shows it),
// and the agent's usual one a day is not.
func TestNoveltyTrickle(t *testing.T) {
	run := func(rate float64) (alerts int, first float64) {
		m := newModel(t)
		rng := rand.New(rand.NewPCG(7, 8))
		var a Baseline
		const warm = 28 * 288
		first = -1
		feed(m, &a, warm+2*288, func(i int) features.Vector {
			p := 1.0 / 288
			if i >= warm {
				p = rate
			}
			v := vec(monday+int64(i), float64(15+rng.IntN(10)), 1000)
			if rng.Float64() < p {
				v.Value[features.NewTargets] = 1
			}
			return v
		}, func(i int, _ *Result) {
			if d := float64(i-warm) / 288; d >= 0 {
				if alerts++; first < 0 {
					first = d
				}
			}
		})
		return alerts, first
	}
	if n, first := run(0.25); n == 0 || first > 1 {
		t.Errorf("new targets in a quarter of windows: %d alerts, the first at day %.2f; want one within the day", n, first)
	}
	if n, _ := run(1.0 / 288); n != 0 {
		t.Errorf("the usual new target a day: %d alerts, want none", n)
	}
}

// After a fleet-wide change is marked on the peer group, an agent's action
// mix moving away from its usual one is explained for a while.
func TestFleetChangeExplainsMix(t *testing.T) {
	m := newModel(t)
	var a, p Baseline
	for i := range int64(2000) {
		v := vec(monday+i, 40, 1000)
		v.Actions[0], v.Actions[1] = 20, 20
		r := score(m, &v, &a, &p)
		m.Learn(&v, &r, &a, &p, 1)
	}
	idx := monday + 2000
	v := vec(idx, 40, 1000)
	v.Actions[0], v.Actions[1], v.Actions[7] = 0, 0, 40
	before := score(m, &v, &a, &p)
	old := p
	m.MarkFleetChange(&p, idx-1)
	after := score(m, &v, &a, &p)
	if before.Z[features.ActionMix] < 4 || after.Z[features.ActionMix] > fleetZ {
		t.Errorf("mix z %.1f before the fleet change was marked, %.1f after; want ≥ 4, then ≤ %v", before.Z[features.ActionMix], after.Z[features.ActionMix], fleetZ)
	}
	m.MarkFleetChange(&old, idx-1-5*288)
	if later := score(m, &v, &a, &old); later.Z[features.ActionMix] <= fleetZ {
		t.Errorf("a fleet change five days old still explains the mix (z %.1f)", later.Z[features.ActionMix])
	}
}

// The seasonal count model needs a day: a brand-new agent in a brand-new
// group is not scored on its event count until its history spans one (its
// first nightly batch is not a runaway), then it is.
func TestCountWaitsForADayOfHistory(t *testing.T) {
	m := newModel(t)
	var a Baseline
	learn := func(from, to int64) {
		for i := from; i < to; i++ {
			v := vec(monday+i, 5, 1000)
			r := score(m, &v, &a, nil)
			m.Learn(&v, &r, &a, nil, 1)
		}
	}
	learn(0, 20*12)
	v := vec(monday+20*12, 200, 1000)
	if r := score(m, &v, &a, nil); r.Scored[features.EventCount] {
		t.Errorf("event count scored (z %.1f) after 20 hours of history", r.Z[features.EventCount])
	}
	learn(20*12, 26*12)
	v = vec(monday+26*12, 200, 1000)
	if r := score(m, &v, &a, nil); !r.Scored[features.EventCount] || r.Z[features.EventCount] < 5 {
		t.Errorf("after 26 hours, 200 events where 5 are usual: scored %v, z %.1f; want scored, z ≥ 5", r.Scored[features.EventCount], r.Z[features.EventCount])
	}
}

// A job that ships twenty times its daytime payloads every night from 01:00
// to 04:00, or reads restricted data then, deviates from its all-day
// baseline by about as much every night; once a few nights have shown the
// routine, its nights do not alert, while the same behaviour at
// another hour still does.
func TestNightlyRoutineNotSummed(t *testing.T) {
	for _, tc := range []struct {
		name    string
		routine func(v *features.Vector, rng *rand.Rand)
	}{
		{"bytes out ×20", func(v *features.Vector, rng *rand.Rand) {
			v.Value[features.BytesOut] *= 20
		}},
		{"restricted reads", func(v *features.Vector, rng *rand.Rand) {
			v.Value[features.RestrictedShare] = math.Round(v.Value[features.EventCount] * 0.3 * rng.Float64())
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newModel(t)
			rng := rand.New(rand.NewPCG(7, 8))
			var a Baseline
			const days = 14
			odd := int64((days-1)*288 + 14*12) // 14:00 on the last day, for an hour
			var nights, oddAlerts int
			feed(m, &a, days*288, func(i int) features.Vector {
				n := 15 + rng.IntN(10)
				sum := 0.0
				for range n {
					sum += 1000 * math.Exp(0.5*rng.NormFloat64())
				}
				v := vec(monday+int64(i), float64(n), sum/float64(n))
				if rng.Float64() < 0.1 {
					v.Value[features.RestrictedShare] = 1
				}
				if h := (i / 12) % 24; h >= 1 && h < 4 || int64(i) >= odd && int64(i) < odd+12 {
					tc.routine(&v, rng)
				}
				return v
			}, func(i int, _ *Result) {
				switch {
				case int64(i) >= odd && int64(i) < odd+12:
					oddAlerts++
				case i >= 7*288:
					nights++
				}
			})
			if nights > 0 {
				t.Errorf("%d alerts in the second week of a nightly routine, want none", nights)
			}
			if oddAlerts == 0 {
				t.Error("the nightly behaviour at 14:00 was not alerted")
			}
		})
	}
}

// A known limit, pinned so it does not get worse: an hour-long export at five
// times the usual bytes every Wednesday is a routine of the week, which the
// sums (discounting routines of the hour of the day) do not learn; after the
// first weeks it alerts at most two windows a week (run with -v for the
// counts).
func TestWeeklyExportKnownLimit(t *testing.T) {
	m := newModel(t)
	rng := rand.New(rand.NewPCG(7, 8))
	var a Baseline
	const weeks = 8
	var perWeek [weeks]int
	feed(m, &a, weeks*7*288, func(i int) features.Vector {
		n := 15 + rng.IntN(10)
		k := 1.0
		if d := i / 288; d%7 == 2 && (i/12)%24 == 14 {
			k = 5
		}
		sum := 0.0
		for range n {
			sum += 1000 * k * math.Exp(0.5*rng.NormFloat64())
		}
		return vec(monday+int64(i), float64(n), sum/float64(n))
	}, func(i int, _ *Result) {
		perWeek[i/(7*288)]++
	})
	t.Logf("alerts per week: %v", perWeek)
	for w := 3; w < weeks; w++ {
		if perWeek[w] > 2 {
			t.Errorf("week %d: %d alerts, want at most 2", w, perWeek[w])
		}
	}
}
