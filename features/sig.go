package features

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"time"
)

// Event signatures. An emitter (a gateway, a sidecar, the policy engine)
// signs each event with its Ed25519 key; the signed form is the event's
// JSON exactly as the emitter sends it, without the "sig" member, which is
// then appended as the object's last member:
//
//	signed = {"event_id":…,…,"sig_key":"<kid>"}            (one JSON object, no "sig")
//	sig    = base64.StdEncoding(Ed25519(key, signed))
//	sent   = signed without its final '}' + `,"sig":"` + sig + `"}`
//
// A verifier recovers the signed bytes by removing the trailing
// `,"sig":"…"` member, so what is verified is byte for byte what vigil
// decodes: no canonical re-encoding that two languages could disagree on.
// "sig_key" must be inside the signed part; a "sig" anywhere but last
// fails. SignEvent does this for Go producers; `vigil sign-events` for
// files.

// Signature errors, wrapped by VerifyEvent's errors.
var (
	ErrUnsigned     = errors.New("event is not signed")
	ErrBadSignature = errors.New("event signature does not verify")
)

// SignEvent returns event (one contract v1 JSON object without "sig")
// signed with key under key id kid: it adds "sig_key" if the event has
// none (it must not name another key), then appends the "sig" member.
func SignEvent(event []byte, kid string, key ed25519.PrivateKey) ([]byte, error) {
	var d Decoder
	var e Event
	event = bytes.TrimSpace(event)
	if err := d.Decode(event, &e); err != nil {
		return nil, err
	}
	switch {
	case e.HasSig:
		return nil, errors.New("sign: the event already has a sig")
	case len(e.SigKey) > 0 && string(e.SigKey) != kid:
		return nil, fmt.Errorf("sign: the event names key %q, not %q", e.SigKey, kid)
	case len(key) != ed25519.PrivateKeySize:
		return nil, errors.New("sign: not an Ed25519 private key")
	}
	signed := event
	if len(e.SigKey) == 0 {
		kidJSON, _ := json.Marshal(kid)
		signed = append(append(append(bytes.Clone(event[:len(event)-1]), `,"sig_key":`...), kidJSON...), '}')
	}
	sig := base64.StdEncoding.EncodeToString(ed25519.Sign(key, signed))
	out := append(bytes.Clone(signed[:len(signed)-1]), `,"sig":"`...)
	out = append(out, sig...)
	return append(out, `"}`...), nil
}

// SignedPart appends to dst the bytes the emitter signed of raw, a decoded
// event whose "sig" member held sig: raw without its trailing
// `,"sig":"<sig>"` member. ok is false when "sig" is not the last member.
func SignedPart(dst, raw, sig []byte) (_ []byte, ok bool) {
	raw = bytes.TrimRight(raw, " \t\r\n")
	tail := len(`,"sig":""}`) + len(sig)
	if len(raw) < tail {
		return dst, false
	}
	t := raw[len(raw)-tail:]
	if !bytes.HasPrefix(t, []byte(`,"sig":"`)) || !bytes.Equal(t[len(`,"sig":"`):len(t)-2], sig) || !bytes.HasSuffix(t, []byte(`"}`)) {
		return dst, false
	}
	dst = append(dst, raw[:len(raw)-tail]...)
	return append(dst, '}'), true
}

// SigningKey is one emitter key of a Keyring.
type SigningKey struct {
	KeyID  string `json:"kid"`
	Public []byte `json:"public_key"` // Ed25519 public key, 32 bytes (base64 in JSON)
	// Agents are the agent_ids the key may sign for (path.Match
	// patterns); empty: any. An emitter's key signs only its agents'.
	Agents []string `json:"agents,omitempty"`
	// The key is valid from NotBefore to NotAfter (zero: unbounded), so
	// that an old and a new key overlap while an emitter rotates.
	NotBefore time.Time `json:"not_before,omitzero"`
	NotAfter  time.Time `json:"not_after,omitzero"`
}

// Keyring holds the emitters' public keys. It is immutable once parsed and
// safe for concurrent use.
type Keyring struct {
	keys map[string]*SigningKey
}

