package detector

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"os"
	"path"
	"slices"
	"time"

	"github.com/vigil-sec/vigil/features"
	"github.com/vigil-sec/vigil/models"
)

// Revocation actions and modes.
const (
	ActionRevoke     = "revoke"
	ActionQuarantine = "quarantine"
	ModeEnforce      = "enforce"
	ModeDryRun       = "dry_run"
)

// Why a request has its mode (Revocation.Why), checked in this order under
// an enforce policy: only a request sent in enforce mode spends the budget.
const (
	// WhyPolicy: the configured mode (enforce, or dry_run by policy).
	WhyPolicy = "policy"
	// WhyUnverified: dry run, the alert rests on events whose signatures
	// were not verified (Alert.Verified false, or the agent's earlier
	// criticals that make it qualify were unverified): anyone who can write
	// to the events topic could have forged them.
	WhyUnverified = "unverified"
	// WhyCold: dry run, the baseline is a peer group's (too little history).
	WhyCold = "cold"
	// WhyBudget: dry run, the revocation budget is spent.
	WhyBudget = "budget"
)

// Revocation is a request to the policy engine to revoke or quarantine an
// agent's credential: the alert that caused it (alert contract v1) plus
// request_id, credential_id, evidence_credentials, action, mode, why,
// expires_at, and an Ed25519 signature by vigil's key (kid).
//
// The signature covers the request's JSON encoding without its "signature"
// member, byte for byte: vigil writes "signature" as the object's last
// member, so a verifier removes it (`,"signature":"…"` before the final
// `}`) and checks the rest. See VerifyRevocation.
type Revocation struct {
	RequestID   string          `json:"request_id"`
	AlertID     string          `json:"alert_id"`
	AgentID     string          `json:"agent_id"`
	AgentClass  string          `json:"agent_class"`
	WindowStart time.Time       `json:"window_start"`
	WindowEnd   time.Time       `json:"window_end"`
	DetectedAt  time.Time       `json:"detected_at"`
	Score       float64         `json:"score"`
	Severity    Severity        `json:"severity"`
	Kind        string          `json:"kind"`
	Reasons     []models.Reason `json:"reasons"`
	Baseline    Baseline        `json:"baseline"`
	// CredentialID is the credential to act on: one the agent established
	// (Alert.Credentials) and presented in the alert's window.
	CredentialID string `json:"credential_id"`
	// EvidenceCredentials are the other credentials presented in the
	// agent's name in the window (new to it, or another agent's): evidence
	// for a person, never to be acted on. Omitted when there are none.
	EvidenceCredentials []string `json:"evidence_credentials,omitempty"`
	Action              string   `json:"action"`
	Mode                string   `json:"mode"`
	// Why is why the mode is what it is: WhyPolicy, WhyUnverified,
	// WhyCold or WhyBudget.
	Why       string    `json:"why"`
	ExpiresAt time.Time `json:"expires_at"`
	KeyID     string    `json:"kid"`
	Signature string    `json:"signature,omitempty"`
	// Body is the signed JSON encoding (signature included), set by Sign.
	Body []byte `json:"-"`
}

// RequestID is CredentialRequestID(alertID, "", action): the id a request
// naming no credential would have (vigil sends none; kept for requests
// built by hand, e.g. in tests).
func RequestID(alertID, action string) string { return CredentialRequestID(alertID, "", action) }

// CredentialRequestID is the stable id of the revocation request that alert
// alertID causes for credential credentialID with action: redelivered
// requests deduplicate downstream, and an alert's requests for different
// credentials have different ids.
func CredentialRequestID(alertID, credentialID, action string) string {
	key := make([]byte, 0, len(alertID)+len(action)+len(credentialID)+16)
	key = append(key, "revocation\x00"...)
	key = append(key, alertID...)
	key = append(key, 0)
	key = append(key, action...)
	if credentialID != "" {
		key = append(key, 0)
		key = append(key, credentialID...)
	}
	var sum [16]byte
	h1, h2 := features.Hash64(key, 1), features.Hash64(key, 2)
	for i := range 8 {
		sum[i], sum[8+i] = byte(h1>>(8*i)), byte(h2>>(8*i))
	}
	return hex.EncodeToString(sum[:])
}

