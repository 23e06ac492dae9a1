package features

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

func sigKeyring(t *testing.T, pub ed25519.PublicKey, extra string) *Keyring {
	t.Helper()
	k, err := ParseKeyring(fmt.Appendf(nil, `{"keys":[{"kid":"gw-1","public_key":%q%s}]}`, base64.StdEncoding.EncodeToString(pub), extra))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// A signed event verifies; any change to its bytes, a key it does not
// name, an agent the key may not sign for, a key out of its validity, or
// a "sig" that is not the last member does not.
func TestSignAndVerifyEvent(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	const ev = `{"event_id":"e1","ts":"2026-03-02T10:00:00Z","agent_id":"spiffe://bank/agent/pay-1","target_id":"ledger","action":"post","decision":"allow","amount":12.5}`
	signed, err := SignEvent([]byte(ev), "gw-1", priv)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC).UnixNano()
	verify := func(k *Keyring, raw string) error {
		var d Decoder
		var e Event
		if err := d.Decode([]byte(raw), &e); err != nil {
			return err
		}
		_, err := k.VerifyEvent(&e, []byte(raw), at, nil)
		return err
	}
	k := sigKeyring(t, pub, "")
	if err := verify(k, string(signed)); err != nil {
		t.Fatalf("signed event: %v\n%s", err, signed)
	}
	if err := verify(k, string(signed)+"\n"); err != nil {
		t.Errorf("trailing newline: %v", err)
	}
	other, _, _ := ed25519.GenerateKey(nil)
	sig := string(signed[strings.Index(string(signed), `,"sig":`):])
	for _, tc := range []struct {
		name string
		k    *Keyring
		raw  string
		want error
	}{
		{"unsigned", k, ev, ErrUnsigned},
		{"amount changed", k, strings.Replace(string(signed), "12.5", "125", 1), ErrBadSignature},
		{"agent changed", k, strings.Replace(string(signed), "pay-1", "pay-2", 1), ErrBadSignature},
		{"another key", sigKeyring(t, other, ""), string(signed), ErrBadSignature},
		{"unknown kid", k, strings.Replace(string(signed), `"sig_key":"gw-1"`, `"sig_key":"gw-9"`, 1), ErrBadSignature},
		{"key not for this agent", sigKeyring(t, pub, `,"agents":["spiffe://bank/agent/kyc-*"]`), string(signed), ErrBadSignature},
		{"key expired", sigKeyring(t, pub, `,"not_after":"2026-03-01T00:00:00Z"`), string(signed), ErrBadSignature},
		{"key not yet valid", sigKeyring(t, pub, `,"not_before":"2026-03-03T00:00:00Z"`), string(signed), ErrBadSignature},
		{"sig not last", k, strings.Replace(string(signed), sig, `,"sig"`+sig[len(`,"sig"`):len(sig)-1]+`,"resource":"x"}`, 1), ErrBadSignature},
		{"sig not base64", k, strings.Replace(string(signed), sig, `,"sig":"!!"}`, 1), ErrBadSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := verify(tc.k, tc.raw); !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
	if k := sigKeyring(t, pub, `,"agents":["spiffe://bank/agent/pay-*"],"not_before":"2026-01-01T00:00:00Z","not_after":"2027-01-01T00:00:00Z"`); verify(k, string(signed)) != nil {
		t.Error("a key for the agent, within its validity, refused")
	}
	if _, err := SignEvent(signed, "gw-1", priv); err == nil {
		t.Error("signed an event twice")
	}
}

func TestParseKeyringRejects(t *testing.T) {
	pub := base64.StdEncoding.EncodeToString(make([]byte, 32))
	for _, bad := range []string{
		`{"keys":[{"public_key":"` + pub + `"}]}`,
		`{"keys":[{"kid":"a","public_key":"AAAA"}]}`,
		`{"keys":[{"kid":"a","public_key":"` + pub + `"},{"kid":"a","public_key":"` + pub + `"}]}`,
		`{"keys":[{"kid":"a","public_key":"` + pub + `","agents":["["]}]}`,
		`{"keys":[{"kid":"a","public_key":"` + pub + `","not_before":"2027-01-01T00:00:00Z","not_after":"2026-01-01T00:00:00Z"}]}`,
		`{"keys":[{"kid":"a","public_key":"` + pub + `","private_key":"x"}]}`,
		`not json`,
	} {
		if _, err := ParseKeyring([]byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}

// FuzzVerifyEvent: whatever the bytes, verification never panics, and
// only the signed event verifies.
func FuzzVerifyEvent(f *testing.F) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	signed, err := SignEvent([]byte(`{"event_id":"e1","ts":"2026-03-02T10:00:00Z","agent_id":"a-1","target_id":"t","action":"x","decision":"allow"}`), "gw-1", priv)
	if err != nil {
		f.Fatal(err)
	}
	k, err := ParseKeyring(fmt.Appendf(nil, `{"keys":[{"kid":"gw-1","public_key":%q}]}`, base64.StdEncoding.EncodeToString(pub)))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(signed)
	f.Add([]byte(`{"event_id":"e1","ts":"2026-03-02T10:00:00Z","agent_id":"a-1","target_id":"t","action":"x","decision":"allow","sig_key":"gw-1","sig":"` + strings.Repeat("A", 86) + `=="}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		var d Decoder
		var e Event
		if d.Decode(raw, &e) != nil {
			return
		}
		_, err := k.VerifyEvent(&e, raw, 0, nil)
		if err == nil && string(raw) != string(signed) && strings.TrimRight(string(raw), " \t\r\n") != string(signed) {
			t.Fatalf("verified bytes that were not signed: %q", raw)
		}
	})
}

// BenchmarkVerifyEvent is the cost a signed event adds (mode
// verify_if_present or require): one Ed25519 verification.
func BenchmarkVerifyEvent(b *testing.B) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	signed, err := SignEvent([]byte(`{"event_id":"7703dadd27d0f272","ts":"2026-03-02T00:00:00.051Z","agent_id":"spiffe://bank.example/agent/fraud-scorer-06","agent_class":"fraud-scorer","target_id":"feature-store","action":"features.get","decision":"allow","data_class":"internal","status":"ok","bytes_in":8399,"bytes_out":192,"latency_ms":13.9,"credential_id":"x509:d6b3047820d3fd97","auth":"mtls","attested":true,"src_ip":"10.31.9.12"}`), "gw-1", priv)
	if err != nil {
		b.Fatal(err)
	}
	k, _ := ParseKeyring(fmt.Appendf(nil, `{"keys":[{"kid":"gw-1","public_key":%q}]}`, base64.StdEncoding.EncodeToString(pub)))
	var d Decoder
	var e Event
	if err := d.Decode(signed, &e); err != nil {
		b.Fatal(err)
	}
	var scratch []byte
	b.ReportAllocs()
	for b.Loop() {
		if scratch, err = k.VerifyEvent(&e, signed, 0, scratch); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzParseKeyring: the emitters' keyring file. What parses holds only keys
// with an id, 32 bytes of public key, valid patterns and a validity that
// does not end before it starts, and re-encodes to JSON that parses to the
// same keys.
//
// Run: go test -run='^$' -fuzz=FuzzParseKeyring ./features
func FuzzParseKeyring(f *testing.F) {
	pub := base64.StdEncoding.EncodeToString(make([]byte, 32))
	f.Add([]byte(`{"keys":[{"kid":"gw-1","public_key":"` + pub + `","agents":["spiffe://bank.example/agent/pay-*"],"not_before":"2026-01-01T00:00:00Z","not_after":"2027-01-01T00:00:00+01:00"},{"kid":"gw-2","public_key":"` + pub + `"}]}`))
	f.Add([]byte(`{"keys":[{"kid":"a","public_key":"` + pub + `","agents":["["]}]}`))
	f.Add([]byte(`{"keys":[]} {"keys":[{"kid":"a","public_key":"` + pub + `"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := ParseKeyring(data)
		if err != nil {
			return
		}
		var keys []*SigningKey
		for kid, key := range k.keys {
			if kid != key.KeyID || kid == "" || len(key.Public) != ed25519.PublicKeySize ||
				(!key.NotAfter.IsZero() && key.NotAfter.Before(key.NotBefore)) {
				t.Fatalf("accepted %+v", key)
			}
			keys = append(keys, key)
		}
		again, err := json.Marshal(map[string]any{"keys": keys})
		if err != nil {
			return // a time outside years 0-9999 does not marshal
		}
		k2, err := ParseKeyring(again)
		if err != nil {
			t.Fatalf("re-encoded keyring: %v\n%s", err, again)
		}
		if k2.Len() != k.Len() {
			t.Fatalf("re-encoded keyring: %d keys, want %d", k2.Len(), k.Len())
		}
		for kid, a := range k.keys {
			b := k2.keys[kid]
			if b == nil || !bytes.Equal(a.Public, b.Public) || !slices.Equal(a.Agents, b.Agents) ||
				!a.NotBefore.Equal(b.NotBefore) || !a.NotAfter.Equal(b.NotAfter) {
				t.Fatalf("re-encoded %+v as %+v", a, b)
			}
		}
	})
}
