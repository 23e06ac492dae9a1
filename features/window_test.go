package features

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

const fiveMinutes = int64(5 * time.Minute)

// replayAgent is the per-agent state a runtime would keep, in miniature.
type replayAgent struct {
	id, class string
	seen      SeenSet
	probes    Probes
	origins   Origins
	wins      map[int64]*Window
}

// replay feeds a JSONL file through Decode → Observe → Window.Add, as the
// detector does: one SeenSet per agent, one per peer group (agent_class, else
// derived from the id), one Window per agent and window index.
func replay(t testing.TB, path string, size int64) []*replayAgent {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	agents := map[string]*replayAgent{}
	peers := map[string]*SeenSet{}
	var d Decoder
	var e Event
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		if err := d.Decode(sc.Bytes(), &e); err != nil {
			t.Fatalf("%s:%d: %v", path, line, err)
		}
		a := agents[string(e.AgentID)]
		if a == nil {
			class := string(e.AgentClass)
			if class == "" {
				class = string(DeriveClass(nil, e.AgentID))
			}
			a = &replayAgent{id: string(e.AgentID), class: class, seen: NewSeenSet(256), wins: map[int64]*Window{}}
			agents[a.id] = a
		}
		peer := peers[a.class]
		if peer == nil {
			s := NewSeenSet(1024)
			peer = &s
			peers[a.class] = peer
		}
		flags, bucket := Observe(&e, &a.seen, peer, &a.probes, &a.origins)
		idx := WindowIndex(e.TS, size)
		w := a.wins[idx]
		if w == nil {
			w = new(Window)
			w.Reset(idx)
			a.wins[idx] = w
		}
		w.Add(&e, flags, bucket)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	var out []*replayAgent
	for _, a := range agents {
		out = append(out, a)
	}
	slices.SortFunc(out, func(x, y *replayAgent) int { return strings.Compare(x.id, y.id) })
	return out
}

func (a *replayAgent) indexes() []int64 {
	var idx []int64
	for i := range a.wins {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	return idx
}

func fmtFloat(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

// renderVector writes v as readable text: one feature per line with its
// value and, where the feature has them, its trials.
func renderVector(sb *strings.Builder, v Vector) {
	fmt.Fprintf(sb, "  window %d [%s, %s) hour_of_week %d\n", v.Index,
		time.Unix(0, v.Start).UTC().Format(time.RFC3339), time.Unix(0, v.End).UTC().Format(time.RFC3339), v.HourOfWeek)
	for f := Feature(0); f < NumFeatures; f++ {
		fmt.Fprintf(sb, "    %-22s %s", f, fmtFloat(v.Value[f]))
		if v.Trials[f] != 0 {
			fmt.Fprintf(sb, "  trials %s", fmtFloat(v.Trials[f]))
		}
		sb.WriteByte('\n')
	}
	fmt.Fprintf(sb, "    %-22s %v\n", "actions", v.Actions)
}

func renderReplay(agents []*replayAgent, size int64) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "# testdata/window_events.jsonl in %s windows: Decode -> Observe -> Window.Add -> Vector\n", time.Duration(size))
	for _, a := range agents {
		fmt.Fprintf(&sb, "\nagent %s class %s\n", a.id, a.class)
		for _, i := range a.indexes() {
			renderVector(&sb, a.wins[i].Vector(size))
		}
	}
	return sb.String()
}

// TestWindowsGolden renders every agent window of testdata/window_events.jsonl
// and compares it with testdata/windows.golden (go test -run TestWindowsGolden
// -update rewrites it; review the diff by hand, TestWindowsExpected pins the
// important numbers independently).
func TestWindowsGolden(t *testing.T) {
	got := renderReplay(replay(t, filepath.Join("testdata", "window_events.jsonl"), fiveMinutes), fiveMinutes)
	golden := filepath.Join("testdata", "windows.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("windows differ from %s (run with -update to accept, after checking by hand):\n%s", golden, lineDiff(string(want), got))
	}
}

// lineDiff shows the lines of got that differ from want, with line numbers.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var sb strings.Builder
	for i := 0; i < max(len(w), len(g)); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			fmt.Fprintf(&sb, "line %d:\n  want %q\n  got  %q\n", i+1, wl, gl)
		}
	}
	return sb.String()
}