// RevocationPolicy decides which alerts become revocation requests. Vigil
// is a security control that can lock agents out, so the defaults are
// conservative: disabled, and dry run when enabled. Even in enforce mode a
// request is enforced only when the alert rests on verified events
// (Alert.Verified); until vigil verifies event signatures, none does.
type RevocationPolicy struct {
	// Enabled turns revocation requests on.
	Enabled bool `yaml:"enabled"`
	// Mode is enforce (the policy engine acts) or dry_run (it logs only).
	Mode string `yaml:"mode"`
	// Action is revoke or quarantine.
	Action string `yaml:"action"`
	// MinScore: a critical alert at or above it is enough on its own.
	// Below it, a critical alert must be the agent's MinAlerts-th critical
	// within Persistence (event time).
	MinScore    float64       `yaml:"min_score"`
	MinAlerts   int           `yaml:"min_alerts"`
	Persistence time.Duration `yaml:"persistence"`
	// TTL is how long a request holds (expires_at = detected_at + TTL);
	// the policy engine restores access after it unless a person confirms.
	// A credential gets no new request while its last one holds (except
	// an enforced request after a dry run).
	TTL time.Duration `yaml:"ttl"`
	// Allowlist names agents that are alerted on but never revoked,
	// each with a mandatory reason and expiry (see AllowEntry)
	// (path.Match patterns on agent_id, e.g. "spiffe://bank/agent/core-*").
	Allowlist []AllowEntry `yaml:"allowlist"`
	// Grace is how long after an enforced request its credential (or, for
	// a quarantine, its agent) may still appear in allowed events before
	// vigil raises revocation_ineffective (the closed loop).
	Grace time.Duration `yaml:"grace"`
	// Budget caps enforced requests per partition within BudgetWindow
	// (event time), fleet-wide and per peer group: beyond it requests are
	// still sent, in dry run, so a fleet-wide change or a flood of false
	// alarms cannot take the fleet down.
	Budget         int           `yaml:"budget"`
	BudgetPerClass int           `yaml:"budget_per_class"`
	BudgetWindow   time.Duration `yaml:"budget_window"`
}

// DefaultRevocationPolicy returns the defaults.
func DefaultRevocationPolicy() RevocationPolicy {
	return RevocationPolicy{
		Mode: ModeDryRun, Action: ActionQuarantine,
		MinScore: 95, MinAlerts: 2, Persistence: 30 * time.Minute, TTL: time.Hour,
		Budget: 10, BudgetPerClass: 3, BudgetWindow: time.Hour, Grace: 2 * time.Minute,
	}
}

// Validate reports the first invalid field.
func (p RevocationPolicy) Validate() error {
	switch {
	case p.Mode != ModeEnforce && p.Mode != ModeDryRun:
		return &ConfigError{"revocation.mode", "want enforce or dry_run, not " + p.Mode}
	case p.Action != ActionRevoke && p.Action != ActionQuarantine:
		return &ConfigError{"revocation.action", "want revoke or quarantine, not " + p.Action}
	case p.MinScore < 0 || p.MinScore > 100:
		return &ConfigError{"revocation.min_score", "want 0 to 100"}
	case p.MinAlerts < 1:
		return &ConfigError{"revocation.min_alerts", "want ≥ 1"}
	case p.Persistence <= 0 || p.TTL <= 0 || p.BudgetWindow <= 0:
		return &ConfigError{"revocation", "persistence, ttl and budget_window must be > 0"}
	case p.Budget < 0 || p.BudgetPerClass < 0:
		return &ConfigError{"revocation.budget", "must be ≥ 0"}
	}
	if p.Grace <= 0 {
		return &ConfigError{"revocation.grace", "must be > 0"}
	}
	for _, e := range p.Allowlist {
		switch _, err := path.Match(e.Agent, ""); {
		case e.Agent == "" || err != nil:
			return &ConfigError{"revocation.allowlist", fmt.Sprintf("agent %q: want a path.Match pattern on agent_id", e.Agent)}
		case e.Reason == "":
			return &ConfigError{"revocation.allowlist", fmt.Sprintf("agent %q: a reason is required", e.Agent)}
		case e.Expires.IsZero():
			return &ConfigError{"revocation.allowlist", fmt.Sprintf("agent %q: an expiry (expires, RFC 3339) is required", e.Agent)}
		}
	}
	return nil
}

