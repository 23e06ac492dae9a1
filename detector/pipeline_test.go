package detector

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigil-sec/vigil/features"
	"github.com/vigil-sec/vigil/sim"
)

var t0 = time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC) // a Monday

type ev struct {
	id, agent, class, target, action, decision string
	cred, src                                  string // omitted when empty
	ts                                         time.Time
	bytesOut                                   int
}

func (e ev) json() string {
	if e.decision == "" {
		e.decision = "allow"
	}
	if e.class == "" {
		e.class = "worker"
	}
	extra := ""
	if e.cred != "" {
		extra += fmt.Sprintf(`,"credential_id":%q`, e.cred)
	}
	if e.src != "" {
		extra += fmt.Sprintf(`,"src_ip":%q`, e.src)
	}
	return fmt.Sprintf(`{"event_id":%q,"ts":%q,"agent_id":%q,"agent_class":%q,"target_id":%q,"action":%q,"decision":%q,"status":"ok","bytes_out":%d,"auth":"mtls","attested":true%s}`,
		e.id, e.ts.UTC().Format(time.RFC3339Nano), e.agent, e.class, e.target, e.action, e.decision, e.bytesOut, extra)
}

// fleet writes n agents' steady traffic (about perHour events an hour each,
// to their usual three targets) from start for d, in time order.
func fleet(n int, perHour float64, start time.Time, d time.Duration, seed uint64) []ev {
	rng := rand.New(rand.NewPCG(seed, 1))
	var out []ev
	gap := time.Duration(float64(time.Hour) / (perHour * float64(n)))
	i := 0
	for ts := start; ts.Before(start.Add(d)); ts = ts.Add(time.Duration(rng.ExpFloat64() * float64(gap))) {
		a := rng.IntN(n)
		out = append(out, ev{
			id: fmt.Sprintf("e%d-%d", seed, i), agent: fmt.Sprintf("spiffe://bank.example/agent/worker-%02d", a),
			target: fmt.Sprintf("svc-%d", rng.IntN(3)), action: fmt.Sprintf("op.%d", rng.IntN(2)),
			ts: ts, bytesOut: 800 + rng.IntN(400),
		})
		i++
	}
	return out
}

func run(t *testing.T, cfg Config, events []ev) ([]*Alert, *Pipeline) {
	t.Helper()
	var alerts []*Alert
	p, err := NewPipeline(cfg, func(a *Alert) { alerts = append(alerts, a) })
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range events {
		if err := p.Process([]byte(e.json())); err != nil {
			t.Fatalf("event %s: %v", e.id, err)
		}
	}
	p.Flush()
	return alerts, p
}

// Steady agents raise nothing; one that suddenly calls twenty targets it never
// used, many times a minute, is alerted critical before its window closes.
func TestPipelineDetectsLateralMovementEarly(t *testing.T) {
	events := fleet(8, 60, t0, 4*24*time.Hour, 1)
	quiet, _ := run(t, DefaultConfig(), events)
	if len(quiet) != 0 {
		t.Errorf("steady fleet raised %d alerts, first: %+v", len(quiet), quiet[0])
	}

	attack := t0.Add(4*24*time.Hour + 10*time.Hour + 90*time.Second)
	victim := "spiffe://bank.example/agent/worker-03"
	more := fleet(8, 60, t0.Add(4*24*time.Hour), 12*time.Hour, 2)
	var mixed []ev
	for i := range 40 {
		mixed = append(mixed, ev{id: fmt.Sprintf("atk-%d", i), agent: victim, target: fmt.Sprintf("core-%d", i%20),
			action: "admin.export", ts: attack.Add(time.Duration(i) * 3 * time.Second), bytesOut: 900})
	}
	all := merge(append(events, more...), mixed)
	alerts, p := run(t, DefaultConfig(), all)
	var hit *Alert
	for _, a := range alerts {
		if a.AgentID == victim {
			hit = a
			break
		}
		t.Errorf("alert on a steady agent: %+v", a)
	}
	if hit == nil {
		t.Fatalf("no alert on the attacked agent; stats %+v", p.Stats())
	}
	t.Logf("alert: %s %s score %.1f detected %v reasons %+v", hit.Severity, hit.Kind, hit.Score, hit.DetectedAt, hit.Reasons)
	if hit.Severity != SeverityCritical || hit.Kind != KindNovelAccess {
		t.Errorf("alert severity %v kind %q, want critical novel_access", hit.Severity, hit.Kind)
	}
	if !hit.DetectedAt.Before(hit.WindowEnd) {
		t.Errorf("detected at %v, not before its window ends at %v: early decision did not fire", hit.DetectedAt, hit.WindowEnd)
	}
	if d := hit.DetectedAt.Sub(attack); d > 2*time.Minute {
		t.Errorf("detected %v after the attack began, want within 2m of event time", d)
	}
	if len(hit.Reasons) == 0 || hit.Reasons[0].Z < 3 {
		t.Errorf("reasons %+v: want a ranked, significant first reason", hit.Reasons)
	}
	seen := map[string]bool{}
	for _, a := range alerts {
		if seen[a.AlertID] {
			t.Errorf("alert id %s emitted twice", a.AlertID)
		}
		seen[a.AlertID] = true
	}
}