// TestWindowsExpected checks the replay against numbers worked out by hand
// from testdata/window_events.jsonl, per agent and window (the sums spell out
// the events' values in file order).
func TestWindowsExpected(t *testing.T) {
	type exp struct {
		n, distinct                     float64
		newT, newA, newC, newS, newPeer float64
		deny, errs, restr, dataN        float64
		unfam                           float64 // denied calls to what the agent was never allowed
		weak, weakN                     float64
		outSum, outN, inSum, inN        float64
		amtSum, amtN                    float64
		lat                             []float64 // latency_ms of the ok (or status-less) calls
	}
	const (
		a = "spiffe://bank.example/agent/payments-bot-07"
		b = "spiffe://bank.example/agent/payments-bot-08"
		c = "spiffe://bank.example/agent/report-gen-1"
	)
	w0 := WindowIndex(time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC).UnixNano(), fiveMinutes)
	want := map[string][3]exp{
		// A: a steady payments bot in window 0; in window 1 it reaches the
		// customer database with an API key from a new address, gets denied,
		// exports restricted data and mails it out; window 2 is quiet again.
		// Latency leaves out the error, timeout and denied calls.
		a: {
			{n: 6, distinct: 2, newT: 2, newA: 3, newC: 1, newS: 1, newPeer: 3, errs: 1, dataN: 6, weakN: 6,
				outSum: 1000 + 1200 + 4000 + 300 + 0 + 1100, outN: 6, inSum: 200 + 220 + 50 + 80 + 40 + 210, inN: 6,
				lat: []float64{10, 14, 3, 5, 12}, amtSum: 100 + 250.5 + 49.5, amtN: 3},
			// Both denied calls count as unfamiliar: the second repeats
			// the first, which made the target "seen" but not allowed.
			{n: 7, distinct: 4, newT: 3, newA: 4, newC: 1, newS: 1, newPeer: 4, deny: 2, unfam: 2, errs: 2, restr: 4, dataN: 7,
				weak: 5, weakN: 7, outSum: 1000 + 150 + 150 + 250000 + 80000 + 0 + 1050, outN: 7, inSum: 200 + 205, inN: 7,
				lat: []float64{10, 900, 11}, amtSum: 100 + 9999.99, amtN: 2},
			// ev-38 arrives late (after ev-37) and carries amount 0: not a
			// money-moving event.
			{n: 6, distinct: 3, dataN: 6, weakN: 6, outSum: 1000 + 4050 + 305 + 2000 + 1000 + 1000, outN: 6,
				inSum: 200 + 50 + 75 + 0 + 200 + 200, inN: 6, lat: []float64{10, 3, 5, 300, 10, 10}, amtSum: 200, amtN: 2},
		},
		// B: same peer group as A (explicit agent_class), so targets and
		// actions A used first are new to B but not to the group.
		b: {
			{n: 2, distinct: 2, newT: 2, newA: 2, newC: 1, newS: 1, newPeer: 1, dataN: 2, weakN: 2,
				outSum: 900 + 3900, outN: 2, inSum: 190 + 60, inN: 2, lat: []float64{11, 4}, amtSum: 75, amtN: 1},
			{n: 3, distinct: 3, newT: 1, newA: 1, deny: 1, unfam: 1, restr: 1, dataN: 3, weakN: 3,
				outSum: 950 + 4100 + 0, outN: 3, inSum: 180 + 55 + 0, inN: 3, lat: []float64{9, 4}, amtSum: 120, amtN: 1},
			// ev-39: escaped target and action, ts with +01:00 offset; the
			// same ledger call as usual.
			{n: 5, distinct: 2, newA: 1, dataN: 5, weakN: 5, outSum: 960 + 310 + 4000 + 940 + 950, outN: 5,
				inSum: 185 + 70 + 52 + 190 + 190, inN: 5, lat: []float64{10, 5, 4, 10, 10}, amtSum: 80 + 60 + 70, amtN: 3},
		},
		// C: its own peer group; in window 2 it tries the ledger with a new
		// credential from a new address and is denied. ev-40 carries nulls
		// and unknown fields: it counts as an event and nothing else.
		c: {
			{n: 3, distinct: 2, newT: 2, newA: 2, newC: 1, newS: 1, newPeer: 2, dataN: 3, weakN: 3,
				outSum: 120 + 130 + 90000, outN: 3, inSum: 5000 + 7000 + 300, inN: 3, lat: []float64{200, 250, 800}},
			{n: 3, distinct: 2, dataN: 3, weakN: 3,
				outSum: 125 + 128 + 91000, outN: 3, inSum: 6000 + 6500 + 310, inN: 3, lat: []float64{220, 230, 780}},
			{n: 5, distinct: 3, newT: 1, newA: 1, newC: 1, newS: 1, newPeer: 1, deny: 1, unfam: 1, dataN: 4, weakN: 4,
				outSum: 126 + 0 + 127 + 90500, outN: 4, inSum: 6100 + 0 + 6300 + 305, inN: 4, lat: []float64{210, 240, 790}},
		},
	}
	agents := replay(t, filepath.Join("testdata", "window_events.jsonl"), fiveMinutes)
	if len(agents) != 3 {
		t.Fatalf("%d agents, want 3", len(agents))
	}
	classes := map[string]string{a: "payments-bot", b: "payments-bot", c: "reporting"}
	for _, ag := range agents {
		if ag.class != classes[ag.id] {
			t.Errorf("%s: class %q, want %q", ag.id, ag.class, classes[ag.id])
		}
		if got := ag.indexes(); !slices.Equal(got, []int64{w0, w0 + 1, w0 + 2}) {
			t.Fatalf("%s: windows %v, want %d..%d", ag.id, got, w0, w0+2)
		}
		for k, x := range want[ag.id] {
			t.Run(fmt.Sprintf("%s/w%d", ag.id[strings.LastIndexByte(ag.id, '/')+1:], k), func(t *testing.T) {
				v := ag.wins[w0+int64(k)].Vector(fiveMinutes)
				mean := func(s, n float64) float64 {
					if n == 0 {
						return 0
					}
					return s / n
				}
				// distinct_target_share: (distinct-1) of (events-1).
				distinct, distinctTrials := x.distinct-1, x.n-1
				// latency_ms: geometric mean (of 1+latency, minus 1) of
				// the successful calls.
				var logSum float64
				for _, l := range x.lat {
					logSum += math.Log1p(l)
				}
				lat := math.Expm1(mean(logSum, float64(len(x.lat))))
				checks := []struct {
					f             Feature
					value, trials float64
				}{
					{EventCount, x.n, 0}, {DistinctTargets, distinct, distinctTrials},
					{NewTargets, x.newT, 0}, {NewActions, x.newA, 0}, {NewCredentials, x.newC, 0},
					{NewSources, x.newS, 0}, {NewToPeers, x.newPeer, 0}, {ActionMix, 0, 0},
					{DenyRate, x.deny, x.n}, {ErrorRate, x.errs, x.n}, {DeniedUnfamiliar, x.unfam, 0},
					{RestrictedShare, x.restr, x.dataN}, {WeakAuthShare, x.weak, x.weakN},
					{BytesOut, mean(x.outSum, x.outN), x.outN}, {BytesIn, mean(x.inSum, x.inN), x.inN},
					{Latency, lat, float64(len(x.lat))}, {Amount, mean(x.amtSum, x.amtN), x.amtN},
				}
				for _, ch := range checks {
					if math.Abs(v.Value[ch.f]-ch.value) > 1e-9*math.Max(1, math.Abs(ch.value)) || v.Trials[ch.f] != ch.trials {
						t.Errorf("%s = %v (trials %v), want %v (trials %v)", ch.f, v.Value[ch.f], v.Trials[ch.f], ch.value, ch.trials)
					}
				}
				var actions float64
				for _, n := range v.Actions {
					actions += float64(n)
				}
				if actions != x.n {
					t.Errorf("action histogram holds %v events, want %v", actions, x.n)
				}
				if v.HourOfWeek != 9 { // Monday 09:00-09:15 UTC
					t.Errorf("HourOfWeek = %d, want 9", v.HourOfWeek)
				}
				if v.Start != (w0+int64(k))*fiveMinutes || v.End != v.Start+fiveMinutes {
					t.Errorf("window [%d, %d), want index %d", v.Start, v.End, w0+int64(k))
				}
			})
		}
	}
}