// Revoker applies a RevocationPolicy to one partition's alerts. It is not
// safe for concurrent use: each partition worker has its own. Its memory
// is bounded by the agents alerted on within Persistence, the requests
// within BudgetWindow and the credentials requested within TTL.
type Revoker struct {
	pol    RevocationPolicy
	signer *Signer
	recent map[string][]critical // agent → its recent critical alerts
	spent  []spent               // enforced alerts within the budget window
	done   map[string]held       // credential → its last request
	// The closed loop (closedloop.go): enforced requests watched, by
	// credential (revoke) and by agent (quarantine); alerts and outcomes
	// to take; when to settle next; when each group's spent budget was
	// last alerted.
	byCred, byAgent map[string]*watched
	alerts          []*Alert
	outcomes        []Outcome
	nextSettle      int64
	budgetAlerted   map[string]int64
}

// critical is one critical alert: when (detected_at, Unix ns), and whether
// it rested on verified events.
type critical struct {
	at       int64
	verified bool
}

type spent struct {
	at    int64
	class string
}

// held is a credential's last request: when it expires (Unix ns), and
// whether it was enforced. A dry run holds back only dry runs: a forged
// (unverified) alert must not hold back the enforced request a verified
// one causes.
type held struct {
	exp      int64
	enforced bool
}

// NewRevoker returns a Revoker; signer may be nil only when the policy is
// disabled.
func NewRevoker(pol RevocationPolicy, signer *Signer) (*Revoker, error) {
	if err := pol.Validate(); err != nil {
		return nil, err
	}
	if pol.Enabled && signer == nil {
		return nil, &ConfigError{"revocation.signing_key", "revocation requests are enabled but no signing key is configured"}
	}
	return &Revoker{pol: pol, signer: signer, recent: make(map[string][]critical), done: make(map[string]held)}, nil
}

// Decide returns the signed revocation requests alert a causes: one for
// each credential the agent established and presented in the window
// (a.Credentials) that has no request holding, and none when there is no
// such credential — a credential new to the agent or another agent's
// (a.OtherCredentials) is evidence, listed in each request, never a
// target. The requests' mode is decided once for the alert (see the Why
// constants); when it is enforce, the alert spends one unit of the budget.
func (r *Revoker) Decide(a *Alert) ([]*Revocation, error) {
	if r == nil || !r.pol.Enabled || a.Severity < SeverityCritical || a.Observe || r.allowlisted(a.AgentID, a.DetectedAt.UnixNano()) {
		return nil, nil
	}
	at := a.DetectedAt.UnixNano()
	hist := r.recent[a.AgentID]
	keep := hist[:0]
	for _, c := range hist {
		if at-c.at < int64(r.pol.Persistence) {
			keep = append(keep, c)
		}
	}
	keep = append(keep, critical{at: at, verified: a.Verified})
	r.recent[a.AgentID] = keep
	r.prune(at)
	if a.Score < r.pol.MinScore && len(keep) < r.pol.MinAlerts {
		return nil, nil
	}
	mode, why := r.mode(a, keep)
	var out []*Revocation
	for _, cred := range a.Credentials {
		if cred == "" || slices.Contains(a.OtherCredentials, cred) {
			continue
		}
		// One request per credential while its last one holds (TTL):
		// later windows and other kinds add nothing the policy engine has
		// not been asked already. Keyed by credential, not agent, so a
		// request that named another credential never holds this one back.
		if h, ok := r.done[cred]; ok && at < h.exp && (h.enforced || mode != ModeEnforce) {
			continue
		}
		r.done[cred] = held{exp: at + int64(r.pol.TTL), enforced: mode == ModeEnforce}
		rv := &Revocation{
			RequestID: CredentialRequestID(a.AlertID, cred, r.pol.Action), AlertID: a.AlertID,
			AgentID: a.AgentID, AgentClass: a.AgentClass,
			WindowStart: a.WindowStart.UTC(), WindowEnd: a.WindowEnd.UTC(), DetectedAt: a.DetectedAt.UTC(),
			Score: a.Score, Severity: a.Severity, Kind: a.Kind, Reasons: a.Reasons, Baseline: a.Baseline,
			CredentialID: cred, EvidenceCredentials: a.OtherCredentials,
			Action: r.pol.Action, Mode: mode, Why: why,
			ExpiresAt: a.DetectedAt.Add(r.pol.TTL).UTC(),
		}
		if err := r.signer.Sign(rv); err != nil {
			return nil, err
		}
		out = append(out, rv)
		if mode == ModeEnforce {
			r.watchRequest(rv, a.AgentClass)
		}
	}
	if why == WhyBudget && len(out) > 0 {
		r.budgetSpent(a, at)
	}
	// Only requests actually sent in enforce mode spend the budget, which
	// counts agents locked out, not credentials.
	if mode == ModeEnforce && len(out) > 0 {
		r.spent = append(r.spent, spent{at: at, class: a.AgentClass})
	}
	return out, nil
}

