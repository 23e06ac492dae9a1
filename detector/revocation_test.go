package detector

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigil-sec/vigil/models"
)

func testSigner(t *testing.T) *Signer {
	t.Helper()
	seed := bytes.Repeat([]byte{7}, ed25519.SeedSize)
	s, err := NewSigner("vigil-test-1", ed25519.NewKeyFromSeed(seed))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func testAlert(agent string, at time.Time, score float64, sev Severity) *Alert {
	ws := at.Truncate(5 * time.Minute)
	return &Alert{
		AlertID: AlertID(agent, ws.UnixNano(), KindNovelAccess), AgentID: agent, AgentClass: "payments",
		WindowStart: ws, WindowEnd: ws.Add(5 * time.Minute), DetectedAt: at,
		Score: score, Severity: sev, Kind: KindNovelAccess,
		Reasons:     []models.Reason{{Feature: "new_targets", Value: 12, Expected: 0.1, Z: 9, Contribution: 80}},
		Baseline:    Baseline{Source: models.SourceAgent, Windows: 500},
		Credentials: []string{"cert-" + agent},
		Verified:    true,
	}
}

// one returns the only request Decide returned, or nil when it returned
// none; more than one fails the test.
func one(t *testing.T) func([]*Revocation, error) *Revocation {
	return func(rvs []*Revocation, err error) *Revocation {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		if len(rvs) > 1 {
			t.Fatalf("%d requests, want at most one", len(rvs))
		}
		if len(rvs) == 0 {
			return nil
		}
		return rvs[0]
	}
}

func enabledPolicy() RevocationPolicy {
	p := DefaultRevocationPolicy()
	p.Enabled, p.Mode = true, ModeEnforce
	return p
}

func TestRevocationSignVerify(t *testing.T) {
	s := testSigner(t)
	a := testAlert("a1", time.Date(2026, 3, 2, 10, 1, 0, 0, time.UTC), 99, SeverityCritical)
	a.OtherCredentials = []string{"decoy-1"}
	rv := one(t)(mustRevoker(t, enabledPolicy(), s).Decide(a))
	if rv == nil {
		t.Fatal("no request")
	}
	keys := map[string]ed25519.PublicKey{s.KeyID: s.Public()}
	got, err := VerifyRevocation(rv.Body, keys)
	if err != nil {
		t.Fatalf("verify own request: %v\n%s", err, rv.Body)
	}
	if got.RequestID != rv.RequestID || got.CredentialID != "cert-a1" || got.Mode != ModeEnforce || got.Action != ActionQuarantine ||
		!got.ExpiresAt.Equal(rv.DetectedAt.Add(time.Hour)) || !slices.Equal(got.EvidenceCredentials, []string{"decoy-1"}) {
		t.Errorf("decoded %+v", got)
	}
	var m map[string]any
	if err := json.Unmarshal(rv.Body, &m); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"request_id", "alert_id", "agent_id", "agent_class", "window_start", "window_end", "detected_at", "score", "severity",
		"kind", "reasons", "baseline", "credential_id", "evidence_credentials", "action", "mode", "why", "expires_at", "kid", "signature"} {
		if _, ok := m[f]; !ok {
			t.Errorf("request has no %q: %s", f, rv.Body)
		}
	}
	// Any change to the signed bytes fails.
	for _, tamper := range []func([]byte) []byte{
		func(b []byte) []byte {
			return bytes.Replace(b, []byte(`"mode":"enforce"`), []byte(`"mode":"dry_run"`), 1)
		},
		func(b []byte) []byte {
			return bytes.Replace(b, []byte(`"agent_id":"a1"`), []byte(`"agent_id":"a2"`), 1)
		},
		func(b []byte) []byte { return bytes.Replace(b, []byte(`"score":99`), []byte(`"score":98`), 1) },
		func(b []byte) []byte {
			return bytes.Replace(b, []byte(`"evidence_credentials":["decoy-1"],`), nil, 1)
		},
		func(b []byte) []byte {
			return bytes.Replace(b, []byte(`"credential_id":"cert-a1"`), []byte(`"credential_id":"decoy-1"`), 1)
		},
	} {
		bad := tamper(bytes.Clone(rv.Body))
		if bytes.Equal(bad, rv.Body) {
			t.Fatal("tamper did not change the body")
		}
		if _, err := VerifyRevocation(bad, keys); !errors.Is(err, ErrBadSignature) {
			t.Errorf("tampered request: err %v, want ErrBadSignature", err)
		}
	}
	other, _ := NewSigner(s.KeyID, ed25519.NewKeyFromSeed(bytes.Repeat([]byte{8}, 32)))
	if _, err := VerifyRevocation(rv.Body, map[string]ed25519.PublicKey{s.KeyID: other.Public()}); !errors.Is(err, ErrBadSignature) {
		t.Errorf("wrong key: %v", err)
	}
	if _, err := VerifyRevocation(rv.Body, map[string]ed25519.PublicKey{"other": s.Public()}); err == nil || !strings.Contains(err.Error(), "unknown key id") {
		t.Errorf("unknown kid: %v", err)
	}
	// Stable ids: the same alert, credential and action give the same
	// request id; another credential or action another.
	if CredentialRequestID(rv.AlertID, "cert-a1", ActionQuarantine) != rv.RequestID ||
		CredentialRequestID(rv.AlertID, "cert-a1", ActionRevoke) == rv.RequestID ||
		CredentialRequestID(rv.AlertID, "cert-a2", ActionQuarantine) == rv.RequestID ||
		RequestID(rv.AlertID, ActionQuarantine) == rv.RequestID {
		t.Error("request ids are not stable per alert, credential and action")
	}
	// RequestID (no credential) keeps the ids of before credentials were
	// part of them.
	if got := RequestID("alert-1", ActionRevoke); got != "e3a179d4274fcadab3dc46020b231e1e" {
		t.Errorf("RequestID changed: %s", got)
	}
}

