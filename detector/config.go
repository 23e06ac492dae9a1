package detector

import (
	"fmt"
	"time"

	"github.com/vigil-sec/vigil/models"
)

// ConfigError names the invalid configuration field.
type ConfigError struct {
	Field string
	Msg   string
}

func (e *ConfigError) Error() string { return fmt.Sprintf("config: %s: %s", e.Field, e.Msg) }

// Config configures a Pipeline. Start from DefaultConfig.
type Config struct {
	// AllowedLateness is how far behind the newest event time an event may
	// arrive and still join its window. Later events are counted as late.
	// Must be shorter than the window.
	AllowedLateness time.Duration `yaml:"allowed_lateness"`
	// MaxClockSkew is how far ahead of its trusted time (the broker's
	// timestamp, bounded by the wall clock) an event may be stamped; later
	// stamps are rejected as "future". Used only where a trusted time is
	// known (vigil run), not by replay.
	MaxClockSkew time.Duration `yaml:"max_clock_skew"`
	// MaxNewAgents bounds the agents a partition holds in memory without
	// an hour of history (WarmWindows): beyond it, a new identity's events
	// are dead letters "identity_limit" and counted into the hour's
	// identity_flood alert.
	MaxNewAgents int `yaml:"max_new_agents"`
	// MaxClasses bounds a partition's peer groups: beyond it, a new agent
	// claiming an unknown group joins the overflow group.
	MaxClasses int `yaml:"max_classes"`
	// DedupHorizon is how long (event time) an event_id is remembered.
	DedupHorizon time.Duration `yaml:"dedup_horizon"`
	// DedupCapacity bounds remembered ids per half-horizon generation.
	DedupCapacity int `yaml:"dedup_capacity"`
	// AgentSeenSlots sizes each agent's first-seen set (per generation; 4
	// bytes a slot, two generations). Holds up to 3/4 of it per generation.
	AgentSeenSlots int `yaml:"agent_seen_slots"`
	// PeerSeenSlots sizes each peer group's first-seen set.
	PeerSeenSlots int `yaml:"peer_seen_slots"`
	// EvictAfter: the streaming runtime moves an agent out of memory once
	// it has been idle this long (event time) with its state checkpointed,
	// and reloads it when it returns. 0 keeps every agent in memory.
	EvictAfter time.Duration `yaml:"evict_after"`
	// SpillDir is where evicted agents are kept (an unlinked file per
	// partition); "" is the system's temporary directory.
	SpillDir string `yaml:"spill_dir"`
	// Signatures configures the verification of emitters' event
	// signatures (see features.VerifyEvent).
	Signatures SignatureConfig `yaml:"signatures"`
	// Inventory is the agent inventory file (see InventoryConfig).
	Inventory InventoryConfig `yaml:"inventory"`
	// Policy decides severities and what is emitted.
	Policy Policy `yaml:"policy"`
	// Revocation decides which alerts become revocation requests.
	Revocation RevocationPolicy `yaml:"revocation"`
	// Model holds learning and scoring parameters, window size included.
	Model models.Config `yaml:"model"`
}

// Policy turns scores into alerts.
type Policy struct {
	// InfoScore, WarningScore, CriticalScore are the score thresholds.
	InfoScore     float64 `yaml:"info_score"`
	WarningScore  float64 `yaml:"warning_score"`
	CriticalScore float64 `yaml:"critical_score"`
	// PersistWindows consecutive windows at warning make the last critical.
	PersistWindows int `yaml:"persist_windows"`
	// MinSeverity is the least severe alert emitted.
	MinSeverity Severity `yaml:"min_severity"`
	// EarlyDecisions lets a severe deviation fire while its window is still
	// open (at critical only), instead of at the window's end.
	EarlyDecisions bool `yaml:"early_decisions"`
	// MaxReasons bounds the reasons attached to an alert.
	MaxReasons int `yaml:"max_reasons"`
}

// Signature verification modes.
const (
	SigOff             = "off"               // signatures are not checked
	SigVerifyIfPresent = "verify_if_present" // a signed event must verify; unsigned ones are accepted, unverified
	SigRequire         = "require"           // every event must carry a signature that verifies
)

// SignatureConfig configures event signature verification. Only alerts
// whose window's events all verified can enforce a revocation.
type SignatureConfig struct {
	// Mode is off, verify_if_present or require.
	Mode string `yaml:"mode"`
	// Keyring is the file of emitters' public keys ({"keys": [...]}, see
	// features.ParseKeyring); required unless Mode is off.
	Keyring string `yaml:"keyring"`
	// ReloadInterval: vigil run rereads the keyring when it changes,
	// checking this often (keys rotate: old and new overlap).
	ReloadInterval time.Duration `yaml:"reload_interval"`
}