func TestHourOfWeek(t *testing.T) {
	tests := []struct {
		name string
		t    time.Time
		want int
	}{
		{"Monday 00:00", time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC), 0},
		{"Monday 00:59:59.999999999", time.Date(2026, 3, 2, 0, 59, 59, 999999999, time.UTC), 0},
		{"Monday 09:15", time.Date(2026, 3, 2, 9, 15, 0, 0, time.UTC), 9},
		{"Tuesday 00:00", time.Date(2026, 3, 3, 0, 0, 0, 0, time.UTC), 24},
		{"Sunday 23:00", time.Date(2026, 3, 8, 23, 0, 0, 0, time.UTC), 167},
		{"Sunday 23:59:59.999999999", time.Date(2026, 3, 8, 23, 59, 59, 999999999, time.UTC), 167},
		{"next Monday 00:00", time.Date(2026, 3, 9, 0, 0, 0, 0, time.UTC), 0},
		{"epoch (Thursday 00:00)", time.Unix(0, 0), 72},
		{"1 ns before the epoch", time.Unix(0, -1), 71},
		{"1 h before the epoch", time.Unix(-3600, 0), 71},
		{"Monday 1969-12-29 00:00", time.Date(1969, 12, 29, 0, 0, 0, 0, time.UTC), 0},
		{"1 ns before Monday 1969-12-29", time.Date(1969, 12, 28, 23, 59, 59, 999999999, time.UTC), 167},
		{"Sunday 1900-01-07 23:30", time.Date(1900, 1, 7, 23, 30, 0, 0, time.UTC), 167},
		{"offset zone is converted to UTC", time.Date(2026, 3, 2, 1, 0, 0, 0, time.FixedZone("", 2*3600)), 167},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := HourOfWeek(tc.t.UnixNano()); got != tc.want {
				t.Errorf("HourOfWeek(%s) = %d, want %d", tc.t, got, tc.want)
			}
		})
	}
	t.Run("sweep against package time", func(t *testing.T) {
		for ts := time.Date(1960, 1, 1, 0, 30, 0, 0, time.UTC); ts.Year() < 1981; ts = ts.Add(7*time.Hour + 13*time.Minute) {
			want := (int(ts.Weekday())+6)%7*24 + ts.Hour()
			if got := HourOfWeek(ts.UnixNano()); got != want {
				t.Fatalf("HourOfWeek(%s) = %d, want %d", ts, got, want)
			}
		}
	})
}

