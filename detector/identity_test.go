package detector

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/vigil-sec/vigil/features"
)

// idEvent is one event of a made-up identity, as its producer would write it.
func idEvent(id string, n int, agent, class string, at time.Time, target, action, data, decision string, bytesOut int) []byte {
	cls := ""
	if class != "" {
		cls = fmt.Sprintf(`,"agent_class":%q`, class)
	}
	return fmt.Appendf(nil, `{"event_id":"%s-%d","ts":%q,"agent_id":%q%s,"target_id":%q,"action":%q,"decision":%q,"data_class":%q,"status":"ok","bytes_out":%d,"credential_id":"cred-%s","auth":"mtls","attested":true,"src_ip":"10.9.9.9"}`,
		id, n, at.UTC().Format(time.RFC3339Nano), agent, cls, target, action, decision, data, bytesOut, id)
}

// etLineTime is the event time of a fleet line.
func etLineTime(t *testing.T, line []byte) time.Time {
	t.Helper()
	m := etTS.FindSubmatch(line)
	if m == nil {
		return time.Time{}
	}
	ts, _ := time.Parse(time.RFC3339Nano, string(m[1])) // the simulator writes some bad ones
	return ts
}

// Impostors: never-seen identities that claim a peer group nobody has, or
// none (their derived group is new too), exfiltrate restricted data in a
// fleet with two days of history. Before, neither their own baseline nor
// their group's was warm and they were never scored: 0 of 3 alerted. Now
// each raises a new_identity notice and is alerted on, scored against the
// fleet's prior.
func TestImpostorsInNewGroupsAreScored(t *testing.T) {
	lines := etFleet(t)
	start := etLineTime(t, lines[0])
	from := start.Add(50 * time.Hour)
	impostors := []struct{ agent, class string }{
		{"spiffe://bank.example/agent/shadow-admin-01", "shadow-admin"},
		{"spiffe://bank.example/agent/ledger-sync-07", ""}, // derived group "ledger-sync": new
		{"spiffe://bank.example/agent/x-7f3a", "tooling"},
	}
	var extra [][]byte
	for k, imp := range impostors {
		at := from.Add(time.Duration(k) * time.Hour)
		for i := range 120 {
			decision := "allow"
			if i%4 == 0 {
				decision = "deny"
			}
			extra = append(extra, idEvent(fmt.Sprintf("imp%d", k), i, imp.agent, imp.class, at.Add(time.Duration(i)*5*time.Second),
				fmt.Sprintf("core-ledger-%d", i%9), "records.export", "restricted", decision, 2_000_000))
		}
	}
	var alerts []*Alert
	p, err := NewPipeline(DefaultConfig(), func(a *Alert) { alerts = append(alerts, a) })
	if err != nil {
		t.Fatal(err)
	}
	merged := mergeByTime(t, lines, extra)
	for _, l := range merged {
		_ = p.Process(l)
	}
	p.Flush()
	for _, imp := range impostors {
		var notice bool
		var worst *Alert
		for _, a := range alerts {
			if a.AgentID != imp.agent {
				continue
			}
			if a.Kind == KindNewIdentity {
				notice = true
			} else if worst == nil || a.Score > worst.Score {
				worst = a
			}
		}
		if !notice {
			t.Errorf("%s: no new_identity notice", imp.agent)
		}
		if worst == nil || worst.Severity < SeverityWarning {
			t.Errorf("%s: not alerted on", imp.agent)
			continue
		}
		t.Logf("%s: %s %s score %.1f, baseline %s", imp.agent, worst.Severity, worst.Kind, worst.Score, worst.Baseline.Source)
		if worst.Baseline.Source != SourceFleet {
			t.Errorf("%s: baseline %s, want the fleet's prior", imp.agent, worst.Baseline.Source)
		}
	}
}

// mergeByTime inserts extra lines (in time order) among lines by event time.
func mergeByTime(t *testing.T, lines, extra [][]byte) [][]byte {
	t.Helper()
	var out [][]byte
	j := 0
	for _, l := range lines {
		ts := etLineTime(t, l)
		for j < len(extra) && !ts.IsZero() && etLineTime(t, extra[j]).Before(ts) {
			out = append(out, extra[j])
			j++
		}
		out = append(out, l)
	}
	return append(out, extra[j:]...)
}

