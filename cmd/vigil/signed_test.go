//go:build linux

package main

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"go.uber.org/goleak"

	"github.com/vigil-sec/vigil/detector"
	"github.com/vigil-sec/vigil/features"
	"github.com/vigil-sec/vigil/sim"
)

// With event signatures required (issue 12 item 1), enforcement works and
// forgeries cannot drive it. The fleet's emitter signs every genuine event
// (vigil sign-events does the same); the attacker of
// TestRunForgedEventsDoNotEnforce writes the same framing and decoy events,
// unsigned or signed with a key of its own. Then: every forged event is a
// dead letter (unsigned, bad_signature) and raises an identity alert for
// the agent it claims; no request names a framed agent or a decoy; and the
// real incident's agent gets an enforced request (why policy), since its
// windows hold nothing but verified events — and since nothing acts on
// the request here, the closed loop sees the credential still allowed and
// raises revocation_ineffective.
func TestRunSignedEventsEnforce(t *testing.T) {
	if testing.Short() {
		t.Skip("streams a simulated fleet through vigil run")
	}
	t.Cleanup(func() { goleak.VerifyNone(t) })
	const parts = 2
	addr := startDevbroker(t, "--topic", fmt.Sprintf("agent-events:%d", parts))
	dir := t.TempDir()

	// The emitter's key and the keyring vigil trusts.
	var kout, kerr bytes.Buffer
	emKey, emPub := filepath.Join(dir, "emitter.pem"), filepath.Join(dir, "emitter.pub")
	if rc := run([]string{"keygen", "--key", emKey, "--pub", emPub}, nil, &kout, &kerr); rc != 0 {
		t.Fatalf("keygen: %s", kerr.String())
	}
	var entry bytes.Buffer
	if rc := run([]string{"sign-events", "--key", emKey, "--kid", "gw-1", "--keyring-entry"}, nil, &entry, &kerr); rc != 0 {
		t.Fatalf("sign-events --keyring-entry: %s", kerr.String())
	}
	keyring := filepath.Join(dir, "keyring.json")
	if err := os.WriteFile(keyring, []byte(`{"keys":[`+strings.TrimSpace(entry.String())+`]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	signer, err := detector.LoadSigner("gw-1", emKey)
	if err != nil {
		t.Fatal(err)
	}
	_, attacker, _ := ed25519.GenerateKey(nil)

	cfg := sim.Config{Seed: fgSeed, Agents: 18, Days: 3, WarmupDays: 2, Incidents: 3}
	msgs := simMessages(t, cfg)
	fleet := fgFleet(t, cfg, msgs)
	inc, victims := fgChoose(t, fleet, parts)
	signedN := 0
	for i := range msgs {
		if s, err := features.SignEvent(msgs[i].Value, "gw-1", signer.Key()); err == nil {
			msgs[i].Value = s
			signedN++
		}
	}
	frame := inc.Start.Add(-30 * time.Minute)
	var forged []fgEvent
	for i, v := range victims {
		for j, call := range fgPrivileged {
			forged = append(forged, fgEvent{at: frame.Add(time.Duration(20*j+7*i) * time.Second), agent: v, class: fleet.agents[v].class,
				target: call[0], action: call[1], cred: fleet.agents[v].mainCred(), ip: fleet.agents[v].ip})
		}
	}
	ia := fleet.agents[inc.AgentID]
	for j := range 4 {
		call := fgPrivileged[j%len(fgPrivileged)]
		forged = append(forged, fgEvent{at: inc.Start.Add(-15*time.Minute + time.Duration(15*j)*time.Second), agent: inc.AgentID, class: ia.class,
			target: call[0], action: call[1], cred: fleet.agents[victims[0]].mainCred(), ip: ia.ip})
	}
	all := fgInsert(msgs, forged)
	// Half the forgeries signed with the attacker's own key, under the
	// emitter's key id or one of its own.
	nf := 0
	for i := range all {
		if !bytes.Contains(all[i].Value, []byte(`"event_id":"forged-`)) {
			continue
		}
		nf++
		if nf%2 == 0 {
			kid := []string{"gw-1", "gw-attacker"}[nf/2%2]
			if s, err := features.SignEvent(all[i].Value, kid, attacker); err == nil {
				all[i].Value = s
			}
		}
	}
	conf := writeFile(t, dir, "vigil.yaml", fmt.Sprintf(`detector:
  signatures:
    mode: require
    keyring: %q
  revocation:
    enabled: true
    mode: enforce
kafka:
  checkpoint_interval: 500ms
  idle_timeout: 10m
outputs:
  signing_key:
    file: %q
    id: vigil-test
`, keyring, emKey))
	produce(t, addr, all, 0)

	stdout, _, metrics := runToEnd(t, addr, "signed", parts, len(all), "--config", conf)

	rejected := metricSum(metrics, `vigil_consumer_dead_letters_total{reason="unsigned"}`) + metricSum(metrics, `vigil_consumer_dead_letters_total{reason="bad_signature"}`)
	if rejected != float64(len(forged)) {
		t.Errorf("%v forged events dead-lettered (unsigned, bad_signature), want all %d", rejected, len(forged))
	}
	identity, ineffective := map[string]bool{}, map[string]bool{}
	for l := range strings.SplitSeq(stdout.String(), "\n") {
		var a detector.Alert
		if json.Unmarshal([]byte(l), &a) == nil {
			switch a.Kind {
			case detector.KindIdentity:
				identity[a.AgentID] = true
			case detector.KindRevocationIneffective:
				ineffective[a.AgentID] = true
			}
		}
	}
	// The closed loop: the simulated agent goes on using the credential
	// vigil revoked (nothing acts on the request here), which vigil sees.
	if !ineffective[inc.AgentID] {
		t.Errorf("no revocation_ineffective alert for %s, whose revoked credential stayed in use", inc.AgentID)
	}
	if n := metricSum(metrics, `vigil_revocation_outcomes_total{outcome="ineffective"}`); n == 0 {
		t.Error("no ineffective outcome settled")
	}
	for _, v := range append(victims, inc.AgentID) {
		if !identity[v] {
			t.Errorf("no identity alert for %s, in whose name forged events were written", v)
		}
	}

	tr := &kafka.Transport{}
	defer tr.CloseIdleConnections()
	cl := &kafka.Client{Addr: kafka.TCP(addr), Transport: tr, Timeout: 5 * time.Second}
	pub, err := detector.LoadPublicKey(emPub)
	if err != nil {
		t.Fatal(err)
	}
	var enforced []string
	for _, m := range gkReadAll(t, cl, devRevocationsTopic) {
		rv, err := detector.VerifyRevocation(m.Value, map[string]ed25519.PublicKey{"vigil-test": pub})
		if err != nil {
			t.Fatalf("revocation request: %v", err)
		}
		desc := fmt.Sprintf("%s %s/%s credential %s", rv.AgentID, rv.Mode, rv.Why, rv.CredentialID)
		for _, v := range victims {
			if rv.AgentID == v {
				t.Errorf("request for a framed agent: %s", desc)
			}
		}
		if a := fleet.agents[rv.AgentID]; a == nil || a.creds[rv.CredentialID] == 0 {
			t.Errorf("request names a credential its agent never used: %s", desc)
		}
		if rv.Mode == detector.ModeEnforce {
			enforced = append(enforced, desc)
		}
	}
	t.Logf("%d events signed, %d forged; enforced: %v", signedN, len(forged), enforced)
	if !strings.Contains(strings.Join(enforced, "\n"), inc.AgentID) {
		t.Errorf("the incident's agent %s got no enforced request", inc.AgentID)
	}
}
