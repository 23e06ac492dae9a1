package bench

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vigil-sec/vigil/sim"
)

var t0 = time.Date(2026, 3, 5, 10, 0, 0, 0, time.UTC)

// at returns t0 plus m minutes.
func at(m float64) time.Time { return t0.Add(time.Duration(m * float64(time.Minute))) }

const (
	agentA = "spiffe://bank.example/agent/payments-bot-01"
	agentB = "spiffe://bank.example/agent/payments-bot-02"
	agentC = "spiffe://bank.example/agent/kyc-agent-03"
)

// incident is a malicious incident on agentA over [t0, t0+60m) unless changed.
func incident(id, kind, agent string, start, end float64) sim.Incident {
	return sim.Incident{ID: id, Kind: kind, AgentID: agent, AgentClass: "payments-bot", Start: at(start), End: at(end)}
}

// alert is a 5-minute window alert detected one minute after its window ends.
func alert(id, agent string, start float64) Alert {
	return Alert{AlertID: id, AgentID: agent, Severity: "warning", Score: 70,
		WindowStart: at(start), WindowEnd: at(start + 5), DetectedAt: at(start + 6)}
}

func TestEvaluateMatching(t *testing.T) {
	grace := 5 * time.Minute
	truth := []sim.Incident{incident("inc-1", sim.KindExfiltration, agentA, 0, 60)}
	tests := []struct {
		name  string
		alert Alert
		match bool
	}{
		{"inside", alert("a", agentA, 10), true},
		{"straddles start", alert("a", agentA, -3), true},
		{"ends exactly at start", alert("a", agentA, -5), false},
		{"starts in grace", alert("a", agentA, 64.9), true},
		{"starts at end+grace", alert("a", agentA, 65), false},
		{"other agent", alert("a", agentB, 10), false},
		{"instant window inside", Alert{AlertID: "a", AgentID: agentA, WindowStart: at(30), WindowEnd: at(30)}, true},
		{"instant window at start", Alert{AlertID: "a", AgentID: agentA, WindowStart: at(0), WindowEnd: at(0)}, true},
		{"instant window before", Alert{AlertID: "a", AgentID: agentA, WindowStart: at(-1), WindowEnd: at(-1)}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := Evaluate(truth, []Alert{tc.alert}, grace, 10)
			if got := r.Detected == 1; got != tc.match {
				t.Fatalf("detected = %v, want %v", got, tc.match)
			}
			wantTrue, wantFalse := 0, 1
			if tc.match {
				wantTrue, wantFalse = 1, 0
			}
			if r.TrueAlerts != wantTrue || r.FalseAlerts != wantFalse || r.Alerts != 1 {
				t.Fatalf("true/false/all = %d/%d/%d, want %d/%d/1", r.TrueAlerts, r.FalseAlerts, r.Alerts, wantTrue, wantFalse)
			}
			if !tc.match && (len(r.Missed) != 1 || r.Missed[0].ID != "inc-1") {
				t.Fatalf("missed = %v, want inc-1", r.Missed)
			}
		})
	}
}

func TestEvaluateTTD(t *testing.T) {
	truth := []sim.Incident{incident("inc-1", sim.KindRunawayVolume, agentA, 0, 60)}
	tests := []struct {
		name   string
		alerts []Alert
		want   time.Duration
	}{
		{"one alert", []Alert{alert("a", agentA, 10)}, 16 * time.Minute},
		{"earliest detection wins", []Alert{alert("a", agentA, 30), alert("b", agentA, 2)}, 8 * time.Minute},
		{"detected before start clamps to 0", []Alert{{AlertID: "a", AgentID: agentA, WindowStart: at(-4), WindowEnd: at(1), DetectedAt: at(-1)}}, 0},
		{"missing detected_at uses window end", []Alert{{AlertID: "a", AgentID: agentA, WindowStart: at(20), WindowEnd: at(25)}}, 25 * time.Minute},
		{"re-emitted alert counted once, earliest", []Alert{alert("a", agentA, 10), {AlertID: "a", AgentID: agentA, WindowStart: at(10), WindowEnd: at(15), DetectedAt: at(15.5)}}, 15*time.Minute + 30*time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := Evaluate(truth, tc.alerts, time.Minute, 1)
			if r.TTDMedian != tc.want || r.TTDP90 != tc.want || r.PerKind[sim.KindRunawayVolume].TTDMedian != tc.want {
				t.Fatalf("TTD median/p90/kind = %v/%v/%v, want %v", r.TTDMedian, r.TTDP90, r.PerKind[sim.KindRunawayVolume].TTDMedian, tc.want)
			}
			if r.FalseAlerts != 0 || r.Alerts != r.TrueAlerts {
				t.Fatalf("alerts %d true %d false %d", r.Alerts, r.TrueAlerts, r.FalseAlerts)
			}
		})
	}
}

