package bench_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/vigil-sec/vigil/bench"
	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/sim"
)

// TestQualityFloor runs simulate → replay → evaluate on the default
// simulation and guards against regressions in detection quality: the floor
// is what the detector achieved when it was written (see README), not the
// target it aims for.
func TestQualityFloor(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the default simulation (about 5 s)")
	}
	r := evaluateSeed(t, 1)
	// Seed 1 (the default): 24 of 24 incidents, precision 99 %, 0.0015 false
	// alerts per agent-day when these floors were last raised.
	if r.Recall < 0.95 {
		t.Errorf("recall %.3f fell below the 0.95 floor", r.Recall)
	}
	if r.Precision < 0.95 {
		t.Errorf("precision %.3f fell below 0.95", r.Precision)
	}
	if r.BenignCritical > 0 {
		t.Errorf("%d critical alerts on benign changes", r.BenignCritical)
	}
	if r.FalseAlertsPerAgentDay > 0.01 {
		t.Errorf("%.3f false alerts per agent-day, want ≤ 0.01", r.FalseAlertsPerAgentDay)
	}
}

// TestQualityFloorOtherSeed guards false alerts on a seed the model was not
// developed on (7: 0.0044 false alerts per agent-day, 22 of 24 incidents,
// when written; young bursty devops bots used to add three times as many).
func TestQualityFloorOtherSeed(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a simulation (about 5 s)")
	}
	r := evaluateSeed(t, 7)
	if r.FalseAlertsPerAgentDay > 0.008 || r.Recall < 0.85 {
		t.Errorf("%.4f false alerts per agent-day (want ≤ 0.008), recall %.3f (want ≥ 0.85)", r.FalseAlertsPerAgentDay, r.Recall)
	}
}

// evaluateSeed runs simulate → replay → evaluate on the default simulation
// with the given seed, and logs the report.
func evaluateSeed(t *testing.T, seed int64) bench.Report {
	t.Helper()
	cfg := sim.DefaultConfig()
	cfg.Seed = seed
	var events, truth bytes.Buffer
	st, err := sim.Generate(cfg, &events, &truth)
	if err != nil {
		t.Fatal(err)
	}
	var alerts []bench.Alert
	p, err := detector.NewPipeline(detector.DefaultConfig(), func(a *detector.Alert) {
		alerts = append(alerts, bench.Alert{
			AlertID: a.AlertID, AgentID: a.AgentID, AgentClass: a.AgentClass, Kind: a.Kind,
			Severity: a.Severity.String(), Score: a.Score,
			WindowStart: a.WindowStart, WindowEnd: a.WindowEnd, DetectedAt: a.DetectedAt,
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := detector.Replay(context.Background(), &events, p, nil, nil); err != nil {
		t.Fatal(err)
	}
	incidents, err := bench.ReadTruth(&truth)
	if err != nil {
		t.Fatal(err)
	}
	r := bench.Evaluate(incidents, alerts, 5*time.Minute, float64(st.Agents*cfg.Days))
	var buf bytes.Buffer
	_ = r.WriteTable(&buf)
	t.Logf("seed %d\n%s", seed, buf.String())
	return r
}