// mode decides the mode of alert a's requests, and why; recent is the
// agent's critical alerts within Persistence, a included.
func (r *Revoker) mode(a *Alert, recent []critical) (mode, why string) {
	if r.pol.Mode != ModeEnforce {
		return r.pol.Mode, WhyPolicy
	}
	verified := 0
	for _, c := range recent {
		if c.verified {
			verified++
		}
	}
	switch {
	// Enforcement rests only on evidence an attacker cannot forge
	// cheaply: the alert's own events, and the earlier alerts it needs to
	// qualify below MinScore.
	case !a.Verified || a.Score < r.pol.MinScore && verified < r.pol.MinAlerts:
		return ModeDryRun, WhyUnverified
	case a.Baseline.Source != models.SourceAgent:
		return ModeDryRun, WhyCold
	case !r.withinBudget(a.AgentClass):
		return ModeDryRun, WhyBudget
	}
	return ModeEnforce, WhyPolicy
}

func (r *Revoker) withinBudget(class string) bool {
	if len(r.spent) >= r.pol.Budget {
		return false
	}
	n := 0
	for _, s := range r.spent {
		if s.class == class {
			n++
		}
	}
	return n < r.pol.BudgetPerClass
}

// prune forgets what lies beyond the persistence and budget windows.
func (r *Revoker) prune(now int64) {
	i := 0
	for i < len(r.spent) && now-r.spent[i].at >= int64(r.pol.BudgetWindow) {
		i++
	}
	r.spent = append(r.spent[:0], r.spent[i:]...)
	if len(r.recent) >= 1024 {
		for agent, cs := range r.recent {
			if len(cs) == 0 || now-cs[len(cs)-1].at >= int64(r.pol.Persistence) {
				delete(r.recent, agent)
			}
		}
	}
	if len(r.done) >= 1024 {
		for cred, h := range r.done {
			if now >= h.exp {
				delete(r.done, cred)
			}
		}
	}
}

// revokerStateVersion is the version byte of AppendBinary's encoding.
// Version 1 kept no verified flags and when each agent's last request
// expired; version 2 keeps flags and each credential's last request.
const revokerStateVersion = 3 // 3 adds the watched requests