func TestEvaluateBenign(t *testing.T) {
	rotation := sim.Incident{ID: "ben-1", Kind: sim.KindCredentialRotation, AgentID: agentB, AgentClass: "payments-bot",
		Start: at(0), End: at(5000), Benign: true}
	deploy := sim.Incident{ID: "ben-2", Kind: sim.KindFleetDeployment, AgentID: "*", AgentClass: "kyc-agent",
		Start: at(0), End: at(5000), Benign: true}
	malicious := incident("inc-1", sim.KindLateralMovement, agentB, 100, 160)
	truth := []sim.Incident{rotation, deploy, malicious}
	crit := func(a Alert) Alert { a.Severity = "critical"; return a }
	noClass := alert("a", agentC, 30)
	withClass := alert("a", "spiffe://bank.example/agent/odd-name", 30)
	withClass.AgentClass = "kyc-agent"
	tests := []struct {
		name           string
		alert          Alert
		benign, crit   int
		false_         int
		benignKind     string
		detectedIncInc int
	}{
		{"rotated agent within 24h", alert("a", agentB, 30), 1, 0, 1, sim.KindCredentialRotation, 0},
		{"critical", crit(alert("a", agentB, 30)), 1, 1, 1, sim.KindCredentialRotation, 0},
		{"straddles 24h horizon", alert("a", agentB, 24*60-2), 1, 0, 1, sim.KindCredentialRotation, 0},
		{"after 24h", alert("a", agentB, 24*60), 0, 0, 1, "", 0},
		{"before the change", alert("a", agentB, -10), 0, 0, 1, "", 0},
		{"other agent of rotated class", alert("a", agentA, 30), 0, 0, 1, "", 0},
		{"fleet class derived from agent_id", noClass, 1, 0, 1, sim.KindFleetDeployment, 0},
		{"fleet class from agent_class", withClass, 1, 0, 1, sim.KindFleetDeployment, 0},
		{"true alert is not benign", crit(alert("a", agentB, 110)), 0, 0, 0, "", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := Evaluate(truth, []Alert{tc.alert}, 5*time.Minute, 100)
			if r.BenignAlerts != tc.benign || r.BenignCritical != tc.crit || r.FalseAlerts != tc.false_ || r.Detected != tc.detectedIncInc {
				t.Fatalf("benign %d critical %d false %d detected %d, want %d %d %d %d",
					r.BenignAlerts, r.BenignCritical, r.FalseAlerts, r.Detected, tc.benign, tc.crit, tc.false_, tc.detectedIncInc)
			}
			if tc.benignKind != "" && r.PerKind[tc.benignKind].Alerts != 1 {
				t.Fatalf("per-kind %s alerts = %d, want 1", tc.benignKind, r.PerKind[tc.benignKind].Alerts)
			}
			if r.Incidents != 1 {
				t.Fatalf("incidents = %d, want 1 (benign changes are not incidents)", r.Incidents)
			}
		})
	}
}