func TestWindowIndex(t *testing.T) {
	const m = int64(time.Minute)
	tests := []struct {
		ts, size, want int64
	}{
		{0, fiveMinutes, 0},
		{1, fiveMinutes, 0},
		{fiveMinutes - 1, fiveMinutes, 0},
		{fiveMinutes, fiveMinutes, 1},
		{-1, fiveMinutes, -1},
		{-fiveMinutes, fiveMinutes, -1},
		{-fiveMinutes - 1, fiveMinutes, -2},
		{-2 * fiveMinutes, fiveMinutes, -2},
		{7*m + 30, m, 7},
		{-7*m - 30, m, -8},
		{math.MinInt64, fiveMinutes, math.MinInt64/fiveMinutes - 1},
		{math.MaxInt64, fiveMinutes, math.MaxInt64 / fiveMinutes},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%d/%d", tc.ts, tc.size), func(t *testing.T) {
			got := WindowIndex(tc.ts, tc.size)
			if got != tc.want {
				t.Errorf("WindowIndex(%d, %d) = %d, want %d", tc.ts, tc.size, got, tc.want)
			}
			// The window must hold ts: idx·size ≤ ts < (idx+1)·size.
			if tc.ts > math.MinInt64+tc.size && tc.ts < math.MaxInt64-tc.size && (got*tc.size > tc.ts || (got+1)*tc.size <= tc.ts) {
				t.Errorf("window %d does not hold %d", got, tc.ts)
			}
		})
	}
}

func targetWindow(n int, prefix string) *Window {
	var w Window
	w.Reset(0)
	var e Event
	for i := range n {
		e.TargetID = fmt.Appendf(e.TargetID[:0], "%s%d", prefix, i)
		w.Add(&e, 0, 0)
	}
	return &w
}

func TestDistinctTargets(t *testing.T) {
	for _, n := range []int{10, 100, 300} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			// One realistic set of names: within 5%.
			est := targetWindow(n, "spiffe://bank.example/svc/target-").DistinctTargets()
			if math.Abs(est-float64(n)) > 0.05*float64(n) {
				t.Errorf("estimate %.2f for %d distinct targets: off by more than 5%%", est, n)
			}
			// Many sets: the estimator is unbiased (mean within 1%) and no
			// single set is wildly off.
			const sets = 200
			var sum, worst float64
			for s := range sets {
				e := targetWindow(n, fmt.Sprintf("tool-%d-", s)).DistinctTargets()
				sum += e
				worst = math.Max(worst, math.Abs(e-float64(n))/float64(n))
			}
			if mean := sum / sets; math.Abs(mean-float64(n)) > 0.01*float64(n) {
				t.Errorf("mean estimate over %d sets %.2f for %d distinct", sets, mean, n)
			}
			if worst > 0.15 {
				t.Errorf("worst relative error %.3f over %d sets of %d", worst, sets, n)
			}
			t.Logf("n=%d: estimate %.2f; worst relative error over %d sets %.3f", n, est, sets, worst)
		})
	}
	t.Run("duplicates do not count", func(t *testing.T) {
		var w Window
		e := Event{TargetID: []byte("ledger")}
		for range 1000 {
			w.Add(&e, 0, 0)
		}
		if got := w.DistinctTargets(); math.Abs(got-1) > 0.01 {
			t.Errorf("DistinctTargets = %v after one target 1000 times", got)
		}
		if v := w.Vector(fiveMinutes); v.Value[DistinctTargets] != 0 || v.Trials[DistinctTargets] != 999 {
			t.Errorf("Vector distinct_target_share = %v of %v, want 0 of 999", v.Value[DistinctTargets], v.Trials[DistinctTargets])
		}
	})
	t.Run("empty", func(t *testing.T) {
		var w Window
		if got := w.DistinctTargets(); got != 0 {
			t.Errorf("DistinctTargets of an empty window = %v", got)
		}
	})
	t.Run("share never exceeds its trials", func(t *testing.T) {
		for _, n := range []int{2, 3, 10, 5000} {
			v := targetWindow(n, "t").Vector(fiveMinutes)
			if v.Trials[DistinctTargets] != float64(n-1) || v.Value[DistinctTargets] > v.Trials[DistinctTargets] || v.Value[DistinctTargets] < 0 {
				t.Errorf("%d targets: distinct_target_share = %v of %v", n, v.Value[DistinctTargets], v.Trials[DistinctTargets])
			}
		}
		if v := targetWindow(5000, "t").Vector(fiveMinutes); v.Value[DistinctTargets] < 2000 {
			t.Errorf("5000 targets, saturated bitmap: distinct_target_share = %v", v.Value[DistinctTargets])
		}
		if v := targetWindow(1, "t").Vector(fiveMinutes); v.Value[DistinctTargets] != 0 || v.Trials[DistinctTargets] != 0 {
			t.Errorf("one event: distinct_target_share = %v of %v, want 0 of 0", v.Value[DistinctTargets], v.Trials[DistinctTargets])
		}
	})
}