// ParseKeyring decodes a keyring file: {"keys": [SigningKey, …]}.
func ParseKeyring(data []byte) (*Keyring, error) {
	var f struct {
		Keys []*SigningKey `json:"keys"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("keyring: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("keyring: data after the JSON object at byte %d", dec.InputOffset())
	}
	k := &Keyring{keys: make(map[string]*SigningKey, len(f.Keys))}
	for i, key := range f.Keys {
		switch {
		case key == nil || key.KeyID == "":
			return nil, fmt.Errorf("keyring: key %d: kid is required", i)
		case len(key.Public) != ed25519.PublicKeySize:
			return nil, fmt.Errorf("keyring: key %q: public_key must be 32 bytes (an Ed25519 public key, base64), not %d", key.KeyID, len(key.Public))
		case k.keys[key.KeyID] != nil:
			return nil, fmt.Errorf("keyring: key %q listed twice", key.KeyID)
		case !key.NotAfter.IsZero() && key.NotAfter.Before(key.NotBefore):
			return nil, fmt.Errorf("keyring: key %q: not_after before not_before", key.KeyID)
		}
		for _, pat := range key.Agents {
			if _, err := path.Match(pat, ""); err != nil {
				return nil, fmt.Errorf("keyring: key %q: agents pattern %q: %v", key.KeyID, pat, err)
			}
		}
		k.keys[key.KeyID] = key
	}
	return k, nil
}

// Len is the number of keys.
func (k *Keyring) Len() int { return len(k.keys) }

// VerifyEvent checks decoded event e (raw is its encoding) against the
// keyring at time at (Unix ns): a known key, valid then, allowed to sign
// for e's agent, whose signature over SignedPart verifies. scratch is
// reused for the signed bytes and returned. Errors wrap ErrUnsigned or
// ErrBadSignature and say why.
func (k *Keyring) VerifyEvent(e *Event, raw []byte, at int64, scratch []byte) ([]byte, error) {
	if !e.HasSig {
		return scratch, ErrUnsigned
	}
	key := k.keys[bytesToString(e.SigKey)]
	if key == nil {
		return scratch, fmt.Errorf("%w: unknown sig_key %q", ErrBadSignature, clip(e.SigKey))
	}
	t := time.Unix(0, at)
	if !key.NotBefore.IsZero() && t.Before(key.NotBefore) || !key.NotAfter.IsZero() && t.After(key.NotAfter) {
		return scratch, fmt.Errorf("%w: key %q is not valid at %s", ErrBadSignature, key.KeyID, t.UTC().Format(time.RFC3339))
	}
	if len(key.Agents) > 0 {
		ok := false
		for _, pat := range key.Agents {
			if m, _ := path.Match(pat, bytesToString(e.AgentID)); m {
				ok = true
				break
			}
		}
		if !ok {
			return scratch, fmt.Errorf("%w: key %q may not sign for this agent", ErrBadSignature, key.KeyID)
		}
	}
	var sig [ed25519.SignatureSize + 2]byte
	if len(e.Sig) != base64.StdEncoding.EncodedLen(ed25519.SignatureSize) {
		return scratch, fmt.Errorf("%w: sig is not a base64 Ed25519 signature", ErrBadSignature)
	}
	if n, err := base64.StdEncoding.Decode(sig[:], e.Sig); err != nil || n != ed25519.SignatureSize {
		return scratch, fmt.Errorf("%w: sig is not a base64 Ed25519 signature", ErrBadSignature)
	}
	signed, ok := SignedPart(scratch[:0], raw, e.Sig)
	if !ok {
		return signed, fmt.Errorf(`%w: "sig" is not the event's last member`, ErrBadSignature)
	}
	if !ed25519.Verify(key.Public, signed, sig[:ed25519.SignatureSize]) {
		return signed, ErrBadSignature
	}
	return signed, nil
}

// clip bounds an attacker's string quoted in an error.
func clip(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "…"
	}
	return string(b)
}