func TestEvaluateSummary(t *testing.T) {
	truth := []sim.Incident{
		incident("inc-1", sim.KindExfiltration, agentA, 0, 60),
		incident("inc-2", sim.KindExfiltration, agentB, 0, 60),
		incident("inc-3", sim.KindOffHours, agentA, 500, 530),
		incident("inc-4", sim.KindOffHours, agentB, 200, 230),
		{ID: "ben-1", Kind: sim.KindNewAgent, AgentID: agentC, AgentClass: "kyc-agent", Start: at(0), End: at(9000), Benign: true},
	}
	alerts := []Alert{
		alert("a1", agentA, 0),    // inc-1, TTD 6m
		alert("a2", agentA, 20),   // inc-1 again
		alert("a3", agentB, 40),   // inc-2, TTD 46m
		alert("a4", agentA, 510),  // inc-3, TTD 16m
		alert("a5", agentC, 100),  // false, on new agent
		alert("a6", agentA, 2000), // false
	}
	r := Evaluate(truth, alerts, 5*time.Minute, 200)
	checks := []struct {
		name      string
		got, want any
	}{
		{"incidents", r.Incidents, 4},
		{"detected", r.Detected, 3},
		{"recall", r.Recall, 0.75},
		{"alerts", r.Alerts, 6},
		{"true", r.TrueAlerts, 4},
		{"false", r.FalseAlerts, 2},
		{"precision", r.Precision, 4.0 / 6},
		{"false per agent-day", r.FalseAlertsPerAgentDay, 0.01},
		{"ttd median", r.TTDMedian, 16 * time.Minute},
		{"ttd p90", r.TTDP90, 46 * time.Minute},
		{"benign", r.BenignAlerts, 1},
		{"exfil", r.PerKind[sim.KindExfiltration], KindReport{Incidents: 2, Detected: 2, Recall: 1, TTDMedian: 6 * time.Minute, Alerts: 3}},
		{"off hours", r.PerKind[sim.KindOffHours], KindReport{Incidents: 2, Detected: 1, Recall: 0.5, TTDMedian: 16 * time.Minute, Alerts: 1}},
		{"new agent", r.PerKind[sim.KindNewAgent], KindReport{Benign: true, Incidents: 1, Alerts: 1}},
		{"missed", len(r.Missed) == 1 && r.Missed[0].ID == "inc-4", true},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}

	var buf bytes.Buffer
	if err := r.WriteTable(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"recall 75.0%", "precision 66.7%", "0.0100", "median 16m0s", "p90 46m0s",
		"exfiltration", "new_agent (benign)", "missed (1)", "inc-4", "off_hours"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Index(out, "off_hours") > strings.Index(out, "new_agent") {
		t.Errorf("malicious kinds should precede benign ones:\n%s", out)
	}
}

func TestEvaluateEmpty(t *testing.T) {
	r := Evaluate(nil, nil, time.Minute, 0)
	if r.Recall != 0 || r.Precision != 0 || r.FalseAlertsPerAgentDay != 0 || r.TTDMedian != 0 || len(r.Missed) != 0 {
		t.Fatalf("empty report not zero: %+v", r)
	}
	if err := r.WriteTable(&bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
}

func TestReadAlerts(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		n       int
		badLine int // 0: no error
	}{
		{"two alerts and a blank line", `{"alert_id":"x","agent_id":"` + agentA + `","agent_class":"payments-bot","kind":"volume","severity":"critical","score":91.5,"window_start":"2026-03-05T10:00:00Z","window_end":"2026-03-05T10:05:00Z","detected_at":"2026-03-05T10:05:01.250Z","reasons":[{"feature":"events","value":500,"expected":40,"z":9.1,"contribution":0.8}],"baseline":{"source":"agent","windows":120}}

{"alert_id":"y","agent_id":"` + agentB + `","window_start":"2026-03-05T10:00:00Z","window_end":"2026-03-05T10:05:00Z"}
`, 2, 0},
		{"empty", "", 0, 0},
		{"bad json", `{"alert_id":"x","agent_id":"a","window_start":"2026-03-05T10:00:00Z"}` + "\n{oops\n", 0, 2},
		{"bad time", `{"alert_id":"x","agent_id":"a","window_start":"yesterday"}`, 0, 1},
		{"missing agent", `{"alert_id":"x","window_start":"2026-03-05T10:00:00Z"}`, 0, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ReadAlerts(strings.NewReader(tc.in))
			if tc.badLine > 0 {
				if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "line "+string(rune('0'+tc.badLine))) {
					t.Fatalf("error %v, want ErrMalformed on line %d", err, tc.badLine)
				}
				return
			}
			if err != nil || len(got) != tc.n {
				t.Fatalf("got %d alerts, %v; want %d", len(got), err, tc.n)
			}
			if tc.n == 2 {
				a := got[0]
				if a.Score != 91.5 || a.Severity != "critical" || a.AgentClass != "payments-bot" ||
					!a.DetectedAt.Equal(time.Date(2026, 3, 5, 10, 5, 1, 250e6, time.UTC)) || a.WindowEnd.Sub(a.WindowStart) != 5*time.Minute {
					t.Fatalf("decoded %+v", a)
				}
			}
		})
	}
}

func TestReadTruth(t *testing.T) {
	var events, truth bytes.Buffer
	cfg := sim.DefaultConfig()
	cfg.Agents, cfg.Days, cfg.WarmupDays, cfg.Incidents, cfg.Rate = 6, 2, 1, 7, 0.05
	st, err := sim.Generate(cfg, &events, &truth)
	if err != nil {
		t.Fatal(err)
	}
	incs, err := ReadTruth(&truth)
	if err != nil {
		t.Fatal(err)
	}
	if len(incs) != st.Incidents+st.Benign || st.Incidents != 7 {
		t.Fatalf("read %d incidents, stats %+v", len(incs), st)
	}
	for _, inc := range incs {
		if inc.ID == "" || inc.Start.IsZero() || inc.End.Before(inc.Start) {
			t.Fatalf("bad incident %+v", inc)
		}
	}
	if _, err := ReadTruth(strings.NewReader(`{"incident_id":"x","kind":"off_hours"}`)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("missing agent_id: error %v, want ErrMalformed", err)
	}
}

// new_identity notices report an identity, not a behaviour: they are kept
// out of detection, precision and false alerts, and counted on their own.
func TestEvaluateNotices(t *testing.T) {
	truth := []sim.Incident{incident("inc-1", sim.KindExfiltration, agentA, 0, 60)}
	onIncident, elsewhere := alert("n1", agentA, 10), alert("n2", agentB, 10)
	onIncident.Kind, elsewhere.Kind = KindNewIdentity, KindNewIdentity
	r := Evaluate(truth, []Alert{onIncident, elsewhere, alert("a", agentA, 10)}, 5*time.Minute, 10)
	if r.Alerts != 1 || r.TrueAlerts != 1 || r.FalseAlerts != 0 || r.Notices != 2 || r.NoticesOnIncidents != 1 {
		t.Errorf("alerts %d (true %d, false %d), notices %d (on incidents %d); want 1 (1, 0), 2 (1)",
			r.Alerts, r.TrueAlerts, r.FalseAlerts, r.Notices, r.NoticesOnIncidents)
	}
	if r := Evaluate(truth, []Alert{onIncident}, 5*time.Minute, 10); r.Detected != 0 {
		t.Error("a notice alone detected the incident")
	}
}
