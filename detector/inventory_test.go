package detector

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigil-sec/vigil/models"
)

func TestLookalikes(t *testing.T) {
	inv, err := ParseInventory([]byte(`{"agents":[
		{"id":"spiffe://bank.example/agent/payments-bot-07","class":"payments-bot"},
		{"id":"spiffe://bank.example/agent/kyc-agent-01","class":"kyc-agent","mode":"observe"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]string{
		"spiffe://bank.example/agent/pаyments-bot-07":   "spiffe://bank.example/agent/payments-bot-07", // Cyrillic а
		"spiffe://bank.example/agent/payrnents-bot-07":  "spiffe://bank.example/agent/payments-bot-07", // rn for m
		"spiffe://bank.example/agent/pay5ents-bot-07":   "",                                            // 5 reads as s, not m
		"spiffe://bank.example/agent/paymentS-bot-07":   "spiffe://bank.example/agent/payments-bot-07", // case
		"spiffe://bank.example/agent/kyc-agent-0l":      "spiffe://bank.example/agent/kyc-agent-01",    // l for 1
		"spiffe://bank.example/agent/payments-bot-07-x": "spiffe://bank.example/agent/payments-bot-07", // extra suffix
		"spiffe://bank.example/agent/payments-bot-08":   "",
		"spiffe://bank.example/agent/payments-bot-07":   "", // itself
	} {
		if got := inv.lookalike(id); got != want {
			t.Errorf("lookalike(%q) = %q, want %q", id, got, want)
		}
	}
	for _, bad := range []string{
		`{"agents":[{"id":"a","class":""}]}`,
		`{"agents":[{"id":"a\u202e","class":"c"}]}`,
		`{"agents":[{"id":"a","class":"c","mode":"revoke"}]}`,
		`{"agents":[{"id":"a","class":"c"},{"id":"a","class":"c"}]}`,
	} {
		if _, err := ParseInventory([]byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}

// With an inventory: an identity it does not list raises unknown_agent
// (critical, naming the id it imitates, for a lookalike); a listed agent's
// class is the inventory's whatever the event claims, and a claim that
// disagrees is an identity alert; an agent in mode observe is alerted on
// but never revoked.
func TestInventory(t *testing.T) {
	lines := etFleet(t)
	ids := map[string]bool{}
	for _, l := range lines {
		if m := etAgent.FindSubmatch(l); m != nil {
			ids[string(m[1])] = true
		}
	}
	var entries []string
	var observed string
	for _, id := range slices.Sorted(func(yield func(string) bool) {
		for id := range ids {
			if !yield(id) {
				return
			}
		}
	}) {
		cls := strings.TrimRight(id[strings.LastIndex(id, "/")+1:], "0123456789")
		cls = strings.TrimSuffix(cls, "-")
		mode := "enforce"
		if observed == "" {
			observed, mode = id, "observe"
		}
		entries = append(entries, fmt.Sprintf(`{"id":%q,"class":%q,"mode":%q}`, id, cls, mode))
	}
	path := filepath.Join(t.TempDir(), "inventory.json")
	os.WriteFile(path, []byte(`{"agents":[`+strings.Join(entries, ",")+`]}`), 0o600)
	inv, err := LoadInventory(path)
	if err != nil {
		t.Fatal(err)
	}
	start := etLineTime(t, lines[0])
	at := start.Add(30 * time.Hour)
	victim := observed
	look := strings.Replace(victim, "a", "а", 1) // Cyrillic а
	extra := [][]byte{
		idEvent("u", 1, "spiffe://bank.example/agent/stranger-01", "payments-bot", at, "ledger", "post", "internal", "allow", 10),
		idEvent("l", 1, look, "", at.Add(time.Minute), "ledger", "post", "internal", "allow", 10),
		idEvent("c", 1, victim, "admin-tools", at.Add(2*time.Minute), "ledger", "post", "internal", "allow", 10),
	}
	var alerts []*Alert
	p, err := NewPipeline(DefaultConfig(), func(a *Alert) { alerts = append(alerts, a) })
	if err != nil {
		t.Fatal(err)
	}
	p.SetInventory(inv)
	rv, err := NewRevoker(RevocationPolicy{Enabled: true, Mode: ModeDryRun, Action: ActionQuarantine, MinScore: 0, MinAlerts: 1,
		Persistence: time.Hour, TTL: time.Hour, Budget: 100, BudgetPerClass: 100, BudgetWindow: time.Hour, Grace: time.Minute}, testSigner(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range mergeByTime(t, lines, extra) {
		_ = p.Process(l)
	}
	p.Flush()
	var unknown, lookalike, claim bool
	for _, a := range alerts {
		switch {
		case a.Kind == KindUnknownAgent && a.AgentID == "spiffe://bank.example/agent/stranger-01" && a.Severity == SeverityWarning:
			unknown = true
		case a.Kind == KindUnknownAgent && a.AgentID == look && a.Severity == SeverityCritical &&
			slices.ContainsFunc(a.Reasons, func(r models.Reason) bool { return r.Feature == "lookalike_of:"+victim }):
			lookalike = true
		case a.Kind == KindIdentity && a.AgentID == victim && a.Reasons[0].Feature == "claimed_class:admin-tools":
			claim = true
		case a.AgentID == victim && a.Severity == SeverityCritical:
			if !a.Observe {
				t.Errorf("alert on observed agent %s without Observe", victim)
			}
			if reqs, _ := rv.Decide(a); len(reqs) > 0 {
				t.Errorf("observed agent revoked: %+v", reqs[0])
			}
		}
		if a.Kind == KindNewIdentity {
			t.Errorf("new_identity with an inventory (unknown_agent says more): %s", a.AgentID)
		}
	}
	// An observed agent's critical alert, which would be revoked otherwise.
	al := &Alert{AlertID: "x", AgentID: victim, AgentClass: "c", Severity: SeverityCritical, Score: 99, Kind: KindVolume,
		DetectedAt: at, Baseline: Baseline{Source: models.SourceAgent, Windows: 500}, Credentials: []string{"cert-1"}, Verified: true}
	if reqs, _ := rv.Decide(al); len(reqs) == 0 {
		t.Fatal("the revoker revokes nothing: the observe check proves nothing")
	}
	al.AlertID, al.Observe, al.Credentials = "y", true, []string{"cert-2"}
	if reqs, _ := rv.Decide(al); len(reqs) > 0 {
		t.Errorf("observed agent revoked: %+v", reqs[0])
	}
	if !unknown || !lookalike || !claim {
		t.Errorf("unknown_agent %v, lookalike %v, class claim %v", unknown, lookalike, claim)
	}
	if c := p.agents[victim].class.name; strings.Contains(c, "admin") {
		t.Errorf("the claim moved %s to group %s", victim, c)
	}
}