func TestDeriveClass(t *testing.T) {
	tests := []struct{ id, want string }{
		{"spiffe://bank.example/agent/payments-bot-07", "payments-bot"},
		{"spiffe://bank.example/agent/payments_bot_7", "payments_bot"},
		{"spiffe://bank.example/agent/report.gen.12", "report.gen"},
		{"spiffe://bank.example/agent/kyc-checker", "kyc-checker"},
		{"spiffe://bank.example/agent/bot-v2-07", "bot-v2"},
		{"spiffe://bank.example/agent/bot--07", "bot-"},
		{"spiffe://bank.example/agent/payments-bot-07x", "payments-bot-07x"},
		{"spiffe://bank.example/agent/42", "42"},
		{"spiffe://bank.example/agent/-42", "-42"},
		{"agent7", "agent"},
		{"agent-7", "agent"},
		{"fraud-scorer", "fraud-scorer"},
		{"12345", "12345"},
		{"", ""},
		{"spiffe://bank.example/agent/", "spiffe://bank.example/agent/"}, // no last segment: the whole id
	}
	for _, tc := range tests {
		t.Run(tc.id, func(t *testing.T) {
			if got := string(DeriveClass(nil, []byte(tc.id))); got != tc.want {
				t.Errorf("DeriveClass(%q) = %q, want %q", tc.id, got, tc.want)
			}
		})
	}
	t.Run("appends to dst", func(t *testing.T) {
		dst := []byte("class:")
		if got := string(DeriveClass(dst, []byte("spiffe://x/agent/fx-bot-3"))); got != "class:fx-bot" {
			t.Errorf("got %q", got)
		}
	})
}

func TestObserve(t *testing.T) {
	agent, other, peer := NewSeenSet(64), NewSeenSet(64), NewSeenSet(64)
	e := Event{TargetID: []byte("svc:ledger"), Action: []byte("transfer"), CredentialID: []byte("cert-1"), SrcIP: []byte("10.0.0.1")}
	steps := []struct {
		name  string
		e     Event
		agent *SeenSet
		peer  *SeenSet
		want  uint16
	}{
		{"first event: everything new to agent and group", e, &agent, &peer, NewTarget | NewAction | NewCredential | NewSource | NewNetwork | NewPeerItem | NewPeerAccess},
		{"repeat: nothing new", e, &agent, &peer, 0},
		{"peer's items: new to the agent only", e, &other, &peer, NewTarget | NewAction | NewCredential | NewSource | NewNetwork},
		{"one new item, new to the group too", Event{TargetID: e.TargetID, Action: []byte("refund")}, &agent, &peer, NewAction | NewPeerItem | NewPeerAccess},
		{"a new credential, new to the group: not access", Event{TargetID: e.TargetID, Action: e.Action, CredentialID: []byte("cert-2")}, &agent, &peer, NewCredential | NewPeerItem},
		{"the peer then uses it", Event{TargetID: e.TargetID, Action: []byte("refund")}, &other, &peer, NewAction},
		{"no credential or source: not checked", Event{TargetID: []byte("svc:fx"), Action: e.Action}, &agent, &peer, NewTarget | NewPeerItem | NewPeerAccess},
		{"same string as another kind is still new", Event{TargetID: []byte("transfer"), Action: e.Action}, &agent, &peer, NewTarget | NewPeerItem | NewPeerAccess},
		{"nil peer set", Event{TargetID: []byte("svc:new"), Action: e.Action}, &agent, nil, NewTarget},
	}
	for _, s := range steps {
		flags, bucket := Observe(&s.e, s.agent, s.peer, nil, nil)
		if flags != s.want {
			t.Errorf("%s: flags %010b, want %010b", s.name, flags, s.want)
		}
		if bucket < 0 || bucket >= ActionBuckets || bucket != int(Hash64(s.e.Action, seedAction)%ActionBuckets) {
			t.Errorf("%s: bucket %d", s.name, bucket)
		}
	}
}