// A reused event_id with other content is a conflict, dead-lettered and
// counted, never dropped as a duplicate: before, an attacker replaying
// real ids in forged events made 20k real events vanish (recall 11/24).
// Redelivery (same id, same bytes) is still a duplicate.
func TestReusedEventIDIsAConflict(t *testing.T) {
	lines := etFleet(t)[:20000]
	p, err := NewPipeline(DefaultConfig(), nil)
	if err != nil {
		t.Fatal(err)
	}
	conflicts, dups := 0, 0
	for i, l := range lines {
		if i%10 == 9 && i > 1000 {
			// A forged event reusing a recent real id, sent first.
			forged := etAgent.ReplaceAll(l, []byte(`"agent_id":"spiffe://bank.example/agent/ghost-1"`))
			if err := p.Process(forged); err != nil {
				continue // the simulator's own redelivery or bad line: its id is taken
			}
			// The real one now conflicts: it is a dead letter, not a silent drop.
			err := p.Process(l)
			var fe *features.FieldError
			if !errors.As(err, &fe) || fe.Reason != features.ReasonConflict {
				t.Fatalf("reused id with other content: %v", err)
			}
			conflicts++
			continue
		}
		if err := p.Process(l); err == nil && i%100 == 0 {
			if err := p.Process(l); err != nil { // redelivered
				t.Fatalf("redelivery: %v", err)
			}
			dups++
		}
	}
	st := p.Stats()
	// (≥: the simulator's own redeliveries of an id taken by a forgery
	// conflict too.)
	if st.Invalid[features.ReasonConflict] < int64(conflicts) || st.Duplicates < int64(dups) {
		t.Errorf("conflicts %d (want %d), duplicates %d (want ≥ %d)", st.Invalid[features.ReasonConflict], conflicts, st.Duplicates, dups)
	}
}

// A flood of made-up identities and peer groups (issue 17 items 5 and 6):
// memory stays bounded — new identities held at once and groups are
// capped, the rest are dead letters "identity_limit" or join the overflow
// group — and their alerts are one identity_flood alert an hour, not one
// each. Before: 250k forged events under made-up ids made 52k critical
// alerts, and 100k groups took 2.9–3.8 GiB, with nothing raised.
func TestIdentityFloodIsBoundedAndFolded(t *testing.T) {
	lines := etFleet(t)
	start := etLineTime(t, lines[0])
	cfg := DefaultConfig()
	cfg.MaxNewAgents, cfg.MaxClasses = 500, 60
	var alerts []*Alert
	p, err := NewPipeline(cfg, func(a *Alert) { alerts = append(alerts, a) })
	if err != nil {
		t.Fatal(err)
	}
	from := start.Add(50 * time.Hour)
	var extra [][]byte
	const ids = 5000
	for i := range ids {
		class := "fraud-scorer" // an existing group: made-up ids judged by it
		if i%2 == 1 {
			class = fmt.Sprintf("made-up-%d", i) // a new group each
		}
		at := from.Add(time.Duration(i) * 200 * time.Millisecond)
		for j := range 3 {
			extra = append(extra, idEvent(fmt.Sprintf("fl%d", i), j, fmt.Sprintf("spiffe://bank.example/agent/flood-%d", i), class,
				at.Add(time.Duration(j)*time.Millisecond), "vault", "secrets.read", "restricted", "deny", 5_000_000))
		}
	}
	before := 0
	merged := mergeByTime(t, lines, extra)
	limited := 0
	for _, l := range merged {
		if err := p.Process(l); errors.Is(err, ErrIdentityLimit) {
			limited++
		}
		if before == 0 && etLineTime(t, l).After(from) {
			before = p.NumAgents()
		}
	}
	p.Flush()
	st := p.Stats()
	if st.IdentityLimit == 0 || limited == 0 {
		t.Error("no new identity was refused: the bound did not hold")
	}
	if n := st.Agents - before; n > cfg.MaxNewAgents+50 {
		t.Errorf("%d agents added by the flood, bound %d", n, cfg.MaxNewAgents)
	}
	if st.Classes > cfg.MaxClasses+1 {
		t.Errorf("%d peer groups, bound %d (+ the overflow group)", st.Classes, cfg.MaxClasses)
	}
	perFlood, floods := 0, 0
	floodIDs := map[string]bool{}
	for _, a := range alerts {
		switch {
		case a.Kind == KindIdentityFlood:
			floods++
			floodIDs[a.AlertID] = true
			if !strings.Contains(fmt.Sprint(a.Reasons), "identity_alerts_folded") {
				t.Errorf("flood alert without its count: %+v", a.Reasons)
			}
		case strings.Contains(a.AgentID, "/flood-"):
			perFlood++
		}
	}
	hours := int(time.Duration(ids)*200*time.Millisecond/time.Hour) + 2
	if perFlood > identityBurst*hours {
		t.Errorf("%d alerts on flood identities one by one, want at most %d an hour", perFlood, identityBurst)
	}
	if floods == 0 || st.Folded == 0 {
		t.Errorf("no identity_flood alert (folded %d)", st.Folded)
	}
	// One identity_flood alert an hour (the same alert_id, re-sent as
	// the count doubles: Alertmanager and ClickHouse keep one).
	if span := int(etLineTime(t, lines[len(lines)-1]).Sub(from)/time.Hour) + 2; len(floodIDs) > span {
		t.Errorf("%d distinct identity_flood alerts over %d hours", len(floodIDs), span)
	}
	t.Logf("%d flood events: %d events refused (identity_limit), %d agents added, %d groups; %d alerts one by one, %d identity_flood alerts (%d distinct) for %d folded",
		len(extra), st.IdentityLimit, st.Agents-before, st.Classes, perFlood, floods, len(floodIDs), st.Folded)
}
