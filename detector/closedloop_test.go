package detector

import (
	"testing"
	"time"
)

// The closed loop: after an enforced revoke, a credential still allowed
// past the grace period raises revocation_ineffective and ends
// ineffective at the request's expiry; one whose allowed uses stop ends
// effective, with the time from the request to its last allowed use. A
// quarantine is watched by agent. The watch survives a checkpoint.
func TestClosedLoop(t *testing.T) {
	s := testSigner(t)
	t0 := time.Date(2026, 3, 2, 10, 1, 0, 0, time.UTC)
	ns := func(d time.Duration) int64 { return t0.Add(d).UnixNano() }
	r := mustRevoker(t, func() RevocationPolicy { p := enabledPolicy(); p.Action = ActionRevoke; return p }(), s)
	for _, agent := range []string{"stays", "stops"} {
		if reqs, err := r.Decide(testAlert(agent, t0, 99, SeverityCritical)); err != nil || len(reqs) != 1 || reqs[0].Mode != ModeEnforce {
			t.Fatalf("%s: %v %v", agent, reqs, err)
		}
	}
	if !r.Watching() {
		t.Fatal("enforced requests not watched")
	}
	// Both keep being used within the grace period; one goes on.
	r.Used([]byte("stays"), []byte("cert-stays"), true, ns(30*time.Second))
	r.Used([]byte("stops"), []byte("cert-stops"), true, ns(40*time.Second))
	r.Used([]byte("stops"), []byte("cert-stops"), false, ns(50*time.Second)) // denied: the revocation working
	if a := r.TakeAlerts(); len(a) != 0 {
		t.Fatalf("alert within the grace period: %+v", a[0])
	}
	// A checkpoint and restore in between.
	r2 := mustRevoker(t, func() RevocationPolicy { p := enabledPolicy(); p.Action = ActionRevoke; return p }(), s)
	if err := r2.DecodeFrom(r.AppendBinary(nil)); err != nil {
		t.Fatal(err)
	}
	r = r2
	r.Used([]byte("stays"), []byte("cert-stays"), true, ns(3*time.Minute))
	alerts := r.TakeAlerts()
	if len(alerts) != 1 || alerts[0].Kind != KindRevocationIneffective || alerts[0].AgentID != "stays" || alerts[0].Severity != SeverityCritical {
		t.Fatalf("ineffective revocation: %+v", alerts)
	}
	r.Used([]byte("stays"), []byte("cert-stays"), true, ns(4*time.Minute)) // alerted once
	if a := r.TakeAlerts(); len(a) != 0 {
		t.Errorf("alerted twice: %+v", a)
	}
	outs := r.TakeOutcomes()
	if len(outs) != 1 || outs[0].Outcome != OutcomeEffective || outs[0].AgentID != "stops" || outs[0].TimeToEffect != 40*time.Second || outs[0].AllowedAfter != 1 {
		t.Fatalf("effective revocation: %+v", outs)
	}
	r.Used([]byte("x"), nil, true, ns(61*time.Minute)) // past the request's TTL
	outs = r.TakeOutcomes()
	if len(outs) != 1 || outs[0].Outcome != OutcomeIneffective || outs[0].AgentID != "stays" || outs[0].AllowedAfter != 3 {
		t.Fatalf("ineffective outcome: %+v", outs)
	}
	if r.Watching() {
		t.Error("settled requests still watched")
	}

	// A quarantine is watched by agent, whatever credential it presents.
	q := mustRevoker(t, enabledPolicy(), s)
	if reqs, _ := q.Decide(testAlert("q", t0, 99, SeverityCritical)); len(reqs) != 1 || reqs[0].Action != ActionQuarantine {
		t.Fatalf("quarantine: %+v", reqs)
	}
	q.Used([]byte("q"), []byte("another-cert"), true, ns(5*time.Minute))
	if a := q.TakeAlerts(); len(a) != 1 || a[0].Kind != KindRevocationIneffective {
		t.Errorf("quarantined agent still allowed: %+v", a)
	}
}

// A spent budget raises its own alert, once per budget window and group.
func TestBudgetSpentAlert(t *testing.T) {
	p := enabledPolicy()
	p.Budget, p.BudgetPerClass = 1, 1
	r := mustRevoker(t, p, testSigner(t))
	t0 := time.Date(2026, 3, 2, 10, 1, 0, 0, time.UTC)
	for i, agent := range []string{"a", "b", "c"} {
		reqs, _ := r.Decide(testAlert(agent, t0.Add(time.Duration(i)*time.Minute), 99, SeverityCritical))
		if len(reqs) != 1 {
			t.Fatalf("%s: %d requests", agent, len(reqs))
		}
	}
	alerts := r.TakeAlerts()
	if len(alerts) != 1 || alerts[0].Kind != KindBudgetSpent || alerts[0].AgentClass != "payments" {
		t.Fatalf("budget alerts: %+v", alerts)
	}
}