func TestWindowAdd(t *testing.T) {
	var w Window
	w.Reset(42)
	if w.Index != 42 || w.N != 0 {
		t.Fatalf("Reset: %+v", w)
	}
	base := time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC).UnixNano()
	for i, off := range []int64{30, 10, 50, 20} {
		e := Event{TS: base + off, TargetID: []byte("t"), BytesIn: -1, BytesOut: -1}
		w.Add(&e, 0, i%2)
	}
	if w.First != base+10 || w.Last != base+50 {
		t.Errorf("First, Last = %d, %d; want base+10, base+50", w.First-base, w.Last-base)
	}
	if w.Actions[0] != 2 || w.Actions[1] != 2 || w.BytesInN != 0 || w.BytesOutN != 0 {
		t.Errorf("after 4 events: %+v", w)
	}
	t.Run("counters saturate", func(t *testing.T) {
		var w Window
		e := Event{TargetID: []byte("t"), BytesIn: -1, BytesOut: -1}
		for range math.MaxUint16 + 10 {
			w.Add(&e, NewTarget|NewPeerItem, 3)
		}
		if w.N != math.MaxUint16+10 || w.Actions[3] != math.MaxUint16 || w.New[0] != math.MaxUint16 || w.New[4] != math.MaxUint16 || w.New[1] != 0 {
			t.Errorf("N %d, Actions[3] %d, New %v", w.N, w.Actions[3], w.New)
		}
	})
	t.Run("vector of an empty window", func(t *testing.T) {
		var w Window
		w.Reset(-1)
		v := w.Vector(fiveMinutes)
		if v.Start != -fiveMinutes || v.End != 0 || v.HourOfWeek != 71 {
			t.Errorf("window -1: [%d, %d) hour %d", v.Start, v.End, v.HourOfWeek)
		}
		for f := Feature(0); f < NumFeatures; f++ {
			if v.Value[f] != 0 || v.Trials[f] != 0 || math.IsNaN(v.Value[f]) {
				t.Errorf("%s = %v / %v in an empty window", f, v.Value[f], v.Trials[f])
			}
		}
	})
}

func TestWindowLatency(t *testing.T) {
	tests := []struct {
		name   string
		events []Event
		want   float64
		trials float64
	}{
		{"geometric mean of 1+latency, minus 1", []Event{
			{Status: StatusOK, LatencyMS: 0, HasLatency: true},
			{Status: StatusOK, LatencyMS: 3, HasLatency: true},
		}, 1, 2},
		{"status-less calls count", []Event{
			{LatencyMS: 7, HasLatency: true},
		}, 7, 1},
		{"failed calls do not", []Event{
			{Status: StatusOK, LatencyMS: 9, HasLatency: true},
			{Status: StatusError, LatencyMS: 1000, HasLatency: true},
			{Status: StatusTimeout, LatencyMS: 30000, HasLatency: true},
			{Status: StatusDenied, LatencyMS: 1, HasLatency: true},
		}, 9, 1},
		{"no latency field", []Event{{Status: StatusOK}}, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var w Window
			for i := range tc.events {
				tc.events[i].TargetID = []byte("t")
				tc.events[i].BytesIn, tc.events[i].BytesOut = -1, -1
				w.Add(&tc.events[i], 0, 0)
			}
			v := w.Vector(fiveMinutes)
			if math.Abs(v.Value[Latency]-tc.want) > 1e-12 || v.Trials[Latency] != tc.trials {
				t.Errorf("latency_ms = %v (trials %v), want %v (trials %v)", v.Value[Latency], v.Trials[Latency], tc.want, tc.trials)
			}
		})
	}
}

func TestFeatureString(t *testing.T) {
	seen := map[string]bool{}
	for f := Feature(0); f < NumFeatures; f++ {
		s := f.String()
		if s == "" || s == "unknown" || seen[s] {
			t.Errorf("Feature(%d).String() = %q", f, s)
		}
		seen[s] = true
	}
	for _, f := range []Feature{-1, NumFeatures, 100} {
		if got := f.String(); got != "unknown" {
			t.Errorf("Feature(%d).String() = %q", f, got)
		}
	}
}

// TestWindowAddAllocs: the per-event feature path does not allocate.
func TestWindowAddAllocs(t *testing.T) {
	var d Decoder
	var e Event
	if err := d.Decode(typicalEvent, &e); err != nil {
		t.Fatal(err)
	}
	agent, peer := NewSeenSet(256), NewSeenSet(1024)
	var w Window
	allocs := testing.AllocsPerRun(200, func() {
		flags, bucket := Observe(&e, &agent, &peer, nil, nil)
		w.Add(&e, flags, bucket)
		_ = w.Vector(fiveMinutes)
	})
	if allocs != 0 {
		t.Errorf("Observe+Add+Vector allocates %v times", allocs)
	}
}