// AppendBinary appends the policy's state (recent critical alerts per agent,
// spent budget, when each credential's last request expires) to dst, so
// that a partition's next owner neither re-spends the budget nor forgets an
// agent's earlier alerts. Version byte 2, then uvarint counts and values.
func (r *Revoker) AppendBinary(dst []byte) []byte {
	if r == nil {
		return dst
	}
	dst = append(dst, revokerStateVersion)
	dst = binary.AppendUvarint(dst, uint64(len(r.recent)))
	for _, id := range slices.Sorted(maps.Keys(r.recent)) {
		cs := r.recent[id]
		dst = appendString(dst, id)
		dst = binary.AppendUvarint(dst, uint64(len(cs)))
		for _, c := range cs {
			dst = binary.AppendVarint(dst, c.at)
			dst = appendBool(dst, c.verified)
		}
	}
	dst = binary.AppendUvarint(dst, uint64(len(r.spent)))
	for _, s := range r.spent {
		dst = binary.AppendVarint(dst, s.at)
		dst = appendString(dst, s.class)
	}
	dst = binary.AppendUvarint(dst, uint64(len(r.done)))
	for _, cred := range slices.Sorted(maps.Keys(r.done)) {
		h := r.done[cred]
		dst = appendString(dst, cred)
		dst = binary.AppendVarint(dst, h.exp)
		dst = appendBool(dst, h.enforced)
	}
	return r.appendWatch(dst)
}

func appendBool(dst []byte, b bool) []byte {
	if b {
		return append(dst, 1)
	}
	return append(dst, 0)
}

// DecodeFrom replaces the policy's state with one AppendBinary wrote. Empty
// data (a checkpoint from before the state was kept) leaves it empty.
// Version 1 state (before events could be verified, and keyed by agent)
// reads with every recent alert unverified and without the agents' last
// requests: a credential may then get one more request within its TTL
// after the upgrade.
func (r *Revoker) DecodeFrom(data []byte) error {
	r.recent, r.done, r.spent = make(map[string][]critical), make(map[string]held), nil
	if len(data) == 0 {
		return nil
	}
	ver := data[0]
	if ver < 1 || ver > revokerStateVersion {
		return fmt.Errorf("%w: revocation policy state version %d", ErrState, ver)
	}
	off := 1
	bad := fmt.Errorf("%w: revocation policy state truncated", ErrState)
	uv := func() (uint64, bool) {
		v, n := binary.Uvarint(data[off:])
		if n <= 0 || v > 1<<24 {
			return 0, false
		}
		off += n
		return v, true
	}
	iv := func() (int64, bool) {
		v, n := binary.Varint(data[off:])
		if n <= 0 {
			return 0, false
		}
		off += n
		return v, true
	}
	str := func() (string, bool) {
		s, n, err := readString(data[off:])
		if err != nil {
			return "", false
		}
		off += n
		return s, true
	}
	flag := func() (bool, bool) {
		if ver == 1 {
			return false, true
		}
		if off >= len(data) || data[off] > 1 {
			return false, false
		}
		off++
		return data[off-1] == 1, true
	}
	n, ok := uv()
	if !ok {
		return bad
	}
	for range n {
		id, ok := str()
		k, ok2 := uv()
		if !ok || !ok2 {
			return bad
		}
		cs := make([]critical, 0, min(k, uint64(len(data)-off))) // each takes ≥ 1 byte
		for range k {
			t, ok := iv()
			v, ok2 := flag()
			if !ok || !ok2 {
				return bad
			}
			cs = append(cs, critical{at: t, verified: v})
		}
		r.recent[id] = cs
	}
	if n, ok = uv(); !ok {
		return bad
	}
	for range n {
		at, ok := iv()
		class, ok2 := str()
		if !ok || !ok2 {
			return bad
		}
		r.spent = append(r.spent, spent{at: at, class: class})
	}
	if n, ok = uv(); !ok {
		return bad
	}
	for range n {
		id, ok := str()
		exp, ok2 := iv()
		enf, ok3 := flag()
		if !ok || !ok2 || !ok3 {
			return bad
		}
		if ver != 1 {
			r.done[id] = held{exp: exp, enforced: enf}
		}
	}
	r.byCred, r.byAgent = nil, nil
	if ver >= 3 {
		n, err := r.decodeWatch(data[off:])
		if err != nil {
			return err
		}
		off += n
	}
	if off != len(data) {
		return fmt.Errorf("%w: revocation policy state: %d bytes left over", ErrState, len(data)-off)
	}
	return nil
}

// Signer signs revocation requests with an Ed25519 key.
type Signer struct {
	KeyID string
	key   ed25519.PrivateKey
}

