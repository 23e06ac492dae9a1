package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/models"
)

// keygen writes a key pair; a request signed with the private key verifies
// with the public one, and a tampered request fails with exit status 1.
func TestKeygenAndVerifyRevocation(t *testing.T) {
	dir := t.TempDir()
	key, pub := filepath.Join(dir, "vigil.key"), filepath.Join(dir, "vigil.pub")
	var out, errb bytes.Buffer
	if rc := run([]string{"keygen", "--key", key, "--pub", pub}, nil, &out, &errb); rc != 0 {
		t.Fatalf("keygen: rc %d: %s", rc, errb.String())
	}
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("private key mode: %v, %v", fi, err)
	}
	if rc := run([]string{"keygen", "--key", key, "--pub", pub}, nil, &out, &errb); rc != 1 {
		t.Error("keygen overwrote an existing key")
	}
	s, err := detector.LoadSigner("k1", key)
	if err != nil {
		t.Fatal(err)
	}
	pol := detector.DefaultRevocationPolicy()
	pol.Enabled = true
	r, err := detector.NewRevoker(pol, s)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 3, 2, 10, 1, 0, 0, time.UTC)
	rvs, err := r.Decide(&detector.Alert{
		AlertID: "a1", AgentID: "spiffe://bank.example/agent/x", AgentClass: "payments",
		WindowStart: at.Truncate(5 * time.Minute), WindowEnd: at.Truncate(5 * time.Minute).Add(5 * time.Minute), DetectedAt: at,
		Score: 99, Severity: detector.SeverityCritical, Kind: detector.KindVolume,
		Baseline:    detector.Baseline{Source: models.SourceAgent, Windows: 100},
		Credentials: []string{"cert-x"}, OtherCredentials: []string{"decoy"},
	})
	if err != nil || len(rvs) != 1 {
		t.Fatalf("%d requests, want 1: %v", len(rvs), err)
	}
	rv := rvs[0]
	good := string(rv.Body) + "\n"
	out.Reset()
	errb.Reset()
	if rc := run([]string{"verify-revocation", "--pub", "k1=" + pub}, strings.NewReader(good), &out, &errb); rc != 0 ||
		!strings.Contains(out.String(), "ok: request "+rv.RequestID) || !strings.Contains(out.String(), "credential cert-x ") {
		t.Errorf("verify: rc %d\n%s%s", rc, out.String(), errb.String())
	}
	for _, bad := range []string{
		strings.Replace(good, `"mode":"dry_run"`, `"mode":"enforce"`, 1),
		strings.Replace(good, `"evidence_credentials":["decoy"]`, `"evidence_credentials":["cert-x"]`, 1),
	} {
		if bad == good {
			t.Fatalf("tamper did not change %s", good)
		}
		out.Reset()
		if rc := run([]string{"verify-revocation", "--pub", "k1=" + pub, "-"}, strings.NewReader(good+bad), &out, &errb); rc != 1 ||
			!strings.Contains(out.String(), "line 2: FAIL") || !strings.Contains(out.String(), "line 1: ok") {
			t.Errorf("tampered: rc %d\n%s", rc, out.String())
		}
	}
	if rc := run([]string{"verify-revocation", "--pub", "other=" + pub}, strings.NewReader(good), &out, &errb); rc != 1 {
		t.Error("unknown kid accepted")
	}
	if rc := run([]string{"verify-revocation"}, strings.NewReader(good), &out, &errb); rc != 2 {
		t.Error("no key: want usage error")
	}
}