func TestWindowSnapshot(t *testing.T) {
	var w Window
	w.Reset(42)
	var d Decoder
	var e Event
	agent, peer := NewSeenSet(128), NewSeenSet(1024)
	for i := range 30 {
		line := fmt.Sprintf(`{"event_id":"%d","ts":"2026-03-02T00:00:%02dZ","agent_id":"a","target_id":"t%d","action":"x%d","decision":"deny","bytes_out":%d,"latency_ms":3.5,"amount":2,"data_class":"restricted","auth":"apikey"}`, i, i, i%7, i%3, 100*i)
		if err := d.Decode([]byte(line), &e); err != nil {
			t.Fatal(err)
		}
		flags, b := Observe(&e, &agent, &peer, nil, nil)
		w.Add(&e, flags, b)
	}
	w.Flags = 5
	data := w.AppendBinary(nil)
	if len(data) != windowSnapshotSize {
		t.Fatalf("snapshot is %d bytes, want %d", len(data), windowSnapshotSize)
	}
	var r Window
	n, err := r.DecodeFrom(data)
	if err != nil || n != len(data) || r != w {
		t.Fatalf("round trip: n=%d err=%v equal=%v", n, err, r == w)
	}
	if _, err := r.DecodeFrom(data[:10]); err == nil {
		t.Error("short snapshot accepted")
	}
}

// A denied first attempt is unfamiliar, and so is every denied retry of it
// until the agent is allowed it; ordinary denials of familiar things are not.
// Probes keeps the last four probed items.
func TestProbes(t *testing.T) {
	agent, peer := NewSeenSet(64), NewSeenSet(64)
	var pr Probes
	call := func(target, action string, decision Decision) bool {
		t.Helper()
		e := Event{TargetID: []byte(target), Action: []byte(action), Decision: decision}
		flags, _ := Observe(&e, &agent, &peer, &pr, nil)
		return flags&Unfamiliar != 0
	}
	steps := []struct {
		target, action string
		decision       Decision
		want           bool
	}{
		{"ledger", "read", Allow, false},
		{"ledger", "read", Deny, false},         // familiar, denied: the deny rate's business
		{"iam", "policy.attach", Deny, true},    // first attempt
		{"iam", "policy.attach", Deny, true},    // retried, still never allowed
		{"ledger", "policy.attach", Deny, true}, // the action is still unfamiliar
		{"iam", "policy.attach", Allow, false},  // granted now
		{"iam", "policy.attach", Deny, false},   // familiar since
		{"vault", "secret.read", Deny, true},
		{"kms", "key.export", Deny, true},
		{"hsm", "key.import", Deny, true},
		{"ca", "cert.issue", Deny, true},
		{"dns", "zone.write", Deny, true},     // a fifth probe pushes out the oldest (vault)
		{"vault", "secret.read", Deny, false}, // forgotten, and seen by now
		{"dns", "zone.write", Deny, true},
	}
	for i, s := range steps {
		if got := call(s.target, s.action, s.decision); got != s.want {
			t.Errorf("step %d %s %s %v: unfamiliar %v, want %v", i, s.target, s.action, s.decision, got, s.want)
		}
	}
}