// NewSigner returns a Signer for key, named kid in the requests.
func NewSigner(kid string, key ed25519.PrivateKey) (*Signer, error) {
	if kid == "" {
		return nil, errors.New("signing key: a key id (kid) is required")
	}
	if len(key) != ed25519.PrivateKeySize {
		return nil, errors.New("signing key: not an Ed25519 private key")
	}
	return &Signer{KeyID: kid, key: key}, nil
}

// LoadSigner reads a PEM "PRIVATE KEY" (PKCS #8, Ed25519) from file, which
// must pass CheckSecretFile. The key never appears in errors or logs.
func LoadSigner(kid, file string) (*Signer, error) {
	b, err := ReadSecretFile("signing key", file)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("signing key %s: want a PEM \"PRIVATE KEY\" block (PKCS #8)", file)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: not a PKCS #8 key", file)
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("signing key %s: not an Ed25519 key", file)
	}
	return NewSigner(kid, ek)
}

// Key returns the signer's private key (for tools that sign with the
// same key file, such as vigil sign-events).
func (s *Signer) Key() ed25519.PrivateKey { return s.key }

// Public returns the signer's public key.
func (s *Signer) Public() ed25519.PublicKey { return s.key.Public().(ed25519.PublicKey) }

// Sign sets rv's kid, signature and Body.
func (s *Signer) Sign(rv *Revocation) error {
	rv.KeyID, rv.Signature = s.KeyID, ""
	msg, err := json.Marshal(rv)
	if err != nil {
		return err
	}
	rv.Signature = base64.StdEncoding.EncodeToString(ed25519.Sign(s.key, msg))
	body := make([]byte, 0, len(msg)+len(rv.Signature)+16)
	body = append(body, msg[:len(msg)-1]...)
	body = append(body, `,"signature":"`...)
	body = append(body, rv.Signature...)
	body = append(body, `"}`...)
	rv.Body = body
	return nil
}

// MarshalJSON keeps times in UTC.
func (rv *Revocation) MarshalJSON() ([]byte, error) {
	type plain Revocation
	c := plain(*rv)
	c.WindowStart, c.WindowEnd, c.DetectedAt, c.ExpiresAt = c.WindowStart.UTC(), c.WindowEnd.UTC(), c.DetectedAt.UTC(), c.ExpiresAt.UTC()
	return json.Marshal(&c)
}

// ErrBadSignature is returned by VerifyRevocation for a request whose
// signature does not verify.
var ErrBadSignature = errors.New("revocation: signature does not verify")

// VerifyRevocation checks a revocation request's signature with the public
// key keys[kid] and returns the decoded request.
func VerifyRevocation(body []byte, keys map[string]ed25519.PublicKey) (*Revocation, error) {
	body = bytes.TrimSpace(body)
	var rv Revocation
	if err := json.Unmarshal(body, &rv); err != nil {
		return nil, fmt.Errorf("revocation: %w", err)
	}
	if rv.Signature == "" {
		return nil, errors.New("revocation: no signature")
	}
	key, ok := keys[rv.KeyID]
	if !ok {
		return nil, fmt.Errorf("revocation: unknown key id %q", rv.KeyID)
	}
	sig, err := base64.StdEncoding.DecodeString(rv.Signature)
	if err != nil {
		return nil, fmt.Errorf("revocation: signature: %w", err)
	}
	tail := `,"signature":"` + rv.Signature + `"}`
	if !bytes.HasSuffix(body, []byte(tail)) {
		return nil, errors.New(`revocation: "signature" is not the last member`)
	}
	msg := append(bytes.Clone(body[:len(body)-len(tail)]), '}')
	if !ed25519.Verify(key, msg, sig) {
		return nil, ErrBadSignature
	}
	rv.Body = body
	return &rv, nil
}

// LoadPublicKey reads a PEM "PUBLIC KEY" (PKIX, Ed25519) from file.
func LoadPublicKey(file string) (ed25519.PublicKey, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("%s: want a PEM \"PUBLIC KEY\" block", file)
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	ek, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%s: not an Ed25519 key", file)
	}
	return ek, nil
}