func mustRevoker(t *testing.T, p RevocationPolicy, s *Signer) *Revoker {
	t.Helper()
	r, err := NewRevoker(p, s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRevocationPolicy(t *testing.T) {
	s := testSigner(t)
	t0 := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	t.Run("disabled", func(t *testing.T) {
		r := mustRevoker(t, DefaultRevocationPolicy(), nil)
		if rv := one(t)(r.Decide(testAlert("a", t0, 100, SeverityCritical))); rv != nil {
			t.Error("disabled policy revoked")
		}
	})
	t.Run("needs a key", func(t *testing.T) {
		if _, err := NewRevoker(enabledPolicy(), nil); err == nil {
			t.Error("enabled policy without a signing key accepted")
		}
	})
	t.Run("persistence", func(t *testing.T) {
		r := mustRevoker(t, enabledPolicy(), s)
		if rv := one(t)(r.Decide(testAlert("a", t0, 70, SeverityWarning))); rv != nil {
			t.Error("warning revoked")
		}
		if rv := one(t)(r.Decide(testAlert("a", t0.Add(time.Minute), 85, SeverityCritical))); rv != nil {
			t.Error("first critical below min_score revoked")
		}
		if rv := one(t)(r.Decide(testAlert("a", t0.Add(6*time.Minute), 85, SeverityCritical))); rv == nil {
			t.Error("second critical within persistence not revoked")
		}
		if rv := one(t)(r.Decide(testAlert("b", t0, 85, SeverityCritical))); rv != nil {
			t.Error("another agent's first critical revoked")
		}
		if rv := one(t)(r.Decide(testAlert("b", t0.Add(2*time.Hour), 85, SeverityCritical))); rv != nil {
			t.Error("criticals further apart than persistence revoked")
		}
		if rv := one(t)(r.Decide(testAlert("c", t0, 97, SeverityCritical))); rv == nil {
			t.Error("critical at min_score not revoked")
		}
	})
	t.Run("one per window", func(t *testing.T) {
		r := mustRevoker(t, enabledPolicy(), s)
		a := testAlert("a", t0, 99, SeverityCritical)
		b := *a
		b.Kind, b.AlertID = KindVolume, AlertID("a", a.WindowStart.UnixNano(), KindVolume)
		if rv := one(t)(r.Decide(a)); rv == nil {
			t.Fatal("not revoked")
		}
		if rv := one(t)(r.Decide(&b)); rv != nil {
			t.Error("second kind of the same window revoked again")
		}
	})
	t.Run("allowlist", func(t *testing.T) {
		p := enabledPolicy()
		p.Allowlist = []AllowEntry{
			{Agent: "spiffe://bank/agent/core-*", Reason: "core ledger: manual change control (CHG-1234)", Expires: t0.Add(time.Hour)},
		}
		r := mustRevoker(t, p, s)
		if rv := one(t)(r.Decide(testAlert("spiffe://bank/agent/core-ledger", t0, 100, SeverityCritical))); rv != nil {
			t.Error("allowlisted agent revoked")
		}
		if rv := one(t)(r.Decide(testAlert("spiffe://bank/agent/core-ledger", t0.Add(2*time.Hour), 100, SeverityCritical))); rv == nil {
			t.Error("an expired allowlist entry still protects the agent")
		}
		if rv := one(t)(r.Decide(testAlert("spiffe://bank/agent/payments", t0, 100, SeverityCritical))); rv == nil {
			t.Error("agent outside the allowlist not revoked")
		}
	})
	t.Run("budget", func(t *testing.T) {
		p := enabledPolicy()
		p.Budget, p.BudgetPerClass = 3, 2
		r := mustRevoker(t, p, s)
		var modes []string
		for i, agent := range []string{"a", "b", "c"} {
			rv := one(t)(r.Decide(testAlert(agent, t0.Add(time.Duration(i)*time.Minute), 99, SeverityCritical)))
			modes = append(modes, rv.Mode+"/"+rv.Why)
		}
		other := testAlert("d", t0.Add(4*time.Minute), 99, SeverityCritical)
		other.AgentClass = "kyc"
		rv := one(t)(r.Decide(other))
		modes = append(modes, rv.Mode+"/"+rv.Why)
		rv = one(t)(r.Decide(testAlert("e", t0.Add(5*time.Minute), 99, SeverityCritical)))
		modes = append(modes, rv.Mode+"/"+rv.Why)
		rv = one(t)(r.Decide(testAlert("f", t0.Add(2*time.Hour), 99, SeverityCritical)))
		modes = append(modes, rv.Mode+"/"+rv.Why)
		want := "enforce/policy enforce/policy dry_run/budget enforce/policy dry_run/budget enforce/policy"
		if got := strings.Join(modes, " "); got != want {
			t.Errorf("modes %s\nwant  %s", got, want)
		}
	})
	t.Run("cold baseline is dry run", func(t *testing.T) {
		r := mustRevoker(t, enabledPolicy(), s)
		a := testAlert("new", t0, 99, SeverityCritical)
		a.Baseline.Source = models.SourcePeerGroup
		if rv := one(t)(r.Decide(a)); rv == nil || rv.Mode != ModeDryRun || rv.Why != "cold" {
			t.Errorf("peer-baseline revocation: %+v", rv)
		}
	})
}

func TestRevocationPolicyValidate(t *testing.T) {
	for _, mut := range []func(*RevocationPolicy){
		func(p *RevocationPolicy) { p.Mode = "yes" },
		func(p *RevocationPolicy) { p.Action = "delete" },
		func(p *RevocationPolicy) { p.MinAlerts = 0 },
		func(p *RevocationPolicy) { p.TTL = 0 },
		func(p *RevocationPolicy) { p.Budget = -1 },
		func(p *RevocationPolicy) { p.Allowlist = []AllowEntry{{Agent: "[x", Reason: "r", Expires: t0}} },
		func(p *RevocationPolicy) { p.Allowlist = []AllowEntry{{Agent: "a-*", Expires: t0}} },
		func(p *RevocationPolicy) { p.Allowlist = []AllowEntry{{Agent: "a-*", Reason: "r"}} },
		func(p *RevocationPolicy) { p.Grace = 0 },
	} {
		p := DefaultRevocationPolicy()
		mut(&p)
		if err := p.Validate(); err == nil {
			t.Errorf("%+v accepted", p)
		}
	}
}

func TestLoadSignerAndPublicKey(t *testing.T) {
	dir := t.TempDir()
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(priv)
	kf := filepath.Join(dir, "key.pem")
	os.WriteFile(kf, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	pder, _ := x509.MarshalPKIXPublicKey(pub)
	pf := filepath.Join(dir, "pub.pem")
	os.WriteFile(pf, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pder}), 0o644)
	s, err := LoadSigner("k1", kf)
	if err != nil {
		t.Fatal(err)
	}
	p, err := LoadPublicKey(pf)
	if err != nil || !p.Equal(s.Public()) {
		t.Fatalf("public key %v, %v", p, err)
	}
	if _, err := LoadSigner("k1", pf); err == nil {
		t.Error("a public key loaded as a signing key")
	}
	if _, err := LoadSigner("", kf); err == nil {
		t.Error("signer without a key id")
	}
}

// The policy's state survives a checkpoint: a Revoker restored mid-stream
// decides exactly as the uninterrupted one (budget, persistence, verified
// or not, one request per credential while it holds).
func TestRevokerStateRoundTrip(t *testing.T) {
	s := testSigner(t)
	p := enabledPolicy()
	p.Budget, p.BudgetPerClass, p.MinScore = 2, 2, 95
	t0 := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	var alerts []*Alert
	for i := range 16 {
		a := testAlert(string(rune('a'+i%4)), t0.Add(time.Duration(i)*4*time.Minute), float64(85+i%3*6), SeverityCritical)
		if i%5 == 4 {
			a.AgentClass = "kyc"
		}
		a.Verified = i%7 != 3
		if i%6 == 5 {
			a.Credentials = append(a.Credentials, "cert2-"+a.AgentID)
			a.OtherCredentials = []string{"decoy"}
		}
		alerts = append(alerts, a)
	}
	decide := func(r *Revoker, as []*Alert) (out []string) {
		for _, a := range as {
			rvs, err := r.Decide(a)
			if err != nil {
				t.Fatal(err)
			}
			if len(rvs) == 0 {
				out = append(out, "-")
			}
			for _, rv := range rvs {
				out = append(out, rv.RequestID[:6]+"/"+rv.CredentialID+"/"+rv.Mode+"/"+rv.Why)
			}
		}
		return out
	}
	want := decide(mustRevoker(t, p, s), alerts)
	for cut := range len(alerts) {
		r := mustRevoker(t, p, s)
		got := decide(r, alerts[:cut])
		state := r.AppendBinary(nil)
		if state[0] != revokerStateVersion {
			t.Fatalf("state version %d, want %d", state[0], revokerStateVersion)
		}
		r2 := mustRevoker(t, p, s)
		if err := r2.DecodeFrom(state); err != nil {
			t.Fatalf("cut %d: %v", cut, err)
		}
		if again := r2.AppendBinary(nil); !bytes.Equal(again, state) {
			t.Fatalf("cut %d: state does not round-trip", cut)
		}
		got = append(got, decide(r2, alerts[cut:])...)
		if !slices.Equal(got, want) {
			t.Errorf("cut %d:\n got %v\nwant %v", cut, got, want)
		}
	}
	for _, suffix := range []string{"-", "budget", "unverified", "enforce/policy"} {
		if !slices.ContainsFunc(want, func(s string) bool { return strings.HasSuffix(s, suffix) }) {
			t.Errorf("the scenario must have a request ending %q: %v", suffix, want)
		}
	}
	if !slices.ContainsFunc(want, func(s string) bool { return strings.Contains(s, "/cert2-") }) {
		t.Errorf("the scenario must have a request for a second credential: %v", want)
	}
	for _, bad := range [][]byte{{2, 5}, {1, 5}, {3, 0, 0, 0}, {2, 1, 1, 'a', 1, 2, 7, 0, 0}} {
		if err := mustRevoker(t, p, s).DecodeFrom(bad); err == nil {
			t.Errorf("bad state %v accepted", bad)
		}
	}
	if err := mustRevoker(t, p, s).DecodeFrom(nil); err != nil {
		t.Errorf("empty state (old checkpoint): %v", err)
	}
}

// A version 1 state (checkpointed before this version) still reads: its
// recent alerts count as unverified, its spent budget stays spent, and its
// per-agent requests are dropped (a credential may get one more request).
func TestRevokerStateVersion1(t *testing.T) {
	s := testSigner(t)
	p := enabledPolicy()
	p.Budget, p.BudgetPerClass, p.MinAlerts = 1, 1, 2
	t0 := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	// Version 1, as the previous release wrote it: agent "a" had a
	// critical alert at t0, spent the budget, and had a request until
	// t0+1h, keyed by agent.
	v1 := []byte{1}
	v1 = binary.AppendUvarint(v1, 1)
	v1 = appendString(v1, "a")
	v1 = binary.AppendUvarint(v1, 1)
	v1 = binary.AppendVarint(v1, t0.UnixNano())
	v1 = binary.AppendUvarint(v1, 1)
	v1 = binary.AppendVarint(v1, t0.UnixNano())
	v1 = appendString(v1, "payments")
	v1 = binary.AppendUvarint(v1, 1)
	v1 = appendString(v1, "a")
	v1 = binary.AppendVarint(v1, t0.Add(time.Hour).UnixNano())
	r := mustRevoker(t, p, s)
	if err := r.DecodeFrom(v1); err != nil {
		t.Fatal(err)
	}
	if len(r.done) != 0 || len(r.spent) != 1 || len(r.recent["a"]) != 1 || r.recent["a"][0].verified {
		t.Fatalf("decoded version 1: recent %v spent %v done %v", r.recent, r.spent, r.done)
	}
	// a's second critical (verified, below min_score) qualifies only with
	// the unverified first: dry run, and the per-agent entry did not hold
	// it back.
	rv := one(t)(r.Decide(testAlert("a", t0.Add(5*time.Minute), 85, SeverityCritical)))
	if rv == nil || rv.Mode != ModeDryRun || rv.Why != WhyUnverified {
		t.Errorf("a after restore: %+v", rv)
	}
	// The budget spent before the upgrade is still spent.
	if rv := one(t)(r.Decide(testAlert("b", t0.Add(6*time.Minute), 99, SeverityCritical))); rv == nil || rv.Why != WhyBudget {
		t.Errorf("b after restore: %+v", rv)
	}
	if again := r.AppendBinary(nil); again[0] != revokerStateVersion {
		t.Errorf("re-encoded as version %d", again[0])
	}
}

// Enforcement rests only on verified events: an unverified alert (forged
// or not) under an enforce policy is a dry run, why "unverified", and
// spends no budget; a verified one enforces.
func TestRevocationUnverified(t *testing.T) {
	s := testSigner(t)
	t0 := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	p := enabledPolicy()
	p.Budget, p.BudgetPerClass = 1, 1
	r := mustRevoker(t, p, s)
	for i, agent := range []string{"a", "b", "c", "d"} {
		a := testAlert(agent, t0.Add(time.Duration(i)*time.Minute), 99, SeverityCritical)
		a.Verified = false
		if agent == "d" {
			a.Baseline.Source = models.SourcePeerGroup // unverified comes first
		}
		if rv := one(t)(r.Decide(a)); rv == nil || rv.Mode != ModeDryRun || rv.Why != WhyUnverified {
			t.Fatalf("unverified alert for %s: %+v", agent, rv)
		}
	}
	if len(r.spent) != 0 {
		t.Fatalf("unverified alerts spent the budget: %v", r.spent)
	}
	// The budget of one is still whole: the first verified alert enforces,
	// the next verified one finds it spent.
	if rv := one(t)(r.Decide(testAlert("e", t0.Add(5*time.Minute), 99, SeverityCritical))); rv == nil || rv.Mode != ModeEnforce || rv.Why != WhyPolicy {
		t.Errorf("verified alert: %+v", rv)
	}
	if rv := one(t)(r.Decide(testAlert("f", t0.Add(6*time.Minute), 99, SeverityCritical))); rv == nil || rv.Why != WhyBudget {
		t.Errorf("verified alert beyond the budget: %+v", rv)
	}
	// A dry-run policy stays a dry run by policy.
	dry := enabledPolicy()
	dry.Mode = ModeDryRun
	a := testAlert("a", t0, 99, SeverityCritical)
	a.Verified = false
	if rv := one(t)(mustRevoker(t, dry, s).Decide(a)); rv == nil || rv.Mode != ModeDryRun || rv.Why != WhyPolicy {
		t.Errorf("dry-run policy: %+v", rv)
	}
	// Persistence: a verified critical below min_score that qualifies only
	// with an unverified earlier one is not enforced; with two verified
	// ones it is.
	r = mustRevoker(t, enabledPolicy(), s)
	first := testAlert("g", t0, 85, SeverityCritical)
	first.Verified = false
	if rv := one(t)(r.Decide(first)); rv != nil {
		t.Fatalf("first critical below min_score: %+v", rv)
	}
	if rv := one(t)(r.Decide(testAlert("g", t0.Add(5*time.Minute), 85, SeverityCritical))); rv == nil || rv.Mode != ModeDryRun || rv.Why != WhyUnverified {
		t.Errorf("second critical after an unverified first: %+v", rv)
	}
	if rv := one(t)(r.Decide(testAlert("g", t0.Add(10*time.Minute), 85, SeverityCritical))); rv == nil || rv.Mode != ModeEnforce {
		t.Errorf("third critical, two verified: %+v (a dry run must not hold back an enforced request)", rv)
	}
}

// Requests name only the credentials the agent established, one request
// each; a decoy (new to the agent, or another agent's) is evidence, never
// a target, and holds nothing back; the TTL is per credential.
func TestRevocationCredentials(t *testing.T) {
	s := testSigner(t)
	t0 := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	creds := func(rvs []*Revocation, err error) (out []string) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		for _, rv := range rvs {
			out = append(out, rv.CredentialID+"/"+rv.Mode)
		}
		return out
	}
	t.Run("one request per established credential", func(t *testing.T) {
		r := mustRevoker(t, enabledPolicy(), s)
		a := testAlert("a", t0, 99, SeverityCritical)
		a.Credentials = []string{"cert-a", "key-a"}
		a.OtherCredentials = []string{"decoy", "cert-b"}
		rvs, err := r.Decide(a)
		if err != nil || len(rvs) != 2 {
			t.Fatalf("%d requests, %v; want 2", len(rvs), err)
		}
		keys := map[string]ed25519.PublicKey{s.KeyID: s.Public()}
		for i, rv := range rvs {
			if rv.CredentialID != a.Credentials[i] || rv.RequestID != CredentialRequestID(a.AlertID, a.Credentials[i], ActionQuarantine) ||
				rv.Mode != ModeEnforce || !slices.Equal(rv.EvidenceCredentials, a.OtherCredentials) {
				t.Errorf("request %d: %+v", i, rv)
			}
			if _, err := VerifyRevocation(rv.Body, keys); err != nil {
				t.Errorf("request %d: %v", i, err)
			}
		}
		if rvs[0].RequestID == rvs[1].RequestID {
			t.Error("two credentials, one request id")
		}
		if len(r.spent) != 1 {
			t.Errorf("one agent's requests spent %d units of the budget, want 1", len(r.spent))
		}
	})
	t.Run("no established credential, no request", func(t *testing.T) {
		r := mustRevoker(t, enabledPolicy(), s)
		a := testAlert("a", t0, 99, SeverityCritical)
		a.Credentials, a.OtherCredentials = nil, []string{"decoy"}
		if got := creds(r.Decide(a)); len(got) != 0 {
			t.Errorf("requests %v for an alert with only a decoy", got)
		}
		if len(r.spent) != 0 {
			t.Error("no request, yet the budget was spent")
		}
		// A credential in both lists is never a target.
		a.Credentials, a.OtherCredentials = []string{"cert-b"}, []string{"cert-b"}
		if got := creds(r.Decide(a)); len(got) != 0 {
			t.Errorf("requests %v name an evidence credential", got)
		}
	})
	t.Run("a decoy does not hold back the real credential", func(t *testing.T) {
		r := mustRevoker(t, enabledPolicy(), s)
		// Forged: the attacker's agent x presents b's credential and a
		// made-up one; x's own credential is not in the window.
		x := testAlert("x", t0, 99, SeverityCritical)
		x.Credentials, x.OtherCredentials = nil, []string{"cert-b", "made-up"}
		if got := creds(r.Decide(x)); len(got) != 0 {
			t.Fatalf("decoy alert: requests %v", got)
		}
		// The real incident, minutes later: x's own credential, and b's
		// real credential when b is alerted on, each get their request.
		x2 := testAlert("x", t0.Add(5*time.Minute), 99, SeverityCritical)
		x2.OtherCredentials = []string{"cert-b", "made-up"}
		if got := creds(r.Decide(x2)); !slices.Equal(got, []string{"cert-x/enforce"}) {
			t.Errorf("incident: requests %v, want cert-x only", got)
		}
		if got := creds(r.Decide(testAlert("b", t0.Add(6*time.Minute), 99, SeverityCritical))); !slices.Equal(got, []string{"cert-b/enforce"}) {
			t.Errorf("b: requests %v", got)
		}
	})
	t.Run("ttl per credential", func(t *testing.T) {
		r := mustRevoker(t, enabledPolicy(), s)
		a := testAlert("a", t0, 99, SeverityCritical)
		if got := creds(r.Decide(a)); !slices.Equal(got, []string{"cert-a/enforce"}) {
			t.Fatalf("first: %v", got)
		}
		// Later, while cert-a's request holds, a new established credential
		// of a's gets its own request; cert-a none.
		a2 := testAlert("a", t0.Add(10*time.Minute), 99, SeverityCritical)
		a2.Credentials = []string{"cert-a", "key-a"}
		if got := creds(r.Decide(a2)); !slices.Equal(got, []string{"key-a/enforce"}) {
			t.Errorf("while cert-a holds: %v", got)
		}
		// After the TTL, cert-a again.
		a3 := testAlert("a", t0.Add(61*time.Minute), 99, SeverityCritical)
		if got := creds(r.Decide(a3)); !slices.Equal(got, []string{"cert-a/enforce"}) {
			t.Errorf("after the ttl: %v", got)
		}
		// A dry run holds back dry runs only: an unverified alert, then a
		// verified one on the same credential, then both again.
		b := testAlert("b", t0, 99, SeverityCritical)
		b.Verified = false
		if got := creds(r.Decide(b)); !slices.Equal(got, []string{"cert-b/dry_run"}) {
			t.Errorf("b unverified: %v", got)
		}
		b2 := testAlert("b", t0.Add(5*time.Minute), 99, SeverityCritical)
		b2.Verified = false
		if got := creds(r.Decide(b2)); len(got) != 0 {
			t.Errorf("b unverified again while its dry run holds: %v", got)
		}
		if got := creds(r.Decide(testAlert("b", t0.Add(10*time.Minute), 99, SeverityCritical))); !slices.Equal(got, []string{"cert-b/enforce"}) {
			t.Errorf("b verified after a dry run: %v", got)
		}
		if got := creds(r.Decide(testAlert("b", t0.Add(15*time.Minute), 99, SeverityCritical))); len(got) != 0 {
			t.Errorf("b verified while its enforced request holds: %v", got)
		}
	})
}
