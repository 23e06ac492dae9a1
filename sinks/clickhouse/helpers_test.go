package clickhouse

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/features"
	"github.com/vigil-sec/vigil/models"
	"github.com/vigil-sec/vigil/sinks/sinktest"
)

// One clickhouse-server serves the package's tests (each in a database of
// its own), except those that stop it.
func TestMain(m *testing.M) {
	code := m.Run()
	sinktest.StopSharedClickHouse()
	os.Exit(code)
}

var dbSeq atomic.Int64

var nonWord = regexp.MustCompile(`[^A-Za-z0-9_]+`)

// newSink returns a Sink on a new database of t's own on srv, closed when t
// ends.
func newSink(t testing.TB, srv *sinktest.ClickHouse) (*Sink, Config) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Addr = []string{srv.Addr()}
	cfg.Database = fmt.Sprintf("t_%s_%d_%d", strings.ToLower(nonWord.ReplaceAllString(t.Name(), "_")), os.Getpid(), dbSeq.Add(1))
	s, err := New(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, cfg
}

// query runs sql in db with clickhouse-client and returns its output.
func query(t testing.TB, srv *sinktest.ClickHouse, db, sql string) string {
	t.Helper()
	out, err := srv.Run(sql, "--database", db)
	if err != nil {
		t.Fatalf("clickhouse-client: %v\n%s\nquery: %s", err, out, sql)
	}
	return out
}

// The fixture: four agents in 10-minute windows today (UTC) and one window
// ten days ago; three alerts, two revocation requests, and the outcomes
// the policy engine recorded for one of them. Every literal in
// deploy/clickhouse/queries.sql names something here.
const (
	agentPayments  = "spiffe://bank.example/agent/payments-bot-07"
	agentReporting = "spiffe://bank.example/agent/reporting-bot-02"
	agentLedger    = "spiffe://bank.example/agent/ledger-svc-01"
	agentTreasury  = "spiffe://bank.example/agent/treasury-bot-01"
	fixtureAlertID = "3f9a6c1e5b7d4e20a8c4f1d2b6e9a0c7" // the alert_id in queries.sql
	fixtureTopic   = "agent-events"
)

type fixture struct {
	day0      time.Time
	batches   []detector.Batch // partition 0, then partition 1
	alerts    []*detector.Alert
	revs      []*detector.Revocation
	payWindow detector.WindowRecord // the window behind fixtureAlertID
}

// ts is the start of the k-th 10-minute window of the fixture's day.
func (f *fixture) ts(k int) time.Time { return f.day0.Add(time.Duration(k) * 10 * time.Minute) }

