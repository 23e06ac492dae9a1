package detector

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
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
	}
}

func enabledPolicy() RevocationPolicy {
	p := DefaultRevocationPolicy()
	p.Enabled, p.Mode = true, ModeEnforce
	return p
}

func TestRevocationSignVerify(t *testing.T) {
	s := testSigner(t)
	rv, err := mustRevoker(t, enabledPolicy(), s).Decide(testAlert("a1", time.Date(2026, 3, 2, 10, 1, 0, 0, time.UTC), 99, SeverityCritical))
	if err != nil || rv == nil {
		t.Fatalf("Decide: %v, %v", rv, err)
	}
	keys := map[string]ed25519.PublicKey{s.KeyID: s.Public()}
	got, err := VerifyRevocation(rv.Body, keys)
	if err != nil {
		t.Fatalf("verify own request: %v\n%s", err, rv.Body)
	}
	if got.RequestID != rv.RequestID || got.CredentialID != "cert-a1" || got.Mode != ModeEnforce || got.Action != ActionQuarantine ||
		!got.ExpiresAt.Equal(rv.DetectedAt.Add(time.Hour)) {
		t.Errorf("decoded %+v", got)
	}
	var m map[string]any
	if err := json.Unmarshal(rv.Body, &m); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"request_id", "alert_id", "agent_id", "agent_class", "window_start", "window_end", "detected_at", "score", "severity",
		"kind", "reasons", "baseline", "credential_id", "action", "mode", "expires_at", "kid", "signature"} {
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
	// Stable ids: the same alert gives the same request id.
	if RequestID(rv.AlertID, ActionQuarantine) != rv.RequestID || RequestID(rv.AlertID, ActionRevoke) == rv.RequestID {
		t.Error("request ids are not stable per alert and action")
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
		if rv, _ := r.Decide(testAlert("a", t0, 100, SeverityCritical)); rv != nil {
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
		if rv, _ := r.Decide(testAlert("a", t0, 70, SeverityWarning)); rv != nil {
			t.Error("warning revoked")
		}
		if rv, _ := r.Decide(testAlert("a", t0.Add(time.Minute), 85, SeverityCritical)); rv != nil {
			t.Error("first critical below min_score revoked")
		}
		if rv, _ := r.Decide(testAlert("a", t0.Add(6*time.Minute), 85, SeverityCritical)); rv == nil {
			t.Error("second critical within persistence not revoked")
		}
		if rv, _ := r.Decide(testAlert("b", t0, 85, SeverityCritical)); rv != nil {
			t.Error("another agent's first critical revoked")
		}
		if rv, _ := r.Decide(testAlert("b", t0.Add(2*time.Hour), 85, SeverityCritical)); rv != nil {
			t.Error("criticals further apart than persistence revoked")
		}
		if rv, _ := r.Decide(testAlert("c", t0, 97, SeverityCritical)); rv == nil {
			t.Error("critical at min_score not revoked")
		}
	})
	t.Run("one per window", func(t *testing.T) {
		r := mustRevoker(t, enabledPolicy(), s)
		a := testAlert("a", t0, 99, SeverityCritical)
		b := *a
		b.Kind, b.AlertID = KindVolume, AlertID("a", a.WindowStart.UnixNano(), KindVolume)
		if rv, _ := r.Decide(a); rv == nil {
			t.Fatal("not revoked")
		}
		if rv, _ := r.Decide(&b); rv != nil {
			t.Error("second kind of the same window revoked again")
		}
	})
	t.Run("allowlist", func(t *testing.T) {
		p := enabledPolicy()
		p.Allowlist = []string{"spiffe://bank/agent/core-*"}
		r := mustRevoker(t, p, s)
		if rv, _ := r.Decide(testAlert("spiffe://bank/agent/core-ledger", t0, 100, SeverityCritical)); rv != nil {
			t.Error("allowlisted agent revoked")
		}
		if rv, _ := r.Decide(testAlert("spiffe://bank/agent/payments", t0, 100, SeverityCritical)); rv == nil {
			t.Error("agent outside the allowlist not revoked")
		}
	})
	t.Run("budget", func(t *testing.T) {
		p := enabledPolicy()
		p.Budget, p.BudgetPerClass = 3, 2
		r := mustRevoker(t, p, s)
		var modes []string
		for i, agent := range []string{"a", "b", "c"} {
			rv, _ := r.Decide(testAlert(agent, t0.Add(time.Duration(i)*time.Minute), 99, SeverityCritical))
			modes = append(modes, rv.Mode+"/"+rv.Why)
		}
		other := testAlert("d", t0.Add(4*time.Minute), 99, SeverityCritical)
		other.AgentClass = "kyc"
		rv, _ := r.Decide(other)
		modes = append(modes, rv.Mode+"/"+rv.Why)
		rv, _ = r.Decide(testAlert("e", t0.Add(5*time.Minute), 99, SeverityCritical))
		modes = append(modes, rv.Mode+"/"+rv.Why)
		rv, _ = r.Decide(testAlert("f", t0.Add(2*time.Hour), 99, SeverityCritical))
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
		if rv, _ := r.Decide(a); rv == nil || rv.Mode != ModeDryRun || rv.Why != "cold" {
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
		func(p *RevocationPolicy) { p.Allowlist = []string{"[x"} },
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
// decides exactly as the uninterrupted one (budget, persistence, one
// request per window).
func TestRevokerStateRoundTrip(t *testing.T) {
	s := testSigner(t)
	p := enabledPolicy()
	p.Budget, p.BudgetPerClass, p.MinScore = 2, 2, 95
	t0 := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	var alerts []*Alert
	for i := range 12 {
		a := testAlert(string(rune('a'+i%4)), t0.Add(time.Duration(i)*4*time.Minute), float64(85+i%3*6), SeverityCritical)
		if i%5 == 4 {
			a.AgentClass = "kyc"
		}
		alerts = append(alerts, a)
	}
	decide := func(r *Revoker, as []*Alert) (out []string) {
		for _, a := range as {
			rv, err := r.Decide(a)
			if err != nil {
				t.Fatal(err)
			}
			if rv == nil {
				out = append(out, "-")
			} else {
				out = append(out, rv.RequestID[:6]+"/"+rv.Mode+"/"+rv.Why)
			}
		}
		return out
	}
	want := decide(mustRevoker(t, p, s), alerts)
	for cut := range len(alerts) {
		r := mustRevoker(t, p, s)
		got := decide(r, alerts[:cut])
		state := r.AppendBinary(nil)
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
	if !slices.Contains(want, "-") || !slices.ContainsFunc(want, func(s string) bool { return strings.HasSuffix(s, "budget") }) {
		t.Errorf("the scenario must skip some alerts and spend the budget: %v", want)
	}
	if err := mustRevoker(t, p, s).DecodeFrom([]byte{1, 5}); err == nil {
		t.Error("truncated state accepted")
	}
	if err := mustRevoker(t, p, s).DecodeFrom(nil); err != nil {
		t.Errorf("empty state (old checkpoint): %v", err)
	}
}
