package detector

import (
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vigil-sec/vigil/features"
)

func keyringJSON(kids ...string) (string, map[string]ed25519.PrivateKey) {
	privs := map[string]ed25519.PrivateKey{}
	s := `{"keys":[`
	for i, kid := range kids {
		pub, priv, _ := ed25519.GenerateKey(nil)
		privs[kid] = priv
		if i > 0 {
			s += ","
		}
		s += fmt.Sprintf(`{"kid":%q,"public_key":%q}`, kid, base64.StdEncoding.EncodeToString(pub))
	}
	return s + "]}", privs
}

// Keys rotate: a changed keyring file is reread; a broken or
// world-writable one is refused and the keys in use stay.
func TestKeysReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyring.json")
	ring1, _ := keyringJSON("old")
	if err := os.WriteFile(path, []byte(ring1), 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := LoadKeys(path)
	if err != nil || k.Ring().Len() != 1 {
		t.Fatalf("load: %v", err)
	}
	if changed, err := k.Reload(); changed || err != nil {
		t.Errorf("unchanged file: changed %v, %v", changed, err)
	}
	ring2, _ := keyringJSON("old", "new")
	later := time.Now().Add(time.Second)
	os.WriteFile(path, []byte(ring2), 0o600)
	os.Chtimes(path, later, later)
	if changed, err := k.Reload(); !changed || err != nil || k.Ring().Len() != 2 {
		t.Errorf("rotated file: changed %v, %v, %d keys", changed, err, k.Ring().Len())
	}
	os.WriteFile(path, []byte(`{"keys":[{"kid":"x"}]}`), 0o600)
	os.Chtimes(path, later.Add(time.Second), later.Add(time.Second))
	if _, err := k.Reload(); err == nil || k.Ring().Len() != 2 {
		t.Errorf("broken file: %v, %d keys in use", err, k.Ring().Len())
	}
	os.WriteFile(path, []byte(ring2), 0o600)
	os.Chmod(path, 0o666)
	os.Chtimes(path, later.Add(2*time.Second), later.Add(2*time.Second))
	if _, err := k.Reload(); err == nil {
		t.Error("a world-writable keyring was accepted")
	}
}

// verify_if_present: a signed event must verify, an unsigned one is
// accepted but its window is not verified; require: unsigned is a dead
// letter; a tampered event is a dead letter and an identity alert for the
// agent it claims, in either mode.
func TestSignatureModes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyring.json")
	ring, privs := keyringJSON("gw-1")
	os.WriteFile(path, []byte(ring), 0o600)
	keys, err := LoadKeys(path)
	if err != nil {
		t.Fatal(err)
	}
	ev := func(i int, agent string) []byte {
		return fmt.Appendf(nil, `{"event_id":"e%d","ts":"2026-03-02T10:%02d:%02dZ","agent_id":%q,"target_id":"t","action":"a","decision":"allow"}`, i, i/60%60, i%60, agent)
	}
	sign := func(b []byte) []byte {
		s, err := features.SignEvent(b, "gw-1", privs["gw-1"])
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	for _, mode := range []string{SigVerifyIfPresent, SigRequire} {
		cfg := DefaultConfig()
		cfg.Signatures = SignatureConfig{Mode: mode, Keyring: path, ReloadInterval: time.Second}
		var alerts []*Alert
		p, err := NewPipeline(cfg, func(a *Alert) { alerts = append(alerts, a) })
		if err != nil {
			t.Fatal(err)
		}
		p.SetKeys(keys)
		if err := p.Process(sign(ev(1, "a-1"))); err != nil {
			t.Errorf("%s: signed event: %v", mode, err)
		}
		err = p.Process(ev(2, "a-2"))
		if mode == SigRequire && rejectReason(err) != ReasonUnsigned || mode == SigVerifyIfPresent && err != nil {
			t.Errorf("%s: unsigned event: %v", mode, err)
		}
		tampered := sign(ev(3, "a-1"))
		tampered[len(tampered)-5] ^= 1
		if err := p.Process(tampered); rejectReason(err) != ReasonBadSignature {
			t.Errorf("%s: tampered event: %v", mode, err)
		}
		var identity int
		for _, a := range alerts {
			if a.Kind == KindIdentity && a.AgentID == "a-1" && !a.Verified {
				identity++
			}
		}
		if identity != 1 {
			t.Errorf("%s: %d identity alerts for a-1, want 1", mode, identity)
		}
	}
}