// A credential and an address both new to the agent, first used together,
// and a network the agent never called from are new origins: the calls that
// use any of their items are flagged (NewOrigin) from five minutes after the
// first until a day after. A new credential from a known address (a
// rotation) and a new address in a known network with a known credential (a
// restarted instance) are neither new origins nor, while new, known ones;
// the agent's established calls are known (KnownOrigin). Origins keeps the
// last four new origins.
func TestOrigins(t *testing.T) {
	agent := NewSeenSet(64)
	var o Origins
	t0 := int64(1_750_000_000) * 1e9
	call := func(cred, src string, at time.Duration) uint16 {
		t.Helper()
		e := Event{TargetID: []byte("ledger"), Action: []byte("read"), CredentialID: []byte(cred), SrcIP: []byte(src), TS: t0 + int64(at)}
		flags, _ := Observe(&e, &agent, nil, nil, &o)
		return flags & (NewOrigin | KnownOrigin)
	}
	// The agent's own: its first origin is new too (the detector passes no
	// Origins for an agent's first day), so start from a known history.
	call("x509:own", "10.0.0.1", 0)
	o = Origins{}
	steps := []struct {
		cred, src string
		at        time.Duration
		want      uint16
	}{
		{"x509:own", "10.0.0.1", time.Minute, KnownOrigin},
		{"x509:rotated", "10.0.0.1", 2 * time.Minute, 0}, // rotation: known address
		{"x509:rotated", "10.0.0.1", 3 * time.Minute, KnownOrigin},
		{"x509:own", "10.0.7.2", 3 * time.Minute, 0}, // new instance: known credential, known network
		{"x509:own", "10.0.7.2", 4 * time.Minute, KnownOrigin},
		{"key:stolen", "10.9.9.9", 4 * time.Minute, 0},       // both new together, and a new network: recorded
		{"key:stolen", "10.9.9.9", 8 * time.Minute, 0},       // within the grace
		{"key:stolen", "10.9.9.9", time.Hour, NewOrigin},     // and its calls after
		{"x509:own", "10.0.0.1", time.Hour, KnownOrigin},     // the agent's own calls alongside
		{"key:stolen", "10.0.0.1", 2 * time.Hour, NewOrigin}, // the new credential from elsewhere
		{"x509:own", "10.9.8.8", 2 * time.Hour, NewOrigin},   // the new network, with the agent's own token
		{"key:stolen", "10.9.9.9", 23 * time.Hour, NewOrigin},
		{"key:stolen", "10.9.9.9", 25 * time.Hour, KnownOrigin}, // a day on: no longer new
		{"x509:own", "10.9.8.8", 26 * time.Hour, KnownOrigin},
		// The agent's own token from a network it never used.
		{"x509:own", "192.168.4.4", 27 * time.Hour, 0},
		{"x509:own", "192.168.4.5", 28 * time.Hour, NewOrigin},
		{"x509:own", "10.0.0.1", 28 * time.Hour, KnownOrigin},
	}
	for i, s := range steps {
		if got := call(s.cred, s.src, s.at); got != s.want {
			t.Errorf("step %d (%s from %s at %v): flags %b, want %b", i, s.cred, s.src, s.at, got, s.want)
		}
	}
	o = Origins{}
	for i := range 5 {
		call(fmt.Sprintf("key:%d", i), fmt.Sprintf("10.8.0.%d", i), 30*time.Hour+time.Duration(i)*time.Minute)
	}
	if call("key:0", "10.8.0.0", 31*time.Hour) != KnownOrigin || call("key:4", "10.8.0.4", 31*time.Hour) != NewOrigin {
		t.Error("a fifth origin does not push out the oldest")
	}
}

// The network of an address: a /16, a /48, nothing for a name.
func TestNetwork(t *testing.T) {
	for _, tc := range []struct{ addr, want string }{
		{"10.51.14.213", "10.51"},
		{"2001:db8:85a3:8d3:1319:8a2e:370:7348", "2001:db8:85a3"},
		{"fd00::1", "fd00:"},
		{"::ffff:10.1.2.3", "10.1"},
		{"build-7.ci.bank.example", ""},
		{"cafe.beef.10.1", ""},
		{"10.51.14", ""},
		{"localhost", ""},
	} {
		n, ok := network([]byte(tc.addr))
		if string(n) != tc.want || ok != (tc.want != "") {
			t.Errorf("network(%q) = %q, %v; want %q", tc.addr, n, ok, tc.want)
		}
	}
}

// A window counts calls from new origins only beside known ones: an agent
// moved wholesale to new hosts and credentials leaves none.
func TestOriginShareNeedsKnownCalls(t *testing.T) {
	var w Window
	w.Reset(1)
	e := Event{CredentialID: []byte("c"), SrcIP: []byte("s")}
	w.Add(&e, NewOrigin, 0)
	w.Add(&e, NewOrigin, 0)
	if v := w.Vector(int64(time.Minute)); v.Value[NewOriginShare] != 0 || v.Trials[NewOriginShare] != 2 {
		t.Errorf("new pairs alone: %v of %v, want 0 of 2", v.Value[NewOriginShare], v.Trials[NewOriginShare])
	}
	w.Add(&e, KnownOrigin, 0)
	if v := w.Vector(int64(time.Minute)); v.Value[NewOriginShare] != 2 || v.Trials[NewOriginShare] != 3 {
		t.Errorf("beside a known pair: %v of %v, want 2 of 3", v.Value[NewOriginShare], v.Trials[NewOriginShare])
	}
}

// A known address records its network without flagging it, as after an
// upgrade from a version that kept no networks: a new instance in that
// network is then not in a new network, while an address elsewhere is.
func TestNetworkOfKnownAddress(t *testing.T) {
	agent := NewSeenSet(64)
	agent.Observe(uint32(Hash64([]byte("10.0.0.1"), seedSource) >> 32)) // known before networks were kept
	call := func(src string) uint16 {
		e := Event{TargetID: []byte("ledger"), Action: []byte("read"), SrcIP: []byte(src)}
		flags, _ := Observe(&e, &agent, nil, nil, nil)
		return flags & (NewSource | NewNetwork)
	}
	if f := call("10.0.0.1"); f != 0 {
		t.Errorf("known address: flags %b", f)
	}
	if f := call("10.0.3.3"); f != NewSource {
		t.Errorf("new address in its network: flags %b, want NewSource only", f)
	}
	if f := call("10.9.3.3"); f != NewSource|NewNetwork {
		t.Errorf("new address elsewhere: flags %b, want NewSource|NewNetwork", f)
	}
}