type win struct {
	k                 int
	score             float64
	sev               detector.Severity
	events            int64
	newTargets, zNewT float64
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{day0: time.Now().UTC().Truncate(24 * time.Hour)}
	rec := func(agent, class string, start time.Time, w win, cold bool) detector.WindowRecord {
		r := detector.WindowRecord{
			AgentID: agent, AgentClass: class,
			Start: start.UnixNano(), End: start.Add(10 * time.Minute).UnixNano(),
			HourOfWeek: (int(start.Weekday())*24 + start.Hour()) % 168, Events: w.events,
			Score: w.score, Severity: w.sev, Cold: cold,
			Source: models.SourceAgent, BaselineWindows: 500,
		}
		if cold {
			r.Source, r.BaselineWindows = models.SourcePeerGroup, 0
			return r
		}
		for i := range features.NumFeatures {
			r.Scored[i] = true
		}
		r.Value[features.EventCount], r.Expected[features.EventCount] = float64(w.events), 120
		r.Value[features.NewTargets], r.Expected[features.NewTargets], r.Z[features.NewTargets] = w.newTargets, 0.25, w.zNewT
		return r
	}
	var p0, p1 []detector.WindowRecord
	for _, w := range []win{{0, 2, 0, 120, 0, 0}, {1, 3.5, 0, 118, 0, 0}, {2, 5, 0, 131, 0, 0},
		{3, 97, detector.SeverityCritical, 240, 4, 9.5}, {4, 40, detector.SeverityInfo, 150, 1, 2.25}, {5, 4, 0, 125, 0, 0}} {
		r := rec(agentPayments, "payments", f.ts(w.k), w, false)
		if w.k == 3 {
			r.Value[features.NewToPeers], r.Expected[features.NewToPeers], r.Z[features.NewToPeers] = 3, 0.125, 8.5
			r.Value[features.DistinctTargets], r.Expected[features.DistinctTargets], r.Z[features.DistinctTargets] = 0.375, 0.125, 3
			f.payWindow = r
		}
		p0 = append(p0, r)
	}
	p0 = append(p0, rec(agentPayments, "payments", f.day0.Add(-10*24*time.Hour), win{0, 99, detector.SeverityCritical, 400, 7, 12}, false))
	for _, w := range []win{{0, 10, 0, 40, 0, 0}, {1, 65, detector.SeverityWarning, 90, 1, 3.25}, {2, 8, 0, 38, 0, 0}} {
		p0 = append(p0, rec(agentReporting, "reporting", f.ts(w.k), w, false))
	}
	for k := range 2 {
		p0 = append(p0, rec(agentLedger, "core", f.ts(k), win{k, 0, 0, 12, 0, 0}, true))
	}
	p1 = append(p1, rec(agentTreasury, "treasury", f.ts(2), win{2, 96, detector.SeverityCritical, 300, 2, 6}, false))

	a1 := &detector.Alert{
		AlertID: fixtureAlertID, AgentID: agentPayments, AgentClass: "payments",
		WindowStart: f.ts(3), WindowEnd: f.ts(4), DetectedAt: f.ts(3).Add(7*time.Minute + 12345*time.Millisecond),
		Score: 97, Severity: detector.SeverityCritical, Kind: detector.KindNovelAccess,
		Reasons: []models.Reason{
			{Feature: "new_targets", Value: 4, Expected: 0.25, Z: 9.5, Contribution: 0.625},
			{Feature: "new_to_peer_group", Value: 3, Expected: 0.125, Z: 8.5, Contribution: 0.25},
			{Feature: "distinct_target_share", Value: 0.375, Expected: 0.125, Z: 3, Contribution: 0.125},
		},
		Baseline: detector.Baseline{Source: models.SourceAgent, Windows: 500}, Credentials: []string{"cert-7781"},
	}
	a2 := &detector.Alert{
		AlertID: detector.AlertID(agentReporting, f.ts(1).UnixNano(), detector.KindVolume), AgentID: agentReporting, AgentClass: "reporting",
		WindowStart: f.ts(1), WindowEnd: f.ts(2), DetectedAt: f.ts(2).Add(30 * time.Second),
		Score: 65, Severity: detector.SeverityWarning, Kind: detector.KindVolume,
		Reasons: []models.Reason{
			{Feature: "event_count", Value: 90, Expected: 41, Z: 3.25, Contribution: 0.75},
			{Feature: "new_targets", Value: 1, Expected: 0.25, Z: 2.5, Contribution: 0.25},
		},
		Baseline: detector.Baseline{Source: models.SourceAgent, Windows: 500}, Credentials: []string{"key-reporting-2"},
	}
	a3 := &detector.Alert{
		AlertID: detector.AlertID(agentTreasury, f.ts(2).UnixNano(), detector.KindNovelAccess), AgentID: agentTreasury, AgentClass: "treasury",
		WindowStart: f.ts(2), WindowEnd: f.ts(3), DetectedAt: f.ts(2).Add(5 * time.Minute),
		Score: 96, Severity: detector.SeverityCritical, Kind: detector.KindNovelAccess,
		Reasons:  []models.Reason{{Feature: "new_targets", Value: 2, Expected: 0.25, Z: 6, Contribution: 1}},
		Baseline: detector.Baseline{Source: models.SourceAgent, Windows: 500}, Credentials: []string{"cert-treasury-1"},
	}
	signer, err := detector.NewSigner("vigil-test", ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)))
	if err != nil {
		t.Fatal(err)
	}
	revoke := func(a *detector.Alert, mode, why string) *detector.Revocation {
		rv := &detector.Revocation{
			RequestID: detector.RequestID(a.AlertID, detector.ActionQuarantine), AlertID: a.AlertID,
			AgentID: a.AgentID, AgentClass: a.AgentClass, WindowStart: a.WindowStart, WindowEnd: a.WindowEnd,
			DetectedAt: a.DetectedAt, Score: a.Score, Severity: a.Severity, Kind: a.Kind, Reasons: a.Reasons,
			Baseline: a.Baseline, CredentialID: a.Credentials[0], Action: detector.ActionQuarantine,
			Mode: mode, Why: why, ExpiresAt: a.DetectedAt.Add(time.Hour),
		}
		if err := signer.Sign(rv); err != nil {
			t.Fatal(err)
		}
		return rv
	}
	r1 := revoke(a1, detector.ModeEnforce, "policy")
	r3 := revoke(a3, detector.ModeDryRun, "budget")
	f.alerts = []*detector.Alert{a1, a2, a3}
	f.revs = []*detector.Revocation{r1, r3}
	f.batches = []detector.Batch{
		{Topic: fixtureTopic, Partition: 0, Windows: p0, Alerts: []*detector.Alert{a1, a2}, Revocations: []*detector.Revocation{r1},
			DeadLetters: []detector.DeadLetter{{Topic: fixtureTopic, Reason: "bad_json"}}},
		{Topic: fixtureTopic, Partition: 1, Windows: p1, Alerts: []*detector.Alert{a3}, Revocations: []*detector.Revocation{r3}},
	}
	return f
}

// write writes every batch of f to s.
func (f *fixture) write(t testing.TB, s *Sink) {
	t.Helper()
	for _, b := range f.batches {
		if err := s.Write(context.Background(), b); err != nil {
			t.Fatal(err)
		}
	}
}

// outcomes records, as the policy engine and an analyst would, what became
// of the enforced request: applied, then restored.
func (f *fixture) outcomes(t testing.TB, srv *sinktest.ClickHouse, db string) {
	t.Helper()
	r1, at := f.revs[0].RequestID, f.ts(3)
	query(t, srv, db, fmt.Sprintf(`INSERT INTO revocation_outcomes (request_id, outcome, decided_at, decided_by, detail) VALUES `+
		`('%s', 'applied', '%s', 'policy-engine', 'credential cert-7781 quarantined'), `+
		`('%s', 'restored', '%s', 'analyst:jdoe', 'false positive: new payee onboarding')`,
		r1, dt(at.Add(9*time.Minute)), r1, dt(at.Add(69*time.Minute))))
}

// dt formats t as ClickHouse prints a DateTime('UTC').
func dt(t time.Time) string { return t.UTC().Format(time.DateTime) }