// InventoryConfig configures the agent inventory.
type InventoryConfig struct {
	// File is {"agents": [{"id", "class", "owner", "criticality",
	// "mode": observe|enforce}]}; "" for none.
	File string `yaml:"file"`
	// ReloadInterval: vigil run rereads the file when it changes.
	ReloadInterval time.Duration `yaml:"reload_interval"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		AllowedLateness: time.Minute,
		MaxClockSkew:    10 * time.Minute,
		MaxNewAgents:    10000,
		MaxClasses:      1000,
		Signatures:      SignatureConfig{Mode: SigOff, ReloadInterval: 10 * time.Second},
		Inventory:       InventoryConfig{ReloadInterval: 10 * time.Second},
		DedupHorizon:    time.Hour,
		DedupCapacity:   1 << 18,
		AgentSeenSlots:  128,
		PeerSeenSlots:   8192,
		EvictAfter:      6 * time.Hour,
		Policy: Policy{
			InfoScore: 40, WarningScore: 60, CriticalScore: 80,
			PersistWindows: 2, MinSeverity: SeverityWarning, EarlyDecisions: true, MaxReasons: 5,
		},
		Revocation: DefaultRevocationPolicy(),
		Model:      models.DefaultConfig(),
	}
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	if err := c.Model.Validate(); err != nil {
		return &ConfigError{Field: "model", Msg: err.Error()}
	}
	if err := c.Revocation.Validate(); err != nil {
		return err
	}
	p := c.Policy
	switch {
	case c.AllowedLateness < 0 || c.AllowedLateness >= c.Model.WindowSize:
		return &ConfigError{"allowed_lateness", fmt.Sprintf("%v: want ≥ 0 and below the window size %v", c.AllowedLateness, c.Model.WindowSize)}
	case c.MaxNewAgents < 1:
		return &ConfigError{"max_new_agents", "want ≥ 1"}
	case c.MaxClasses < 3:
		return &ConfigError{"max_classes", "want ≥ 3"}
	case c.Signatures.Mode != SigOff && c.Signatures.Mode != SigVerifyIfPresent && c.Signatures.Mode != SigRequire:
		return &ConfigError{"signatures.mode", "want off, verify_if_present or require, not " + c.Signatures.Mode}
	case c.Signatures.Mode != SigOff && c.Signatures.Keyring == "":
		return &ConfigError{"signatures.keyring", "signatures.mode is " + c.Signatures.Mode + ": the keyring file of emitters' public keys is required"}
	case c.Inventory.ReloadInterval <= 0:
		return &ConfigError{"inventory.reload_interval", "must be > 0"}
	case c.Signatures.ReloadInterval <= 0:
		return &ConfigError{"signatures.reload_interval", "must be > 0"}
	case c.MaxClockSkew < 0:
		return &ConfigError{"max_clock_skew", "must be ≥ 0"}
	case c.EvictAfter != 0 && c.EvictAfter < 2*c.Model.WindowSize:
		return &ConfigError{"evict_after", fmt.Sprintf("%v: want 0 (never) or at least two windows", c.EvictAfter)}
	case c.DedupHorizon < 0:
		return &ConfigError{"dedup_horizon", "must be ≥ 0"}
	case c.DedupCapacity < 16:
		return &ConfigError{"dedup_capacity", "want ≥ 16"}
	case c.AgentSeenSlots < 16 || c.AgentSeenSlots > 1<<16:
		return &ConfigError{"agent_seen_slots", "want 16 to 65536"}
	case c.PeerSeenSlots < 16 || c.PeerSeenSlots > 1<<24:
		return &ConfigError{"peer_seen_slots", "want 16 to 16777216"}
	case !(0 <= p.InfoScore && p.InfoScore <= p.WarningScore && p.WarningScore <= p.CriticalScore && p.CriticalScore <= 100):
		return &ConfigError{"policy", "want 0 ≤ info_score ≤ warning_score ≤ critical_score ≤ 100"}
	case p.PersistWindows < 1:
		return &ConfigError{"policy.persist_windows", "want ≥ 1"}
	case p.MinSeverity < SeverityInfo:
		return &ConfigError{"policy.min_severity", "want info, warning or critical"}
	case p.MaxReasons < 1:
		return &ConfigError{"policy.max_reasons", "want ≥ 1"}
	}
	return nil
}

// Severity is the severity of a window with the given score that is the
// persist-th consecutive window at warning or above: critical at
// CriticalScore, or at WarningScore when it has persisted PersistWindows
// windows; warning at WarningScore; info at InfoScore.
func (p *Policy) Severity(score float64, persist int) Severity {
	switch {
	case score >= p.CriticalScore:
		return SeverityCritical
	case score >= p.WarningScore && persist >= p.PersistWindows:
		return SeverityCritical
	case score >= p.WarningScore:
		return SeverityWarning
	case score >= p.InfoScore:
		return SeverityInfo
	}
	return SeverityNone
}
