package detector

import (
	"encoding/hex"
	"encoding/json"
	"time"

	"github.com/vigil-sec/vigil/features"
	"github.com/vigil-sec/vigil/models"
)

// Severity of an alert.
type Severity uint8

// Severities, in increasing order.
const (
	SeverityNone Severity = iota
	SeverityInfo
	SeverityWarning
	SeverityCritical
)

var severityNames = [...]string{"none", "info", "warning", "critical"}

func (s Severity) String() string { return severityNames[s] }

// MarshalText implements encoding.TextMarshaler.
func (s Severity) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *Severity) UnmarshalText(b []byte) error {
	for i, n := range severityNames {
		if n == string(b) {
			*s = Severity(i)
			return nil
		}
	}
	return &ConfigError{Field: "severity", Msg: "want info, warning or critical, not " + string(b)}
}

// Alert kinds: a bounded set, named after the group of the top reason.
const (
	KindVolume       = "volume"
	KindNovelAccess  = "novel_access"
	KindCredential   = "credential_misuse"
	KindDenied       = "denied_access"
	KindDataTransfer = "data_transfer"
	KindMoney        = "money_movement"
	KindLatency      = "latency"
)

// Kinds lists every alert kind.
var Kinds = []string{KindVolume, KindNovelAccess, KindCredential, KindDenied, KindDataTransfer, KindMoney, KindLatency}

func kindOf(f features.Feature) string {
	switch f {
	case features.EventCount:
		return KindVolume
	case features.DistinctTargets, features.NewTargets, features.NewActions, features.NewToPeers, features.ActionMix:
		return KindNovelAccess
	case features.NewCredentials, features.NewSources, features.WeakAuthShare, features.NewOriginShare:
		return KindCredential
	case features.DenyRate, features.ErrorRate, features.DeniedUnfamiliar:
		return KindDenied
	case features.BytesOut, features.BytesIn, features.RestrictedShare:
		return KindDataTransfer
	case features.Amount:
		return KindMoney
	default:
		return KindLatency
	}
}

func kindBit(kind string) uint8 {
	for i, k := range Kinds {
		if k == kind {
			return 1 << i
		}
	}
	return 0
}

// Baseline says what an alert's window was compared with.
type Baseline struct {
	Source  string `json:"source"`
	Windows int    `json:"windows"`
}

// Alert is alert contract v1.
type Alert struct {
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
	// Credentials are the credentials the agent itself established (known
	// to it before, not another agent's) and presented in the alert's
	// window: the only ones a revocation request may name. Not part of the
	// alert contract.
	Credentials []string `json:"-"`
	// OtherCredentials are credentials presented in the window that are
	// new to the agent or another agent's: evidence of misuse, never a
	// revocation target.
	OtherCredentials []string `json:"-"`
	// Verified reports that every event behind the alert carried a
	// verified signature (see issue 12); enforcement rests only on such
	// evidence. False until event signatures are verified.
	Verified bool `json:"-"`
	// Observe: the inventory lists the agent in mode observe — alerted
	// on, never revoked.
	Observe bool `json:"-"`
}

// AlertID is the stable id of an alert: the same agent, window and kind always
// give the same id, so redelivered alerts deduplicate downstream.
func AlertID(agentID string, windowStart int64, kind string) string {
	var key []byte
	key = append(key, agentID...)
	key = append(key, 0)
	key = append(key, time.Unix(0, windowStart).UTC().Format(time.RFC3339)...)
	key = append(key, 0)
	key = append(key, kind...)
	var sum [16]byte
	h1, h2 := features.Hash64(key, 1), features.Hash64(key, 2)
	for i := range 8 {
		sum[i], sum[8+i] = byte(h1>>(8*i)), byte(h2>>(8*i))
	}
	return hex.EncodeToString(sum[:])
}

// MarshalJSON keeps times in UTC RFC 3339.
func (a *Alert) MarshalJSON() ([]byte, error) {
	type plain Alert
	c := plain(*a)
	c.WindowStart, c.WindowEnd, c.DetectedAt = c.WindowStart.UTC(), c.WindowEnd.UTC(), c.DetectedAt.UTC()
	return json.Marshal(&c)
}
