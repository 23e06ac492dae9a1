package detector

import (
	"errors"

	"github.com/vigil-sec/vigil/features"
	"github.com/vigil-sec/vigil/models"
)

// Reasons of events whose signature is missing (mode require) or fails.
const (
	ReasonUnsigned     features.Reason = "unsigned"
	ReasonBadSignature features.Reason = "bad_signature"
)

// KindIdentity is the alert kind raised for the claimed agent of an event
// whose signature is missing or fails: someone wrote in its name.
const KindIdentity = "identity"

// flagUnverified marks a window (features.Window.Flags; the kinds use the
// low seven bits) that holds an event without a verified signature: an
// alert on it cannot enforce.
const flagUnverified = 1 << 7

// Keys is the emitters' keyring, shared by every partition's pipeline and
// replaced whole when its file changes (Reload). Safe for concurrent use.
type Keys struct{ f trustedFile[features.Keyring] }

// LoadKeys reads the keyring file.
func LoadKeys(path string) (*Keys, error) {
	k := &Keys{f: trustedFile[features.Keyring]{what: "signatures.keyring", path: path, parse: features.ParseKeyring}}
	if _, err := k.Reload(); err != nil {
		return nil, err
	}
	return k, nil
}

// Reload rereads the keyring file if it changed since the last read, and
// reports whether it did. On an error the keys in use stay.
func (k *Keys) Reload() (bool, error) { return k.f.reload() }

// Ring returns the keyring in use.
func (k *Keys) Ring() *features.Keyring { return k.f.load() }

// SetKeys gives the pipeline the emitters' keys; required when
// signatures are checked (Config.Signatures.Mode). Call before the first
// Process.
func (p *Pipeline) SetKeys(k *Keys) { p.keys = k }

// verify checks e's signature as the configured mode says. It returns
// whether the event is verified, or the error that rejects it (counted,
// and an identity alert raised for the claimed agent).
func (p *Pipeline) verify(e *features.Event, raw []byte) (bool, error) {
	mode := p.cfg.Signatures.Mode
	if mode == SigOff || mode == "" {
		return false, nil
	}
	if p.keys == nil || p.keys.Ring() == nil {
		return false, errors.New("signatures: no keyring (SetKeys)")
	}
	at := p.trusted
	if at <= 0 {
		at = e.TS
	}
	var err error
	p.sigBuf, err = p.keys.Ring().VerifyEvent(e, raw, at, p.sigBuf)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, features.ErrUnsigned) && mode == SigVerifyIfPresent:
		return false, nil
	}
	reason := ReasonBadSignature
	if errors.Is(err, features.ErrUnsigned) {
		reason = ReasonUnsigned
	}
	p.stats.Invalid[reason]++
	p.impersonated(e, reason)
	return false, &features.FieldError{Field: "sig", Reason: reason, Msg: err.Error()}
}

// impersonated raises the identity alert for the agent an event without
// a valid signature claims to be: someone wrote in its name. It cannot
// enforce (no credentials), and a burst of them folds into the hour's
// identity_flood alert.
func (p *Pipeline) impersonated(e *features.Event, reason features.Reason) {
	class := "unknown"
	if a, ok := p.agents[string(e.AgentID)]; ok {
		class = a.class.name
	} else if len(e.AgentClass) > 0 {
		class = string(e.AgentClass)
	}
	p.identityEvent(string(e.AgentID), class, e, KindIdentity, KindIdentity, SeverityCritical,
		[]models.Reason{{Feature: string(reason), Value: 1}}, "none")
}