func merge(a, b []ev) []ev {
	out := append(append([]ev(nil), a...), b...)
	// insertion by time is enough for test sizes
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].ts.Before(out[j-1].ts); j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

func TestPipelineLateDuplicateInvalid(t *testing.T) {
	p, err := NewPipeline(DefaultConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	base := ev{id: "a", agent: "agent-1", target: "t", action: "x", ts: t0}
	must := func(e ev, want error) {
		t.Helper()
		err := p.Process([]byte(e.json()))
		if (want == nil) != (err == nil) || (want != nil && !errors.Is(err, want)) {
			t.Fatalf("event %s: got %v, want %v", e.id, err, want)
		}
	}
	must(base, nil)
	must(base, nil) // duplicate: dropped, counted, not an error
	b := base
	b.id, b.ts = "b", t0.Add(20*time.Minute) // closes the first window
	must(b, nil)
	c := base
	c.id, c.ts = "c", t0.Add(30*time.Second) // its window closed: late
	must(c, ErrLate)
	d := base
	d.id, d.ts = "d", t0.Add(20*time.Minute-30*time.Second) // within allowed lateness
	must(d, nil)
	if err := p.Process([]byte(`{"event_id":"x"}`)); !errors.Is(err, features.ErrInvalidEvent) {
		t.Fatalf("invalid event: %v", err)
	}
	s := p.Stats()
	if s.Events != 3 || s.Duplicates != 1 || s.Late != 1 || s.Invalid[features.ReasonMissingField] != 1 {
		t.Errorf("stats %+v", s)
	}
	if s.Windows != 1 {
		t.Errorf("windows closed %d, want 1", s.Windows)
	}
}

func TestPolicySeverity(t *testing.T) {
	pol := DefaultConfig().Policy
	for _, tc := range []struct {
		score   float64
		persist int
		want    Severity
	}{
		{0, 0, SeverityNone},
		{39.9, 0, SeverityNone},
		{40, 0, SeverityInfo},
		{60, 1, SeverityWarning},
		{60, 2, SeverityCritical},
		{79, 1, SeverityWarning},
		{80, 0, SeverityCritical},
		{100, 5, SeverityCritical},
	} {
		if got := pol.Severity(tc.score, tc.persist); got != tc.want {
			t.Errorf("Severity(%v, %d) = %v, want %v", tc.score, tc.persist, got, tc.want)
		}
	}
}

func TestAlertIDStable(t *testing.T) {
	a := AlertID("agent-1", t0.UnixNano(), KindVolume)
	if a != AlertID("agent-1", t0.UnixNano(), KindVolume) || len(a) != 32 {
		t.Fatalf("alert id %q not stable or not 32 hex digits", a)
	}
	for _, other := range []string{
		AlertID("agent-2", t0.UnixNano(), KindVolume),
		AlertID("agent-1", t0.Add(5*time.Minute).UnixNano(), KindVolume),
		AlertID("agent-1", t0.UnixNano(), KindNovelAccess),
	} {
		if other == a {
			t.Errorf("different agent/window/kind gave the same id %s", a)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for name, mod := range map[string]func(*Config){
		"lateness":  func(c *Config) { c.AllowedLateness = 10 * time.Minute },
		"policy":    func(c *Config) { c.Policy.WarningScore = 90 },
		"persist":   func(c *Config) { c.Policy.PersistWindows = 0 },
		"severity":  func(c *Config) { c.Policy.MinSeverity = SeverityNone },
		"seen":      func(c *Config) { c.AgentSeenSlots = 1 },
		"model":     func(c *Config) { c.Model.WarmWindows = 0 },
		"dedup cap": func(c *Config) { c.DedupCapacity = 0 },
	} {
		c := DefaultConfig()
		mod(&c)
		err := c.Validate()
		var ce *ConfigError
		if !errors.As(err, &ce) {
			t.Errorf("%s: got %v, want a ConfigError naming the field", name, err)
		}
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestReplayReportsBadLinesAndContinues(t *testing.T) {
	e1 := ev{id: "1", agent: "a", target: "t", action: "x", ts: t0}.json()
	e2 := ev{id: "2", agent: "a", target: "t", action: "x", ts: t0.Add(time.Second)}.json()
	long := `{"event_id":"` + strings.Repeat("x", 2<<20) + `"}`
	input := strings.Join([]string{e1, "", "not json", long, `{"event_id":"3","ts":"yesterday"}`, e2, ""}, "\n")
	p, _ := NewPipeline(DefaultConfig(), nil)
	var bad []int64
	err := Replay(context.Background(), strings.NewReader(input), p, func(line int64, err error) {
		bad = append(bad, line)
		if !errors.Is(err, features.ErrInvalidEvent) {
			t.Errorf("line %d: %v does not wrap ErrInvalidEvent", line, err)
		}
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(bad) != "[3 4 5]" {
		t.Errorf("bad lines %v, want [3 4 5]", bad)
	}
	if s := p.Stats(); s.Events != 2 || s.Windows != 1 {
		t.Errorf("stats %+v, want 2 events in 1 window", s)
	}
}

func TestNewAgentScoredAgainstPeersNotAlerted(t *testing.T) {
	events := fleet(8, 60, t0, 3*24*time.Hour, 3)
	// A ninth worker joins on day 3 and behaves like the others.
	newcomer := fleet(1, 60, t0.Add(3*24*time.Hour), 12*time.Hour, 4)
	for i := range newcomer {
		newcomer[i].agent = "spiffe://bank.example/agent/worker-99"
	}
	rest := fleet(8, 60, t0.Add(3*24*time.Hour), 12*time.Hour, 5)
	alerts, p := run(t, DefaultConfig(), merge(append(events, rest...), newcomer))
	notices := 0
	for _, a := range alerts {
		if a.Kind == KindNewIdentity && a.Severity == SeverityInfo && a.AgentID == newcomer[0].agent {
			notices++ // its arrival is noticed, not alerted on
			continue
		}
		t.Errorf("unexpected alert %+v", a)
	}
	if notices != 1 {
		t.Errorf("%d new_identity notices for the newcomer, want 1", notices)
	}
	if s := p.Stats(); s.ColdWindows > 20*8 {
		t.Errorf("%d cold windows: the newcomer should be scored against its peers", s.ColdWindows)
	}
}

// min_severity filters what is emitted, never what is detected: a run that
// also prints info alerts prints the same warnings and criticals.
func TestMinSeverityOnlyFilters(t *testing.T) {
	lines := simLines(t, sim.Config{Seed: 4, Agents: 18, Days: 3, WarmupDays: 1, Incidents: 5})
	alertsAt := func(min Severity) (all []*Alert) {
		cfg := DefaultConfig()
		cfg.Policy.MinSeverity = min
		p, err := NewPipeline(cfg, func(a *Alert) { all = append(all, a) })
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range lines {
			p.Process(l)
		}
		p.Flush()
		// Identity notices (info) are emitted whatever min_severity says.
		return slices.DeleteFunc(all, func(a *Alert) bool { return a.Kind == KindNewIdentity })
	}
	want := alertsAt(SeverityWarning)
	var got []*Alert
	info := 0
	for _, a := range alertsAt(SeverityInfo) {
		if a.Severity >= SeverityWarning {
			got = append(got, a)
		} else {
			info++
		}
	}
	if len(want) == 0 || info == 0 {
		t.Fatalf("%d warnings or worse, %d info alerts: the scenario needs both", len(want), info)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("with min_severity info: %d alerts at warning or worse, want the %d of a warning run", len(got), len(want))
	}
}

// A new agent's own credential and address are new to its peer group by
// necessity and do not count as new to the group while it is young; a
// target none of its peers uses does.
func TestYoungAgentIdentityNotNewToPeers(t *testing.T) {
	withIdentity := func(evs []ev) []ev {
		for i := range evs {
			evs[i].cred = "cert:" + evs[i].agent
			evs[i].src = "10.1.0." + evs[i].agent[len(evs[i].agent)-2:]
		}
		return evs
	}
	start := t0.Add(3 * 24 * time.Hour)
	events := withIdentity(fleet(8, 60, t0, 3*24*time.Hour+time.Hour, 3))
	like := withIdentity(fleet(1, 60, start, time.Hour, 4))
	odd := withIdentity(fleet(1, 60, start, time.Hour, 5))
	for i := range like {
		like[i].agent, like[i].cred, like[i].src = "spiffe://bank.example/agent/worker-98", "cert:98", "10.1.0.98"
	}
	for i := range odd {
		odd[i].agent, odd[i].cred, odd[i].src = "spiffe://bank.example/agent/worker-99", "cert:99", "10.1.0.99"
		if i%3 == 0 {
			odd[i].target = fmt.Sprintf("svc-unknown-%d", i)
		}
	}
	peerNew := map[string]float64{}
	p, err := NewPipeline(DefaultConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	p.OnWindow(func(w *WindowScore) { peerNew[w.AgentID] += w.Vector.Value[features.NewToPeers] })
	for _, e := range merge(events, merge(like, odd)) {
		if err := p.Process([]byte(e.json())); err != nil {
			t.Fatal(err)
		}
	}
	p.Flush()
	if n := peerNew["spiffe://bank.example/agent/worker-98"]; n != 0 {
		t.Errorf("a newcomer like its peers: %v items new to the group, want 0", n)
	}
	if n := peerNew["spiffe://bank.example/agent/worker-99"]; n < 5 {
		t.Errorf("a newcomer calling unknown targets: %v items new to the group, want its targets", n)
	}
}

// A deployment rolls out over half an hour: every agent of the group moves,
// one after another, to a new service with a new action. Once a few have
// moved, the others' first sight of it and their changed action mix are the
// group's change, not theirs: they are not alerted (the first movers,
// alone with it, may be when they move).
func TestRolloutAcrossWindowsIsFleetWide(t *testing.T) {
	const n = 16
	start := t0.Add(3 * 24 * time.Hour)
	events := fleet(n, 120, t0, 3*24*time.Hour+2*time.Hour, 7)
	moved := func(agent string) (time.Time, int) {
		var i int
		fmt.Sscanf(agent[len(agent)-2:], "%d", &i)
		return start.Add(time.Duration(i) * 2 * time.Minute), i
	}
	for k := range events {
		if at, _ := moved(events[k].agent); !events[k].ts.Before(at) {
			events[k].target, events[k].action = "svc-v3", "op.batch"
		}
	}
	var alerts []*Alert
	p, err := NewPipeline(DefaultConfig(), func(a *Alert) { alerts = append(alerts, a) })
	if err != nil {
		t.Fatal(err)
	}
	// The movers after the fifth: is their first sight of the new service
	// still scored as theirs alone?
	alone := 0
	p.OnWindow(func(w *WindowScore) {
		if _, i := moved(w.AgentID); i >= 5 && w.Vector.Value[features.NewTargets] > 0 && w.Result.Z[features.NewTargets] > 1.5 {
			alone++
		}
	})
	for _, e := range events {
		if err := p.Process([]byte(e.json())); err != nil {
			t.Fatal(err)
		}
	}
	p.Flush()
	if alone != 0 {
		t.Errorf("%d later movers' first sight of the new service scored as their own (z > 1.5), want none", alone)
	}
	late := 0
	for _, a := range alerts {
		if !a.WindowStart.Before(start.Add(15 * time.Minute)) {
			late++
			t.Logf("%s %s %.1f %v", a.AgentID, a.WindowStart.UTC().Format("15:04"), a.Score, a.Reasons[0])
		}
	}
	if late != 0 {
		t.Errorf("%d alerts from a quarter of an hour into the rollout (seven agents moved), want none", late)
	}
}

// A credential the agent never used, presented from an address it never
// called from, or the agent's own credential from a network it never called
// from, alongside the agent's own calls (a stolen credential or token used
// from the thief's host, authenticated like the real one) is alerted while it
// lasts; a rotated credential from the usual addresses and a new instance's
// address in the usual network with the usual credential are not.
func TestPipelineDetectsNewOrigin(t *testing.T) {
	for _, tc := range []struct{ name, cred, src string }{
		{"a foreign credential from a new address", "x509:stolen", "10.66.6.6"},
		{"the agent's own token from a new network", "", "192.168.66.6"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			events := fleet(8, 60, t0, 4*24*time.Hour, 3)
			day3 := t0.Add(3 * 24 * time.Hour)
			theft, rotation, instance := day3.Add(10*time.Hour), day3.Add(9*time.Hour), day3.Add(11*time.Hour)
			rng := rand.New(rand.NewPCG(3, 4))
			for i := range events {
				e := &events[i]
				n := e.agent[len(e.agent)-2:]
				e.cred, e.src = "x509:worker-"+n, fmt.Sprintf("10.0.%s.%d", n, 1+rng.IntN(2))
				switch {
				case strings.HasSuffix(e.agent, "-03") && !e.ts.Before(theft) && e.ts.Before(theft.Add(2*time.Hour)) && rng.Float64() < 0.3:
					if tc.cred != "" {
						e.cred = tc.cred
					}
					e.src = tc.src
				case strings.HasSuffix(e.agent, "-05") && !e.ts.Before(rotation):
					e.cred = "x509:worker-05-v2"
				case strings.HasSuffix(e.agent, "-06") && !e.ts.Before(instance) && rng.Float64() < 0.5:
					e.src = "10.0.06.9"
				}
			}
			alerts, _ := run(t, DefaultConfig(), events)
			caught := false
			for _, a := range alerts {
				ws := a.WindowStart
				switch {
				case strings.HasSuffix(a.AgentID, "-03") && !ws.Before(theft.Truncate(5*time.Minute)) && ws.Before(theft.Add(2*time.Hour)):
					caught = caught || strings.HasPrefix(a.Reasons[0].Feature, "new_origin_share")
				default:
					t.Errorf("alert outside the theft: %s %s score %.1f %s", a.AgentID, a.WindowStart, a.Score, a.Reasons[0].Feature)
				}
			}
			if !caught {
				t.Error("not alerted for its new origin")
			}
		})
	}
}

// An agent moving to new hosts with new workload credentials (a
// re-platforming) replaces its credential and addresses: nothing known is
// left beside the new pair, and it is not alerted — alone, or with every
// agent of its class over half an hour.
func TestPipelineReplatformNotAlerted(t *testing.T) {
	for _, tc := range []struct {
		name    string
		moves   func(agent string) bool
		rolling bool // its two instances move twenty minutes apart
	}{
		{"one agent", func(a string) bool { return strings.HasSuffix(a, "-02") }, false},
		{"the whole class", func(string) bool { return true }, false},
		{"one agent failing over to another network, same credential", func(a string) bool { return strings.HasSuffix(a, "-02") }, false},
		// Old and new instances run side by side for twenty minutes: the
		// new pairs beside known ones are the group's once three agents
		// show them (the first movers, alone with the change, may be
		// alerted, as for deployments).
		{"the whole class, instance by instance", func(string) bool { return true }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			events := fleet(8, 60, t0, 4*24*time.Hour, 5)
			move := t0.Add(3*24*time.Hour + 10*time.Hour)
			rng := rand.New(rand.NewPCG(5, 6))
			at := map[string]time.Time{}
			for i := range events {
				e := &events[i]
				n := e.agent[len(e.agent)-2:]
				if _, ok := at[n]; !ok {
					at[n] = move.Add(time.Duration(rng.Int64N(int64(30 * time.Minute))))
				}
				inst := 1 + rng.IntN(2)
				e.cred, e.src = "x509:worker-"+n, fmt.Sprintf("10.0.%s.%d", n, inst)
				from := at[n]
				if tc.rolling && inst == 2 {
					from = from.Add(20 * time.Minute)
				}
				if tc.moves(e.agent) && !e.ts.Before(from) {
					e.cred, e.src = "x509:v2-worker-"+n, fmt.Sprintf("10.7.%s.%d", n, inst)
					if strings.Contains(tc.name, "same credential") {
						e.cred = "x509:worker-" + n
					}
				}
			}
			alerts, _ := run(t, DefaultConfig(), events)
			alerted := map[string]bool{}
			for _, a := range alerts {
				alerted[a.AgentID] = true
				t.Logf("alert: %s %s score %.1f %s", a.AgentID, a.WindowStart, a.Score, a.Reasons[0].Feature)
			}
			first := 0 // first movers that may be alerted
			if tc.rolling {
				first = 2
			}
			if len(alerted) > first {
				t.Errorf("%d agents alerted, want at most %d", len(alerted), first)
			}
		})
	}
}
